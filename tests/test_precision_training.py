"""bf16 mixed-precision training on the CPU: what auto picks, fp32 master state, exact resume like fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _train_data import one_torch_thread, prepare_tiny_cache  # noqa: F401 (autouse fixture)
from safetensors.torch import load_file

from chexgen.models.precision import ENV_CPU_BF16
from chexgen.training.config import TrainConfig, resolve_config
from chexgen.training.diffusion_task import build_text_to_image_task
from chexgen.training.trainer import make_accelerator, train, training_precision

RES = 32


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return prepare_tiny_cache(tmp_path_factory.mktemp("bf16"), RES)[2]


def _cfg(out: Path, data: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), output_dir=str(out), transformer_overrides={"depth": 2, "hidden_size": 64,
                "num_heads": 2}, batch_size=4, max_steps=4, log_every=1, sample_prompts=[], export=False,
                progress=False, checkpoint_every=0, lr_warmup_steps=0)
    base.update(kw)
    return resolve_config(TrainConfig, overrides=base)


def test_auto_training_precision_follows_the_cpu_and_the_flag(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.setenv(ENV_CPU_BF16, "1")
    assert training_precision("auto") == "bf16"
    monkeypatch.setenv(ENV_CPU_BF16, "0")
    assert training_precision("auto") == "no"
    assert training_precision("fp32") == "no" and training_precision("bf16") == "bf16"
    # Accelerate fixes the precision once per process; chexgen starts it afresh between trainings
    assert make_accelerator(TrainConfig(mixed_precision="bf16")).mixed_precision == "bf16"
    assert make_accelerator(TrainConfig(mixed_precision="no")).mixed_precision == "no"


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_interrupted_run_resumes_to_identical_weights(cache, tmp_path, precision):
    # 8 records, batch 4: the interruption at step 3 is mid-epoch
    straight = train(build_text_to_image_task(_cfg(tmp_path / "a", cache, max_steps=5, mixed_precision=precision)))
    first = train(build_text_to_image_task(_cfg(tmp_path / "b", cache, max_steps=3, mixed_precision=precision)))
    assert first.step == 3
    resumed = train(build_text_to_image_task(_cfg(tmp_path / "b", cache, max_steps=5, mixed_precision=precision)))
    assert straight.step == resumed.step == 5
    ckpt = straight.final_checkpoint
    for name in ("model", "ema"):
        a = load_file(str(ckpt / f"{name}.safetensors"))
        b = load_file(str(resumed.final_checkpoint / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype in (torch.float32, torch.int64), (name, k, a[k].dtype)  # fp32 master weights, EMA
            assert torch.equal(a[k], b[k]), f"{precision} {name}:{k}"
    moments = torch.load(ckpt / "optimizer.pt", weights_only=True)["state"]
    assert all(s["exp_avg"].dtype == torch.float32 for s in moments.values())  # AdamW state in fp32
    assert straight.last_logs["loss"] > 0 and torch.isfinite(torch.tensor(straight.last_logs["loss"]))


def test_bf16_really_trains_in_bf16_and_stays_close_to_fp32(cache, tmp_path):
    runs = {p: train(build_text_to_image_task(_cfg(tmp_path / p, cache, max_steps=4, mixed_precision=p)))
            for p in ("no", "bf16")}
    a = load_file(str(runs["no"].final_checkpoint / "model.safetensors"))
    b = load_file(str(runs["bf16"].final_checkpoint / "model.safetensors"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert 0 < diff < 1e-2  # different arithmetic, same optimisation
    la, lb = runs["no"].last_logs["loss"], runs["bf16"].last_logs["loss"]
    assert abs(la - lb) < 0.05 * la, (la, lb)
