"""The demo's spatial-control part: prompts from real masks / boxes, the localisation ratio, the default adapter."""

import json

import numpy as np
import pytest
from conftest import make_tiny_pipeline

from chexgen.cli import main
from chexgen.data.condition_sources import ConditionInput
from chexgen.data.conditions import LabelledMask, resolve_class
from chexgen.data.manifest import Box, read_manifest
from chexgen.demo.control import condition_impression, localisation_ratio, real_control_examples
from chexgen.errors import ChexgenError

TRAINED = ["Atelectasis", "Cardiomegaly", "Lung Lesion", "Pleural Effusion", "Pneumothorax"]


def test_impression_side_zone_and_size_follow_the_marked_place():
    mask = np.zeros((100, 100), bool)
    mask[10:30, 10:40] = True  # image left (patient right), top, 6 % of the image
    cond = ConditionInput("m", 100, 100, masks=[LabelledMask("Pneumothorax", mask)])
    assert condition_impression(cond, "Pneumothorax") == "Moderate right pneumothorax."
    low_left = ConditionInput("b", 1000, 1000, boxes=[Box("Nodule", 700, 700, 760, 760)])
    assert condition_impression(low_left, "Lung Lesion") == "Small left lower zone nodule."
    big = ConditionInput("e", 1000, 1000, boxes=[Box("Effusion", 100, 500, 450, 900)])
    assert condition_impression(big, "Pleural Effusion") == "Large right pleural effusion."
    with pytest.raises(ChexgenError, match="CheXpert"):
        condition_impression(big, "Dragon")
    with pytest.raises(ChexgenError, match="no mask and no box"):
        condition_impression(ConditionInput("x", 10, 10), "Pneumothorax")


def test_real_examples_come_from_torchxrayvision_and_match_the_trained_findings():
    examples = real_control_examples(2, 4, TRAINED, seed=0)
    masks = [e for e in examples if e.source == "SIIM-ACR mask"]
    boxes = [e for e in examples if e.source == "NIH box"]
    assert len(masks) == 2 and len(boxes) == 4
    for e in masks:
        assert e.label == "Pneumothorax" and e.condition.masks[0].mask.mean() >= 0.01
        assert (e.condition.width, e.condition.height) == (1024, 1024)
    for e in boxes:
        (box,) = e.condition.boxes
        assert resolve_class(box.label).name == e.label and e.label in TRAINED
        assert (box.x1 - box.x0) * (box.y1 - box.y0) >= 0.01 * 1024 * 1024
    assert len({e.label for e in boxes}) == 4  # boxes cycle through the findings
    assert [e.condition.id for e in real_control_examples(2, 4, TRAINED, seed=0)] == [e.condition.id for e in examples]
    assert real_control_examples(3, 0, ["Cardiomegaly"]) == []  # no pneumothorax model, no SIIM masks


def test_localisation_ratio():
    rng = np.random.default_rng(0)
    base = rng.random((32, 32))
    region = np.zeros((32, 32), bool)
    region[8:16, 8:16] = True
    inside_only = base + 0.5 * region + 0.01
    assert localisation_ratio(inside_only, base, region) == pytest.approx(51.0)
    assert localisation_ratio(base + 0.2, base, region) == pytest.approx(1.0)
    assert np.isnan(localisation_ratio(base, base, region))
    assert np.isnan(localisation_ratio(inside_only, base, np.zeros_like(region)))
    with pytest.raises(ChexgenError, match="does not match"):
        localisation_ratio(base, base, region[:16])


def test_generate_uses_the_bundled_adapter_when_no_model_is_given(tmp_path, tiny_t5_dir, monkeypatch):
    import chexgen.assets
    from chexgen.models.controlnet import ChexGenControlNet

    pipe = make_tiny_pipeline(tiny_t5_dir, depth=2)
    pipe.save_pretrained(tmp_path / "demo" / "pipeline")
    adapter = ChexGenControlNet.from_transformer(pipe.transformer, num_blocks=1)
    adapter.save_pretrained(str(tmp_path / "demo" / "control"), safe_serialization=True)
    (tmp_path / "demo" / "control" / "control_info.json").write_text(json.dumps({"base_model": "../pipeline"}))
    monkeypatch.setattr(chexgen.assets, "demo_model_dir", lambda: tmp_path / "demo")
    (tmp_path / "boxes.csv").write_text("image_id,label,x0,y0,x1,y1,width,height\nq,Effusion,1,10,14,30,32,32\n")
    out = tmp_path / "out"
    assert main(["generate", "Small right pleural effusion.", "--boxes", str(tmp_path / "boxes.csv"), "--out",
                 str(out), "--steps", "2", "--no-progress"]) == 0
    (rec,) = read_manifest(out / "manifest.jsonl")
    assert rec.provenance["control_model"] == str(tmp_path / "demo" / "control")
