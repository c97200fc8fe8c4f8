"""One training loop for every chexgen model (diffusion transformer, gray VAE, ControlNet adapter).

A :class:`TrainingTask` says *what* to train: the trainable module, a loss
function ``loss_fn(model, batch, generator) -> {"loss": ..., other logs}``, the
dataset and its collate function, and optional hooks to draw sample images and
to export the result. :func:`train` is *how*, the same for all of them, read top
to bottom: Accelerate (one CPU, several GPUs or nodes via ``accelerate launch``),
AdamW, gradient clipping, linear warm-up then constant LR, EMA, gradient
accumulation, checkpoints with exact resume, TensorBoard, tqdm, and a step or
wall-clock budget.

Exact resume. All randomness of a step (latent sampling, noise, timesteps,
caption dropout) comes from a generator re-seeded from ``(seed, rank, step,
micro-batch)``; the data order of an epoch is a permutation seeded by ``(seed,
epoch)``; the position inside the epoch is saved. A run stopped at step k and
resumed therefore sees the same batches and the same noise as one that never
stopped, and ends with the same weights (the checkpoint also holds optimizer,
LR schedule, EMA and the global RNG states).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from chexgen.errors import ChexgenError
from chexgen.models.precision import resolve_precision
from chexgen.training.checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from chexgen.training.config import LoopConfig, save_config
from chexgen.training.ema import EMA

__all__ = ["TrainingTask", "TrainResult", "EpochBatchSampler", "train", "step_seed", "make_accelerator",
           "training_precision", "lr_factor", "unwrap"]

log = logging.getLogger(__name__)

_DATA_STREAM = 1 << 30  # the "rank" slot of step_seed used for data order (never a real rank)

LossFn = Callable[[nn.Module, dict[str, Any], torch.Generator], dict[str, torch.Tensor]]


@dataclass
class TrainingTask:
    """What to train. The loop optimises every parameter of ``model`` with ``requires_grad``.

    ``loss_fn`` receives the (possibly DDP-wrapped) model, a batch already on the
    device and a seeded generator to draw all its randomness from; it returns a
    dict with ``"loss"`` (scalar to minimise) and any other scalars to log.
    ``sample_fn(model)`` returns images ``[N, 1, H, W]`` in [0, 1] for the sample
    grid (called with the EMA weights on the main process). ``export_fn(model,
    folder)`` writes the deliverable (called with the EMA weights at the end).
    ``frozen`` modules (VAE, text encoder, a frozen base model) are only moved
    to the device.
    """

    name: str
    model: nn.Module
    loss_fn: LossFn
    dataset: Dataset
    collate_fn: Callable[[list[Any]], dict[str, Any]]
    config: LoopConfig
    sample_fn: Callable[[nn.Module], torch.Tensor] | None = None
    export_fn: Callable[[nn.Module, Path], None] | None = None
    frozen: list[nn.Module] = field(default_factory=list)
    export_dirname: str = "pipeline"
    rejected: int = 0  # records left out of ``dataset`` (listed in the run's rejects.jsonl); the CLI exits 1


@dataclass
class TrainResult:
    step: int
    stopped_by: str  # "max_steps" or "max_minutes"
    final_checkpoint: Path | None
    export_dir: Path | None
    last_logs: dict[str, float]
    steps_per_second: float
    samples_per_second: float

    def summary(self) -> str:
        """The one line the ``train*`` commands print at the end (step, why it stopped, speed, last logs)."""
        logs = ", ".join(f"{k} {v:.4g}" for k, v in self.last_logs.items())
        return (f"trained to step {self.step} (stopped by {self.stopped_by}; {self.steps_per_second:.2f} steps/s, "
                f"{self.samples_per_second:.1f} images/s){'; ' + logs if logs else ''}")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (the model itself when unwrapped).

    For a task's loss function, which receives the model as the accelerator prepared it."""
    return model.module if hasattr(model, "module") else model


