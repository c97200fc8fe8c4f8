"""The generation engine: a plan of images -> sharded, resumable, streamed writes into one folder.

One engine for every kind of generation (text only, or with masks / boxes) and every backend.
What a run does:

1. checks each spatial condition with the backend; a bad one is rejected (listed in
   ``rejects.jsonl`` with where it came from and why) and the rest go on;
2. plans every image (:mod:`chexgen.generation.plan`), compares the settings with a folder's
   earlier ``generation.json`` (other settings are refused), and takes a per-process lock so a
   second identical run into the same folder waits instead of doing the work twice;
3. generates this process's batches; an image counts as done only when its PNG decodes to the
   full size, so a truncated or deleted file is redone, inside its original batch;
4. writes each batch as soon as it is made (memory does not grow with the number of images);
5. when every process is done, process 0 rebuilds ``manifest.jsonl`` (and ``boxes.coco.json``).

Output folder::

    generation.json      run settings; a rerun with different settings is refused
    images/<id>.png      single-channel 8- or 16-bit PNGs, marked synthetic with provenance and an
                         invisible watermark (``images/<id>.dcm`` for DICOM only; ``dicom/`` for both)
    conditions/, masks/, boxes.coco.json    with spatial conditions
    manifest.jsonl       chexgen Records with synthetic=True and provenance
    rejects.jsonl        conditions that could not be used (only when there were any)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from chexgen.errors import ChexgenError
from chexgen.generation.backends.base import GeneratorBackend
from chexgen.generation.plan import (
    IMAGES_DIR,
    SETTINGS_NAME,
    PlannedImage,
    check_settings,
    plan_batches,
    plan_images,
    run_settings,
    shard_batches,
)
from chexgen.generation.prompts import PromptItem, prompts_digest
from chexgen.generation.writer import OutputWriter
from chexgen.utils import atomic_write_json, atomic_write_text, clean_stale_temp_files

if TYPE_CHECKING:
    from chexgen.data.condition_sources import ConditionInput

__all__ = ["GenerationResult", "generate_to_folder", "conditions_digest", "REJECTS_NAME"]

log = logging.getLogger(__name__)

REJECTS_NAME = "rejects.jsonl"


@dataclass
class GenerationResult:
    """What one process did: images planned for it, found finished, generated; conditions rejected."""

    planned: int
    skipped: int
    generated: int
    rejected: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None
    rank: int = 0
    world: int = 1

    def __getitem__(self, key: str) -> int:  # counts as a mapping, as the earlier API returned
        return getattr(self, key)


def conditions_digest(conditions: Sequence["ConditionInput"]) -> str:
    """SHA-256 over every condition's id, frame, boxes and mask pixels (what a resumed run must match)."""
    h = hashlib.sha256()
    for c in conditions:
        h.update(f"{c.id}|{c.width}x{c.height}|{c.prompt or ''}".encode())
        for b in c.boxes:
            h.update(f"|{b.label}:{b.x0},{b.y0},{b.x1},{b.y1}".encode())
        for m in c.masks:
            h.update(f"|{m.name}:{m.mask.shape}".encode())
            h.update(np.packbits(m.mask).tobytes())
    return h.hexdigest()


def _check_conditions(backend: GeneratorBackend, conditions: Sequence["ConditionInput"]
                      ) -> tuple[list["ConditionInput"], list[dict[str, Any]]]:
    if not backend.supports_conditions:
        raise ChexgenError(f"the {backend.name} backend cannot generate from masks / boxes")
    good, rejects = [], []
    for c in conditions:
        try:
            backend.check_condition(c)
        except ChexgenError as err:
            where = getattr(c, "where", "") or ""
            rejects.append({"where": where, "id": c.id, "reason": str(err)})
            log.warning("rejected condition %s%s: %s", c.id, f" ({where})" if where else "", err)
            continue
        good.append(c)
    if not good:
        raise ChexgenError(f"none of the {len(conditions)} condition(s) can be used; first: {rejects[0]['reason']}")
    return good, rejects


@contextlib.contextmanager
def _run_lock(out: Path, rank: int, world: int) -> Iterator[None]:
    """Lock byte ``rank`` of ``generation.json``: a second run of the same shard waits for the first.

    A POSIX record lock (no lock file to leave behind); the kernel drops it if the process dies.
    """
    fd = os.open(out / SETTINGS_NAME, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, rank)
        except OSError:
            log.warning("another chexgen generate is writing into %s (process %d/%d); waiting for it to finish",
                        out, rank + 1, world)
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, rank)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, rank)
    finally:
        os.close(fd)


