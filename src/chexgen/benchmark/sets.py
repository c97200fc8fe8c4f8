"""Image sets of a benchmark (real, training reference, each model): read once, described by every extractor.

Each image is read once; every extractor gets it at its own input size (centre crop, as
``chexgen evaluate`` loads images) and a small float16 copy is kept for MS-SSIM, memorisation,
re-identification and figures. Features are cached per set and extractor in
``out/features/<set>__<extractor>.npz`` under a key made of the image files (path, size, mtime)
and the extractor's description, so a resumed or extended benchmark only describes what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from chexgen.benchmark.config import ExtractorEntry
from chexgen.data.manifest import Record
from chexgen.errors import ChexgenError
from chexgen.evaluation.features import FeatureExtractor, FeatureSet
from chexgen.utils import atomic_path

__all__ = ["ImageSet", "build_extractors", "load_image_set", "FEATURES_DIR"]

log = logging.getLogger(__name__)

FEATURES_DIR = "features"


@dataclass
class ImageSet:
    """One set's records, its features per extractor name, and its small analysis copies."""

    name: str
    records: list[Record]
    features: dict[str, FeatureSet]
    images: np.ndarray  # [N, S, S] float16 in [0, 1]
    root: Path | None = None
    info: dict = field(default_factory=dict)


def _load_classifier(entry: ExtractorEntry, device: str) -> FeatureExtractor:
    """A classifier extractor: a ``chexgen downstream classifier`` folder or a TorchScript file (never a pickle)."""
    from chexgen.downstream.classifier import load_classifier
    from chexgen.evaluation.features import ClassifierExtractor
    from chexgen.evaluation.run import load_module_file

    model = load_module_file(entry.weights or "", f"classifier {entry.weights}", trust_pickle=False,
                             folder_loader=load_classifier)
    size = int(entry.image_size or getattr(model, "input_size", 224))
    names = getattr(model, "class_names", None)
    return ClassifierExtractor(model, input_size=size, name=entry.name, class_names=names, device=device)


def build_extractors(entries: Sequence[ExtractorEntry], device: str = "cpu") -> dict[str, FeatureExtractor]:
    """Every configured extractor, loaded (a missing or unreadable one is an error now, before generating)."""
    import torch

    from chexgen.evaluation.features import build_extractor

    out: dict[str, FeatureExtractor] = {}
    for e in entries:
        try:
            # a random-init extractor is seeded, so every run (and every cached feature file) sees the same one
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                out[e.name] = (_load_classifier(e, device) if e.kind == "classifier"
                               else build_extractor(e.kind, e.weights, device=device, random_init=e.random_init))
        except ChexgenError as err:
            raise ChexgenError(f"extractor {e.name} ({e.kind}): {err}") from None
    return out


def _extractor_key(entry: ExtractorEntry, ext: FeatureExtractor) -> dict:
    # "dim" is left out: some extractors (classifiers) only learn it from their first forward pass
    key = {"entry": vars(entry), "describe": {k: v for k, v in ext.describe().items() if k != "dim"}}
    if entry.weights and os.path.exists(entry.weights):
        st = os.stat(entry.weights)
        key["weights_stat"] = [st.st_size, st.st_mtime_ns]
    return key


def _files_key(records: Sequence[Record], root: Path) -> list:
    out = []
    for r in records:
        p = r.resolve(r.image, root)
        st = p.stat()
        out.append([r.id, str(p), st.st_size, st.st_mtime_ns])
    return out


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def load_image_set(name: str, records: Sequence[Record], root: "str | os.PathLike",
                   extractors: dict[str, FeatureExtractor], entries: Sequence[ExtractorEntry], analysis_size: int,
                   batch_size: int = 16, cache_dir: Path | None = None, progress: bool = True) -> ImageSet:
    """Read every record's image once; features per extractor (cached), small copies (see module docstring)."""
    import torch
    from tqdm.auto import tqdm

    from chexgen.data.imageio import fit_square, load_gray

    root = Path(root)
    records = list(records)
    for r in records:
        if r.image is None or not r.resolve(r.image, root).is_file():
            raise ChexgenError(f"{name}: record {r.id!r}: image not found: {r.resolve(r.image, root) if r.image else None}")
    files = _files_key(records, root)
    by_name = {e.name: e for e in entries}
    cached: dict[str, FeatureSet] = {}
    keys: dict[str, str] = {}
    for ext_name, ext in extractors.items():
        keys[ext_name] = _digest({"files": files, "extractor": _extractor_key(by_name[ext_name], ext)})
        path = cache_dir / f"{name}__{ext_name}.npz" if cache_dir is not None else None
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == keys[ext_name]:
                    cached[ext_name] = FeatureSet(z["features"], z["scores"] if "scores" in z else None)
    todo = {k: v for k, v in extractors.items() if k not in cached}
    buffers: dict[str, list[np.ndarray]] = {k: [] for k in todo}
    feats: dict[str, list[np.ndarray]] = {k: [] for k in todo}
    scores: dict[str, list[np.ndarray]] = {k: [] for k in todo}

    def flush(k: str) -> None:
        if buffers[k]:
            out = todo[k](torch.from_numpy(np.stack(buffers[k]))[:, None])
            feats[k].append(out.features.numpy().astype(np.float64))
            if out.scores is not None:
                scores[k].append(out.scores.numpy().astype(np.float64))
            buffers[k] = []

    small = []
    for r in tqdm(records, desc=f"{name}: read" + (" + features" if todo else ""), unit="img", disable=not progress):
        img = load_gray(r.resolve(r.image, root))
        small.append(fit_square(img, analysis_size, "crop").astype(np.float16))
        for k, ext in todo.items():
            buffers[k].append(fit_square(img, ext.input_size, "crop"))
            if len(buffers[k]) >= batch_size:
                flush(k)
    result = dict(cached)
    for k in todo:
        flush(k)
        f = np.concatenate(feats[k]) if feats[k] else np.zeros((0, 0))
        s = np.concatenate(scores[k]) if scores[k] and len(scores[k]) == len(feats[k]) else None
        result[k] = FeatureSet(f, s)
        if cache_dir is not None:
            arrays = {"features": f, "key": np.array(keys[k])}
            if s is not None:
                arrays["scores"] = s
            with atomic_path(cache_dir / f"{name}__{k}.npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **arrays)
    images = np.stack(small) if small else np.zeros((0, analysis_size, analysis_size), np.float16)
    return ImageSet(name=name, records=records, features={k: result[k] for k in extractors}, images=images,
                    root=root, info={"cached_features": sorted(cached)})
