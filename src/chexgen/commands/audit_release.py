"""``chexgen audit-release``: check a synthetic set before sharing it; keep only what passes in OUT/release/."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("synthetic", metavar="SYNTHETIC_MANIFEST", help="Synthetic manifest to audit.")
    p.add_argument("--train", required=True, metavar="TRAIN_MANIFEST",
                   help="Manifest of the real (training / prompt source) data: identifiers and memorisation.")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="Output folder: report.html, metrics.json (data-owner only: they show training images) "
                        "and release/ (only the records that passed).")
    p.add_argument("--features", default="xrv", metavar="xrv|clip|inception|PATH",
                   help="Feature extractor for the nearest-training-image check: TorchXRayVision DenseNet121, "
                        "open_clip, FID Inception-v3, or a chexgen classifier folder / TorchScript file "
                        "(e.g. src/chexgen/assets/demo/classifier for phantom data).")
    p.add_argument("--weights", default=None, help="Extractor weights (as for `chexgen evaluate --weights`).")
    p.add_argument("--random-init", action="store_true",
                   help="Randomly initialised extractor (offline pipeline check; SSIM still finds copies).")
    p.add_argument("--salt-file", default=None, metavar="FILE",
                   help="The salt of the source-id hashes (made on first use); the audit fails if it lies inside the "
                        "synthetic set.")
    p.add_argument("--salt-source-ids", action="store_true",
                   help="Replace raw extra.source_id values (as `chexgen generate --manifest` writes them, so that "
                        "evaluate and reader studies can match) by salted hashes in what is released, instead of "
                        "failing on them. Needs --salt-file.")
    p.add_argument("--reid-model", default=None, metavar="PATH",
                   help="Re-identification model: CheXGenBench's Siamese ResNet-50 weights "
                        "(ResNet-50_epoch11_data_handling_RPN.pth, as `chexgen evaluate --reid-weights` takes) or a "
                        "TorchScript model f(a, b) -> same-patient probability for batches [B,1,H,W] in [0,1]; "
                        "without it the re-identification check is reported missing.")
    p.add_argument("--reid-threshold", type=float, default=0.5, help="Re-identification score that fails an image.")
    p.add_argument("--require-reid", action="store_true",
                   help="Count a missing re-identification check as a failure.")
    p.add_argument("--memorisation-ssim", type=float, default=0.95,
                   help="SSIM at or above which a synthetic image is a near copy of a training image.")
    p.add_argument("--feature-ratio", type=float, default=0.1,
                   help="Feature distance below this fraction of the training set's median nearest-neighbour "
                        "distance flags a near copy.")
    p.add_argument("--analysis-size", type=int, default=128, help="Pixel size of the gray copies used for SSIM.")
    p.add_argument("--max-train", type=int, default=None, metavar="N", help="Use at most N training images.")
    p.add_argument("--image-size", type=int, default=224, help="Input size for a TorchScript classifier extractor.")
    p.add_argument("--device", default="cpu", help="Torch device for feature extraction.")
    p.add_argument("--no-progress", action="store_true", help="Hide progress bars.")


def run(args: argparse.Namespace) -> int:
    from chexgen.release.audit import AuditConfig, run_audit_from_options

    cfg = AuditConfig(ssim_threshold=args.memorisation_ssim, feature_ratio=args.feature_ratio,
                      analysis_size=args.analysis_size, max_train=args.max_train, reid_threshold=args.reid_threshold,
                      require_reid=args.require_reid, progress=not args.no_progress)
    result = run_audit_from_options(args.synthetic, args.train, args.out, cfg, features=args.features,
                                    weights=args.weights, random_init=args.random_init, image_size=args.image_size,
                                    device=args.device, reid_model=args.reid_model, salt_file=args.salt_file,
                                    salt_source_ids=args.salt_source_ids)
    for name, c in result.checks.items():
        print(f"{name}: {c['status'].upper()} ({c.get('n_failed', 0)} records failing)")
    for rid, reasons in result.failures.items():
        for reason in reasons:
            print(f"  {rid}: {reason}")
    if result.skipped:
        print("skipped (missing or unreadable images): " + ", ".join(rid for rid, _ in result.skipped))
    print(f"audit-release: {'PASS' if result.passed else 'FAIL'}; {len(result.released)} records in "
          f"{result.release_dir}; report {result.report_html}")
    return result.exit_code
