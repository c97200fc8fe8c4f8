"""Write a phantom cohort: images, masks and a manifest, in parallel, resumable.

Layout of ``out``::

    cohort.json               the settings (a resume must use the same ones)
    images/<id>.png           8- or 16-bit radiograph
    masks/<id>/<name>.png     lungs, heart, each rib, each finding and device
    records/<id>.json         one finished case: its record and the size + sha256 of each of its
                              files (written last, atomically)
    manifest.jsonl            all finished cases in index order (rewritten at the end)

Each case depends only on (seed, case index), so the cohort is the same for any
number of workers. A rerun skips a case only when its record exists and every
file it lists is on disk with the recorded size and sha256; a deleted, truncated
or altered image or mask makes the case render again.

The report and impression of each case come from a report writer the caller passes
(anything with ``write(record)`` returning an object with ``text`` and ``impression``, such as
``chexgen.curation.TemplateReportWriter``): the phantom renders, curation words it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from chexgen.data.imageio import save_png
from chexgen.data.manifest import Box, Mask, Record, record_from_dict, write_manifest
from chexgen.data.provenance import synthetic_png_text
from chexgen.errors import ChexgenError
from chexgen.phantom.atlas import load_atlas
from chexgen.phantom.findings import labels_from_findings, load_prevalence
from chexgen.phantom.render import render_case, sample_case
from chexgen.phantom.source import CT_FILE, SHA256
from chexgen.utils import atomic_write_json, sha256_file

__all__ = ["CohortConfig", "ReportWriterLike", "write_cohort", "case_id", "split_for", "make_record"]

log = logging.getLogger(__name__)
DATASET = "chexgen-phantom"


class WrittenReport(Protocol):
    text: str
    impression: str


class ReportWriterLike(Protocol):
    """What the cohort needs from a report writer (``chexgen.curation.ReportWriter`` is one)."""

    def write(self, record: Record) -> WrittenReport: ...


@dataclass(frozen=True)
class CohortConfig:
    """Settings of a cohort (all but ``workers`` and ``source`` / ``cache`` must match on resume)."""

    n: int
    size: int = 256
    seed: int = 0
    view: str = "PA"
    bits: int = 8
    prevalence: str = "mimic"
    workers: int = 1
    source: str | None = None
    cache: str | None = None

    def check(self) -> None:
        if self.n < 1:
            raise ChexgenError(f"--n must be at least 1, got {self.n}")
        if not 0 <= self.seed < 2**32:
            raise ChexgenError(f"--seed must be within 0..{2**32 - 1}, got {self.seed}")
        if not 64 <= self.size <= 1024:
            raise ChexgenError(f"--size must be within 64..1024 px, got {self.size}")
        if self.bits not in (8, 16):
            raise ChexgenError(f"--bits must be 8 or 16, got {self.bits}")
        if self.view not in ("PA", "AP"):
            raise ChexgenError(f"--view must be PA or AP, got {self.view!r}")
        if self.workers < 1:
            raise ChexgenError(f"--workers must be at least 1, got {self.workers}")

    def identity(self) -> dict[str, Any]:
        """What decides the pixels (compared on resume). A prevalence file enters by its recipe (rates,
        max findings), not its path: a moved copy resumes, an edited file at the same path does not."""
        d = asdict(self)
        for k in ("workers", "source", "cache", "n"):
            d.pop(k)
        prev = load_prevalence(self.prevalence)
        d["prevalence_recipe"] = {"rates": dict(sorted(prev.rates.items())), "balanced": prev.balanced,
                                  "max_findings": prev.max_findings}
        return d


def case_id(index: int) -> str:
    return f"phantom_{index:06d}"


def split_for(index: int) -> str:
    """train / val / test (80 / 10 / 10) from a hash of the case index: stable across seeds and runs."""
    h = int(hashlib.sha256(f"chexgen-phantom-{index}".encode()).hexdigest()[:8], 16) % 100
    return "train" if h < 80 else ("val" if h < 90 else "test")


def _write_mask(path: Path, mask: np.ndarray) -> None:
    save_png(path, mask.astype(np.float32), bits=8)


@lru_cache(maxsize=8)
def _prevalence(spec: str):
    return load_prevalence(spec)


def make_record(cfg: CohortConfig, index: int, writer: ReportWriterLike,
                out: Path | None = None) -> tuple[Record, Any]:
    """Render case ``index`` and build its record (report by ``writer``); with ``out``, also write its image and masks."""
    atlas = load_atlas(cfg.view, source=cfg.source, cache=cfg.cache)
    spec = sample_case(cfg.seed, index, _prevalence(cfg.prevalence), view=cfg.view)
    r = render_case(spec, atlas, cfg.size)
    rid = case_id(index)
    image_rel = f"images/{rid}.png"
    masks = [Mask(name=name, path=f"masks/{rid}/{name}.png") for name in r.masks]
    boxes = [Box(label=label, x0=float(x0), y0=float(y0), x1=float(x1), y1=float(y1)) for label, _, (x0, y0, x1, y1) in r.boxes]
    labels = labels_from_findings(r.findings)
    extra = {
        "findings": [f.to_dict() for f in r.findings],
        "finding_masks": list(r.finding_masks),  # parallel to findings and boxes
        "severity_per_lung": {"right": r.severity["right"], "left": r.severity["left"]},
        "cardiothoracic_ratio": round(r.ctr, 4),
        "site": spec.site.name,
        "acquisition": spec.acquisition,
        "anatomy": asdict(spec.anatomy),
        "case_index": index,
    }
    rec = Record(
        id=rid, image=image_rel, dataset=DATASET, split=split_for(index), view=cfg.view,
        sex=spec.demographics.sex, age=float(spec.demographics.age), race=spec.demographics.race,
        patient_id=rid, study_id=rid, width=cfg.size, height=cfg.size, labels=labels,
        masks=masks, boxes=boxes, severity=r.severity["total"], synthetic=True,
        provenance={"generator": "chexgen phantom", "seed": cfg.seed, "case_index": index,
                    "ct": CT_FILE, "ct_sha256": SHA256[CT_FILE], "prevalence": cfg.prevalence},
        extra=extra,
    )
    report = writer.write(rec)
    rec.report = report.text
    rec.impression = report.impression
    if out is not None:
        # the one marking scheme of chexgen's synthetic PNGs (no watermark: phantoms are the ground-truth
        # stand-in for real images, e.g. the watermark's false-positive reference)
        save_png(out / image_rel, r.image, bits=cfg.bits, text=synthetic_png_text(rec.provenance))
        for name, m in r.masks.items():
            _write_mask(out / "masks" / rid / f"{name}.png", m)
    return rec, r


def _case_files(rec: Record) -> list[str]:
    return [rec.image] + [m.path for m in rec.masks if m.path]


def _write_case(cfg: CohortConfig, index: int, root: Path, writer: ReportWriterLike) -> None:
    rec, _ = make_record(cfg, index, writer, root)
    files = {rel: {"size": (root / rel).stat().st_size, "sha256": sha256_file(root / rel)}
             for rel in _case_files(rec)}
    atomic_write_json(root / "records" / f"{rec.id}.json", {"record": rec.to_dict(), "files": files}, indent=None)


# A worker's report writer: set by the pool initializer, inherited through fork (never pickled).
_WORKER_WRITER: ReportWriterLike | None = None


def _init_worker(writer: ReportWriterLike) -> None:
    global _WORKER_WRITER
    _WORKER_WRITER = writer


def _work(args: tuple[CohortConfig, int, str]) -> int:
    cfg, index, out = args
    _write_case(cfg, index, Path(out), _WORKER_WRITER)
    return index


def _record_dict(data: Any) -> dict[str, Any]:
    """The record of a records/<id>.json (``{"record", "files"}``; a bare record from older chexgen)."""
    return data["record"] if isinstance(data, dict) and "record" in data and "files" in data else data


def _case_is_complete(out: Path, index: int) -> bool:
    """Whether case ``index`` is finished: its record exists and every file it lists is intact."""
    path = out / "records" / f"{case_id(index)}.json"
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if isinstance(data, dict) and "files" in data:
        for rel, want in data["files"].items():
            f = out / rel
            if not f.is_file() or f.stat().st_size != want.get("size") or sha256_file(f) != want.get("sha256"):
                log.warning("%s: %s is missing or changed since it was written; rendering case %d again",
                            out, rel, index)
                return False
        return True
    # a record written before hashes were recorded: check that its files exist and decode
    try:
        rec = record_from_dict(data, where=str(path))
        from chexgen.data.imageio import load_gray

        for rel in _case_files(rec):
            load_gray(out / rel)
    except ChexgenError as e:
        log.warning("%s; rendering case %d again", e, index)
        return False
    return True


def _pending(cfg: CohortConfig, out: Path) -> list[int]:
    return [i for i in range(cfg.n) if not _case_is_complete(out, i)]


def _check_settings(cfg: CohortConfig, out: Path) -> bool:
    """Refuse a folder holding a cohort with other settings; True when ``cohort.json`` must be written."""
    if out.exists() and not out.is_dir():
        raise ChexgenError(f"--out {out}: is a file; expected a folder")
    path = out / "cohort.json"
    if not path.is_file():
        return True
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ChexgenError(f"{path}: not a chexgen cohort settings file ({e}); use another --out") from None
    mine = cfg.identity()
    if "prevalence_recipe" in old:  # the recipe decides; the file's path may differ
        mine.pop("prevalence")
        old.pop("prevalence", None)
    else:  # written before recipes were recorded: the path is all there is to compare
        mine.pop("prevalence_recipe")
    diff = {k: (old.get(k), v) for k, v in mine.items() if old.get(k) != v}
    if diff:
        raise ChexgenError(f"{path}: this folder holds a cohort made with other settings {diff} "
                           "(old, new); use another --out or the same settings to resume")
    return False


def write_cohort(cfg: CohortConfig, out: str | os.PathLike, writer: ReportWriterLike,
                 progress: bool = True) -> dict[str, Any]:
    """Render cases 0..n-1 into ``out`` (skipping finished ones) and write ``manifest.jsonl``.

    ``writer`` words each case's report and impression, e.g.
    ``chexgen.curation.report_writer.TemplateReportWriter(seed=cfg.seed)`` (what ``chexgen phantom`` uses).
    """
    cfg.check()
    load_prevalence(cfg.prevalence)  # a bad prevalence fails before anything is written
    out = Path(out)
    new = _check_settings(cfg, out)
    load_atlas(cfg.view, source=cfg.source, cache=cfg.cache)  # build / verify once before forking
    out.mkdir(parents=True, exist_ok=True)  # only now: bad settings or sources leave nothing behind
    if new:
        atomic_write_json(out / "cohort.json", cfg.identity())
    todo = _pending(cfg, out)
    done_before = cfg.n - len(todo)
    from tqdm import tqdm

    bar = tqdm(total=cfg.n, initial=done_before, desc="phantom", unit="img", disable=not progress)
    jobs = [(cfg, i, str(out)) for i in todo]
    if cfg.workers == 1 or len(jobs) <= 1:
        for i in todo:
            _write_case(cfg, i, out, writer)
            bar.update(1)
    else:
        with get_context("fork").Pool(cfg.workers, initializer=_init_worker, initargs=(writer,)) as pool:
            for _ in pool.imap_unordered(_work, jobs, chunksize=1):
                bar.update(1)
    bar.close()
    records = list(_read_records(cfg, out))
    write_manifest(out / "manifest.jsonl", records)
    return {"written": len(todo), "skipped": done_before, "total": len(records), "manifest": str(out / "manifest.jsonl")}


def _read_records(cfg: CohortConfig, out: Path) -> Iterator[Record]:
    for i in range(cfg.n):
        path = out / "records" / f"{case_id(i)}.json"
        yield record_from_dict(_record_dict(json.loads(path.read_text(encoding="utf-8"))), where=str(path))
