"""``chexgen evaluate`` as one library call: options -> extractor, segmenter, suite, report.

Model files given by path are loaded without running code from them unless the
user says so: a TorchScript archive (``torch.jit.save``) and a chexgen
classifier folder (``config.json`` + safetensors) load as they are; a *pickled*
module (``torch.save(model)``) can execute anything while it is unpickled, so it
is refused unless ``trust_pickle`` is set (``--trust-pickle``).
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from chexgen.errors import ChexgenError

__all__ = ["EvaluateOptions", "load_module_file", "build_extractor_for", "run_evaluation"]

log = logging.getLogger(__name__)

#: Loads a model *folder* (e.g. :func:`chexgen.downstream.classifier.load_classifier`); passed in by the
#: caller so that evaluation does not import the layers above it.
FolderLoader = Callable[[Path], Any]


@dataclass
class EvaluateOptions:
    """Everything ``chexgen evaluate`` takes (see its ``--help`` for each option)."""

    real: str
    synthetic: str
    out: str
    features: str = "xrv"
    weights: str | None = None
    random_init: bool = False
    max_images: int | None = None
    bootstrap: int = 1000
    distribution_bootstrap: int = 50
    compare: str | None = None
    train: str | None = None
    segmenter: str | None = None
    image_size: int = 224
    analysis_size: int = 256
    batch_size: int = 16
    memorisation_ssim: float = 0.95
    tsne: bool = True
    device: str = "cpu"
    precision: str = "fp32"  # feature extraction: auto | fp32 | bf16 | fp16 (fp32: metrics independent of the CPU)
    seed: int = 0
    trust_pickle: bool = False
    data_root: str | None = None
    reid_weights: str | None = None
    reid_threshold: float = 0.5


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding ``<name>/code/`` and ``constants.pkl``; a torch.save zip has neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def load_module_file(path: str | os.PathLike, what: str, trust_pickle: bool = False,
                     folder_loader: FolderLoader | None = None):
    """A callable model from ``path``: a folder (via ``folder_loader``), TorchScript, or (trusted) pickle."""
    import torch

    path = Path(path)
    if not path.exists():
        raise ChexgenError(f"{what} {path}: not found")
    if path.is_dir():
        if folder_loader is not None and (path / "config.json").is_file():
            return folder_loader(path)
        raise ChexgenError(f"{what} {path}: expected a chexgen classifier folder (config.json + model.safetensors), "
                           "a TorchScript file or a pickled torch module")
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as e:
            raise ChexgenError(f"{what} {path}: cannot load TorchScript ({str(e).splitlines()[0]})") from None
    if not trust_pickle:
        raise ChexgenError(
            f"{what} {path}: not TorchScript; it would be unpickled, which runs whatever code the file holds. "
            "Pass --trust-pickle only for a file you made or trust, or export the model with "
            "torch.jit.script / torch.jit.trace (or use a chexgen classifier folder)")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - unpickling fails in many ways; one line names the file
        raise ChexgenError(f"{what} {path}: could not load ({type(e).__name__}: {e})") from None
    if not callable(obj):
        raise ChexgenError(f"{what} {path}: expected a torch module, got {type(obj).__name__} (a state dict needs "
                           "its model class: save the whole module or a TorchScript export)")
    return obj


def build_extractor_for(opts: EvaluateOptions, folder_loader: FolderLoader | None = None):
    """The feature extractor ``--features`` names: a built-in kind or a classifier by path."""
    from chexgen.evaluation.features import EXTRACTOR_KINDS, ClassifierExtractor, build_extractor

    if opts.features in EXTRACTOR_KINDS:
        return build_extractor(opts.features, opts.weights, device=opts.device, random_init=opts.random_init,
                               precision=opts.precision)
    path = Path(opts.features)
    if not path.exists():
        raise ChexgenError(f"--features {opts.features!r}: expected one of {EXTRACTOR_KINDS} or a classifier file")
    model = load_module_file(path, "classifier", opts.trust_pickle, folder_loader)
    size = int(getattr(model, "input_size", opts.image_size))
    names = getattr(model, "class_names", None) or getattr(model, "classes", None)
    return ClassifierExtractor(model, input_size=size, name=f"classifier:{path.name}", class_names=names,
                               device=opts.device).set_precision(opts.precision)


def run_evaluation(opts: EvaluateOptions, folder_loader: FolderLoader | None = None) -> dict:
    """Check the options, build the extractor (and segmenter), evaluate, write the report; return results."""
    from chexgen.evaluation.suite import EvaluationConfig, evaluate_manifests

    for flag in ("real", "synthetic", "compare", "train"):
        value = getattr(opts, flag)
        if value is not None and not os.path.isfile(value):
            raise ChexgenError(f"--{flag} {value}: manifest not found")
    if opts.max_images is not None and opts.max_images < 2:
        raise ChexgenError(f"--max-images must be at least 2, got {opts.max_images}")
    if opts.data_root is not None and not os.path.isdir(opts.data_root):
        raise ChexgenError(f"--data-root {opts.data_root}: not a folder")
    cfg = EvaluationConfig(
        max_images=opts.max_images, bootstrap=opts.bootstrap, distribution_bootstrap=opts.distribution_bootstrap,
        analysis_size=opts.analysis_size, batch_size=opts.batch_size, memorisation_ssim=opts.memorisation_ssim,
        tsne=opts.tsne, seed=opts.seed, reid_threshold=opts.reid_threshold,
    )
    if not 0.0 <= opts.reid_threshold <= 1.0:
        raise ChexgenError(f"--reid-threshold must be within [0, 1], got {opts.reid_threshold}")
    extractor = build_extractor_for(opts, folder_loader)
    segmenter = load_module_file(opts.segmenter, "segmenter", opts.trust_pickle) if opts.segmenter else None
    reid_net = None
    if opts.reid_weights:
        from chexgen.evaluation.reid import load_reid_network

        reid_net = load_reid_network(opts.reid_weights, device=opts.device)
    results = evaluate_manifests(opts.real, opts.synthetic, opts.out, extractor, cfg,
                                 compare_manifest=opts.compare, train_manifest=opts.train, segmenter=segmenter,
                                 data_root=opts.data_root, reid_net=reid_net)
    return results
