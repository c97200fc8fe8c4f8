"""Controlled generation writes images with their conditions: mask PNGs, COCO boxes, synthetic manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from chexgen.data.conditions import encode_rle
from chexgen.data.imageio import read_png_text
from chexgen.data.manifest import read_manifest
from chexgen.errors import ChexgenError
from chexgen.generation import ChexGenBackend, ConditionOptions, PromptItem, generate_to_folder, read_conditions
from chexgen.generation.conditions import parse_mask_classes
from chexgen.models.controlnet import ChexGenControlNet
from chexgen.models.presets import TextEncoderSpec, VAESpec
from chexgen.pipelines import ChexGenControlPipeline, ChexGenPipeline

SMALL_VAE = VAESpec(kind="gray", block_out_channels=(8, 8, 16, 16))  # fast decode in tests


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_t5_dir):
    root = tmp_path_factory.mktemp("gen")
    spec = TextEncoderSpec(kind="t5", name_or_path=str(tiny_t5_dir), max_length=8, embed_dim=32)
    base = ChexGenPipeline.from_preset("tiny", resolution=32, text_encoder_spec=spec, vae_spec=SMALL_VAE,
                                       depth=2, hidden_size=32,
                                       num_heads=2)
    base.save_pretrained(root / "base")
    adapter = ChexGenControlNet.from_transformer(base.transformer)
    adapter.save_pretrained(root / "ctrl")
    (root / "ctrl" / "control_info.json").write_text(json.dumps({"base_model": str(root / "base")}))
    return root, base


def _run(root, base, opts, prompts, out, scale=1.0, **kw):
    """Generate through the engine with the test adapter on ``base``."""
    control = ChexGenControlPipeline.from_pretrained(root / "ctrl", base=base)
    sampling = base.sampling_settings(num_inference_steps=kw.pop("steps", 2), guidance_scale=kw.pop("guidance", 2.0))
    backend = ChexGenBackend(base, sampling, control=control, conditioning_scale=scale)
    rejects = []
    conditions = read_conditions(opts, rejects)
    return generate_to_folder(backend, [PromptItem(p) for p in prompts], out, conditions=conditions,
                              progress=False, rejects=rejects, **kw)


def test_masks_and_boxes_are_written_with_each_image(models, tmp_path):
    root, base = models
    masks = tmp_path / "masks"
    masks.mkdir()
    m = np.zeros((64, 64), np.uint8)
    m[8:24, 40:56] = 255
    Image.fromarray(m).save(masks / "case1.png")
    (tmp_path / "boxes.csv").write_text("image_id,label,x0,y0,x1,y1,width,height\n"
                                        "case1,Effusion,0,40,32,64,64,64\ncase2,Nodule,10,10,20,20,40,40\n")
    opts = ConditionOptions(masks=str(masks), boxes=str(tmp_path / "boxes.csv"))
    assert opts.requested and not ConditionOptions().requested
    out = tmp_path / "out"
    res = _run(root, base, opts, ["Left pneumothorax and effusion."], out, seed=4, num_images_per_prompt=2)
    assert res.generated == 4 and not res.rejected
    records = read_manifest(out / "manifest.jsonl")
    assert [r.id for r in records] == ["syn-000000-000", "syn-000000-001", "syn-000001-000", "syn-000001-001"]
    assert [r.extra["condition_id"] for r in records] == ["case1", "case1", "case2", "case2"]
    r = records[0]
    assert r.synthetic and r.provenance["seed"] == 4 and r.provenance["condition_id"] == "case1"
    assert r.provenance["conditioning_scale"] == 1.0 and r.provenance["control_sha256"]
    assert r.provenance["control_guidance"] == "shared"  # an adapter without a stored setting
    assert json.loads(read_png_text(out / r.image)["chexgen:provenance"])["prompt"] == r.impression
    # Mask in output pixels: 64 -> 32 px halves the coordinates.
    (mask,) = r.masks
    assert mask.name == "Pneumothorax"
    arr = np.asarray(Image.open(out / mask.path)) > 0
    ys, xs = np.nonzero(arr)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (4, 12, 20, 28)
    (box,) = r.boxes
    assert (box.label, box.x0, box.y0, box.x1, box.y1) == ("Effusion", 0, 20, 16, 32)
    coco = json.loads((out / "boxes.coco.json").read_text())
    assert len(coco["images"]) == 4 and len(coco["annotations"]) == 4
    ann = coco["annotations"][2]  # case2: 40 px frame -> 32 px output
    assert ann["bbox"] == pytest.approx([8, 8, 8, 8])
    cond = np.asarray(Image.open(out / r.extra["condition_image"]))
    assert cond.shape == (32, 32) and cond[8, 24] > 0 and cond[28, 4] > 0


def test_rle_csv_conditions_and_errors(models, tmp_path):
    root, base = models
    mask = np.zeros((16, 16), bool)
    mask[2:6, 3:9] = True
    (tmp_path / "rle.csv").write_text(f"ImageId,EncodedPixels\nimgA,{encode_rle(mask)}\nimgB,-1\n")
    opts = ConditionOptions(masks=str(tmp_path / "rle.csv"), mask_size=(16, 16))
    out = tmp_path / "o"
    res = _run(root, base, opts, ["Pneumothorax."], out, scale=0.5, steps=1)
    assert res.generated == 1  # the -1 row is skipped
    (rec,) = read_manifest(out / "manifest.jsonl")
    assert rec.provenance["conditioning_scale"] == 0.5
    with pytest.raises(ChexgenError, match="VALUE=NAME"):
        parse_mask_classes("lungs")


def test_generate_command_with_boxes(models, tmp_path):
    from chexgen.cli import main

    root, _ = models
    (tmp_path / "b.csv").write_text("image_id,label,x0,y0,x1,y1,width,height\nq,Nodule,4,4,12,12,32,32\n")
    out = tmp_path / "cli"
    code = main(["generate", "Right upper lobe nodule.", "--model", str(root / "base"), "--control-model",
                 str(root / "ctrl"), "--boxes", str(tmp_path / "b.csv"), "--out", str(out), "--steps", "2",
                 "--no-progress", "--seed", "9", "--control-guidance", "joint"])
    assert code == 0
    (rec,) = read_manifest(out / "manifest.jsonl")
    assert rec.provenance["control_guidance"] == "joint"
    assert rec.id == "syn-000000-000" and rec.extra["condition_id"] == "q" and rec.impression == "Right upper lobe nodule." and len(rec.boxes) == 1
    assert (out / rec.image).is_file() and (out / "boxes.coco.json").is_file()
