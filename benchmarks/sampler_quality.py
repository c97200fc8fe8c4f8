"""Quality against model calls for every sampler chexgen offers, scored with the phantom classifier.

    python benchmarks/sampler_quality.py                      # the default sweep (resumable, cached)
    python benchmarks/sampler_quality.py --n 64 --steps 5 10 20 50 100 --samplers ddim iddpm dpmsolver++
    python benchmarks/sampler_quality.py --apply              # store the chosen default in the bundled model

For every sampler in ``chexgen.diffusion.samplers.SAMPLERS`` and every step count it generates one image
from the impression of each of ``--n`` held-out phantom cases (cohort seed ``--heldout-seed``, which
neither the training cohort (0) nor the demo's held-out cohort (1000) uses) with the bundled model in
``--precision`` (bf16 by default where the CPU has it), and scores them with
:func:`chexgen.demo.run.evaluate_demo_model`: the phantom classifier's mean AUROC over the trained findings
(prompt labels) with a bootstrap CI over the generated images, and the FID on the classifier's features
(real held-out vs generated, with its bootstrap CI). Same prompts and seeds for every setting.

Model calls per image count network evaluations: forwards per image (Heun: 2 per step but the last) times 2
with classifier-free guidance. The recommended default is the cheapest setting whose mean AUROC lies
within the 95 % CI of the best setting's mean AUROC and whose FID lies within the 95 % CI of the lowest FID
among those settings (ties in cost: the higher AUROC); ``--auroc-only`` drops the FID condition (the table
marks both choices).

Every finished setting is cached in ``--work`` (``results/<sampler>-<steps>.json`` + its images), so an
interrupted sweep resumes where it stopped and a rerun only re-prints and re-plots. Writes the plot to
``--plot`` (default ``docs/sampler_quality.png``) and the table to ``<work>/sampler_quality.json``.
``--apply`` writes the chosen ``default_sampler`` / ``num_inference_steps`` into the bundled model's
``pipeline/chexgen_config.json`` (or ``--model``'s).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads on a shared CPU

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = HERE / ".work" / "sampler_quality"
DEFAULT_PLOT = HERE.parent / "docs" / "sampler_quality.png"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    from chexgen.utils import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def _save_images(path: Path, images: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, images.astype(np.float16))
    _atomic_write_bytes(path, buf.getvalue())


def _json_safe(value):
    """NaN (a class absent from a small cohort) as null, so the row is valid JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def choose_default(rows: list[dict], fid_guard: bool = True) -> dict:
    """The cheapest row whose mean AUROC lies within the CI of the best row's mean AUROC.

    With ``fid_guard`` its FID must also lie within the CI of the lowest FID among those rows: AUROC alone
    says whether the findings are recognisable, not whether the images look like the real ones (5-step
    samplers reach the best AUROC's CI with 2-5x the FID). The FID reference is taken among the rows that
    pass the AUROC test, since an under-denoised sampler can score a low FID with unrecognisable findings.
    """
    ok = qualified(rows)
    if fid_guard:
        best_fid = min(ok, key=lambda r: r["fid"])
        ok = [r for r in ok if r["fid"] <= (best_fid["fid_ci"][1] or best_fid["fid"])]
    return min(ok, key=lambda r: (r["calls"], -r["auroc_mean"]))


def qualified(rows: list[dict]) -> list[dict]:
    """Rows whose mean AUROC lies within the 95 % CI of the best row's mean AUROC."""
    best = max(rows, key=lambda r: r["auroc_mean"])
    return [r for r in rows if r["auroc_mean"] >= best["auroc_ci"][0]]


