"""A trained classifier saved, reloaded and used as an evaluation feature extractor."""

import json

import numpy as np
import torch

from chexgen.cli import main
from chexgen.data.imageio import load_gray
from chexgen.data.manifest import read_manifest
from chexgen.downstream import load_classifier
from chexgen.downstream.toy import make_toy_cohort
from chexgen.evaluation.features import ClassifierExtractor


def test_train_save_load_extract(tmp_path):
    manifest = make_toy_cohort(tmp_path / "toy", n=60, size=32, seed=3)
    out = tmp_path / "clf"
    code = main(["downstream", "classifier", "--real", str(manifest), "--output", str(out), "--arch", "densenet-tiny",
                 "--image-size", "32", "--epochs", "6", "--batch-size", "8", "--lr", "3e-3", "--num-threads", "1"])
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == "densenet-tiny" and cfg["image_size"] == 32 and cfg["init"] == "scratch"
    assert set(cfg["classes"]) <= {"No Finding", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion"}
    # The toy findings are bright shapes: a few epochs get clearly above chance.
    assert cfg["test_metrics"]["auroc_macro"] > 0.65

    clf = load_classifier(out)
    records = [r for r in read_manifest(manifest) if r.split == "test"]
    images = torch.stack([torch.from_numpy(load_gray(r.resolve(r.image, manifest.parent)))[None] for r in records])
    with torch.no_grad():
        out1 = clf(images)
    assert out1["scores"].shape == (len(records), len(cfg["classes"]))
    assert torch.all((out1["scores"] >= 0) & (out1["scores"] <= 1))
    assert out1["features"].ndim == 2 and out1["features"].shape[0] == len(records)
    # Reloading gives the same function.
    with torch.no_grad():
        out2 = load_classifier(out)(images)
    assert torch.allclose(out1["scores"], out2["scores"]) and torch.allclose(out1["features"], out2["features"])

    ext = ClassifierExtractor(clf, input_size=32, class_names=clf.class_names)
    res = ext(images)
    assert res.scores.shape == (len(records), 14)
    from chexgen.data.labels import LABEL_INDEX

    col = LABEL_INDEX[cfg["classes"][0]]
    assert np.allclose(res.scores[:, col].numpy(), out1["scores"][:, 0].numpy(), atol=1e-5)


def test_evaluate_loads_a_classifier_folder(tmp_path):
    from chexgen.data.manifest import write_manifest
    from chexgen.downstream.classifier import save_classifier
    from chexgen.downstream.models import ModelSpec, build_model

    manifest = make_toy_cohort(tmp_path / "toy", n=16, size=32, seed=1)
    recs = read_manifest(manifest)
    write_manifest(tmp_path / "toy" / "a.jsonl", recs[:8])
    write_manifest(tmp_path / "toy" / "b.jsonl", recs[8:])
    spec = ModelSpec(task="classification", num_outputs=2, image_size=32, arch="densenet-tiny", init="scratch")
    model, _ = build_model(spec)
    save_classifier(model, spec, ["Cardiomegaly", "Pneumothorax"], tmp_path / "clf")
    out = tmp_path / "eval"
    code = main(["evaluate", "--real", str(tmp_path / "toy" / "a.jsonl"), "--synthetic", str(tmp_path / "toy" / "b.jsonl"),
                 "--out", str(out), "--features", str(tmp_path / "clf"), "--image-size", "32", "--analysis-size", "32",
                 "--bootstrap", "10", "--distribution-bootstrap", "3", "--no-tsne"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["inputs"]["feature_dim"] == model.net.classifier.in_features
    assert "fid" in metrics["metrics"]


def test_a_saved_classifier_folder_initialises_a_new_one(tmp_path):
    import pytest

    from chexgen.downstream.classifier import save_classifier
    from chexgen.downstream.models import ModelSpec, build_model
    from chexgen.errors import ChexgenError

    torch.manual_seed(0)
    old_spec = ModelSpec(task="classification", num_outputs=2, image_size=32, arch="resnet18", init="scratch")
    old, _ = build_model(old_spec)
    save_classifier(old, old_spec, ["Cardiomegaly", "Pneumothorax"], tmp_path / "clf")

    spec = ModelSpec(task="classification", num_outputs=3, image_size=32, arch="resnet18", init=str(tmp_path / "clf"))
    new, used = build_model(spec)
    assert used == str(tmp_path / "clf")
    a, b = old.state_dict(), new.state_dict()
    backbone = [k for k in a if not k.startswith("net.fc.")]
    assert backbone and all(torch.equal(a[k], b[k]) for k in backbone)
    assert b["net.fc.weight"].shape == (3, 512)  # the head is new: other classes may follow

    with pytest.raises(ChexgenError, match="a resnet18 classifier, not resnet34"):
        build_model(ModelSpec(task="classification", num_outputs=3, image_size=32, arch="resnet34",
                              init=str(tmp_path / "clf")))
