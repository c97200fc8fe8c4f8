"""chexgen train: config layering, data order, overfitting, exact resume, stage-2 loading, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _train_data import one_torch_thread, prepare_tiny_cache  # noqa: F401 (autouse fixture)
from safetensors.torch import load_file

from chexgen.cli import main
from chexgen.errors import ChexgenError
from chexgen.training.config import TrainConfig, load_saved_config, resolve_config, save_config
from chexgen.training.diffusion_task import DiffusionObjective, build_text_to_image_task
from chexgen.training.trainer import EpochBatchSampler, train

RES = 32
TINY = {"depth": 2, "hidden_size": 64, "num_heads": 2}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_tiny_cache(tmp_path_factory.mktemp("t2i"), RES)


def _cfg(out: Path, data: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), output_dir=str(out), transformer_overrides=TINY, batch_size=4, max_steps=4,
                log_every=1, sample_prompts=[], export=False, progress=False, checkpoint_every=0,
                lr_warmup_steps=0)
    base.update(kw)
    return resolve_config(TrainConfig, overrides=base)


def _logged(run: Path, tag: str) -> dict[int, float]:
    """step -> value of one TensorBoard scalar the run logged (in step order)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return {e.step: e.value for e in EventAccumulator(str(run / "logs")).Reload().Scalars(tag)}


