"""``chexgen evaluate``: compare a synthetic manifest with a real one and write report.html + metrics.json."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from chexgen.commands._types import nonneg_int, positive_int, probability
from chexgen.errors import ChexgenError

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", required=True, metavar="MANIFEST", help="Real manifest (JSONL / Parquet).")
    p.add_argument("--synthetic", required=True, metavar="MANIFEST", help="Synthetic manifest to evaluate.")
    p.add_argument("--out", required=True, metavar="DIR", help="Output folder for report.html and metrics.json.")
    p.add_argument("--features", default="xrv", metavar="xrv|clip|inception|PATH",
                   help="Feature extractor: TorchXRayVision DenseNet121, open_clip image encoder, FID "
                        "Inception-v3, or the path of a chexgen-trained classifier (TorchScript or pickled module).")
    p.add_argument("--weights", default=None,
                   help="Extractor weights. xrv: weights name (densenet121-res224-all, -chex, -mimic_ch, ...) or "
                        "local file; clip: MODEL:PRETRAINED (e.g. ViT-L-14:openai or ViT-L-14:/path/ckpt.pt); "
                        "inception: local .pth of torch-fidelity's FID Inception weights.")
    p.add_argument("--random-init", action="store_true",
                   help="Use a randomly initialised extractor (offline pipeline check only; numbers are not "
                        "comparable with anything).")
    p.add_argument("--max-images", type=positive_int, default=None, metavar="N", help="Use at most N images per manifest.")
    p.add_argument("--bootstrap", type=nonneg_int, default=1000, help="Bootstrap draws for confidence intervals (0 = none).")
    p.add_argument("--distribution-bootstrap", type=nonneg_int, default=50,
                   help="Cap on bootstrap draws for FID / KID / precision-recall (each draw recomputes them).")
    p.add_argument("--compare", default=None, metavar="MANIFEST",
                   help="A second synthetic manifest: metrics for it too, and Wilcoxon tests on shared prompts.")
    p.add_argument("--train", default=None, metavar="MANIFEST",
                   help="Training manifest for the memorisation check (default: the real manifest).")
    p.add_argument("--segmenter", default=None, metavar="PATH",
                   help="Segmentation model (TorchScript or pickled module: [B,1,H,W] in [0,1] -> mask logits) "
                        "for control adherence against the synthetic records' masks / boxes.")
    p.add_argument("--image-size", type=positive_int, default=224, help="Input size for a chexgen classifier extractor.")
    p.add_argument("--analysis-size", type=positive_int, default=256,
                   help="Pixel size of the gray copies used for SSIM, MS-SSIM, memorisation and figures.")
    p.add_argument("--batch-size", type=positive_int, default=16, help="Images per forward pass.")
    p.add_argument("--memorisation-ssim", type=probability, default=0.95,
                   help="SSIM at or above which a synthetic image is flagged as a copy of a training image.")
    p.add_argument("--no-tsne", action="store_true", help="Skip the t-SNE figure (slow on thousands of images).")
    p.add_argument("--device", default="cpu", help="Torch device for feature extraction.")
    p.add_argument("--seed", type=nonneg_int, default=0, help="Seed for bootstrap, KID subsets and t-SNE.")


def _load_module(path: Path, what: str):
    import torch

    if not path.exists():
        raise ChexgenError(f"{what} {path}: not found")
    if what == "classifier" and path.is_dir() and (path / "config.json").is_file():
        # a folder written by `chexgen downstream classifier` (chexgen.downstream.save_classifier)
        from chexgen.downstream.classifier import load_classifier

        return load_classifier(path)
    if path.is_dir():
        raise ChexgenError(f"{what} {path}: expected a TorchScript or pickled torch module file")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError):
        pass
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:
        raise ChexgenError(f"{what} {path}: could not load ({e})") from None
    if not callable(obj):
        raise ChexgenError(f"{what} {path}: expected a torch module, got {type(obj).__name__} (a state dict needs "
                           "its model class: save the whole module or a TorchScript export)")
    return obj


def build_extractor_from_args(args: argparse.Namespace):
    from chexgen.evaluation.features import EXTRACTOR_KINDS, ClassifierExtractor, build_extractor

    if args.features in EXTRACTOR_KINDS:
        return build_extractor(args.features, args.weights, device=args.device, random_init=args.random_init)
    path = Path(args.features)
    if not path.exists():
        raise ChexgenError(f"--features {args.features!r}: expected one of {EXTRACTOR_KINDS} or a classifier file")
    model = _load_module(path, "classifier")
    size = int(getattr(model, "input_size", args.image_size))
    names = getattr(model, "class_names", None) or getattr(model, "classes", None)
    return ClassifierExtractor(model, input_size=size, name=f"classifier:{path.name}", class_names=names,
                               device=args.device)


def run(args: argparse.Namespace) -> int:
    from chexgen.evaluation.suite import EvaluationConfig, evaluate_manifests

    for flag in ("real", "synthetic", "compare", "train"):
        value = getattr(args, flag)
        if value is not None and not os.path.isfile(value):
            raise ChexgenError(f"--{flag} {value}: manifest not found")
    if args.max_images is not None and args.max_images < 2:
        raise ChexgenError(f"--max-images must be at least 2, got {args.max_images}")
    cfg = EvaluationConfig(
        max_images=args.max_images, bootstrap=args.bootstrap, distribution_bootstrap=args.distribution_bootstrap,
        analysis_size=args.analysis_size, batch_size=args.batch_size, memorisation_ssim=args.memorisation_ssim,
        tsne=not args.no_tsne, seed=args.seed,
    )
    extractor = build_extractor_from_args(args)
    segmenter = _load_module(Path(args.segmenter), "segmenter") if args.segmenter else None
    results = evaluate_manifests(args.real, args.synthetic, args.out, extractor, cfg,
                                 compare_manifest=args.compare, train_manifest=args.train, segmenter=segmenter)
    m = results["metrics"]
    summary = {k: round(v["value"], 4) for k, v in m.items() if isinstance(v.get("value"), float)}
    print(json.dumps(summary))
    for w in results.get("warnings", []):
        log.warning(w)
    print(f"wrote {results['outputs']['report_html']} and {results['outputs']['metrics_json']}")
    return 0
