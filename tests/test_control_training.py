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
    assert info["control_guidance"] == "joint"  # train-control's default, stored for generate and demo
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
    code = main(["train-control", str(root / "cache"), "--base-model", str(root / "base"), "--output-dir",
                 str(root / "bad"), "--control-guidance", "both"])
    assert code == 2 and "control guidance must be one of joint, shared" in capsys.readouterr().err


def test_region_weight_marks_the_cells_a_condition_changes():
    from chexgen.training.control_task import RegionWeight

    g = torch.Generator().manual_seed(0)
    empty = torch.randn(4, 8, 8, generator=g)  # a blank condition's latent is not constant (borders differ)
    cond = empty.expand(3, 4, 8, 8).clone()
    cond[0, 2, 1:3, 5:7] += 2.0  # a small finding: 4 cells, one channel
    cond[1] += 0.3  # below the threshold everywhere
    cond[2, :, 4:, :] -= 1.0  # present = False below: must weigh 1 whatever it holds
    batch = {"cond.control": cond, "cond_present.control": torch.tensor([True, True, False])}
    rw = RegionWeight("control", empty, weight=4.0, threshold=0.6)
    region = rw.region(batch)
    expected = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    expected[0, 0, 1:3, 5:7] = True
    assert torch.equal(region, expected)
    w = rw(batch)
    assert w.shape == (3, 1, 8, 8) and float(w.max()) == 5.0 and int((w == 5.0).sum()) == 4
    assert torch.equal(w[1:], torch.ones(2, 1, 8, 8))


def test_region_loss_weight_reaches_the_objective_and_is_checked(prepared, capsys):
    root, base = prepared
    common = ["--base-model", str(root / "base"), "--max-steps", "2", "--batch-size", "4", "--learning-rate", "1e-2",
              "--no-progress", "--checkpoint-every", "0", "--ema-decay", "0.5", "--control-blocks", "2",
              "--no-export"]
    from chexgen.training.cache import CachedFeatures
    from chexgen.training.control_task import RegionWeight, blank_condition_latent

    # a threshold that marks part of each condition: the median change of the conditioned rows' latent cells
    rows = CachedFeatures(root / "cache")
    batch = {k: torch.stack([rows[i][k] for i in range(len(rows))]) for k in ("cond.control", "cond_present.control")}
    empty = blank_condition_latent(base.vae, 32)
    present = batch["cond_present.control"].bool()
    diff = (batch["cond.control"][present].float() - empty).abs().amax(dim=1)
    threshold = float(diff.median())
    region = RegionWeight("control", empty, 1.0, threshold).region(batch)
    assert 0 < int(region.sum()) < region[present].numel()  # some cells of the conditioned rows, not all
    weights = {}
    for name, extra in {"plain": [], "weighted": ["--region-loss-weight", "20", "--region-threshold",
                                                   str(threshold)]}.items():
        run = root / f"region-{name}"
        assert main(["train-control", str(root / "cache"), "--output-dir", str(run), *common, *extra]) == 0
        ckpt = sorted((run / "checkpoints").glob("*"))[-1]
        weights[name] = {k: v for k, v in load_file(str(ckpt / "model.safetensors")).items()
                         if not k.startswith("transformer.")}  # the adapter's weights
    assert weights["plain"] and set(weights["plain"]) == set(weights["weighted"])
    assert any(not torch.equal(v, weights["weighted"][k]) for k, v in weights["plain"].items())  # other objective
    code = main(["train-control", str(root / "cache"), "--output-dir", str(root / "region-bad"), *common,
                 "--region-loss-weight", "-1"])
    assert code == 2 and "region_loss_weight must be" in capsys.readouterr().err


def test_base_anchor_pulls_unmarked_cells_toward_the_base(prepared, capsys):
    from chexgen.models.controlnet import ChexGenControlNet, ControlledDiT
    from chexgen.training.control_task import BaseAnchor, RegionWeight

    root, base = prepared
    dit = base.transformer
    g = torch.Generator().manual_seed(1)
    empty = torch.randn(4, 4, 4, generator=g)
    cond = empty.expand(2, 4, 4, 4).clone()
    cond[0, 1, 0, 3] += 3.0  # one marked cell in row 0 (grown to its 3x3 neighbourhood: 4 cells at a corner)
    batch = {"cond.control": cond, "cond_present.control": torch.tensor([True, True])}
    cells = RegionWeight("control", empty, 0.0, 0.6)
    x, t = torch.randn(2, 4, 4, 4, generator=g), torch.tensor([100, 700])
    text, mask = torch.randn(2, 8, 32, generator=g), torch.ones(2, 8, dtype=torch.long)
    anchor = BaseAnchor(cells, weight=2.0)
    fresh = ControlledDiT(dit, ChexGenControlNet.from_transformer(dit))  # zero projections: exactly the base
    with torch.no_grad():
        pred = fresh(x, t, text, mask, control_latents=cond)
        assert float(anchor(fresh, batch, pred, x, t, text, mask)["anchor"]) == 0.0
        shifted = pred.clone()
        shifted[:, :4] += 1.0  # one everywhere: only the unmarked cells count, the variance channels do not
        unmarked = 2 * 4 * 16 - 4 * 4  # 2 rows x 4 channels x 16 cells, less row 0's 4 marked cells x 4 channels
        got = float(anchor(fresh, batch, shifted, x, t, text, mask)["anchor"])
    assert got == pytest.approx(2.0 * unmarked / shifted[:, :4].numel())
    # end to end: the term is logged, and a negative weight is refused
    run = root / "anchor"
    code = main(["train-control", str(root / "cache"), "--base-model", str(root / "base"), "--output-dir", str(run),
                 "--max-steps", "2", "--batch-size", "4", "--no-progress", "--checkpoint-every", "0", "--log-every",
                 "1", "--control-blocks", "2", "--no-export", "--base-anchor-weight", "1"])
    assert code == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert "train/anchor" in EventAccumulator(str(run / "logs")).Reload().Tags()["scalars"]
    code = main(["train-control", str(root / "cache"), "--base-model", str(root / "base"), "--output-dir",
                 str(root / "anchor-bad"), "--base-anchor-weight", "-1"])
    assert code == 2 and "base_anchor_weight must be" in capsys.readouterr().err
