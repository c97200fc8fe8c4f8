"""Checkpoints with exact resume.

A checkpoint is one folder ``<output_dir>/checkpoints/step-NNNNNNN/``::

    model.safetensors      trainable module (unwrapped from DDP), float32
    ema.safetensors        EMA shadow weights + update count
    optimizer.pt           AdamW moments and step counts (tensors and numbers only)
    scheduler.json         LR schedule position (plain data)
    rng-rankKK.safetensors torch (CPU and CUDA) RNG states as tensors; python / numpy states as JSON metadata
    trainer_state.json     step, epoch, samples consumed in that epoch, wall time, world size
    config.yaml            the resolved run config

It is written into a hidden ``.step-NNNNNNN.partial`` folder and renamed when
every process has written its part, so a crash mid-write never leaves a folder
that looks complete. :func:`latest_checkpoint` only sees finished ones.

Nothing in a checkpoint can run code when it is loaded (run folders are shared on
clusters, and resuming must not execute what someone else put there): weights and
RNG states are safetensors, the schedule is JSON, and the optimizer state is read
with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
containers. Checkpoints written before this format (``scheduler.pt``,
``rng-rankKK.pt``) still load the same way, with numpy's RNG state array as the
only addition to the allow-list; any other object inside them is refused with a
message instead of being unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
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
    "save_rng_state",
    "load_rng_state",
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


def _numpy_allow_list() -> list[Any]:
    """What an old ``rng-rankKK.pt`` needs beyond tensors: numpy's (ndarray of uint32) MT19937 state."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _safe_torch_load(path: Path, allow: list[Any] | None = None) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain data only; anything else is a ChexgenError."""
    try:
        with torch.serialization.safe_globals(allow or []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line),
                      str(e).splitlines()[0] if str(e) else "")
        raise ChexgenError(f"{path}: refusing to load: it holds objects other than tensors and plain data, and "
                           f"unpickling them could run code ({detail})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ChexgenError(f"{path}: cannot read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                           ) from None


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_rng_state(state: dict[str, Any], path: Path) -> None:
    """Write a :func:`capture_rng_state` dict as safetensors (torch / CUDA tensors, python / numpy as JSON)."""
    tensors = {"torch": state["torch"].contiguous()}
    for i, t in enumerate(state.get("cuda", [])):
        tensors[f"cuda.{i}"] = t.cpu().contiguous()
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    meta = {
        "python": json.dumps([version, list(internal), gauss]),
        "numpy": json.dumps([name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]),
        "cuda_devices": str(len(state.get("cuda", []))),
    }
    save_file(tensors, str(path), metadata=meta)


def load_rng_state(path: Path) -> dict[str, Any]:
    """Read :func:`save_rng_state`'s file back into the :func:`capture_rng_state` layout."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        try:
            version, internal, gauss = json.loads(meta["python"])
            name, keys, pos, has_gauss, cached = json.loads(meta["numpy"])
            n_cuda = int(meta.get("cuda_devices", "0"))
        except (KeyError, ValueError, TypeError) as e:
            raise ChexgenError(f"{path}: not a chexgen RNG state ({e})") from None
        state: dict[str, Any] = {
            "python": (int(version), tuple(int(v) for v in internal), gauss),
            "numpy": (str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)),
            "torch": f.get_tensor("torch"),
        }
        if n_cuda:
            state["cuda"] = [f.get_tensor(f"cuda.{i}") for i in range(n_cuda)]
    return state


def _check_rng_state(state: Any, path: Path) -> dict[str, Any]:
    ok = (isinstance(state, dict) and isinstance(state.get("python"), tuple)
          and isinstance(state.get("numpy"), tuple) and isinstance(state.get("torch"), torch.Tensor))
    if not ok:
        raise ChexgenError(f"{path}: not a chexgen RNG state (expected python / numpy / torch states)")
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
    save_rng_state(capture_rng_state(), partial / f"rng-rank{rank:02d}.safetensors")
    if is_main:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(partial / "model.safetensors"))
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()},
                      str(partial / "ema.safetensors"))
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        atomic_write_json(partial / "scheduler.json", lr_scheduler.state_dict())
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
    # Read every file before changing anything: a refused file leaves the objects untouched.
    opt_state = _safe_torch_load(path / "optimizer.pt") if optimizer is not None else None
    sched_state = None
    if lr_scheduler is not None:
        if (path / "scheduler.json").is_file():
            sched_state = json.loads((path / "scheduler.json").read_text(encoding="utf-8"))
        elif (path / "scheduler.pt").is_file():  # written before scheduler.json existed
            sched_state = _safe_torch_load(path / "scheduler.pt")
        else:
            raise ChexgenError(f"{path}: no scheduler.json (incomplete checkpoint)")
    rng_state = None
    if restore_rng:
        new, old = path / f"rng-rank{rank:02d}.safetensors", path / f"rng-rank{rank:02d}.pt"
        if new.is_file():
            rng_state = load_rng_state(new)
        elif old.is_file():
            rng_state = _check_rng_state(_safe_torch_load(old, _numpy_allow_list()), old)
        else:
            log.warning("%s: no RNG state for rank %d (world size changed?); continuing with fresh RNG", path, rank)
    missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    if missing or unexpected:
        raise ChexgenError(
            f"{path}: model weights do not match the configured model "
            f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...); was the config changed?"
        )
    if ema is not None and (path / "ema.safetensors").is_file():
        ema.load_state_dict(load_file(str(path / "ema.safetensors")))
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    if sched_state is not None:
        lr_scheduler.load_state_dict(sched_state)
    if rng_state is not None:
        restore_rng_state(rng_state)
    return state


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` finished checkpoints (keep <= 0: keep all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
