"""The ControlNet task for the generic trainer (``chexgen train-control``).

Same loop, objective and bookkeeping as text-to-image training
(:class:`~chexgen.training.diffusion_task.DiffusionObjective` via
:func:`~chexgen.training.trainer.train`); what differs:

- the model is a :class:`~chexgen.models.controlnet.ControlledDiT`: the base
  transformer of a trained pipeline, frozen, plus a fresh adapter (copies of
  its first blocks, zero-initialised projections) or one to continue from;
  only the adapter's parameters require gradients, so the optimiser, EMA and
  gradient clipping see only them;
- each batch brings the condition latent cached by ``chexgen prepare
  --conditions`` (``cond.control``). Records without masks / boxes either get
  the latent of a blank condition image ("this image has nothing marked", the
  default, so the adapter also learns negatives) or are left out
  (``missing_condition: skip``);
- captions are still dropped to the null caption 10 % of the time (the adapter
  also learns to act without a prompt);
- the export is an adapter folder (config + safetensors from the EMA weights)
  with ``control_info.json`` naming the base pipeline and its weights' SHA-256, and
  the control guidance sampling uses with it (``joint`` by default, see
  :mod:`chexgen.pipelines.control`).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import Dataset

from chexgen.errors import ChexgenError
from chexgen.training import config as config_module
from chexgen.training.config import TrainConfig
from chexgen.training.trainer import TrainingTask, unwrap

__all__ = ["BaseAnchor", "ControlTrainConfig", "RegionWeight", "build_control_task", "conditioned_indices"]

log = logging.getLogger(__name__)


@dataclass
class ControlTrainConfig(TrainConfig):
    """``chexgen train-control``: a ControlNet adapter on a frozen base pipeline (cached features)."""

    base_model: str | None = None  # pipeline folder of the frozen base (e.g. runs/x/pipeline)
    control_blocks: int | None = None  # None = 13 for depth-28 models, half the depth for smaller ones
    init_control: str | None = None  # adapter folder to continue from (e.g. a converted official adapter)
    condition_name: str = "control"  # which cached condition (`chexgen prepare --conditions` writes 'control')
    missing_condition: str = "empty"  # records without masks/boxes: empty (blank condition) | skip
    conditioning_scale: float = 1.0  # for sample grids
    control_guidance: str = "joint"  # stored with the adapter: how sampling guides the condition (joint | shared)
    region_loss_weight: float = 0.0  # extra epsilon-MSE weight on latent cells the condition marks (0 = off)
    region_threshold: float = 0.6  # a cell is marked where its condition latent differs from the blank's by more
    base_anchor_weight: float = 0.0  # outside the marked cells, pull the epsilon toward the frozen base's (0 = off)
    learning_rate: float = 1e-4


for _key, _text in {
    "base_model": "pipeline folder of the frozen base model (from chexgen train or convert-official)",
    "control_blocks": "control blocks copied from the base (default: 13 for depth 28, half the depth otherwise)",
    "init_control": "adapter folder to continue training from instead of a fresh copy of the base blocks",
    "condition_name": "name of the cached condition latents to train on",
    "missing_condition": "records without masks/boxes: empty (train on a blank condition) | skip (leave out)",
    "conditioning_scale": "strength of the control residuals in sample grids",
    "control_guidance": "how sampling with this adapter guides the condition, stored with it (generate and demo use "
                        "it): joint = the condition goes into the conditional branch only, so classifier-free "
                        "guidance amplifies it with the text; shared = both branches see it",
    "region_loss_weight": "count the epsilon MSE of the latent cells a condition marks (1 + this) times as much as "
                          "the rest, so that findings covering 1-3 %% of the image are not drowned by the "
                          "background; 0 = the plain loss",
    "region_threshold": "a latent cell counts as marked where max over channels of |condition latent - blank "
                        "condition latent| exceeds this",
    "base_anchor_weight": "add this weight times the mean squared difference between the controlled and the frozen "
                          "base model's epsilon on the latent cells the condition does not mark (grown by one "
                          "cell; all cells for a blank condition), so that the adapter changes the picture where "
                          "the mask or box is and leaves the rest to the base; 0 = off (costs one base forward "
                          "per step)",
}.items():
    config_module.HELP.setdefault(_key, _text)


def conditioned_indices(dataset, name: str) -> list[int]:
    """Rows of a :class:`~chexgen.training.cache.CachedFeatures` cache that have condition ``name``."""
    out: list[int] = []
    for s, path in enumerate(dataset.files):
        with safe_open(str(path), framework="pt") as h:
            present = h.get_tensor(f"cond_present.{name}")
        start = int(dataset.starts[s])
        out.extend(start + int(i) for i in torch.nonzero(present).flatten())
    return out


class _Rows(Dataset):
    """A view on some rows of a dataset (keeps the parent's items, including condition tensors)."""

    def __init__(self, parent: Dataset, rows: Sequence[int]) -> None:
        self.parent, self.rows = parent, list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.parent[self.rows[i]]


class ControlInputs:
    """``extra_inputs`` for :class:`DiffusionObjective`: the batch's condition latents (blank where absent)."""

    def __init__(self, name: str, empty_latent: torch.Tensor) -> None:
        self.name = name
        self.empty_latent = empty_latent.float()

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cond = batch[f"cond.{self.name}"].float()
        present = batch[f"cond_present.{self.name}"].bool()
        empty = self.empty_latent.to(cond.device).expand_as(cond)
        return {"control_latents": torch.where(present[:, None, None, None], cond, empty)}


class RegionWeight:
    """``mse_weight`` for :class:`DiffusionObjective`: 1 + ``weight`` on the cells a condition marks, else 1.

    The condition latents hold no mask at latent resolution; a cell counts as marked where its
    condition latent differs from the blank condition's latent (the encoding of an all-background
    image) by more than ``threshold`` in some channel. Records without a condition weigh 1 everywhere.
    """

    def __init__(self, name: str, empty_latent: torch.Tensor, weight: float, threshold: float) -> None:
        self.name = name
        self.empty_latent = empty_latent.float()
        self.weight = float(weight)
        self.threshold = float(threshold)

    def region(self, batch: dict[str, Any]) -> torch.Tensor:
        """Boolean ``[B, 1, h, w]``: the cells the batch's conditions mark."""
        cond = batch[f"cond.{self.name}"].float()
        present = batch[f"cond_present.{self.name}"].bool()
        diff = (cond - self.empty_latent.to(cond.device)).abs().amax(dim=1, keepdim=True)
        return (diff > self.threshold) & present[:, None, None, None]

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        return 1.0 + self.weight * self.region(batch).float()


class BaseAnchor:
    """``extra_loss`` for :class:`DiffusionObjective`: outside the marked cells, stay with the base model.

    ``weight * mean(((eps_controlled - eps_base) * unmarked) ** 2)`` over the epsilon channels, where
    ``eps_base`` is the frozen base's prediction for the same noisy latents, timesteps and (possibly
    dropped) captions, and ``unmarked`` is the complement of :meth:`RegionWeight.region` grown by one
    latent cell (a finding's edge may spill over its mask). A blank condition marks nothing, so there
    the adapter is pulled toward the base everywhere: what it changes, it changes because of the
    condition. Logged as ``train/anchor``.
    """

    def __init__(self, region: "RegionWeight", weight: float) -> None:
        self.region = region
        self.weight = float(weight)

    def __call__(self, model: nn.Module, batch: dict[str, Any], pred: torch.Tensor, xt: torch.Tensor,
                 t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            base = unwrap(model).transformer(xt, t, text, mask)
            marked = torch.nn.functional.max_pool2d(self.region.region(batch).float(), 3, stride=1, padding=1)
        c = xt.shape[1]
        diff = (pred[:, :c].float() - base[:, :c].float()) * (1.0 - marked)
        return {"anchor": self.weight * diff.pow(2).mean()}


@torch.no_grad()
def blank_condition_latent(vae, resolution: int) -> torch.Tensor:
    """Latent ``[C, h, w]`` of an all-background condition image (the encoding of black, not zeros)."""
    image = torch.zeros(1, 1, resolution, resolution, device=vae.device, dtype=vae.dtype)
    return vae.encode(image)[0].float().cpu()


def build_control_task(cfg: ControlTrainConfig) -> TrainingTask:
    """Dataset, frozen base + adapter, objective and hooks for ``chexgen train-control``."""
    from chexgen.models.controlnet import ChexGenControlNet, ControlledDiT, load_controlnet
    from chexgen.pipelines import ChexGenPipeline
    from chexgen.training.cache import CachedFeatures, collate_features
    from chexgen.training.diffusion_task import DiffusionObjective

    if not cfg.base_model:
        raise ChexgenError("train-control: --base-model is required (the pipeline folder of the base model)")
    if not cfg.data:
        raise ChexgenError("train-control: no data given (a `chexgen prepare --conditions` cache folder)")
    if cfg.encode_on_the_fly:
        raise ChexgenError("train-control reads cached condition latents; run `chexgen prepare --conditions` first")
    for name in ("region_loss_weight", "region_threshold", "base_anchor_weight"):
        value = getattr(cfg, name)
        if not (value >= 0 and value != float("inf")):  # NaN fails the first comparison
            raise ChexgenError(f"{name} must be a finite number >= 0, got {value}")
    if cfg.missing_condition not in ("empty", "skip"):
        raise ChexgenError(f"missing_condition must be 'empty' or 'skip', got {cfg.missing_condition!r}")
    from chexgen.pipelines.control import check_control_guidance

    check_control_guidance(cfg.control_guidance)

    base = ChexGenPipeline.from_pretrained(cfg.base_model)
    dataset: Dataset = CachedFeatures(cfg.data, load_std=cfg.latent_sampling == "sample")
    spec = dataset.spec
    if cfg.condition_name not in spec.conditions:
        raise ChexgenError(
            f"{cfg.data}: the cache has no condition {cfg.condition_name!r} (it has {spec.conditions or 'none'}); "
            "re-run `chexgen prepare --conditions`"
        )
    resolution = base.config.resolution
    if spec.resolution != resolution:
        raise ChexgenError(f"{cfg.data}: cache is at {spec.resolution} px, the base model at {resolution} px")
    te = base.config.text_encoder
    if spec.embed_dim != te.embed_dim or spec.max_length != te.max_length:
        raise ChexgenError(f"{cfg.data}: cached text is {spec.embed_dim}-d x {spec.max_length} tokens; the base "
                           f"model expects {te.embed_dim}-d x {te.max_length}")
    if list(spec.latent_shape) != list(base.latent_shape):
        raise ChexgenError(f"{cfg.data}: cached latents are {spec.latent_shape}, the base uses {list(base.latent_shape)}")
    with_cond = conditioned_indices(dataset, cfg.condition_name)
    if not with_cond:
        raise ChexgenError(f"{cfg.data}: no record has masks or boxes; nothing to learn control from")
    log.info("train-control: %d of %d records have conditions", len(with_cond), len(dataset))
    if cfg.missing_condition == "skip":
        dataset = _Rows(dataset, with_cond)

    transformer = base.transformer
    if cfg.init_control:
        adapter = load_controlnet(cfg.init_control, transformer=transformer)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            adapter = ChexGenControlNet.from_transformer(transformer, num_blocks=cfg.control_blocks,
                                                         fit_policy=spec.resize_policy)
    if adapter.config.fit_policy != spec.resize_policy:
        raise ChexgenError(f"adapter expects conditions squared by {adapter.config.fit_policy!r}, the cache used "
                           f"{spec.resize_policy!r}")
    model = ControlledDiT(transformer, adapter, conditioning_scale=cfg.conditioning_scale)

    empty = blank_condition_latent(base.vae, resolution)
    cells = RegionWeight(cfg.condition_name, empty, cfg.region_loss_weight, cfg.region_threshold)
    objective = DiffusionObjective(caption_dropout=cfg.caption_dropout, latent_sampling=cfg.latent_sampling,
                                   extra_inputs=ControlInputs(cfg.condition_name, empty), snr_gamma=cfg.snr_gamma,
                                   mse_weight=cells if cfg.region_loss_weight > 0 else None,
                                   extra_loss=BaseAnchor(cells, cfg.base_anchor_weight)
                                   if cfg.base_anchor_weight > 0 else None)
    collate = functools.partial(collate_features, pad_to=te.max_length)
    sample_rows = [dataset[i] for i in (range(min(4, len(dataset))) if cfg.missing_condition == "skip"
                                        else with_cond[:4])]
    hooks = _ControlHooks(base, cfg, collate(sample_rows), ControlInputs(cfg.condition_name, empty))
    return TrainingTask(
        name="control",
        model=model,
        loss_fn=objective,
        dataset=dataset,
        collate_fn=collate,
        config=cfg,
        sample_fn=hooks.sample,
        export_fn=hooks.export,
        frozen=[base.vae],
        export_dirname="controlnet",
    )


class _ControlHooks:
    """Sample grids (condition above sample, from cached rows) and the adapter export."""

    def __init__(self, base, cfg: ControlTrainConfig, rows: dict[str, Any], inputs: ControlInputs) -> None:
        self.base, self.cfg, self.rows, self.inputs = base, cfg, rows, inputs

    @torch.no_grad()
    def sample(self, model: nn.Module) -> torch.Tensor:
        from chexgen.diffusion.samplers import make_generators
        from chexgen.models.text_encoder import TextEmbeddings
        from chexgen.pipelines.control import ChexGenControlPipeline

        device = next(model.parameters()).device
        pipe = ChexGenControlPipeline(self.base, model.controlnet, conditioning_scale=self.cfg.conditioning_scale,
                                      control_guidance=self.cfg.control_guidance)
        control = self.inputs(self.rows)["control_latents"].to(device)
        emb = TextEmbeddings(self.rows["text"].float(), self.rows["text_mask"]).to(device=device)
        latents = pipe.sample_latents(emb, control, make_generators(range(self.cfg.seed, self.cfg.seed + len(control))),
                                      num_inference_steps=self.cfg.sample_steps,
                                      guidance_scale=self.cfg.sample_guidance)
        vae = self.base.vae
        return torch.cat([vae.decode(control).float().cpu(), vae.decode(latents).float().cpu()])

    def export(self, model: nn.Module, directory: "str | os.PathLike") -> None:
        from chexgen.pipelines.control import ControlInfo

        directory = Path(directory)
        model.controlnet.save_pretrained(str(directory), safe_serialization=True)
        ControlInfo(
            base_model=str(Path(self.cfg.base_model).resolve()),
            base_checkpoint_sha256=self.base.checkpoint_sha256(),
            condition_name=self.cfg.condition_name,
            data=str(self.cfg.data),
            missing_condition=self.cfg.missing_condition,
            resolution=self.base.config.resolution,
            control_guidance=self.cfg.control_guidance,
        ).write(directory)

