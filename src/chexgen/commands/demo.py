"""``chexgen demo``: generate with the bundled phantom-trained model, evaluate, write one HTML report."""

from __future__ import annotations

import argparse

from chexgen.commands._types import finite_float, nonneg_float, nonneg_int, positive_int

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from chexgen.demo import DemoConfig
    from chexgen.demo.pack import PACK_SAMPLER, PACK_STEPS
    from chexgen.models.precision import PRECISION_HELP, PRECISIONS

    d = DemoConfig()
    p.add_argument("--out", default=d.out, help="Output folder: report.html, metrics.json, images/, "
                   "synthetic_manifest.jsonl and the held-out phantom cohort.")
    p.add_argument("--model", default=None, help="A demo model folder (pipeline/ + classifier/ + prevalence.yaml) or a "
                   "pipeline folder; default: the model bundled with chexgen.")
    p.add_argument("--classifier", default=None, help="Classifier folder used for the metrics (default: <model>/classifier).")
    p.add_argument("--n-heldout", type=positive_int, default=d.n_heldout,
                   help="Held-out phantom cases rendered as the real reference; one image is generated per case.")
    p.add_argument("--heldout-seed", type=int, default=d.heldout_seed,
                   help="Seed of the held-out phantom cohort (the bundled model was trained on seed 0).")
    p.add_argument("--images-per-prompt", type=positive_int, default=d.images_per_prompt,
                   help="Images per showcase prompt and per real NLMCXR impression.")
    p.add_argument("--n-nlmcxr", type=nonneg_int, default=d.n_nlmcxr,
                   help="Real impressions taken from the Indiana University reports shipped by torchxrayvision (0 = none).")
    p.add_argument("--control", default=None, help="ControlNet adapter folder for the mask / box guided part "
                   "(default: <model>/control when it exists).")
    p.add_argument("--n-control-masks", type=nonneg_int, default=d.n_control_masks,
                   help="Real SIIM-ACR pneumothorax masks (shipped by torchxrayvision) to generate from (0 = none).")
    p.add_argument("--n-control-boxes", type=nonneg_int, default=d.n_control_boxes,
                   help="Real NIH ChestX-ray14 boxes (shipped by torchxrayvision) to generate from (0 = none).")
    p.add_argument("--control-images", type=positive_int, default=d.control_images,
                   help="Images per mask / box, each drawn with and without the adapter from the same seed.")
    p.add_argument("--sampler", default=d.sampler, help="Sampler, as in chexgen generate (default: the model's own; "
                   f"the bundled model stores {PACK_SAMPLER}; with --pack-*: {PACK_SAMPLER}, stored as the packed "
                   "model's default).")
    p.add_argument("--steps", type=positive_int, default=d.steps, help="Sampling steps (default: the model's own; "
                   f"with --pack-*: {PACK_STEPS}, stored as the packed model's default).")
    p.add_argument("--guidance", type=nonneg_float, default=d.guidance, help="Classifier-free guidance scale (default: the "
                   "model's own; with --pack-*: stored as the packed model's default).")
    p.add_argument("--seed", type=int, default=d.seed, help="Base seed of the generated images.")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="Images per sampling batch.")
    p.add_argument("--bootstrap", type=positive_int, default=d.bootstrap, help="Bootstrap draws for confidence intervals.")
    p.add_argument("--device", default=d.device, help="Torch device (cpu, cuda).")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--workers", type=positive_int, default=d.workers, help="Processes rendering the held-out phantom cohort.")
    p.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    p.add_argument("--quick", action="store_true", help="A smoke run in well under a minute: 16 held-out cases, one "
                   "image per prompt, 2 NLMCXR impressions, one SIIM mask and one NIH box, 10 steps, 50 bootstrap "
                   "draws (numbers are then too noisy to judge the model; options given explicitly still win).")
    g = p.add_argument_group("packing a retrained demo model (used by scripts/train_demo_model.sh)")
    g.add_argument("--pack-pipeline", default=None, help="Instead of running the demo: a trained pipeline folder "
                   "(chexgen train export) to pack, with --pack-classifier, --pack-prevalence and --pack-to.")
    g.add_argument("--pack-classifier", default=None, help="Classifier folder (chexgen downstream classifier).")
    g.add_argument("--pack-prevalence", default=None, help="The phantom prevalence file the model was trained with.")
    g.add_argument("--pack-control", default=None, help="ControlNet adapter folder (chexgen train-control on the "
                   "packed pipeline) to pack as control/.")
    g.add_argument("--pack-vae", default=None, help="A VAE folder to pack instead of the pipeline's own: its decoder "
                   "fine-tuned by chexgen train-vae --decoder-only (the encoder and scaling_factor must be the "
                   "pipeline's, which is checked).")
    g.add_argument("--pack-to", default=None, help="Destination demo model folder (weights stored in fp16).")
    g.add_argument("--pack-clip-latents", type=finite_float, default=5.0, help="Latent clipping stored as the model's "
                   "sampling default (about the largest |latent| of the training cache; <= 0 turns it off).")


