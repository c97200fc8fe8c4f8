"""``chexgen evaluate``: compare a synthetic manifest with a real one and write report.html + metrics.json."""

from __future__ import annotations

import argparse
import json
import logging

from chexgen.commands._types import nonneg_int, positive_int, probability
from chexgen.models.precision import PRECISIONS

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", required=True, metavar="MANIFEST", help="Real manifest (JSONL / Parquet).")
    p.add_argument("--synthetic", required=True, metavar="MANIFEST", help="Synthetic manifest to evaluate.")
    p.add_argument("--out", required=True, metavar="DIR", help="Output folder for report.html and metrics.json.")
    p.add_argument("--features", default="xrv", metavar="xrv|clip|inception|rad-dino|dinov2|PATH",
                   help="Feature extractor: TorchXRayVision DenseNet121, open_clip image encoder, FID "
                        "Inception-v3, RAD-DINO, DINOv2, or the path of a classifier: a chexgen classifier folder "
                        "(chexgen downstream classifier), a TorchScript file, or a pickled module "
                        "(only with --trust-pickle).")
    p.add_argument("--weights", default=None,
                   help="Extractor weights. xrv: weights name (densenet121-res224-all, -chex, -mimic_ch, ...) or "
                        "local file; clip: MODEL:PRETRAINED (e.g. ViT-L-14:openai or ViT-L-14:/path/ckpt.pt); "
                        "inception: local .pth of torch-fidelity's FID Inception weights; rad-dino / dinov2: hub id "
                        "or local transformers folder (default microsoft/rad-dino / facebook/dinov2-base).")
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
                   help="Segmentation model (TorchScript, or a pickled module with --trust-pickle: [B,1,H,W] in "
                        "[0,1] -> mask logits) for control adherence against the synthetic records' masks / boxes.")
    p.add_argument("--trust-pickle", action="store_true",
                   help="Allow --features / --segmenter files that are pickled torch modules (torch.save(model)). "
                        "Unpickling runs any code the file holds: use only for files you made or trust. "
                        "TorchScript files and chexgen classifier folders never need it.")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="Refuse image paths of the manifests that resolve (symlinks followed) outside DIR; they "
                        "are listed as rejects (default: no confinement).")
    p.add_argument("--reid-weights", default=None, metavar="PATH",
                   help="Patient re-identification network weights (CheXGenBench's Siamese ResNet-50 state dict, "
                        "ResNet-50_epoch11_data_handling_RPN.pth): scores every synthetic image against every "
                        "training image (--train, default the real manifest).")
    p.add_argument("--reid-threshold", type=probability, default=0.5,
                   help="Re-identification score above which a synthetic image counts as matching a training patient.")
    p.add_argument("--image-size", type=positive_int, default=224, help="Input size for a chexgen classifier extractor.")
    p.add_argument("--analysis-size", type=positive_int, default=256,
                   help="Pixel size of the gray copies used for SSIM, MS-SSIM, memorisation and figures.")
    p.add_argument("--batch-size", type=positive_int, default=16, help="Images per forward pass.")
    p.add_argument("--memorisation-ssim", type=probability, default=0.95,
                   help="SSIM at or above which a synthetic image is flagged as a copy of a training image.")
    p.add_argument("--no-tsne", action="store_true", help="Skip the t-SNE figure (slow on thousands of images).")
    p.add_argument("--device", default="cpu", help="Torch device for feature extraction.")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="Precision of feature extraction: fp32 (default: metrics that do not depend on the machine), "
                        "auto, bf16 or fp16 (faster on CPUs with AMX-BF16 / AVX512-BF16; features then differ "
                        "slightly, and the FID Inception network always runs in fp32).")
    p.add_argument("--seed", type=nonneg_int, default=0, help="Seed for bootstrap, KID subsets and t-SNE.")


def run(args: argparse.Namespace) -> int:
    from chexgen.downstream.classifier import load_classifier
    from chexgen.evaluation.run import EvaluateOptions, run_evaluation

    opts = EvaluateOptions(
        real=args.real, synthetic=args.synthetic, out=args.out, features=args.features, weights=args.weights,
        random_init=args.random_init, max_images=args.max_images, bootstrap=args.bootstrap,
        distribution_bootstrap=args.distribution_bootstrap, compare=args.compare, train=args.train,
        segmenter=args.segmenter, image_size=args.image_size, analysis_size=args.analysis_size,
        batch_size=args.batch_size, memorisation_ssim=args.memorisation_ssim, tsne=not args.no_tsne,
        device=args.device, precision=args.precision, seed=args.seed, trust_pickle=args.trust_pickle,
        data_root=args.data_root, reid_weights=args.reid_weights, reid_threshold=args.reid_threshold,
    )
    results = run_evaluation(opts, folder_loader=load_classifier)
    m = results["metrics"]
    summary = {k: round(v["value"], 4) for k, v in m.items() if isinstance(v.get("value"), float)}
    print(json.dumps(summary))
    for w in results.get("warnings", []):
        log.warning(w)
    n_rejected = results["rejects"]["count"]
    print(f"rejected: {n_rejected} records (listed in {results['rejects']['file']})" if n_rejected
          else "rejected: no records")
    print(f"wrote {results['outputs']['report_html']} and {results['outputs']['metrics_json']}")
    return 1 if n_rejected else 0
