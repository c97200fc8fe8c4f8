"""ChexGenPipeline: shapes, seeds, save/load round trip, input checks."""

from __future__ import annotations

import json

import pytest
import torch

from chexgen import ChexGenPipeline
from chexgen.errors import ChexgenError

FAST = dict(num_inference_steps=2, progress=False)


def test_call_shapes_prompt_order_and_default_seeds(tiny_pipeline):
    out = tiny_pipeline(["normal chest", "right pleural effusion"], num_images_per_prompt=2, seed=10,
                        batch_size=3, **FAST)
    assert out.images.shape == (4, 1, 32, 32)
    assert out.images.min() >= 0 and out.images.max() <= 1 and out.images.dtype == torch.float32
    assert out.prompts == ["normal chest", "normal chest", "right pleural effusion", "right pleural effusion"]
    assert out.seeds == [10, 11, 12, 13]
    assert not torch.equal(out.images[0], out.images[1])  # different seeds, different images


def test_same_seed_same_image_for_batch_sizes_one_and_four(tiny_pipeline):
    prompts = ["a", "b b", "c c c", "d"]
    kw = dict(seeds=[3, 1, 4, 1], sampler="iddpm", num_inference_steps=3, progress=False)
    four = tiny_pipeline(prompts, batch_size=4, **kw).images
    one = tiny_pipeline(prompts, batch_size=1, **kw).images
    assert torch.allclose(four, one, atol=1e-4)
    # seed 1 with prompt "d" vs prompt "b b": the prompt matters, the seed alone does not decide
    assert not torch.allclose(four[1], four[3], atol=1e-4)


def test_save_load_round_trip_is_identical(tiny_pipeline, tmp_path):
    before = tiny_pipeline("left lower lobe opacity", seed=7, **FAST).images
    root = tiny_pipeline.save_pretrained(tmp_path / "model")
    for rel in ("chexgen_config.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"):
        assert (root / rel).is_file(), rel
    cfg = json.loads((root / "chexgen_config.json").read_text())
    assert cfg["text_encoder"]["kind"] == "t5" and cfg["vae"]["name_or_path"] == "vae"
    assert not any(p.name == "model.safetensors" for p in root.rglob("*"))  # text encoder not copied
    back = ChexGenPipeline.from_pretrained(root)
    after = back("left lower lobe opacity", seed=7, **FAST).images
    assert torch.equal(before, after)
    assert len(back.checkpoint_sha256()) == 64 and tiny_pipeline.checkpoint_sha256() is None


@pytest.mark.parametrize("sampler", ["ddim", "iddpm", "dpmsolver++", "official"])
def test_every_sampler_runs(tiny_pipeline, sampler):
    out = tiny_pipeline("cardiomegaly", sampler=sampler, num_inference_steps=2, progress=False)
    assert out.images.shape == (1, 1, 32, 32) and torch.isfinite(out.images).all()


def test_guidance_changes_the_image(tiny_pipeline):
    a = tiny_pipeline("pneumothorax", guidance_scale=1.0, **FAST).images
    b = tiny_pipeline("pneumothorax", guidance_scale=4.0, **FAST).images
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompts=["ok", "  "]), "prompt 1 is empty"),
        (dict(prompts=[]), "no prompts"),
        (dict(prompts="x", sampler="lms"), "unknown sampler"),
        (dict(prompts="x", seeds=[1, 2]), "2 seeds"),
        (dict(prompts="x", num_inference_steps=0), "num_inference_steps"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_pipeline, kwargs, match):
    with pytest.raises(ChexgenError, match=match):
        tiny_pipeline(progress=False, **kwargs)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ChexgenError, match="does not exist"):
        ChexGenPipeline.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChexgenError, match="chexgen_config.json"):
        ChexGenPipeline.from_pretrained(tmp_path / "empty")


def test_from_preset_tiny_defaults_without_loading_text_encoder():
    pipe = ChexGenPipeline.from_preset("tiny")
    assert pipe.config.resolution == 128 and pipe.latent_shape == (4, 16, 16)
    assert pipe._text_encoder is None  # loaded lazily on first use
    assert pipe.config.guidance_scale == 4.0 and pipe.config.default_sampler == "ddim"