QUICK = {"n_heldout": 16, "images_per_prompt": 1, "n_nlmcxr": 2, "n_control_masks": 1, "n_control_boxes": 1,
         "control_images": 1, "steps": 10, "bootstrap": 50}


def _apply_quick(args: argparse.Namespace) -> None:
    from chexgen.demo import DemoConfig

    d = DemoConfig()
    for name, value in QUICK.items():
        if getattr(args, name) == getattr(d, name):  # not given explicitly
            setattr(args, name, value)


def run(args: argparse.Namespace) -> int:
    import torch

    from chexgen.demo import DemoConfig, run_demo
    from chexgen.errors import ChexgenError

    if args.pack_pipeline:
        from chexgen.demo import pack_demo_model
        from chexgen.demo.pack import PACK_SAMPLER, PACK_STEPS

        missing = [n for n in ("pack_classifier", "pack_prevalence", "pack_to") if not getattr(args, n)]
        if missing:
            raise ChexgenError("--pack-pipeline also needs " + ", ".join("--" + m.replace("_", "-") for m in missing))
        clip = args.pack_clip_latents if args.pack_clip_latents > 0 else None
        info = pack_demo_model(args.pack_pipeline, args.pack_classifier, args.pack_prevalence, args.pack_to,
                               clip_latents=clip, sampler=args.sampler or PACK_SAMPLER,
                               steps=args.steps or PACK_STEPS,
                               guidance=args.guidance,
                               control_dir=args.pack_control, vae_dir=args.pack_vae)
        print(f"packed demo model into {info['dest']}: {info['bytes'] / 1e6:.1f} MB in {len(info['files'])} files")
        return 0
    if args.quick:
        _apply_quick(args)
    if args.n_heldout < 8:
        raise ChexgenError(f"--n-heldout must be at least 8 (FID and AUROC need a few cases), got {args.n_heldout}")
    for name in ("images_per_prompt", "control_images"):
        if getattr(args, name) < 1:
            raise ChexgenError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("n_control_masks", "n_control_boxes", "n_nlmcxr"):
        if getattr(args, name) < 0:
            raise ChexgenError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    cfg = DemoConfig(out=args.out, model=args.model, classifier=args.classifier, n_heldout=args.n_heldout,
                     heldout_seed=args.heldout_seed, images_per_prompt=args.images_per_prompt,
                     n_nlmcxr=args.n_nlmcxr, control=args.control, n_control_masks=args.n_control_masks,
                     n_control_boxes=args.n_control_boxes, control_images=args.control_images,
                     sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                     seed=args.seed, batch_size=args.batch_size, bootstrap=args.bootstrap, device=args.device,
                     precision=args.precision,
                     workers=args.workers, progress=not args.no_progress)
    html = run_demo(cfg)
    print(f"chexgen demo: report written to {html.resolve()}")
    return 0
