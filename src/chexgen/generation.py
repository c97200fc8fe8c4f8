"""Batch generation to a folder: prompt files, planning, sharding, resumable PNG + manifest output.

The library behind ``chexgen generate``. A run is a deterministic *plan*: prompt
``i`` x image ``k`` becomes item ``syn-{i:06d}-{k:03d}`` with seed
``seed + i * num_images_per_prompt + k``. Items are dealt to processes by index
(``index % world == rank``), so under ``accelerate launch`` / ``torchrun`` every item
is generated exactly once. Each PNG is written atomically (never a partial file)
and carries text metadata marking it synthetic with its provenance; a rerun
skips items whose PNG exists. When all processes are done, process 0 rebuilds
``manifest.jsonl`` from the plan (one record per finished image, plan order), so
the manifest is identical whatever the number of processes or interruptions.

Output folder::

    generation.json      run settings; a rerun with different settings is refused
    images/<id>.png      single-channel 8- or 16-bit PNGs
    manifest.jsonl       chexgen Records with synthetic=True and provenance
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from chexgen import __version__
from chexgen.data.manifest import Record, record_from_dict, write_manifest
from chexgen.errors import ChexgenError
from chexgen.utils import atomic_write_json

__all__ = [
    "PromptItem",
    "GenerationSettings",
    "PlannedImage",
    "read_prompts",
    "plan_images",
    "shard",
    "generate_to_folder",
    "build_manifest",
    "make_record",
    "check_settings",
    "prompts_digest",
    "SYNTHETIC_KEY",
    "PROVENANCE_KEY",
]

SYNTHETIC_KEY = "chexgen:synthetic"
PROVENANCE_KEY = "chexgen:provenance"
SETTINGS_NAME = "generation.json"
MANIFEST_NAME = "manifest.jsonl"
IMAGES_DIR = "images"
_COPIED_FIELDS = ("view", "sex", "age", "race", "labels", "report", "impression", "severity")


@dataclass
class PromptItem:
    """One prompt, with the manifest record it came from (if any) and where it was read."""

    prompt: str
    source: Record | None = None
    where: str = ""


# ---------------------------------------------------------------------------- reading prompts
def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ChexgenError(f"{where}: empty prompt (expected text, got {text!r})")
    return text.strip()


def _row_prompt(row: dict, column: str | None, where: str) -> PromptItem:
    """A prompt from a JSON object: ``column`` (default ``prompt``), else a manifest record's text."""
    key = column or "prompt"
    if key in row:
        return PromptItem(_check_text(row[key], f"{where}: field {key!r}"), None, where)
    if column is None and "id" in row and ("impression" in row or "report" in row):
        return _record_prompt(record_from_dict(row, where=where), None, where)
    raise ChexgenError(f"{where}: no field {key!r} (fields: {', '.join(map(str, row)) or 'none'}); use --column")


def _record_prompt(rec: Record, column: str | None, where: str, demographic: bool = False) -> PromptItem:
    if column:
        text = getattr(rec, column, None) if column in Record.__dataclass_fields__ else rec.extra.get(column)
        what = f"field {column!r}"
    else:
        text = rec.impression or rec.report
        what = "impression/report"
    text = _check_text(text, f"{where} (record {rec.id}): {what}")
    if demographic:
        from chexgen.data.prompts import demographic_prompt

        text = demographic_prompt(rec, text=text)
    return PromptItem(text, rec, where)


def read_prompts(
    path: str | os.PathLike, column: str | None = None, manifest: bool | None = None, demographic: bool = False
) -> list[PromptItem]:
    """Prompts from ``.txt`` (one per non-blank line), ``.csv`` (``column``, default ``prompt``),
    ``.json`` (a list of strings / objects, or ``{"prompts": [...]}``), ``.jsonl`` (strings or
    objects) or a chexgen manifest (``.parquet``, or ``manifest=True``; text = impression, else
    report, else ``column``). ``demographic`` prefixes manifest prompts with sex/age/race as
    the official prompts do. Errors name the file and line.
    """
    p = Path(path)
    if not p.is_file():
        raise ChexgenError(f"prompt file {p} does not exist")
    suffix = p.suffix.lower()
    if manifest or suffix == ".parquet" or demographic:
        from chexgen.data.manifest import iter_manifest

        items = [_record_prompt(r, column, f"{p}: record {i}", demographic)
                 for i, r in enumerate(iter_manifest(p), start=1)]
    else:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ChexgenError(f"cannot read prompt file {p}: {err}") from err
        items = _parse_text(p, suffix, text, column)
    if not items:
        raise ChexgenError(f"prompt file {p} holds no prompts")
    return items