def plot(rows: list[dict], chosen: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    best = max(rows, key=lambda r: r["auroc_mean"])
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    for k, name in enumerate(names):
        rs = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["calls"])
        jitter = 1.04 ** (k - (len(names) - 1) / 2)  # side by side, so the error bars stay readable
        x = [r["calls"] * jitter for r in rs]
        y = np.array([r["auroc_mean"] for r in rs])
        # a percentile bootstrap interval need not contain the estimate (small n): no bar below 0 length
        lo = np.maximum(y - np.array([r["auroc_ci"][0] for r in rs]), 0)
        hi = np.maximum(np.array([r["auroc_ci"][1] for r in rs]) - y, 0)
        ax1.errorbar(x, y, yerr=[lo, hi], marker="o", ms=4, capsize=2, lw=1.2, label=name)
        ax2.plot(x, [r["fid"] for r in rs], marker="o", ms=4, lw=1.2, label=name)
    ax1.axhspan(best["auroc_ci"][0], best["auroc_ci"][1], color="0.85", zorder=0,
                label=f"95 % CI of the best ({best['sampler']}-{best['steps']})")
    ax1.axhline(rows[0]["auroc_real"], color="k", ls="--", lw=1, label="real held-out images")
    ax1.scatter([chosen["calls"]], [chosen["auroc_mean"]], s=160, facecolors="none", edgecolors="red", lw=2,
                zorder=5, label=f"default: {chosen['sampler']}-{chosen['steps']}")
    ax2.axhline(rows[0]["fid_half"], color="k", ls="--", lw=1, label="real half vs half")
    ax2.scatter([chosen["calls"]], [chosen["fid"]], s=160, facecolors="none", edgecolors="red", lw=2, zorder=5)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks([t for t in (10, 20, 40, 100, 200, 400) if min(r["calls"] for r in rows) / 1.5 <= t
                       <= max(r["calls"] for r in rows) * 1.5])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("model calls per image (forwards x 2 with guidance)")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("mean AUROC of the phantom classifier (prompt labels)")
    ax2.set_ylabel("FID on the classifier's features (lower is better)")
    ax1.legend(fontsize=7, ncol=2)
    ax2.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write_bytes(path, buf.getvalue())


def apply_default(pipeline_dir: Path, chosen: dict) -> Path:
    """Store the chosen sampler and steps as the model's sampling defaults (other keys kept)."""
    from chexgen.pipelines.base import CONFIG_NAME
    from chexgen.utils import atomic_write_json

    path = pipeline_dir / CONFIG_NAME
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["default_sampler"], cfg["num_inference_steps"] = chosen["sampler"], int(chosen["steps"])
    atomic_write_json(path, cfg)
    return path


