"""One benchmark run: check everything, generate with every model, score all alike, write the report.

1. reads the real test manifest (``split`` / ``max_prompts`` applied; every record needs an image and
   an impression or report) and the training reference;
2. checks every model entry and its prompt template against every record, and loads every feature
   extractor and the re-identification network: any bad input stops the run here, with one error
   line, before the first image;
3. generates with each model in turn into ``out/models/<name>`` (resumable per image; under
   ``torchrun`` / ``accelerate launch`` every process takes its batches, as ``chexgen generate`` does);
4. on process 0: reads every set once, extracts features (cached in ``out/features``), scores each
   model (:mod:`chexgen.benchmark.scoring`) and writes ``leaderboard.md`` / ``.csv``,
   ``metrics.json`` and ``report.html`` (:mod:`chexgen.benchmark.report`).

A run killed at any point is resumed by running it again: finished images and cached features are
kept, and the outputs are written atomically at the end.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from chexgen.benchmark.config import BenchmarkConfig
from chexgen.benchmark.models import MODELS_DIR, PreparedModel, generate_model, prepare_models, read_timing
from chexgen.benchmark.report import write_outputs
from chexgen.benchmark.scoring import ModelScores, compare_distances, compare_models, finding_breakdown, score_model
from chexgen.benchmark.sets import FEATURES_DIR, ImageSet, build_extractors, load_image_set
from chexgen.data.manifest import Record, read_manifest
from chexgen.errors import ChexgenError
from chexgen.generation.prompts import PromptItem
from chexgen.utils import atomic_write_json

__all__ = ["BenchmarkResult", "run_benchmark", "real_prompt_items"]

log = logging.getLogger(__name__)


@dataclass
class BenchmarkResult:
    """What a run did: output paths (process 0), each model's scores, this process's generation counts."""

    out: Path
    outputs: dict[str, str] = field(default_factory=dict)
    scores: list[ModelScores] = field(default_factory=list)
    generated: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    world: int = 1


def _records(path: str, split: str | None, what: str, limit: int | None = None) -> tuple[list[Record], Path]:
    p = Path(path)
    if not p.is_file():
        raise ChexgenError(f"{what} manifest {p} does not exist")
    records = read_manifest(p)
    if split is not None:
        records = [r for r in records if r.split == split]
        if not records:
            raise ChexgenError(f"{what} manifest {p}: no record has split {split!r}")
    records = records[:limit] if limit else records
    if len(records) < 2:
        raise ChexgenError(f"{what} manifest {p}: need at least 2 records, got {len(records)}")
    for r in records:
        if r.image is None or not r.resolve(r.image, p.parent).is_file():
            raise ChexgenError(f"{what} manifest {p}: record {r.id!r}: image not found "
                               f"({r.resolve(r.image, p.parent) if r.image else 'no image path'})")
    return records, p.parent


def real_prompt_items(records: Sequence[Record], where: str) -> list[PromptItem]:
    """One prompt per real record: its impression, else its report (a record with neither is an error)."""
    items = []
    for r in records:
        text = (r.impression or r.report or "").strip()
        if not text:
            raise ChexgenError(f"{where}: record {r.id!r} has no impression or report to prompt with")
        items.append(PromptItem(text, r, f"{where}: record {r.id}"))
    return items


def _use_cpu(device: str | None) -> bool:
    import torch

    return torch.device(device).type == "cpu" if device else not torch.cuda.is_available()


def _figures(real: ImageSet, models: dict[str, ImageSet], cfg: BenchmarkConfig, items: Sequence[PromptItem]):
    from chexgen.evaluation.plots import compute_tsne, grid_png, tsne_plot_png
    from chexgen.evaluation.report import Figure

    figs = []
    row_of = {r.id: i for i, r in enumerate(real.records)}
    g = min(cfg.grid_prompts, len(items))
    rows = [[real.images[row_of[items[i].source.id]] for i in range(g)]]
    for syn in models.values():
        first = {int(r.extra.get("prompt_index", -1)): k for k, r in enumerate(syn.records)
                 if int(r.extra.get("image_index", 0)) == 0}
        rows.append([syn.images[first[i]] for i in range(g) if i in first])
    caption = ("Rows: real source image, then " + ", ".join(models) + " (same prompt and seed down a column). "
               + " | ".join(f"{i + 1}: “{items[i].prompt}”" for i in range(g)))
    figs.append(Figure("Same prompts and seeds across models", grid_png(rows), caption, section="Side by side",
                       alt="grid across models"))
    if cfg.tsne:
        first_ext = cfg.extractors[0].name
        feats, flags, names = [], [], []
        for name, s in [("real", real), *models.items()]:
            f = s.features[first_ext].features[: cfg.tsne_max]
            feats.append(f)
            flags += [name != "real"] * len(f)
            names += [name] * len(f)
        emb = compute_tsne(np.concatenate(feats), seed=cfg.seed)
        figs.append(Figure(f"t-SNE of {first_ext} features", tsne_plot_png(emb, flags, names,
                                                                           title=f"t-SNE of {first_ext} features"),
                           "colour = set; o = real, x = synthetic", section="Feature space", alt="t-SNE"))
    return figs


def run_benchmark(cfg: BenchmarkConfig, progress: bool = True) -> BenchmarkResult:
    """Run the benchmark (see the module docstring); process 0's result carries the output paths."""
    from accelerate import PartialState

    from chexgen import __version__

    t0 = time.perf_counter()
    real_recs, real_root = _records(cfg.real, cfg.split, "real", cfg.max_prompts)
    items = real_prompt_items(real_recs, cfg.real)
    train_recs, train_root = ((real_recs, real_root) if cfg.train is None
                              else _records(cfg.train, cfg.train_split, "train"))
    prepared: list[PreparedModel] = prepare_models(cfg, items)
    state = PartialState(cpu=_use_cpu(cfg.device))
    device = cfg.device or str(state.device)
    extractors = build_extractors(cfg.extractors, device=device)
    reid_net = None
    if cfg.reid is not None:
        from chexgen.evaluation.reid import load_reid_network

        reid_net = load_reid_network(cfg.reid.weights, device=device)
    rank, world = state.process_index, state.num_processes
    barrier = state.wait_for_everyone if world > 1 else None
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ChexgenError(f"benchmark out {out} exists and is not a folder")
    result = BenchmarkResult(out=out, rank=rank, world=world)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.resolved.json", cfg.to_dict())
    for pm in prepared:
        log.info("benchmark: model %s (%s)", pm.entry.name, pm.kind)
        result.generated[pm.entry.name] = generate_model(pm, cfg, out, device, real_root, rank=rank, world=world,
                                                         barrier=barrier, progress=progress)
    if barrier is not None:
        barrier()
    if rank != 0:
        return result

    cache = out / FEATURES_DIR
    load = dict(extractors=extractors, entries=cfg.extractors, analysis_size=cfg.analysis_size,
                batch_size=cfg.batch_size, cache_dir=cache, progress=progress)
    real = load_image_set("real", real_recs, real_root, **load)
    train = real if cfg.train is None else load_image_set("train", train_recs, train_root, **load)
    models: dict[str, ImageSet] = {}
    expected = len(items) * cfg.images_per_prompt
    for pm in prepared:
        folder = out / MODELS_DIR / pm.entry.name
        recs = read_manifest(folder / "manifest.jsonl")
        if len(recs) != expected:
            raise ChexgenError(f"{folder}: {len(recs)} of {expected} images are finished; run the benchmark again")
        models[pm.entry.name] = load_image_set(f"model-{pm.entry.name}", recs, folder, **load)
    scores = [score_model(name, real, syn, train, cfg, cfg.extractors, read_timing(out, name), reid_net)
              for name, syn in models.items()]
    tests = compare_models(scores)
    fd_tests = compare_distances(real, models, cfg.extractors, cfg.distribution_bootstrap, cfg.level, cfg.seed)
    findings = finding_breakdown(real, models, {s.name: s for s in scores}, cfg.extractors, cfg.min_finding_images)
    figures = _figures(real, models, cfg, items)
    results = {
        "chexgen_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            "config": cfg.source, "real": cfg.real, "split": cfg.split, "n_real": len(real_recs),
            "n_prompts": len(items), "images_per_prompt": cfg.images_per_prompt, "seed": cfg.seed,
            "train": cfg.train or cfg.real, "n_train": len(train_recs),
            "extractors": {name: ext.describe() for name, ext in extractors.items()},
            "reid": None if cfg.reid is None else {"weights": cfg.reid.weights, "threshold": cfg.reid.threshold},
            "knn_k": cfg.knn_k, "bootstrap": cfg.bootstrap, "distribution_bootstrap": cfg.distribution_bootstrap,
        },
        "models": {s.name: {
            "settings": json.loads((out / MODELS_DIR / s.name / "generation.json").read_text(encoding="utf-8")),
            "metrics": s.metrics, "per_prompt": s.per_prompt, "per_class_auroc": s.per_class_auroc,
            "memorisation": s.memorisation, "reid": s.reid, "timing": s.timing, "n_images": s.n_images,
            "n_matched": s.n_matched} for s in scores},
        "paired_tests": tests,
        "paired_fd": fd_tests,
        "per_finding": findings,
        "config": cfg.to_dict(),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    result.outputs = write_outputs(out, results, scores, cfg.extractors, tests, findings, figures, cfg.title,
                                   fd_tests=fd_tests)
    result.scores = scores
    return result