def _parse_text(p: Path, suffix: str, text: str, column: str | None) -> list[PromptItem]:
    items: list[PromptItem] = []
    if suffix == ".txt":
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                items.append(PromptItem(line.strip(), None, f"{p}: line {n}"))
    elif suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        key = column or "prompt"
        if reader.fieldnames is None or key not in reader.fieldnames:
            raise ChexgenError(f"{p}: no column {key!r} (columns: {', '.join(reader.fieldnames or [])}); use --column")
        for n, row in enumerate(reader, start=2):
            items.append(PromptItem(_check_text(row[key], f"{p}: line {n}: column {key!r}"), None, f"{p}: line {n}"))
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ChexgenError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("prompts"), list):
            data = data["prompts"]
        if not isinstance(data, list):
            raise ChexgenError(f"{p}: expected a JSON list of prompts (or {{\"prompts\": [...]}})")
        for n, row in enumerate(data):
            where = f"{p}: item {n}"
            items.append(_row_prompt(row, column, where) if isinstance(row, dict)
                         else PromptItem(_check_text(row, where), None, where))
    elif suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{p}: line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ChexgenError(f"{where}: not valid JSON ({e.msg})") from None
            items.append(_row_prompt(row, column, where) if isinstance(row, dict)
                         else PromptItem(_check_text(row, where), None, where))
    else:
        raise ChexgenError(f"{p}: unsupported prompt file type {suffix or '(none)'}; "
                           "use .txt, .csv, .json, .jsonl or a manifest (.parquet / --manifest)")
    return items


# ---------------------------------------------------------------------------- planning
@dataclass
class GenerationSettings:
    """What decides the images of a run (saved as generation.json; a resume must match)."""

    model: str
    checkpoint_sha256: str | None
    sampler: str
    steps: int
    guidance: float
    seed: int
    num_images_per_prompt: int
    bits: int
    resolution: int
    prompts_sha256: str
    chexgen_version: str = __version__

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("chexgen_version")
        return d


@dataclass
class PlannedImage:
    index: int
    prompt_index: int
    k: int
    id: str
    seed: int
    item: PromptItem = field(repr=False)

    @property
    def relpath(self) -> str:
        return f"{IMAGES_DIR}/{self.id}.png"


