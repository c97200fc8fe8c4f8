"""RAD-DINO / DINOv2 extractors on random models of the same classes, FD / KID on their features against
closed forms, and the re-identification score on a random Siamese ResNet-50 with a known threshold."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from chexgen.cli import main
from chexgen.data.imageio import save_png
from chexgen.data.manifest import Record, write_manifest
from chexgen.evaluation import compute_fid, compute_kid, extract_features
from chexgen.evaluation.features import build_extractor
from chexgen.evaluation.reid import SiameseReID, compute_reid, load_reid_network

MEAN, STD = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    """A random Dinov2Model (ViT, patch 14, 28 px, 32-d) with a BitImageProcessor config of its own."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("dino")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=14, image_size=28)).save_pretrained(str(path))
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, do_center_crop=True,
                      image_mean=MEAN, image_std=STD, resample=Image.BICUBIC).save_pretrained(str(path))
    return path


def _images(n: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 1, size)[None, None, :, None] * torch.linspace(0, 1, size)[None, None, None, :]
    return (0.6 * base + 0.4 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("kind", ["rad-dino", "dinov2"])
def test_vit_extractor_uses_the_processor_config_and_cls_features(dino_dir, kind):
    ext = build_extractor(kind, str(dino_dir))
    assert ext.name == kind and ext.input_size == 28 and ext.dim == 32
    x = _images(3)
    pv = ext.preprocess(x)
    assert pv.shape == (3, 3, 28, 28)
    # three equal gray channels, each normalised with its own mean / std
    gray = [pv[:, c] * STD[c] + MEAN[c] for c in range(3)]
    assert torch.allclose(gray[0], gray[1], atol=1e-5) and torch.allclose(gray[0], gray[2], atol=1e-5)
    # what the processor config says: 8-bit image, bicubic resize of the short side to 32, centre crop 28
    ref = []
    for im in (x[:, 0] * 255).round().to(torch.uint8).numpy():
        small = np.asarray(Image.fromarray(im, "L").resize((32, 32), Image.BICUBIC), np.float32) / 255
        ref.append(small[2:30, 2:30])
    assert np.abs(gray[0].numpy() - np.stack(ref)).mean() < 0.01
    out = ext(x)
    with torch.no_grad():
        hidden = ext.model(pixel_values=pv).last_hidden_state
    cls = hidden[:, 0]  # Dinov2Model's last_hidden_state is already layer-normed: its CLS row is the feature
    assert out.features.shape == (3, 32) and torch.allclose(out.features, cls, atol=1e-5)
    assert out.scores is None and ext.describe()["weights"] == str(dino_dir)


def test_fd_and_kid_on_vit_features_equal_their_closed_forms(dino_dir):
    ext = build_extractor("dinov2", str(dino_dir))
    a = extract_features(ext, _images(40, seed=1), batch_size=16).features
    b = extract_features(ext, _images(40, seed=2) ** 2, batch_size=16).features
    assert a.shape == (40, 32)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    closed = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert compute_fid(a, b) == pytest.approx(closed, rel=1e-6)
    k = lambda x, y: (x @ y.T / x.shape[1] + 1.0) ** 3  # noqa: E731 - the cubic polynomial kernel
    n = len(a)
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (n * (n - 1)) - 2 * kxy.mean()
    assert compute_kid(a, b, subsets=1, subset_size=n)[0] == pytest.approx(mmd, rel=1e-9)


def test_vit_extractor_errors_name_the_problem(tmp_path):
    with pytest.raises(Exception, match="preprocessor_config.json"):
        build_extractor("rad-dino", str(tmp_path))
    with pytest.raises(Exception, match="could not load rad-dino"):
        build_extractor("rad-dino", "no-such-owner/no-such-rad-dino")


def _reid_net(seed: int = 0) -> SiameseReID:
    torch.manual_seed(seed)
    net = SiameseReID().eval()
    with torch.no_grad():  # score = sigmoid(3 - 50 * sum|a - b|): exact copies 0.953, other images ~0
        net.fc_end.weight.fill_(-50.0)
        net.fc_end.bias.fill_(3.0)
    return net


def test_reid_scores_every_pair_flags_planted_copies_and_loads_chexgenbench_weights(tmp_path, one_thread):
    net = _reid_net()
    train = _images(4, size=64, seed=3)
    train[1] = torch.flip(train[1], dims=(-1,)) * 0.5
    syn = torch.cat([train[2:3], _images(2, size=64, seed=9) ** 3, train[0:1]])
    res = compute_reid(net, syn, train, threshold=0.5, source_index=[2, None, None, 1])
    with torch.no_grad():  # brute force: the network's own forward on every (synthetic, training) pair
        brute = torch.stack([torch.sigmoid(net(net.preprocess(s[None]).expand(4, -1, -1, -1),
                                               net.preprocess(train)))[:, 0] for s in syn])
    assert np.allclose(res.best_score, brute.max(1).values.numpy(), atol=1e-5)
    assert res.best_index[0] == 2 and res.best_index[3] == 0
    copy_score = 1 / (1 + np.exp(-3.0))
    assert res.best_score[0] == pytest.approx(copy_score, abs=1e-5)
    assert res.flagged == [True, False, False, True]
    summary = res.summary()
    assert summary["count_above"] == 2 and summary["fraction_above"] == 0.5 and summary["n_synthetic"] == 4
    assert res.paired_score[0] == pytest.approx(copy_score, abs=1e-5) and res.paired_score[1] is None
    assert summary["paired_n"] == 2 and summary["paired_max"] == pytest.approx(copy_score, abs=1e-5)
    assert sum(res.histogram["counts"]) == 4

    # CheXGenBench's checkpoint layout: model.* (the ResNet-50) and fc_end.*, here behind a DataParallel prefix
    path = tmp_path / "reid.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    loaded = load_reid_network(path)
    assert np.allclose(compute_reid(loaded, syn, train).best_score, res.best_score, atol=1e-6)
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(Exception, match="Siamese ResNet-50 state dict"):
        load_reid_network(tmp_path / "other.pth")


def test_evaluate_cli_with_dinov2_features_and_reid(dino_dir, tmp_path, one_thread):
    rng = np.random.default_rng(0)
    recs = {"real": [], "syn": []}
    for kind, n in (("real", 8), ("syn", 8)):
        for i in range(n):
            img = np.clip(rng.random((48, 48)) * (0.5 if kind == "syn" else 1.0), 0, 1).astype(np.float32)
            if kind == "syn" and i == 0:
                from chexgen.data.imageio import load_gray

                img = load_gray(tmp_path / "real" / "r0.png")  # a planted copy of real case 0
            save_png(tmp_path / kind / f"{kind[0]}{i}.png", img)
            recs[kind].append(Record(id=f"{kind[0]}{i}", image=f"{kind[0]}{i}.png", impression=f"case {i % 4}",
                                     synthetic=kind == "syn", extra={"source_id": f"r{i}"} if kind == "syn" else {}))
        write_manifest(tmp_path / kind / "manifest.jsonl", recs[kind])
    torch.save(_reid_net().state_dict(), tmp_path / "reid.pth")
    out = tmp_path / "eval"
    assert main(["evaluate", "--real", str(tmp_path / "real" / "manifest.jsonl"), "--synthetic",
                 str(tmp_path / "syn" / "manifest.jsonl"), "--out", str(out), "--features", "dinov2", "--weights",
                 str(dino_dir), "--reid-weights", str(tmp_path / "reid.pth"), "--bootstrap", "20",
                 "--distribution-bootstrap", "5", "--no-tsne", "--analysis-size", "64"]) == 0
    import json

    m = json.loads((out / "metrics.json").read_text())
    assert m["inputs"]["features"]["name"] == "dinov2" and m["inputs"]["feature_dim"] == 32
    assert m["metrics"]["fid"]["value"] > 0 and "coverage" in m["metrics"]
    assert m["reid"]["count_above"] >= 1 and m["reid"]["closest"][0]["synthetic_id"] == "s0"
    assert m["reid"]["closest"][0]["train_id"] == "r0" and m["reid"]["paired_n"] == 8
    assert 0 < m["metrics"]["reid_fraction"]["value"] <= 1 and "memorised_fraction" in m["metrics"]