# ----------------------------------------------------------------------------- config
def test_config_layers_defaults_preset_file_cli(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("preset: tiny\nbatch_size: 7\nlearning_rate: 3e-4\nsample_prompts: [a, b]\n")
    cfg = resolve_config(TrainConfig, file=f, overrides={"learning_rate": "2e-4", "max_steps": "12", "resume": "false"})
    assert cfg.batch_size == 7  # file beats the preset's 32
    assert cfg.learning_rate == 2e-4 and cfg.max_steps == 12 and cfg.resume is False  # CLI wins, coerced
    assert cfg.lr_warmup_steps == 50  # from the tiny preset's training defaults
    assert cfg.weight_decay == 0.01 and cfg.max_grad_norm == 1.0 and cfg.caption_dropout == 0.1  # paper defaults
    toml = tmp_path / "run.toml"
    toml.write_text('batch_size = 5\ntransformer_overrides = { depth = 3 }\n')
    assert resolve_config(TrainConfig, file=toml).transformer_overrides == {"depth": 3}
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_saved_config(tmp_path / "saved.yaml") == cfg
    with pytest.raises(ChexgenError, match="unknown config key 'learning_rat'"):
        resolve_config(TrainConfig, overrides={"learning_rat": 1})
    with pytest.raises(ChexgenError, match="expected an integer"):
        resolve_config(TrainConfig, overrides={"batch_size": 2.5})


def test_every_config_key_is_a_documented_option(capsys):
    from dataclasses import fields

    from chexgen.cli import build_parser
    from chexgen.training.config import HELP

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text and f.name in HELP and " ".join(HELP[f.name].split())[:40] in text, f.name
    args = build_parser("train").parse_args(["train", "c", "--batch-size", "3", "--no-resume", "--set",
                                             "ema_decay=0.5", "--transformer-overrides", "{depth: 1}"])
    from chexgen.training.config import config_from_args

    cfg = config_from_args(args, TrainConfig, extra={"data": args.data})
    assert (cfg.data, cfg.batch_size, cfg.resume, cfg.ema_decay, cfg.transformer_overrides) == ("c", 3, False, 0.5,
                                                                                               {"depth": 1})


def test_epoch_sampler_splits_ranks_and_resumes():
    ranks = [EpochBatchSampler(10, 2, world_size=2, rank=r, seed=3) for r in range(2)]
    epoch = [list(s) for s in ranks]
    assert len(epoch[0]) == len(epoch[1]) == 2  # 10 // (2*2) global batches; remainder dropped
    flat = [i for r in epoch for b in r for i in b]
    assert len(flat) == len(set(flat)) == 8
    ranks[0].set_position(0, 1)
    assert list(ranks[0]) == epoch[0][1:]
    ranks[0].set_position(1, 0)
    assert list(ranks[0]) != epoch[0]  # a new permutation each epoch


# ----------------------------------------------------------------------------- training
def _fixed_loss(model, batch) -> float:
    objective = DiffusionObjective(caption_dropout=0.0, latent_sampling="mean")
    model.eval()
    with torch.no_grad():
        return sum(float(objective(model, batch, torch.Generator().manual_seed(s))["mse"]) for s in range(8)) / 8


def test_loss_falls_when_overfitting_8_images(prepared, tmp_path):
    _, _, cache = prepared
    cfg = _cfg(tmp_path / "run", cache, batch_size=8, max_steps=30, learning_rate=2e-3, caption_dropout=0.0,
               latent_sampling="mean", log_every=10)
    task = build_text_to_image_task(cfg)
    batch = task.collate_fn([task.dataset[i] for i in range(len(task.dataset))])
    before = _fixed_loss(task.model, batch)
    result = train(task)
    after = _fixed_loss(task.model, batch)
    assert result.step == 30 and result.stopped_by == "max_steps"
    assert before > 0.8  # a fresh DiT predicts zero noise: MSE ~ 1
    assert after < 0.5 * before, (before, after)
    # TensorBoard got the loss curve
    assert list(_logged(tmp_path / "run", "train/loss")) == [10, 20, 30]


def test_interrupted_run_resumes_to_identical_weights_and_exports(prepared, tmp_path):
    _, _, cache = prepared
    # 8 records, batch 4: the interruption at step 3 is mid-epoch
    straight = train(build_text_to_image_task(_cfg(tmp_path / "a", cache, max_steps=5)))
    first = train(build_text_to_image_task(_cfg(tmp_path / "b", cache, max_steps=3)))
    assert first.step == 3
    resumed = train(build_text_to_image_task(_cfg(tmp_path / "b", cache, max_steps=5, export=True)))
    assert straight.step == resumed.step == 5
    for name in ("model", "ema"):
        a = load_file(str(straight.final_checkpoint / f"{name}.safetensors"))
        b = load_file(str(resumed.final_checkpoint / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{name}:{k}")
    state = json.loads((resumed.final_checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 5 and (resumed.final_checkpoint / "config.yaml").is_file()

    # the exported folder is a pipeline that loads and generates, with the EMA weights
    from chexgen.pipelines import ChexGenPipeline

    pipe = ChexGenPipeline.from_pretrained(resumed.export_dir)
    ema = load_file(str(resumed.final_checkpoint / "ema.safetensors"))
    torch.testing.assert_close(pipe.transformer.null_caption.data, ema["shadow.null_caption"])
    out = pipe(["Large right pleural effusion."], num_inference_steps=2, progress=False)
    assert out.images.shape == (1, 1, RES, RES)
    # latent clipping defaults to the cache's largest |latent| rounded up to 0.5
    from chexgen.training.cache import CachedFeatures

    ds = CachedFeatures(cache)
    biggest = max(float(ds[i]["latent_mean"].float().abs().max()) for i in range(len(ds)))
    assert biggest <= pipe.config.clip_latents < biggest + 0.5 and pipe.config.clip_latents % 0.5 == 0
    assert CachedFeatures(cache, preload=False).latent_abs_max() == ds.latent_abs_max() == biggest


def test_wall_clock_budget_stops_and_checkpoints(prepared, tmp_path):
    _, _, cache = prepared
    result = train(build_text_to_image_task(_cfg(tmp_path / "run", cache, max_steps=10_000, max_minutes=0.001)))
    assert result.stopped_by == "max_minutes" and 1 <= result.step < 10_000
    assert result.final_checkpoint is not None and result.final_checkpoint.is_dir()


def test_stage2_at_another_resolution_on_the_fly(prepared, tmp_path):
    manifest, vae_dir, cache = prepared
    stage1 = train(build_text_to_image_task(_cfg(tmp_path / "s1", cache, max_steps=1)))
    s1 = load_file(str(stage1.final_checkpoint / "model.safetensors"))
    common = dict(init_from=str(stage1.final_checkpoint), encode_on_the_fly=True, vae=str(vae_dir), resolution=64)

    task = build_text_to_image_task(_cfg(tmp_path / "s2", manifest, **common))
    assert task.model.config.sample_size == 8
    own = task.model.state_dict()
    for k, v in s1.items():  # every trained tensor carried over, null caption included
        assert torch.equal(own[k], v), k
    from chexgen.models.dit import ChexGenDiT

    fresh = ChexGenDiT.from_preset("tiny", sample_size=8, **TINY)
    pe = task.model.backbone.pos_embed.pos_embed
    assert pe.shape[1] == 16 and torch.equal(pe, fresh.backbone.pos_embed.pos_embed)  # recomputed for 4x4 patches

    task = build_text_to_image_task(_cfg(tmp_path / "s2b", manifest, reinit_null_caption=True, **common))
    assert not torch.equal(task.model.null_caption.data, s1["null_caption"])
    result = train(task)  # and it trains at 64 px, encoding batches on the fly
    assert result.step == 4 and torch.isfinite(torch.tensor(result.last_logs["loss"]))


_DDP_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
torch.set_num_threads(1)
from chexgen.training.config import TrainConfig, resolve_config
from chexgen.training.diffusion_task import build_text_to_image_task
from chexgen.training.trainer import make_accelerator, train
cfg = resolve_config(TrainConfig, overrides=dict(data=sys.argv[1], output_dir=sys.argv[2], batch_size=2, max_steps=3,
    transformer_overrides={"depth": 2, "hidden_size": 64, "num_heads": 2}, sample_prompts=[], export=False,
    progress=False, checkpoint_every=2, lr_warmup_steps=0, log_every=1))
acc = make_accelerator(cfg)
task = build_text_to_image_task(cfg)
result = train(task, acc)
weights = {k: v.detach().contiguous() for k, v in task.model.state_dict().items()}
save_file(weights, f"{sys.argv[2]}/rank{acc.process_index}.safetensors")
import json
with open(f"{sys.argv[2]}/rank{acc.process_index}.json", "w") as f:
    json.dump({"world": acc.num_processes, "step": result.step}, f)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_cpu_run_keeps_replicas_identical(prepared, tmp_path):
    import os
    import subprocess
    import sys

    _, _, cache = prepared
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    out = tmp_path / "run"
    # `accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.15 (multi-CPU needs
    # mpirun there); torchrun starts two, and Accelerate picks up its environment (gloo, MULTI_CPU).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(script), str(cache), str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        assert json.loads((out / f"rank{r}.json").read_text()) == {"world": 2, "step": 3}
    r0, r1 = (load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    saved = load_file(str(out / "checkpoints" / "step-0000003" / "model.safetensors"))
    assert all(torch.equal(saved[k], r0[k]) for k in saved)
    assert (out / "checkpoints" / "step-0000003" / "rng-rank01.safetensors").is_file()
    step2 = load_file(str(out / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert not torch.equal(step2["backbone.proj_out.weight"], saved["backbone.proj_out.weight"])  # it did train


class _Proof:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_from_a_tampered_run_folder_runs_no_code(prepared, tmp_path, capsys):
    """A scheduler.pt holding a pickle payload (as chexgen < this format wrote it) is refused on resume."""
    _, _, cache = prepared
    run = tmp_path / "shared_run"
    args = ["train", str(cache), "--output-dir", str(run), "--transformer-overrides", str(TINY), "--batch-size", "4",
            "--sample-prompts", "--no-export", "--no-progress", "--checkpoint-every", "0", "--lr-warmup-steps", "0"]
    assert main(args + ["--max-steps", "2"]) == 0
    ckpt = run / "checkpoints" / "step-0000002"
    (ckpt / "scheduler.json").unlink()
    proof = tmp_path / "proof"
    torch.save({"last_epoch": _Proof(str(proof))}, ckpt / "scheduler.pt")
    assert main(args + ["--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "scheduler.pt" in err and len(err.strip().splitlines()) == 1
    assert not proof.exists()


def test_lr_decay_anneals_a_resumed_constant_run(prepared, tmp_path):
    from chexgen.training.trainer import lr_factor

    _, _, cache = prepared
    # a constant-LR run of 3 steps, resumed to 7 steps with the last 4 decaying linearly to 0
    train(build_text_to_image_task(_cfg(tmp_path / "run", cache, max_steps=3, learning_rate=1e-3)))
    train(build_text_to_image_task(_cfg(tmp_path / "run", cache, max_steps=7, learning_rate=1e-3,
                                        lr_decay_steps=4)))
    lrs = _logged(tmp_path / "run", "train/lr")
    assert sorted(lrs) == list(range(1, 8))
    expected = {1: 1e-3, 2: 1e-3, 3: 1e-3, 4: 1e-3, 5: 7.5e-4, 6: 5e-4, 7: 2.5e-4}
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-6), (step, lrs)
        assert lr_factor(step - 1, 0, 4, 7) * 1e-3 == pytest.approx(lr)
    # warm-up and decay compose; a decay longer than the run is refused
    assert lr_factor(0, 4, 2, 10) == 0.25 and lr_factor(9, 4, 2, 10) == 0.5
    with pytest.raises(ChexgenError, match="lr_decay_steps"):
        _cfg(tmp_path / "bad", cache, max_steps=3, lr_decay_steps=5)