def prompts_digest(items: Sequence[PromptItem]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(it.prompt.encode("utf-8") + b"\n")
    return h.hexdigest()


def plan_images(items: Sequence[PromptItem], num_images_per_prompt: int, seed: int) -> list[PlannedImage]:
    """Every image of the run, in prompt-major order, with its id and seed."""
    n = num_images_per_prompt
    return [
        PlannedImage(i * n + k, i, k, f"syn-{i:06d}-{k:03d}", seed + i * n + k, it)
        for i, it in enumerate(items)
        for k in range(n)
    ]


def shard(plan: Sequence[PlannedImage], rank: int, world: int) -> list[PlannedImage]:
    """Items of process ``rank`` out of ``world``: index % world == rank (disjoint, covering)."""
    return [p for p in plan if p.index % world == rank]


def _provenance(settings: GenerationSettings, job: PlannedImage) -> dict[str, Any]:
    return {
        "model": settings.model,
        "checkpoint_sha256": settings.checkpoint_sha256,
        "prompt": job.item.prompt,
        "seed": job.seed,
        "sampler": settings.sampler,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "chexgen_version": settings.chexgen_version,
    }


def make_record(settings: GenerationSettings, job: PlannedImage) -> Record:
    """The synthetic manifest record of one planned image (copies labels/demographics of a source record)."""
    d: dict[str, Any] = {
        "id": job.id,
        "image": job.relpath,
        "width": settings.resolution,
        "height": settings.resolution,
        "synthetic": True,
        "provenance": _provenance(settings, job),
        "impression": job.item.prompt,
        "extra": {"prompt_index": job.prompt_index, "image_index": job.k},
    }
    src = job.item.source
    if src is not None:
        for name in _COPIED_FIELDS:
            value = getattr(src, name)
            if value not in (None, {}, []):
                d[name] = value
        d["impression"] = job.item.prompt
        d["extra"]["source_id"] = src.id
        if src.dataset:
            d["extra"]["source_dataset"] = src.dataset
    return record_from_dict(d, where=f"generated {job.id}")


# ---------------------------------------------------------------------------- running
def check_settings(out_dir: Path, settings: GenerationSettings) -> None:
    """Refuse to resume into a folder made with different settings (so runs never mix)."""
    f = out_dir / SETTINGS_NAME
    if not f.is_file():
        return
    try:
        old = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ChexgenError(f"{f}: unreadable ({err}); use a new --out folder") from err
    new = settings.key()
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff)
        raise ChexgenError(f"{out_dir} holds a run with different settings ({shown}); use a new --out folder")


def generate_to_folder(
    pipe,
    items: Sequence[PromptItem],
    out_dir: str | os.PathLike,
    settings: GenerationSettings,
    batch_size: int = 8,
    rank: int = 0,
    world: int = 1,
    barrier=None,
    progress: bool = True,
) -> dict[str, int]:
    """Generate this process's share of the plan into ``out_dir``; process 0 then writes the manifest.

    ``barrier`` (e.g. ``PartialState().wait_for_everyone``) synchronises processes; it is
    called after the settings check and after generation. Returns counts of this process:
    ``planned``, ``skipped`` (already on disk) and ``generated``.
    """
    from tqdm.auto import tqdm

    from chexgen.data.imageio import save_png
    from chexgen.diffusion.samplers import make_generators

    out = Path(out_dir)
    check_settings(out, settings)
    sync = barrier or (lambda: None)
    sync()
    if rank == 0:
        (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        if not (out / SETTINGS_NAME).is_file():
            atomic_write_json(out / SETTINGS_NAME, asdict(settings))
    sync()
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    plan = plan_images(items, settings.num_images_per_prompt, settings.seed)
    mine = shard(plan, rank, world)
    todo = [j for j in mine if not (out / j.relpath).is_file()]
    bar = tqdm(total=len(todo), unit="img", disable=not progress,
               desc=f"generate [{rank + 1}/{world}]" if world > 1 else "generate", position=rank if world > 1 else None)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        emb = pipe.encode_prompts([j.item.prompt for j in batch])
        images = pipe.generate_from_embeddings(
            emb, make_generators([j.seed for j in batch]), sampler=settings.sampler,
            num_inference_steps=settings.steps, guidance_scale=settings.guidance,
        )
        for job, img in zip(batch, images):
            text = {SYNTHETIC_KEY: "true", PROVENANCE_KEY: json.dumps(_provenance(settings, job))}
            save_png(out / job.relpath, img[0].numpy(), bits=settings.bits, text=text)
        bar.update(len(batch))
    bar.close()
    sync()
    if rank == 0:
        build_manifest(out, items, settings)
    return {"planned": len(mine), "skipped": len(mine) - len(todo), "generated": len(todo)}


def build_manifest(out_dir: str | os.PathLike, items: Sequence[PromptItem], settings: GenerationSettings) -> int:
    """Write ``manifest.jsonl`` for every planned image present on disk, in plan order (atomic)."""
    out = Path(out_dir)
    plan = plan_images(items, settings.num_images_per_prompt, settings.seed)
    records = [make_record(settings, j) for j in plan if (out / j.relpath).is_file()]
    return write_manifest(out / MANIFEST_NAME, records)