def step_seed(seed: int, rank: int, step: int, micro: int = 0) -> int:
    """A well-mixed 63-bit seed for one micro-batch of one process."""
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(2, dtype=np.uint64)[0] >> 1)


class EpochBatchSampler(Sampler[list[int]]):
    """Per-process batches of a seeded per-epoch permutation, resumable mid-epoch.

    Global batch ``g = batch_size * world_size``; rank r takes slots ``[r*b, (r+1)*b)``
    of each global batch. An epoch is ``max(1, n // g)`` global batches (the remainder
    is dropped so all processes take the same number of steps); a dataset smaller than
    one global batch is tiled.
    """

    def __init__(self, n: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0) -> None:
        if n <= 0:
            raise ChexgenError("the training dataset is empty")
        self.n, self.batch_size, self.world_size, self.rank, self.seed = n, batch_size, world_size, rank, seed
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = max(1, n // self.global_batch)
        self.epoch = 0
        self.start_batch = 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step_seed(self.seed, _DATA_STREAM, epoch))
        perm = torch.randperm(self.n, generator=g)
        if self.n < self.global_batch:
            perm = perm.repeat(math.ceil(self.global_batch / self.n))
        return perm

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.permutation(self.epoch)
        for b in range(self.start_batch, self.batches_per_epoch):
            lo = b * self.global_batch + self.rank * self.batch_size
            yield perm[lo : lo + self.batch_size].tolist()

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def training_precision(mixed_precision: str, device: "str | torch.device | None" = None) -> str:
    """Accelerate's ``mixed_precision`` for ours: ``auto`` resolves with :func:`resolve_precision` (bf16 on
    a GPU that supports it and on a CPU with AMX-BF16 / AVX512-BF16, else fp32 = ``"no"``)."""
    if mixed_precision != "auto":
        return "no" if mixed_precision == "fp32" else mixed_precision
    if device is None:
        use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
        device = "cpu" if use_cpu else "cuda"
    dtype = resolve_precision("auto", device)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")


