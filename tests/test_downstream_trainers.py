"""Each downstream trainer learns an easy drawn task clearly above chance; datasets keep targets aligned."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from chexgen.data.imageio import save_png
from chexgen.data.manifest import Box, Mask, Record, read_manifest
from chexgen.downstream.data import ManifestDataset, SampleSpec
from chexgen.downstream.models import ModelSpec, build_model
from chexgen.downstream.toy import make_toy_cohort
from chexgen.downstream.trainer import TrainConfig, fit

SIZE = 32


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here on one torch thread (shared fixture in conftest.py)."""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = make_toy_cohort(tmp_path_factory.mktemp("toy"), 90, size=SIZE, seed=0)
    recs = read_manifest(path)
    return path.parent, [r for r in recs if r.split != "test"], [r for r in recs if r.split == "test"]


def _sets(toy, spec: SampleSpec):
    root, train, test = toy
    return ManifestDataset(train, root, dataclasses.replace(spec, augment=True)), ManifestDataset(test, root, spec)


def test_joint_transform_keeps_mask_and_boxes_on_their_pixels(toy):
    root, train, _ = toy
    seg = ManifestDataset([r for r in train if r.masks], root, SampleSpec("segmentation", SIZE, mask_name="pneumothorax", augment=True))
    det = ManifestDataset([r for r in train if r.boxes], root, SampleSpec("detection", SIZE, classes=("Lung Lesion",), augment=True))
    torch.manual_seed(0)
    for i in range(5):
        s = seg[i]
        m = s["mask"][0] > 0.5
        # The drawn rectangle is the brightest structure: the moved mask still covers bright pixels.
        assert s["image"][0][m].mean() > s["image"][0][~m].mean() + 0.2
        d = det[i]
        x0, y0, x1, y1 = d["boxes"][0].round().int().tolist()
        inside = d["image"][0][y0:y1, x0:x1]
        assert inside.mean() > d["image"][0].mean() + 0.2


def test_letterbox_scales_boxes_and_masks_with_the_image(tmp_path):
    img = np.zeros((40, 80), np.float32)
    img[10:20, 40:60] = 1.0
    save_png(tmp_path / "a.png", img)
    save_png(tmp_path / "a_m.png", img)
    rec = Record(id="a", image="a.png", boxes=[Box("Lung Lesion", 40, 10, 60, 20)], masks=[Mask("ptx", path="a_m.png")])
    d = ManifestDataset([rec], tmp_path, SampleSpec("detection", 32, classes=("Lung Lesion",)))[0]
    # Scale 32/80 = 0.4; the 16-px-high image is centred with 8 px of padding above.
    assert d["boxes"][0].tolist() == pytest.approx([16, 12, 24, 16], abs=0.01)
    s = ManifestDataset([rec], tmp_path, SampleSpec("segmentation", 32, mask_name="ptx"))[0]
    ys, xs = np.nonzero(s["mask"][0].numpy())
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (12, 16, 16, 24)


def test_classifier_learns(toy):
    spec = SampleSpec("classification", SIZE, classes=("Cardiomegaly", "Pleural Effusion"))
    train, test = _sets(toy, spec)
    res = fit(ModelSpec("classification", 2, SIZE, arch="densenet-tiny"), train, test,
              TrainConfig(epochs=4, batch_size=16, lr=3e-3), seed=0)
    assert res.init == "scratch"
    assert res.metrics["auroc_macro"] > 0.8, res.metrics


def test_segmenter_learns(toy):
    spec = SampleSpec("segmentation", SIZE, mask_name="pneumothorax")
    train, test = _sets(toy, spec)
    res = fit(ModelSpec("segmentation", 1, SIZE, arch="resnet18", width=8), train, test,
              TrainConfig(epochs=5, batch_size=16, lr=3e-3), seed=0)
    # An empty prediction scores dice_pos 0; a blob everywhere scores ~0.1.
    assert res.metrics["dice_pos"] > 0.5, res.metrics


def test_regressor_learns(toy):
    spec = SampleSpec("regression", SIZE)
    train, test = _sets(toy, spec)
    res = fit(ModelSpec("regression", 1, SIZE, arch="resnet18"), train, test,
              TrainConfig(epochs=8, batch_size=16, lr=1e-3), seed=0)
    sev = np.array([r.severity for r in toy[2]])
    assert res.metrics["pearson"] > 0.7, res.metrics
    assert res.metrics["mae"] < np.abs(sev - sev.mean()).mean(), res.metrics


@pytest.mark.slow
def test_detector_learns(tmp_path):
    path = make_toy_cohort(tmp_path, 60, size=SIZE, seed=0, prevalence={"Lung Lesion": 0.9})
    recs = read_manifest(path)
    spec = SampleSpec("detection", SIZE, classes=("Lung Lesion",))
    train, test = _sets((path.parent, [r for r in recs if r.split != "test"], [r for r in recs if r.split == "test"]), spec)
    res = fit(ModelSpec("detection", 1, SIZE, arch="resnet18", width=4), train, test,
              TrainConfig(epochs=14, batch_size=4, lr=5e-3), seed=0)
    # A detector that has learnt nothing scores mAP50 ~0; measured here: 0.44 (mAR50 1.0).
    assert res.metrics["map50"] > 0.3, res.metrics