def main() -> int:
    from chexgen.diffusion.samplers import SAMPLERS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="held-out phantom cases = images per setting")
    ap.add_argument("--heldout-seed", type=int, default=2000, help="phantom cohort seed of the held-out cases")
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS, help="samplers to score")
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50, 100], help="step counts to score")
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    ap.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (default auto)")
    ap.add_argument("--model", default=None, help="demo model folder (default: the bundled one)")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap draws of the AUROC CI")
    ap.add_argument("--batch-size", type=int, default=16, help="images per sampling batch")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache folder (resumable)")
    ap.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="PNG of quality vs model calls")
    ap.add_argument("--apply", action="store_true", help="store the chosen default in the model's config")
    ap.add_argument("--auroc-only", action="store_true", help="choose by AUROC alone (no FID guard)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    from chexgen.curation.report_writer import TemplateReportWriter
    from chexgen.data.imageio import load_gray
    from chexgen.data.manifest import read_manifest
    from chexgen.demo.run import DemoConfig, _resolve_model, evaluate_demo_model
    from chexgen.diffusion.samplers import model_calls_per_image
    from chexgen.downstream.classifier import load_classifier
    from chexgen.phantom.cohort import CohortConfig, write_cohort
    from chexgen.pipelines import ChexGenPipeline
    from chexgen.utils import atomic_write_json

    pipeline_dir, classifier_dir, prevalence = _resolve_model(DemoConfig(model=args.model))
    pipe = ChexGenPipeline.from_pretrained(pipeline_dir, precision=args.precision)
    guidance = pipe.config.guidance_scale if args.guidance is None else args.guidance
    clf = load_classifier(classifier_dir)
    trained = [c for c in clf.class_names if c != "No Finding"]
    work = args.work
    info = write_cohort(CohortConfig(n=args.n, size=pipe.config.resolution, seed=args.heldout_seed,
                                     prevalence=str(prevalence), workers=2), work / f"heldout-{args.heldout_seed}",
                        TemplateReportWriter(seed=args.heldout_seed), progress=False)
    heldout = read_manifest(info["manifest"])
    root = Path(info["manifest"]).parent
    real = np.stack([load_gray(r.resolve(r.image, root)) for r in heldout])
    prompts = [r.impression for r in heldout]
    seeds = list(range(len(heldout)))
    tag = f"n{args.n}-seed{args.heldout_seed}-{pipe.precision}-cfg{guidance:g}"
    print(f"{len(heldout)} held-out cases (seed {args.heldout_seed}), {pipe.precision}, guidance {guidance:g}, "
          f"{torch.get_num_threads()} threads; cache {work / tag}", flush=True)

    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            key = f"{sampler}-{steps}"
            res_path = work / tag / "results" / f"{key}.json"
            if res_path.is_file():
                rows.append(json.loads(res_path.read_text()))
                continue
            t0 = time.perf_counter()
            out = pipe(prompts, seeds=seeds, sampler=sampler, num_inference_steps=steps, guidance_scale=guidance,
                       batch_size=args.batch_size, progress=False)
            gen_s = time.perf_counter() - t0
            images = out.images[:, 0].numpy()
            _save_images(work / tag / "images" / f"{key}.npy", images)
            syn = [dataclasses.replace(r, id=f"gen_{i:04d}", image=None, synthetic=True, masks=[], boxes=[])
                   for i, r in enumerate(heldout)]  # the prompts' labels; the images stay in memory
            results, _ = evaluate_demo_model(clf, heldout, real, syn, images, trained, bootstrap=args.bootstrap,
                                             progress=False, tsne=False)
            d, fid = results["demo"], results["metrics"]["fid"]
            row = {"sampler": sampler, "steps": steps, "calls": model_calls_per_image(sampler, steps, guidance),
                   "auroc_mean": d["auroc_generated_mean"], "auroc_ci": d["auroc_generated_mean_ci"],
                   "auroc_per_class": d["auroc_generated_per_class"], "auroc_real": d["auroc_real_mean"],
                   "fid": fid["value"], "fid_ci": [fid.get("low"), fid.get("high")],
                   "fid_half": d["fid_real_half_vs_half"], "generate_seconds": gen_s, "n": len(heldout)}
            row = _json_safe(row)
            atomic_write_json(res_path, row)
            rows.append(row)
            print(f"{key:22s} calls {row['calls']:4d}  AUROC {row['auroc_mean']:.3f} "
                  f"[{row['auroc_ci'][0]:.3f}, {row['auroc_ci'][1]:.3f}]  FID {row['fid']:.1f}  "
                  f"({gen_s:.0f} s)", flush=True)

    chosen = choose_default(rows, fid_guard=not args.auroc_only)
    auroc_only = choose_default(rows, fid_guard=False)
    best = max(rows, key=lambda r: r["auroc_mean"])
    best_fid = min(qualified(rows), key=lambda r: r["fid"])
    print(f"\n{'setting':22s} {'calls':>5s} {'mean AUROC':>10s} {'95% CI':>15s} {'FID':>8s} {'FID 95% CI':>17s}")
    for r in sorted(rows, key=lambda r: (r["calls"], r["sampler"])):
        mark = "".join(m for m, hit in ((" <- default", r is chosen), (" <- best AUROC", r is best),
                                         (" <- lowest FID of those", r is best_fid), (" <- AUROC-only rule", r is auroc_only))
                       if hit)
        fl, fh = r["fid_ci"]
        print(f"{r['sampler'] + '-' + str(r['steps']):22s} {r['calls']:5d} {r['auroc_mean']:10.3f} "
              f"[{r['auroc_ci'][0]:.3f}, {r['auroc_ci'][1]:.3f}] {r['fid']:8.1f} "
              f"[{fl or float('nan'):7.1f}, {fh or float('nan'):7.1f}]{mark}")
    print(f"real held-out images: mean AUROC {rows[0]['auroc_real']:.3f}; FID real half vs half "
          f"{rows[0]['fid_half']:.1f}")
    print(f"best AUROC: {best['sampler']}-{best['steps']} ({best['auroc_mean']:.3f}, CI from {best['auroc_ci'][0]:.3f}); "
          f"lowest FID within that CI: {best_fid['sampler']}-{best_fid['steps']} ({best_fid['fid']:.1f}, CI up to "
          f"{best_fid['fid_ci'][1] or float('nan'):.1f})")
    print(f"cheapest within the best AUROC's CI: {auroc_only['sampler']}-{auroc_only['steps']} "
          f"({auroc_only['calls']} calls, FID {auroc_only['fid']:.1f}); and within the lowest FID's CI too: "
          f"{chosen['sampler']}-{chosen['steps']} ({chosen['calls']} calls)" if not args.auroc_only else "")
    print(f"default: {chosen['sampler']}-{chosen['steps']} ({chosen['calls']} model calls per image)")
    summary = {"tag": tag, "rows": rows, "chosen": chosen, "best": best, "best_fid": best_fid,
               "auroc_only_rule": auroc_only, "fid_guard": not args.auroc_only}
    atomic_write_json(work / tag / "sampler_quality.json", _json_safe(summary))
    plot(rows, chosen, args.plot, f"Bundled demo model, {len(heldout)} held-out phantom prompts, {pipe.precision}, "
                                  f"guidance {guidance:g}")
    print(f"plot: {args.plot}")
    if args.apply:
        print(f"stored default in {apply_default(pipeline_dir, chosen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
