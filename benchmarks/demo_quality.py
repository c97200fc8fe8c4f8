"""Quality bar of the bundled demo model, and the demo's wall time.

    python benchmarks/demo_quality.py [--n 256] [--model DIR] [--guidance 4 7] [--precision auto] [--skip-demo]
        [--reconstruction] [--classifier DIR] [--compare MODEL]

1. Renders ``--n`` held-out phantom cases (seed 1000; the model was trained on seed 0), generates one
   image from each case's impression, and scores both sets with the phantom classifier shipped beside
   the model: per-class AUROC of the generated images against the prompts' labels (mean over the
   findings the model was trained on) next to the classifier's AUROC on the real held-out images, and
   FID on the classifier's features (real vs generated) next to the FID between two halves of the real set.
   Several ``--guidance`` values are scored on the same cases and seeds, one table each.
   ``--reconstruction`` adds one more table: the real held-out images passed through the model's VAE (the
   ``vae-reconstruction`` backend of ``chexgen benchmark``: encode, decode a posterior sample) and scored the
   same way, which is the floor a generator sampling this autoencoder's latents cannot go below.
   ``--classifier DIR`` scores with another classifier folder than the model's (FID ratios carry over only
   within one classifier's features). ``--compare MODEL`` generates the same cases and seeds with a second
   demo model (first ``--guidance``) and compares the two FIDs by a paired bootstrap (real images and cases
   resampled once per draw for both; :func:`chexgen.benchmark.scoring.compare_distances`): two FID
   intervals at n 256 overlap widely even when one model is better on every draw.
   Generation runs in ``--precision`` (default auto: bf16 where the CPU has it) with the model's own sampler and
   steps unless ``--sampler`` / ``--steps`` say otherwise.
2. Times one default ``chexgen demo`` run (the "at most 60 s on 2 CPU cores" target; its CPU seconds are
   printed too, since a shared machine's wall clock includes the neighbours' load) and prints the
   localisation ratios of its spatial-control part (real SIIM masks / NIH boxes, with vs without the adapter).

Prints one table; numbers are measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="held-out phantom cases (one generated image each)")
    ap.add_argument("--model", default=None, help="demo model folder (default: the bundled one)")
    ap.add_argument("--sampler", default=None, help="sampler (default: the model's, IDDPM for the bundled one)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[4.0],
                    help="classifier-free guidance scale(s); several values give one row each (same seeds)")
    ap.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 for generation (default auto)")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--skip-demo", action="store_true", help="do not time a default `chexgen demo` run")
    ap.add_argument("--classifier", default=None, metavar="DIR",
                    help="score with this classifier folder instead of the model's own (the FID / AUROC instrument)")
    ap.add_argument("--compare", default=None, metavar="MODEL",
                    help="a second demo model (or pipeline folder): same cases and seeds at the first --guidance, "
                         "its own sampler and steps unless --sampler / --steps; paired bootstrap of the FID difference")
    ap.add_argument("--reconstruction", action="store_true",
                    help="also score the real held-out images passed through the model's VAE (encode, decode): "
                         "the FID and AUROC no generator on this autoencoder can beat")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the chexgen CLI does (for the demo subprocess)
    torch.set_flush_denormal(True)

    from chexgen.curation.report_writer import TemplateReportWriter
    from chexgen.data.imageio import load_gray
    from chexgen.data.manifest import read_manifest
    from chexgen.demo.run import DemoConfig, _resolve_model, _synthetic_records, evaluate_demo_model
    from chexgen.downstream.classifier import load_classifier
    from chexgen.phantom.cohort import CohortConfig, write_cohort
    from chexgen.pipelines import ChexGenPipeline

    work = Path(args.work or tempfile.mkdtemp(prefix="chexgen-demo-quality-"))
    cfg = DemoConfig(model=args.model, classifier=args.classifier, progress=True)
    pipeline_dir, classifier_dir, prevalence = _resolve_model(cfg)
    pipe = ChexGenPipeline.from_pretrained(pipeline_dir, precision=args.precision)
    clf = load_classifier(classifier_dir)
    trained = [c for c in clf.class_names if c != "No Finding"]

    t0 = time.perf_counter()
    info = write_cohort(CohortConfig(n=args.n, size=pipe.config.resolution, seed=cfg.heldout_seed,
                                     prevalence=str(prevalence), workers=2), work / "heldout",
                        TemplateReportWriter(seed=cfg.heldout_seed))
    heldout = read_manifest(info["manifest"])
    root = Path(info["manifest"]).parent
    real = np.stack([load_gray(r.resolve(r.image, root)) for r in heldout])
    t_render = time.perf_counter() - t0

    prompts = [r.impression for r in heldout]
    seeds = list(range(len(heldout)))
    sampler = args.sampler or pipe.config.default_sampler
    steps = args.steps or pipe.config.num_inference_steps
    rows = []
    for guidance in args.guidance:
        t0 = time.perf_counter()
        out = pipe(prompts, seeds=seeds, sampler=sampler, num_inference_steps=steps, guidance_scale=guidance,
                   batch_size=16)
        t_gen = time.perf_counter() - t0
        gen = out.images[:, 0].numpy()
        if guidance == args.guidance[0]:
            first_generated = gen
        syn = _synthetic_records(heldout, prompts, seeds, gen, work / f"generated_cfg{guidance:g}", "paired",
                                 {"model": str(pipeline_dir), "guidance": guidance})
        results, _ = evaluate_demo_model(clf, heldout, real, syn, gen, trained, bootstrap=200, progress=True)
        rows.append((f"guidance {guidance:g}", guidance, t_gen, results["demo"], results["metrics"]))
    comparison = None
    if args.compare:
        comparison = _compare(args, clf, real, prompts, seeds, first_generated)
    if args.reconstruction:
        # the same backend `chexgen benchmark` lists as "vae-reconstruction": a posterior sample drawn from each
        # image's seed, so the floor follows the seed rule of generated images
        from chexgen.generation.backends import VAEReconstructionBackend
        from chexgen.generation.prompts import PromptItem

        t0 = time.perf_counter()
        items = [PromptItem(p, r, f"held-out case {r.id}") for p, r in zip(prompts, heldout)]
        backend = VAEReconstructionBackend.from_pipeline_folder(pipeline_dir, items, root, seed=0,
                                                                num_images_per_prompt=1)
        recon = np.concatenate([backend.generate(prompts[i:i + 32], seeds[i:i + 32]).images
                                for i in range(0, len(real), 32)])
        t_rec = time.perf_counter() - t0
        syn = _synthetic_records(heldout, prompts, seeds, recon, work / "reconstructed", "recon",
                                 {"model": str(pipeline_dir), "vae_reconstruction": True})
        results, _ = evaluate_demo_model(clf, heldout, real, syn, recon, trained, bootstrap=200, progress=True)
        rows.append(("VAE reconstruction of the real images", None, t_rec, results["demo"], results["metrics"]))

    demo_seconds, demo_cpu, control = None, None, None
    if not args.skip_demo:
        cmd = [sys.executable, "-m", "chexgen.cli", "demo", "--out", str(work / "demo"), "--no-progress"]
        if args.model:
            cmd += ["--model", args.model]
        t0 = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, check=True)
        demo_seconds = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        demo_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        load = os.getloadavg()[0]
        control = json.loads((work / "demo" / "metrics.json").read_text())["demo"].get("control")

    print()
    print(f"held-out phantom cases: {len(heldout)} (rendered in {t_render:.1f} s); {sampler} {steps} steps, "
          f"{pipe.precision}, clip_latents {pipe.config.clip_latents}")
    for label, _, t_gen, d, m in rows:
        print(f"\n== {label}: {len(heldout)} images in {t_gen:.1f} s ({len(heldout) / t_gen:.2f} img/s)")
        print(f"{'finding':28s} {'AUROC generated':>16s} {'AUROC real':>11s}")
        for c in trained:
            print(f"{c:28s} {d['auroc_generated_per_class'][c]:16.3f} {d['auroc_real_per_class'][c]:11.3f}")
        lo, hi = d["auroc_generated_mean_ci"]
        print(f"{'mean':28s} {d['auroc_generated_mean']:16.3f} {d['auroc_real_mean']:11.3f}   (bar: generated >= 0.80; "
              f"95 % CI of the generated mean [{lo:.3f}, {hi:.3f}])")
        fid = m["fid"]
        print(f"FID (classifier features): real vs generated {d['fid_real_vs_generated']:.3f} "
              f"[{fid.get('low', float('nan')):.1f}, {fid.get('high', float('nan')):.1f}]; "
              f"real half vs half {d['fid_real_half_vs_half']:.3f}")
        for key in ("pearson", "diversity_ssim", "precision", "recall"):
            if key in m:
                print(f"{key}: {m[key]['value']:.3f} [{m[key].get('low', float('nan')):.3f}, "
                      f"{m[key].get('high', float('nan')):.3f}]")
    if comparison:
        c = comparison
        print(f"\n== paired FID against {c['other']} (guidance {c['guidance']:g}, {c['other_sampler']} "
              f"{c['other_steps']} steps): this model {c['fid_this']:.2f}, the other {c['fid_other']:.2f}; this minus "
              f"the other {c['difference']:.2f} [{c['low']:.2f}, {c['high']:.2f}], bootstrap p {c['p_value']:.3g} "
              f"({c['n_boot']} paired draws)")
    if demo_seconds is not None:
        print(f"\n`chexgen demo` wall time: {demo_seconds:.1f} s (target <= 60 s on 2 CPU cores); CPU time "
              f"{demo_cpu:.1f} s; 1-minute load average at the end {load:.1f} on {os.cpu_count()} cores")
    if control:
        print(f"demo control part ({control['n_conditions']} real conditions x {control['images_per_condition']} "
              f"images): localisation ratio mean {control['localisation_ratio_mean']:.2f}; by source "
              + ", ".join(f"{k} {v:.2f}" for k, v in control["localisation_ratio_by_source"].items()))
        for e in control["examples"]:
            print(f"  {e['source']:14s} {e['label']:17s} area {e['area_fraction']:.3f}  ratio "
                  f"{e['localisation_ratio']:.2f}  \"{e['prompt']}\"")
    (work / "demo_quality.json").write_text(json.dumps(
        {"runs": [{"guidance": g, "generate_seconds": t, "demo": d,
                   "fid_ci": [m["fid"].get("low"), m["fid"].get("high")]} for _, g, t, d, m in rows if g is not None],
         "reconstruction": next(({"seconds": t, "demo": d, "fid_ci": [m["fid"].get("low"), m["fid"].get("high")]}
                                 for _, g, t, d, m in rows if g is None), None),
         "comparison": comparison, "classifier": str(classifier_dir),
         "precision": pipe.precision, "sampler": sampler, "steps": steps,
         "demo_seconds": demo_seconds, "demo_cpu_seconds": demo_cpu, "control": control}, indent=2, default=float))
    print(f"details: {work / 'demo_quality.json'}")
    return 0


def _compare(args, clf, real, prompts, seeds, generated) -> dict:
    """Generate the held-out cases with ``--compare``'s model and compare its FID with this one's, paired."""
    from chexgen.benchmark.config import ExtractorEntry
    from chexgen.benchmark.scoring import compare_distances
    from chexgen.benchmark.sets import ImageSet
    from chexgen.data.manifest import Record
    from chexgen.demo.run import DemoConfig, _resolve_model
    from chexgen.evaluation.features import ClassifierExtractor, extract_features
    from chexgen.pipelines import ChexGenPipeline

    other_dir, _, _ = _resolve_model(DemoConfig(model=args.compare))
    other = ChexGenPipeline.from_pretrained(other_dir, precision=args.precision)
    sampler = args.sampler or other.config.default_sampler
    steps = args.steps or other.config.num_inference_steps
    guidance = args.guidance[0]
    theirs = other(prompts, seeds=seeds, sampler=sampler, num_inference_steps=steps, guidance_scale=guidance,
                   batch_size=16).images[:, 0].numpy()
    ext = ClassifierExtractor(clf, input_size=clf.input_size, class_names=clf.class_names, name="classifier")

    def image_set(name: str, images: np.ndarray, paired: bool) -> ImageSet:
        recs = [Record(id=f"{name}-{i}", image="", extra={"prompt_index": i} if paired else {})
                for i in range(len(images))]
        feats = extract_features(ext, list(images), desc=f"{name} features")
        return ImageSet(name=name, records=recs, features={"classifier": feats},
                        images=np.zeros((len(images), 1, 1), np.float16))

    real_set = image_set("real", real, paired=False)
    sets = {"this": image_set("this", generated, True), "other": image_set("other", theirs, True)}
    res = compare_distances(real_set, sets, [ExtractorEntry(name="classifier", kind="classifier")], n_boot=500)
    r = res["fd_classifier"]
    (worse, t), = r["tests"].items()
    sign = 1.0 if worse == "this" else -1.0  # report this minus the other
    return {"other": str(other_dir), "other_sampler": sampler, "other_steps": steps, "guidance": guidance,
            "fid_this": r["values"]["this"], "fid_other": r["values"]["other"],
            "difference": sign * t["difference"],
            "low": t["low"] if sign > 0 else -t["high"], "high": t["high"] if sign > 0 else -t["low"],
            "p_value": t["p_value"], "n_boot": t["n_boot"]}


if __name__ == "__main__":
    sys.exit(main())