def test_detector_fits_a_batch(toy):
    """Default-run check of the detection path: one fixed batch's loss falls clearly."""
    root, train, _ = toy
    ds = ManifestDataset([r for r in train if r.boxes][:4], root, SampleSpec("detection", SIZE, classes=("Lung Lesion",)))
    from chexgen.downstream.data import collate_samples

    batch = collate_samples([ds[i] for i in range(len(ds))])
    torch.manual_seed(0)
    model, init = build_model(ModelSpec("detection", 1, SIZE, arch="resnet18", width=4))
    assert init == "scratch"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(batch["boxes"], batch["box_labels"])]
    losses = []
    for _ in range(12):
        loss = sum(model(batch["image"], targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        out = model(batch["image"])
    assert len(out) == 4 and set(out[0]) == {"boxes", "scores", "labels"}


def test_paper_architectures_and_offline_imagenet_init(tmp_path, monkeypatch):
    import torchvision

    # Default sizes are the paper's networks.
    dense, init = build_model(ModelSpec("classification", 14, 64))
    assert init == "scratch" and type(dense.net).__name__ == "DenseNet"
    assert dense.net.classifier.in_features == 1024 and dense(torch.rand(1, 1, 64, 64)).shape == (1, 14)
    unet, _ = build_model(ModelSpec("segmentation", 1, 64))
    assert type(unet.net).__name__ == "Unet" and unet.net.encoder.layer4[-1].conv2.out_channels == 512
    det, _ = build_model(ModelSpec("detection", 2, 64))
    assert sum(p.numel() for p in det.parameters()) == pytest.approx(41.3e6, rel=0.01)
    reg, _ = build_model(ModelSpec("regression", 1, 64))
    assert reg.net.fc.in_features == 2048 and reg(torch.rand(2, 1, 64, 64)).shape == (2, 1)

    # torchvision's ImageNet file in the hub cache is used when present (never downloaded).
    ref = torchvision.models.resnet18()
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    name = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    torch.save(ref.state_dict(), hub / "checkpoints" / name)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        model, init = build_model(ModelSpec("classification", 3, 32, arch="resnet18"))
        assert init == "imagenet"
        assert torch.equal(model.net.conv1.weight, ref.conv1.weight)
        unet, init = build_model(ModelSpec("segmentation", 1, 32, arch="resnet18", width=4))
        assert init == "imagenet" and torch.equal(unet.net.encoder.conv1.weight, ref.conv1.weight)
        # torchvision's DenseNet121 file uses the old key names ("norm.1"); they are mapped.
        dref = torchvision.models.densenet121()
        with torch.no_grad():  # BatchNorm starts at ones: give it values that prove the mapping
            dref.features.denseblock1.denselayer1.norm1.weight.uniform_(0.5, 2.0)
        old_keys = {k.replace("norm1", "norm.1").replace("conv2", "conv.2") if "denselayer" in k else k: v
                    for k, v in dref.state_dict().items()}
        assert any(".norm.1." in k for k in old_keys)
        dname = torchvision.models.DenseNet121_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
        torch.save(old_keys, hub / "checkpoints" / dname)
        dense, init = build_model(ModelSpec("classification", 2, 32))
        assert init == "imagenet"
        layer = dense.net.features.denseblock1.denselayer1
        assert torch.equal(layer.norm1.weight, dref.features.denseblock1.denselayer1.norm1.weight)
        assert torch.equal(layer.conv2.weight, dref.features.denseblock1.denselayer1.conv2.weight)
    finally:
        torch.hub.set_dir(old)


def test_mask_globs_unite_indexed_masks(tmp_path):
    img = np.zeros((16, 16), np.float32)
    a, b = img.copy(), img.copy()
    a[:4, :4] = 1
    b[8:, 8:] = 1
    for name, arr in (("i", img), ("a", a), ("b", b)):
        save_png(tmp_path / f"{name}.png", arr)
    rec = Record(id="r", image="i.png", masks=[Mask("finding_0_pneumothorax", path="a.png"), Mask("finding_1_pneumothorax", path="b.png"),
                                               Mask("heart", path="a.png")])
    m = ManifestDataset([rec], tmp_path, SampleSpec("segmentation", 16, mask_name="*pneumothorax"))[0]["mask"][0]
    assert m.sum() == 16 + 64
    other = Record(id="o", image="i.png", masks=[Mask("heart", path="a.png")])
    assert ManifestDataset([other], tmp_path, SampleSpec("segmentation", 16, mask_name="*pneumothorax"))[0]["mask"].sum() == 0
