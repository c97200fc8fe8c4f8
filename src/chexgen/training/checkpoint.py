"""Checkpoints with exact resume.

A checkpoint is one folder ``<output_dir>/checkpoints/step-NNNNNNN/``::

    model.safetensors      trainable module (unwrapped from DDP), float32
    ema.safetensors        EMA shadow weights + update count
    optimizer.pt           AdamW moments and step counts
    scheduler.pt           LR schedule position
    rng-rankKK.pt          python / numpy / torch (CPU and CUDA) RNG states of every process
    trainer_state.json     step, epoch, samples consumed in that epoch, wall time, world size
    config.yaml            the resolved run config

It is written into a hidden ``.step-NNNNNNN.partial`` folder and renamed when
every process has written its part, so a crash mid-write never leaves a folder
that looks complete. :func:`latest_checkpoint` only sees finished ones.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from chexgen.errors import ChexgenError
from chexgen.training.config import save_config
from chexgen.training.ema import EMA
from chexgen.utils import atomic_write_json

__all__ = [
    "TrainerState",
    "checkpoint_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "save_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "capture_rng_state",
    "restore_rng_state",
]

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^step-(\d{7,})$")


@dataclass
class TrainerState:
    """Where the loop is; enough to continue the data stream exactly."""

    step: int = 0  # optimisation steps done
    epoch: int = 0
    samples_in_epoch: int = 0  # global samples of this epoch's permutation already consumed
    elapsed_seconds: float = 0.0  # training wall time over all sessions
    world_size: int = 1


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:07d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _barrier(wait: Callable[[], None] | None) -> None:
    if wait is not None:
        wait()


def save_checkpoint(
    output_dir: str | os.PathLike,
    state: TrainerState,
    model: nn.Module,
    ema: EMA | None,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    config: Any,
    rank: int = 0,
    is_main: bool = True,
    wait_for_everyone: Callable[[], None] | None = None,
) -> Path:
    """Write a checkpoint of ``state.step`` (call on every process; ``model`` unwrapped)."""
    final = checkpoint_dir(output_dir, state.step)
    partial = final.parent / f".{final.name}.partial"
    if is_main:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    _barrier(wait_for_everyone)
    torch.save(capture_rng_state(), partial / f"rng-rank{rank:02d}.pt")
    if is_main:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(partial / "model.safetensors"))
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()},
                      str(partial / "ema.safetensors"))
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), partial / "scheduler.pt")
        atomic_write_json(partial / "trainer_state.json", asdict(state))
        save_config(config, partial / "config.yaml")
    _barrier(wait_for_everyone)
    if is_main:
        if final.exists():  # a re-run of the same step replaces the old copy
            shutil.rmtree(final)
        os.replace(partial, final)
    _barrier(wait_for_everyone)
    return final


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    ema: EMA | None,
    optimizer: torch.optim.Optimizer | None,
    lr_scheduler: Any | None,
    rank: int = 0,
    restore_rng: bool = True,
) -> TrainerState:
    """Restore everything :func:`save_checkpoint` wrote into the given (unwrapped) objects."""
    path = Path(path)
    if not (path / "trainer_state.json").is_file():
        raise ChexgenError(f"{path}: not a chexgen training checkpoint (no trainer_state.json)")
    state = TrainerState(**json.loads((path / "trainer_state.json").read_text()))
    missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    if missing or unexpected:
        raise ChexgenError(
            f"{path}: model weights do not match the configured model "
            f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...); was the config changed?"
        )
    if ema is not None and (path / "ema.safetensors").is_file():
        ema.load_state_dict(load_file(str(path / "ema.safetensors")))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    if lr_scheduler is not None:
        lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False))
    rng_file = path / f"rng-rank{rank:02d}.pt"
    if restore_rng:
        if rng_file.is_file():
            restore_rng_state(torch.load(rng_file, weights_only=False))
        else:
            log.warning("%s: no RNG state for rank %d (world size changed?); continuing with fresh RNG", path, rank)
    return state


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` finished checkpoints (keep <= 0: keep all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
