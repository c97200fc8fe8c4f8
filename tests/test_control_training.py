"""`chexgen train-control` end to end on a tiny base: cache with conditions -> adapter -> control pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from chexgen.cli import main
from chexgen.data.condition_sources import ConditionInput
from chexgen.data.conditions import record_condition
from chexgen.data.imageio import save_png
from chexgen.data.manifest import Box, Record, write_manifest
from chexgen.models.presets import TextEncoderSpec, VAESpec
from chexgen.pipelines import ChexGenPipeline
from chexgen.pipelines.control import ChexGenControlPipeline
from chexgen.training.cache import CacheSpec, prepare_cache

SMALL_VAE = VAESpec(kind="gray", block_out_channels=(8, 8, 16, 16))  # fast decode in tests


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_t5_dir):
    root = tmp_path_factory.mktemp("control_run")
    spec = TextEncoderSpec(kind="t5", name_or_path=str(tiny_t5_dir), max_length=8, embed_dim=32)
    base = ChexGenPipeline.from_preset("tiny", resolution=32, text_encoder_spec=spec, vae_spec=SMALL_VAE,
                                       depth=3, hidden_size=32,
                                       num_heads=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a fresh DiT predicts exactly zero (zero output layer): stand in for a trained base
        for p in base.transformer.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    base.save_pretrained(root / "base")
    rng = np.random.default_rng(0)
    records = []
    for i in range(6):
        img = np.full((40, 40), 0.2, np.float32)
        boxes = []
        if i < 4:  # two records without any condition: trained on a blank condition
            x, y = (int(v) for v in rng.integers(2, 26, size=2))
            img[y : y + 12, x : x + 12] = 0.9
            boxes = [Box("Nodule", x, y, x + 12, y + 12)]
        save_png(root / f"img{i}.png", img)
        records.append(Record(id=f"r{i}", image=f"img{i}.png", width=40, height=40, boxes=boxes,
                              impression="Nodule." if boxes else "No finding."))
    write_manifest(root / "manifest.jsonl", records)
    cache_spec = CacheSpec(resolution=32, vae=base.config.vae.to_dict(), vae_scaling_factor=base.vae.scaling_factor,
                           text_encoder=spec.to_dict(), latent_shape=list(base.latent_shape), embed_dim=32,
                           max_length=8, conditions=["control"])
    prepare_cache(records, root / "cache", base.vae, base.text_encoder, cache_spec, manifest_root=root,
                  conditions={"control": record_condition}, progress=False)
    return root, base


def test_train_control_trains_only_the_adapter_and_exports_a_loadable_folder(prepared):
    root, base = prepared
    run = root / "run"
    code = main(["train-control", str(root / "cache"), "--base-model", str(root / "base"), "--output-dir", str(run),
                 "--max-steps", "3", "--batch-size", "4", "--learning-rate", "1e-2", "--sample-steps", "2",
                 "--no-progress", "--checkpoint-every", "0", "--ema-decay", "0.5", "--control-blocks", "2"])
    assert code == 0
    export = run / "controlnet"
    info = json.loads((export / "control_info.json").read_text())
    assert info["base_model"] == str((root / "base").resolve()) and info["base_checkpoint_sha256"]
    from chexgen.pipelines.control import ControlInfo

    assert set(info) == set(ControlInfo.__dataclass_fields__)  # the one schema (packing writes it too)
    weights = load_file(str(export / "diffusion_pytorch_model.safetensors"))
    assert set(weights) >= {"controlnet.0.before_proj.weight", "controlnet.1.after_proj.weight"}
    assert not any(k.startswith(("transformer.", "backbone.")) for k in weights)  # the base is not copied
    assert torch.count_nonzero(weights["controlnet.1.after_proj.weight"]) > 0  # it learned something
    # The base on disk is untouched; the checkpoint's base weights equal it.
    ckpt = sorted((run / "checkpoints").glob("*"))[-1]
    model_sd = load_file(str(ckpt / "model.safetensors"))
    base_sd = base.transformer.state_dict()
    for k, v in base_sd.items():
        assert torch.equal(model_sd[f"transformer.{k}"], v), k
    assert (run / "samples").is_dir() and any((run / "samples").glob("*.png"))

    pipe = ChexGenControlPipeline.from_pretrained(export, text_encoder=base.text_encoder)
    cond = ConditionInput("x", 40, 40, boxes=[Box("Nodule", 4, 4, 16, 16)])
    out = pipe("Nodule.", [cond], seeds=[0], num_inference_steps=2, progress=False)
    assert out.images.shape == (1, 1, 32, 32) and torch.isfinite(out.images).all()


def test_train_control_errors_are_clear(prepared, capsys):
    root, _ = prepared
    code = main(["train-control", str(root / "cache"), "--output-dir", str(root / "bad")])
    assert code == 2 and "--base-model is required" in capsys.readouterr().err
    code = main(["train-control", str(root / "cache"), "--base-model", str(root / "base"), "--output-dir",
                 str(root / "bad"), "--missing-condition", "drop"])
    assert code == 2 and "missing_condition must be" in capsys.readouterr().err