def generate_to_folder(
    backend: GeneratorBackend,
    items: Sequence[PromptItem],
    out_dir: "str | os.PathLike",
    num_images_per_prompt: int = 1,
    seed: int = 0,
    bits: int = 8,
    batch_size: int = 8,
    conditions: "Sequence[ConditionInput] | None" = None,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: bool = True,
    extra_settings: dict[str, Any] | None = None,
    rejects: Sequence[dict[str, Any]] = (),
    image_format: str = "png",
    watermark: bool = True,
) -> GenerationResult:
    """Generate this process's share of the plan into ``out_dir`` (see the module docstring).

    ``items``: the prompts (with conditions: one for all, one per condition, or none to use each
    condition's own text). ``barrier`` (e.g. ``PartialState().wait_for_everyone``) synchronises
    processes. ``extra_settings`` join ``generation.json`` (and are compared on resume).
    ``rejects``: inputs already rejected while reading (they join ``rejects.jsonl``).
    ``image_format``: ``png``, ``dicom`` or ``both``; ``watermark``: embed the invisible watermark
    (on by default; turning it off is recorded in every image's provenance).
    """
    from tqdm.auto import tqdm

    if bits not in (8, 16):
        raise ChexgenError(f"bits must be 8 or 16, got {bits}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ChexgenError(f"{out} exists and is not a folder")
    rejects = list(rejects)
    if conditions is not None:
        conditions, unusable = _check_conditions(backend, conditions)
        rejects += unusable
    elif not items:
        raise ChexgenError("no prompts to generate from")
    plan = plan_images(items, num_images_per_prompt, seed, conditions)
    settings = run_settings(
        backend.settings(), seed=int(seed), num_images_per_prompt=num_images_per_prompt, bits=bits,
        resolution=backend.resolution, prompts_sha256=prompts_digest(items),
        conditions_sha256=conditions_digest(conditions) if conditions is not None else None,
        batch_size=batch_size, image_format=image_format, watermark=bool(watermark), **(extra_settings or {}),
    )
    stored = check_settings(out, settings)
    if stored is not None and stored.get("batch_size", batch_size) != batch_size:
        # Pixels depend (within one grey level) on the batch layout: keep the one the run started with.
        log.info("resuming with the run's batch size %s (asked for %s) so images match an uninterrupted run",
                 stored["batch_size"], batch_size)
        batch_size = int(stored["batch_size"])
        settings["batch_size"] = batch_size
    sync = barrier or (lambda: None)
    sync()
    if rank == 0:
        (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        if stored is None:
            atomic_write_json(out / SETTINGS_NAME, settings)
    sync()
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    run_provenance = {k: v for k, v in backend.settings().items()}
    run_provenance["chexgen_version"] = settings["chexgen_version"]
    writer = OutputWriter(out, backend.resolution, run_provenance, bits=bits, policy=backend.condition_policy,
                          palette=backend.condition_palette, image_format=image_format, watermark=watermark)
    mine = shard_batches(plan_batches(plan, batch_size), rank, world)
    planned = sum(len(b) for b in mine)
    generated = 0
    with _run_lock(out, rank, world):
        todo = [(b, [j for j in b if not writer.is_finished(j)]) for b in mine]
        todo = [(b, missing) for b, missing in todo if missing]
        for _, missing in todo:  # temp files of a killed run beside the files this process will write
            for job in missing:
                _clean_leftovers(out, writer, job)
        n_todo = sum(len(m) for _, m in todo)
        desc = f"generate [{rank + 1}/{world}]" if world > 1 else "generate"
        bar = tqdm(total=n_todo, unit="img", desc=desc, disable=not progress, position=rank if world > 1 else None)
        for batch, missing in todo:
            result = backend.generate([j.prompt for j in batch], [j.seed for j in batch],
                                      [j.condition for j in batch] if conditions is not None else None)
            _write_batch(writer, batch, missing, result)
            generated += len(missing)
            bar.update(len(missing))
        bar.close()
    sync()
    if rank == 0:
        writer.finish(plan)
        _write_rejects(out, rejects)
    return GenerationResult(planned=planned, skipped=planned - generated, generated=generated, rejected=rejects,
                            out=out, rank=rank, world=world)


def _clean_leftovers(out: Path, writer: OutputWriter, job: PlannedImage) -> None:
    """Remove what an interrupted write of ``job`` left (hidden temp files); only this process writes it."""
    paths = [job.relpath, writer.image_relpath(job), writer.dicom_relpath(job)]
    if job.condition is not None:
        paths.append(writer.condition_relpath(job))
    for rel in paths:
        if rel is not None:
            clean_stale_temp_files(out / rel)


def _write_batch(writer: OutputWriter, batch: Sequence[PlannedImage], missing: Sequence[PlannedImage], result) -> None:
    if result.images.shape[0] != len(batch):
        raise ChexgenError(f"the backend returned {result.images.shape[0]} images for a batch of {len(batch)}")
    want = {j.index for j in missing}
    for pos, job in enumerate(batch):
        if job.index in want:
            drawn = result.conditions[pos] if result.conditions is not None else None
            writer.write(job, result.images[pos], drawn)


def _write_rejects(out: Path, rejects: Sequence[dict[str, Any]]) -> None:
    path = out / REJECTS_NAME
    if rejects:
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects))
    elif path.is_file():
        path.unlink()
