"""The plan of a generation run: every image it will make, in batches, dealt to processes.

A run is deterministic. Group ``i`` (a prompt, or a spatial condition with its prompt) x image
``k`` becomes the planned image ``syn-{i:06d}-{k:03d}`` with seed ``seed + i * n + k`` (``n``
images per group). The plan is cut into batches of ``batch_size`` consecutive images, and
batch ``b`` goes to process ``b % world``. The batch layout therefore does not depend on the
number of processes, and a resumed run regenerates a missing image inside the same batch it
had, so an interrupted run, a resumed one and a sharded one give the same pixels.

``generation.json`` holds the settings that decide the images; a rerun into the same folder
with other settings is refused, so runs never mix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from chexgen import __version__
from chexgen.errors import ChexgenError
from chexgen.generation.prompts import PromptItem

if TYPE_CHECKING:
    from chexgen.data.condition_sources import ConditionInput

__all__ = [
    "IMAGES_DIR",
    "SETTINGS_NAME",
    "PlannedImage",
    "plan_images",
    "plan_batches",
    "shard",
    "shard_batches",
    "run_settings",
    "check_settings",
]

IMAGES_DIR = "images"
SETTINGS_NAME = "generation.json"
# Keys of generation.json that do not decide pixels (a resume may differ in them).
_NOT_COMPARED = ("chexgen_version", "batch_size")


@dataclass
class PlannedImage:
    """One image of the plan: its position, id, seed, prompt and (optional) spatial condition."""

    index: int
    group: int
    k: int
    id: str
    seed: int
    item: PromptItem = field(repr=False)
    condition: "ConditionInput | None" = field(default=None, repr=False)

    @property
    def prompt(self) -> str:
        """The prompt text of this image."""
        return self.item.prompt

    @property
    def prompt_index(self) -> int:
        """Index of the prompt (or condition) this image belongs to."""
        return self.group

    @property
    def relpath(self) -> str:
        """Path of the image file, relative to the output folder."""
        return f"{IMAGES_DIR}/{self.id}.png"


def plan_images(
    items: Sequence[PromptItem],
    num_images_per_prompt: int,
    seed: int,
    conditions: "Sequence[ConditionInput] | None" = None,
) -> list[PlannedImage]:
    """Every image of the run in group-major order.

    Without ``conditions`` a group is a prompt. With them a group is a condition, paired with
    ``items`` as one prompt for all, one prompt each, or (no items) the condition's own text.
    """
    n = num_images_per_prompt
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ChexgenError(f"num_images_per_prompt must be a whole number >= 1, got {n!r}")
    if conditions is None:
        groups = [(it, None) for it in items]
    else:
        from chexgen.pipelines.control import pair_prompts

        texts = pair_prompts([it.prompt for it in items], conditions)
        if len(items) == len(conditions):
            paired = list(items)
        else:
            paired = [items[0] if items else PromptItem(t, None, f"condition {c.id!r}")
                      for t, c in zip(texts, conditions)]
        groups = list(zip(paired, conditions))
    return [
        PlannedImage(i * n + k, i, k, f"syn-{i:06d}-{k:03d}", seed + i * n + k, it, cond)
        for i, (it, cond) in enumerate(groups)
        for k in range(n)
    ]


def plan_batches(plan: Sequence[PlannedImage], batch_size: int) -> list[list[PlannedImage]]:
    """Consecutive batches of ``batch_size`` planned images (the last may be shorter)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ChexgenError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    return [list(plan[s:s + batch_size]) for s in range(0, len(plan), batch_size)]


def shard_batches(batches: Sequence[list[PlannedImage]], rank: int, world: int) -> list[list[PlannedImage]]:
    """Batches of process ``rank`` out of ``world``: batch b goes to b % world (disjoint, covering)."""
    if world < 1 or not 0 <= rank < world:
        raise ChexgenError(f"process rank {rank} is not within a world of {world} process(es)")
    return [b for i, b in enumerate(batches) if i % world == rank]


def shard(plan: Sequence[PlannedImage], rank: int, world: int, batch_size: int = 1) -> list[PlannedImage]:
    """Planned images of process ``rank`` (by whole batches of ``batch_size``)."""
    return [p for b in shard_batches(plan_batches(plan, batch_size), rank, world) for p in b]


def run_settings(backend_settings: dict[str, Any], **job: Any) -> dict[str, Any]:
    """generation.json: the backend's settings (model, hashes, sampler, ...) and the job's (seed, bits, ...)."""
    settings = {**backend_settings, **job, "chexgen_version": __version__}
    bad = [k for k, v in settings.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ChexgenError(f"generation settings {', '.join(bad)} are not finite numbers")
    return settings


def check_settings(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse to resume into a folder made with other settings; returns the stored settings (or None)."""
    f = out_dir / SETTINGS_NAME
    if not f.is_file():
        return None
    try:
        old = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ChexgenError(f"{f}: unreadable ({err}); use a new --out folder") from err
    keys = [k for k in dict.fromkeys([*old, *settings]) if k not in _NOT_COMPARED]
    diff = [k for k in keys if old.get(k) != settings.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
        raise ChexgenError(f"{out_dir} holds a run with different settings ({shown}); use a new --out folder")
    return old