def make_accelerator(config: LoopConfig):
    """An Accelerator whose mixed precision is ``config.mixed_precision`` (see :func:`training_precision`).

    Mixed precision is Accelerate's autocast around the model's forward: the parameters (the master
    weights), gradients, AdamW state and EMA stay fp32, matrix products run in bf16, and the model's
    output is cast back to fp32, so the loss, the noise schedule and every other step of the
    objective are fp32 arithmetic.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    precision = training_precision(config.mixed_precision)
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != precision and PartialState().num_processes == 1:
        # Accelerate fixes the precision once per process; one process running several trainings
        # (tests, benchmarks comparing fp32 with bf16) starts the accelerator state afresh.
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _save_grid(images: torch.Tensor, path: Path) -> torch.Tensor:
    from torchvision.utils import make_grid

    from chexgen.data.imageio import save_png

    grid = make_grid(images.float().clamp(0, 1).cpu(), nrow=int(math.ceil(math.sqrt(images.shape[0]))), padding=2)
    save_png(path, grid[0].numpy(), bits=8)
    return grid


def lr_factor(step: int, warmup: int, decay: int, max_steps: int) -> float:
    """Learning-rate multiplier after ``step`` optimisation steps: linear warm-up over ``warmup`` steps,
    constant, then (warmup-stable-decay) linear decay to 0 over the last ``decay`` steps before ``max_steps``.

    >>> [round(lr_factor(s, 2, 4, 10), 2) for s in (0, 1, 5, 6, 7, 9, 10)]
    [0.5, 1.0, 1.0, 1.0, 0.75, 0.25, 0.0]
    """
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if decay > 0 and step > max_steps - decay:
        factor *= max(0.0, (max_steps - step) / decay)
    return factor


def train(task: TrainingTask, accelerator=None) -> TrainResult:
    """Run (or resume) ``task`` until ``max_steps`` or ``max_minutes``; checkpoint, sample, export."""
    cfg = task.config
    out = Path(cfg.output_dir)
    accelerator = accelerator or make_accelerator(cfg)
    device, rank, world, is_main = (accelerator.device, accelerator.process_index,
                                    accelerator.num_processes, accelerator.is_main_process)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    if device.type == "cpu":
        # Adam's second moments of near-zero gradients (zero-initialised output layers) become
        # denormal floats, which x86 CPUs process ~100x slower; flushing them to zero halves step time.
        torch.set_flush_denormal(True)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)

    # -- model, optimiser, schedule, EMA --------------------------------------------------
    model = task.model
    if cfg.gradient_checkpointing:
        if not hasattr(model, "enable_gradient_checkpointing"):
            raise ChexgenError(f"{task.name}: this model does not support gradient checkpointing")
        model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ChexgenError(f"{task.name}: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    def schedule(step: int) -> float:
        return lr_factor(step, cfg.lr_warmup_steps, cfg.lr_decay_steps, cfg.max_steps)

    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ema = EMA(model, cfg.ema_decay) if is_main else None

    state = TrainerState(world_size=world)
    resume_from = latest_checkpoint(out) if cfg.resume else None
    if resume_from is not None:
        state = load_checkpoint(resume_from, model, ema, optimizer, lr_scheduler, rank=rank)
        if state.world_size != world:
            log.warning("resuming a %d-process run on %d processes: data order continues, RNG differs",
                        state.world_size, world)
            state.world_size = world
        # the schedule is a function of the step and *this* run's config (a resumed run may add a decay
        # or raise --max-steps): the stored learning rate is replaced by the one it gives now
        for group, base in zip(optimizer.param_groups, lr_scheduler.base_lrs):
            group["lr"] = base * schedule(lr_scheduler.last_epoch)
        log.info("resumed from %s (step %d)", resume_from, state.step)

    for m in task.frozen:
        m.to(device)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    if ema is not None:
        ema.to(device)

    # -- data ---------------------------------------------------------------------------
    sampler = EpochBatchSampler(len(task.dataset), cfg.batch_size, world, rank, cfg.seed)
    start_batch = state.samples_in_epoch // sampler.global_batch
    if start_batch >= sampler.batches_per_epoch:  # stopped right at the end of an epoch
        state.epoch, state.samples_in_epoch, start_batch = state.epoch + 1, 0, 0
    sampler.set_position(state.epoch, start_batch)
    loader = DataLoader(
        task.dataset, batch_sampler=sampler, collate_fn=task.collate_fn, num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator(),  # keeps the global RNG untouched by iterator creation
    )

    def batches() -> Iterator[dict[str, Any]]:
        while True:
            for batch in loader:
                state.samples_in_epoch += sampler.global_batch
                yield batch
            state.epoch, state.samples_in_epoch = state.epoch + 1, 0
            sampler.set_position(state.epoch, 0)

    data = batches()

    # -- bookkeeping --------------------------------------------------------------------
    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out / "logs"))
    generator = torch.Generator(device=device)
    accum = cfg.gradient_accumulation_steps
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    session_start, session_start_step = time.perf_counter(), state.step
    elapsed_before = state.elapsed_seconds
    sums: dict[str, torch.Tensor] = {}
    count = 0
    last_logs: dict[str, float] = {}
    stopped_by = "max_steps"
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc=f"train {task.name}", unit="step",
               disable=not (is_main and cfg.progress), dynamic_ncols=True)

    def checkpoint() -> Path:
        state.elapsed_seconds = elapsed_before + time.perf_counter() - session_start
        path = save_checkpoint(out, state, unwrapped, ema, optimizer, lr_scheduler, cfg, rank=rank,
                               is_main=is_main, wait_for_everyone=accelerator.wait_for_everyone)
        if is_main:
            prune_checkpoints(out, cfg.keep_checkpoints)
        return path

    def sample_grid() -> None:
        if is_main and task.sample_fn is not None:
            unwrapped.eval()
            try:
                with ema.applied(unwrapped), torch.no_grad():
                    images = task.sample_fn(unwrapped)
                grid = _save_grid(images, out / "samples" / f"step-{state.step:07d}.png")
                writer.add_image("samples", grid[:1], state.step)
            except (ChexgenError, RuntimeError, OSError, ValueError) as err:
                # a preview must not end a long run (e.g. the text encoder is not available here)
                log.warning("%s: sample grid at step %d failed: %s", task.name, state.step, err)
            finally:
                unwrapped.train()
        accelerator.wait_for_everyone()

    final_checkpoint = None
    if state.step >= cfg.max_steps:
        log.info("%s: already at step %d >= max_steps %d", task.name, state.step, cfg.max_steps)

    # -- the loop -----------------------------------------------------------------------
    while state.step < cfg.max_steps:
        for micro in range(accum):
            batch = _to_device(next(data), device)
            generator.manual_seed(step_seed(cfg.seed, rank, state.step, micro))
            sync = micro == accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                logs = task.loss_fn(model, batch, generator)
                accelerator.backward(logs["loss"] / accum)
            for k, v in logs.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
            count += 1
        if cfg.max_grad_norm and cfg.max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            sums["grad_norm"] = sums.get("grad_norm", 0) + grad_norm.detach().float() * accum
        step_lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (logged, not the next one's)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        if ema is not None:
            ema.update(unwrapped)
        bar.update(1)

        if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
            means = {k: v / count for k, v in sums.items()}
            if world > 1:  # one collective per log interval, not per step
                means = {k: accelerator.reduce(v.to(device), reduction="mean") for k, v in means.items()}
            last_logs = {k: float(v) for k, v in means.items()}
            last_logs["lr"] = step_lr
            if writer is not None:
                for k, v in last_logs.items():
                    writer.add_scalar(f"train/{k}", v, state.step)
            bar.set_postfix(loss=f"{last_logs['loss']:.4f}", refresh=False)
            sums, count = {}, 0

        if budget_s is not None and (world == 1 or state.step % cfg.log_every == 0):
            # all processes must stop at the same step: with several, agree once per log interval
            over = torch.tensor(float(time.perf_counter() - session_start >= budget_s), device=device)
            if world > 1:
                over = accelerator.reduce(over, reduction="sum")
            if float(over) > 0 and state.step < cfg.max_steps:
                stopped_by = "max_minutes"
                log.info("%s: wall-clock budget of %.1f min reached at step %d", task.name, cfg.max_minutes, state.step)
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < cfg.max_steps:
            checkpoint()
        if cfg.sample_every and state.step % cfg.sample_every == 0 and state.step < cfg.max_steps:
            sample_grid()
        if stopped_by == "max_minutes":
            break
    bar.close()

    # -- the end: checkpoint (so the run can be continued), samples, export --------------
    session_s = time.perf_counter() - session_start
    steps_done = state.step - session_start_step
    if steps_done > 0:
        final_checkpoint = checkpoint()
        sample_grid()
    export_dir = None
    if task.export_fn is not None and cfg_export_enabled(cfg):
        export_dir = out / task.export_dirname
        if is_main:
            unwrapped.eval()
            with ema.applied(unwrapped):
                task.export_fn(unwrapped, export_dir)
            unwrapped.train()
            log.info("%s: exported %s (EMA weights, step %d)", task.name, export_dir, state.step)
        accelerator.wait_for_everyone()
    if writer is not None:
        writer.close()
    sps = steps_done / session_s if session_s > 0 and steps_done else 0.0
    return TrainResult(step=state.step, stopped_by=stopped_by, final_checkpoint=final_checkpoint,
                       export_dir=export_dir, last_logs=last_logs, steps_per_second=sps,
                       samples_per_second=sps * sampler.global_batch * accum)


def cfg_export_enabled(cfg: LoopConfig) -> bool:
    return bool(getattr(cfg, "export", True))
