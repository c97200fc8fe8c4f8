"""bf16 against fp32 on this machine, in one run: matmul peak, DiT forward, sampling, training steps, loss curves.

    python benchmarks/precision.py                         # everything (the loss curves dominate: see --loss-steps)
    python benchmarks/precision.py --loss-steps 0          # speed only (a few minutes)
    python benchmarks/precision.py --loss-steps 500 --threads 2

1. Machine: CPU model and its bf16 flags (``amx_bf16``, ``avx512_bf16``), what ``--precision auto``
   resolves to, torch / thread settings.
2. Matrix-product peak: GFLOP/s of square fp32 and bf16 matmuls (best of several).
3. The bundled DiT's forward at batch ``--batch`` (default 32 = 16 prompts x CFG): seconds fp32 vs bf16,
   the relative output error, FLOPs (``torch.utils.flop_counter``) and the achieved bf16 GFLOP/s as a share
   of the measured bf16 matmul peak. The ratio of process CPU time is printed beside the wall-time ratio: on
   a CPU shared with other work the wall clock measures the neighbours too.
4. Sampling images/s of the bundled model (``ChexGenPipeline.__call__``: prompt encoding, sampling loop,
   VAE decode) fp32 vs bf16, for the model's default sampler and for IDDPM-50 (the demo's former default).
5. Training steps of the tiny presets (``tiny``, ``tiny-f4``; batch 32, AdamW, EMA; the real trainer on a
   prepared phantom cache) with ``--mixed-precision no`` vs ``bf16``: seconds per step.
6. Loss curves: ``--loss-steps`` steps of ``tiny-f4`` on that cache, fp32 with two seeds and bf16 with the
   first seed; the bf16 curve's distance from the same-seed fp32 curve next to the two fp32 seeds' distance
   (run-to-run noise), on curves smoothed over 50 steps.

Timings interleave fp32 and bf16 and keep the best of ``--repeats``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads on a shared CPU

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPTS = ["Moderate right pleural effusion.", "No acute cardiopulmonary process.", "Cardiomegaly.",
           "Small left pneumothorax.", "Right upper lobe nodule.", "Left lower lobe consolidation.",
           "Mild pulmonary edema.", "Large left pleural effusion."]


def _best(fn, repeats: int) -> tuple[float, float, object]:
    """(best wall s, process CPU s of that run, result) over ``repeats`` calls."""
    best, out = (float("inf"), float("inf")), None
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        out = fn()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if wall < best[0]:
            best = (wall, cpu)
    return best[0], best[1], out


def machine() -> dict:
    from chexgen.models.precision import cpu_features, precision_name, resolve_precision

    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    f = cpu_features()
    return {"cpu": model, "cores": os.cpu_count(), "amx_bf16": f.amx_bf16, "avx512_bf16": f.avx512_bf16,
            "auto": precision_name(resolve_precision("auto", "cpu")), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def matmul_peak(repeats: int) -> dict:
    out = {}
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for n in (1024, 2048):
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            a @ b
            wall, cpu, _ = _best(lambda: [a @ b for _ in range(3)], repeats)
            out[f"{name}_{n}"] = 2 * n ** 3 * 3 / wall / 1e9
            out[f"{name}_{n}_per_cpu_s"] = 2 * n ** 3 * 3 / cpu / 1e9  # per second of CPU time (load-robust)
    return out


def dit_forward(pipe, batch: int, repeats: int, peak_bf16: float, peak_bf16_cpu: float) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(0)
    t = pipe.transformer
    c, s = t.config.in_channels, t.config.sample_size
    x = torch.randn(batch, c, s, s, generator=g)
    ts = torch.randint(0, 1000, (batch,), generator=g)
    emb = torch.randn(batch, t.config.max_text_len, t.config.caption_channels, generator=g)
    mask = torch.ones(batch, t.config.max_text_len, dtype=torch.long)
    mask[:, 24:] = 0
    fp32 = t
    bf16 = copy.deepcopy(t).to(torch.bfloat16)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            ref = fp32(x, ts, emb, mask)
        flops = counter.get_total_flops()
        res = {}
        for _ in range(2):  # interleaved
            for name, m in (("fp32", fp32), ("bf16", bf16)):
                m(x, ts, emb, mask)
                wall, cpu, out = _best(lambda: m(x, ts, emb, mask), repeats)
                if wall < res.get(name, (float("inf"),))[0]:
                    res[name] = (wall, cpu, out)
    err = float((res["bf16"][2].float() - ref).norm() / ref.norm())
    achieved = flops / res["bf16"][0] / 1e9
    return {"flops": flops, "fp32_s": res["fp32"][0], "bf16_s": res["bf16"][0], "fp32_cpu_s": res["fp32"][1],
            "bf16_cpu_s": res["bf16"][1], "ratio": res["fp32"][0] / res["bf16"][0],
            "ratio_cpu": res["fp32"][1] / res["bf16"][1], "rel_error": err, "bf16_gflops": achieved,
            "fp32_gflops": flops / res["fp32"][0] / 1e9, "share_of_peak": achieved / peak_bf16,
            "share_of_peak_cpu": flops / res["bf16"][1] / 1e9 / peak_bf16_cpu}


def sampling(model_dir: Path, settings: list[tuple[str, int]], n: int, repeats: int) -> list[dict]:
    from chexgen.pipelines import ChexGenPipeline

    pipes = {p: ChexGenPipeline.from_pretrained(model_dir, precision=p) for p in ("fp32", "bf16")}
    prompts = (PROMPTS * ((n + len(PROMPTS) - 1) // len(PROMPTS)))[:n]
    rows = []
    for sampler, steps in settings:
        res = {}
        for _ in range(repeats):  # interleaved
            for p, pipe in pipes.items():
                pipe(prompts[:2], sampler=sampler, num_inference_steps=2, progress=False)
                wall, cpu, out = _best(lambda: pipe(prompts, seed=0, sampler=sampler, num_inference_steps=steps,
                                                    batch_size=n, progress=False), 1)
                if wall < res.get(p, (float("inf"),))[0]:
                    res[p] = (wall, cpu, out.images)
        a, b = res["fp32"][2][:, 0].numpy(), res["bf16"][2][:, 0].numpy()
        mae = np.abs(a - b).reshape(len(a), -1).mean(1)
        corr = [float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(a, b)]
        rows.append({"sampler": sampler, "steps": steps, "fp32_img_s": n / res["fp32"][0],
                     "bf16_img_s": n / res["bf16"][0], "ratio": res["fp32"][0] / res["bf16"][0],
                     "ratio_cpu": res["fp32"][1] / res["bf16"][1], "mae_max": float(mae.max()),
                     "mae_mean": float(mae.mean()), "corr_min": min(corr)})
    return rows


def _prepare(work: Path, n: int, vae_dir: Path) -> dict[str, Path]:
    """Phantom cases cached for both tiny presets: tiny-f4 with the bundled VAE, tiny with a random 8x gray VAE
    (step time does not depend on the VAE's weights)."""
    from chexgen.cli import main as cli
    from chexgen.curation.report_writer import TemplateReportWriter
    from chexgen.models.presets import get_preset
    from chexgen.models.vae import RadiographVAE
    from chexgen.phantom.cohort import CohortConfig, write_cohort

    info = write_cohort(CohortConfig(n=n, size=128, seed=3000, workers=2), work / "phantom",
                        TemplateReportWriter(seed=3000), progress=False)
    tiny_vae = work / "vae-tiny"
    if not (tiny_vae / "config.json").is_file():
        torch.manual_seed(0)
        RadiographVAE.from_spec(get_preset("tiny").vae).save_pretrained(tiny_vae)
    caches = {}
    for preset, vae in (("tiny-f4", vae_dir), ("tiny", tiny_vae)):
        out = work / f"cache-{preset}"
        if cli(["prepare", str(info["manifest"]), "--preset", preset, "--vae", str(vae), "--out", str(out), "--device", "cpu",
                "--num-workers", "0", "--no-progress"]) != 0:
            raise SystemExit(f"prepare failed for {preset}")
        caches[preset] = out
    return caches


def _train(cache: Path, out: Path, preset: str, precision: str, steps: int, seed: int, threads: int,
           log_every: int = 1):
    from chexgen.training.config import TrainConfig, resolve_config
    from chexgen.training.diffusion_task import build_text_to_image_task
    from chexgen.training.trainer import train

    shutil.rmtree(out, ignore_errors=True)  # a fresh run (and TensorBoard log) every time
    cfg = resolve_config(TrainConfig, overrides=dict(
        data=str(cache), preset=preset, output_dir=str(out), batch_size=32, max_steps=steps, learning_rate=3e-4,
        lr_warmup_steps=100, snr_gamma=5, seed=seed, mixed_precision=precision, log_every=log_every,
        checkpoint_every=0, sample_prompts=[], export=False, progress=False, resume=False, num_threads=threads))
    return train(build_text_to_image_task(cfg))


def training_steps(caches: dict[str, Path], work: Path, steps: int, threads: int) -> list[dict]:
    rows = []
    for preset, cache in caches.items():
        res = {}
        for precision in ("no", "bf16"):
            r = _train(cache, work / f"speed-{preset}-{precision}", preset, precision, steps, 0, threads, steps)
            res[precision] = 1.0 / r.steps_per_second
        rows.append({"preset": preset, "fp32_s": res["no"], "bf16_s": res["bf16"], "ratio": res["no"] / res["bf16"]})
    return rows


def _curve(run_dir: Path) -> np.ndarray:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(run_dir / "logs")).Reload()
    return np.array([e.value for e in ev.Scalars("train/loss")])


def loss_curves(cache: Path, work: Path, steps: int, threads: int, window: int = 50) -> dict:
    runs = {"fp32 seed 0": ("no", 0), "fp32 seed 1": ("no", 1), "bf16 seed 0": ("bf16", 0)}
    curves = {}
    for name, (precision, seed) in runs.items():
        out = work / f"loss-{precision}-{seed}"
        _train(cache, out, "tiny-f4", precision, steps, seed, threads)
        curves[name] = _curve(out)
    k = min(window, steps)
    smooth = {n: np.convolve(c, np.ones(k) / k, mode="valid") for n, c in curves.items()}
    seed_noise = float(np.abs(smooth["fp32 seed 0"] - smooth["fp32 seed 1"]).max())
    bf16_gap = float(np.abs(smooth["bf16 seed 0"] - smooth["fp32 seed 0"]).max())
    return {"steps": steps, "window": k, "final": {n: float(s[-1]) for n, s in smooth.items()},
            "fp32_seed_vs_seed_max": seed_noise, "bf16_vs_fp32_max": bf16_gap,
            "within_noise": bf16_gap <= seed_noise, "curves": {n: c.tolist() for n, c in curves.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (best kept)")
    ap.add_argument("--batch", type=int, default=32, help="DiT forward batch (>= 32: 16 prompts x CFG)")
    ap.add_argument("--images", type=int, default=16, help="images per sampling measurement (one batch)")
    ap.add_argument("--train-steps", type=int, default=20, help="steps per training-speed run")
    ap.add_argument("--loss-steps", type=int, default=500, help="steps of each loss-curve run (0 = skip)")
    ap.add_argument("--phantom", type=int, default=256, help="phantom cases of the training cache")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from chexgen.assets import demo_pipeline_dir
    from chexgen.pipelines import ChexGenPipeline

    work = args.work or Path(tempfile.mkdtemp(prefix="chexgen-precision-"))
    report: dict = {"machine": machine()}
    m = report["machine"]
    print(f"CPU: {m['cpu']} ({m['cores']} cores); amx_bf16 {m['amx_bf16']}, avx512_bf16 {m['avx512_bf16']}; "
          f"--precision auto -> {m['auto']}; torch {m['torch']} ({m['cpu_capability']}), {m['threads']} threads, "
          f"OMP_WAIT_POLICY={m['omp_wait_policy']}", flush=True)

    peak = report["matmul"] = matmul_peak(args.repeats)
    print("\n== matmul GFLOP/s (wall): " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items() if "cpu" not in k)
          + "; per CPU-second: " + ", ".join(f"{k[:-10]} {v:.0f}" for k, v in peak.items() if "cpu" in k)
          + f"  (bf16/fp32 at 1024: {peak['bf16_1024'] / peak['fp32_1024']:.1f}x)", flush=True)
    peak_bf16 = max(peak["bf16_1024"], peak["bf16_2048"])
    peak_bf16_cpu = max(peak["bf16_1024_per_cpu_s"], peak["bf16_2048_per_cpu_s"])

    model_dir = demo_pipeline_dir()
    pipe = ChexGenPipeline.from_pretrained(model_dir)
    f = report["forward"] = dit_forward(pipe, args.batch, args.repeats, peak_bf16, peak_bf16_cpu)
    print(f"\n== bundled DiT forward, batch {args.batch}: {f['flops'] / 1e9:.1f} GFLOP; fp32 {f['fp32_s']:.3f} s "
          f"({f['fp32_gflops']:.0f} GFLOP/s), bf16 {f['bf16_s']:.3f} s ({f['bf16_gflops']:.0f} GFLOP/s): "
          f"{f['ratio']:.2f}x (CPU time {f['ratio_cpu']:.2f}x); bf16 relative error {f['rel_error']:.4f}", flush=True)
    print(f"   bf16 achieved {f['bf16_gflops']:.0f} GFLOP/s = {100 * f['share_of_peak']:.0f} % of the measured bf16 "
          f"matmul peak {peak_bf16:.0f} GFLOP/s (wall clock); per CPU-second {100 * f['share_of_peak_cpu']:.0f} % "
          f"of {peak_bf16_cpu:.0f} (target >= 50 %)", flush=True)

    settings = [(pipe.config.default_sampler, pipe.config.num_inference_steps or 20), ("iddpm", 50)]
    settings = list(dict.fromkeys(settings))
    rows = report["sampling"] = sampling(model_dir, settings, args.images, max(1, args.repeats - 1))
    print(f"\n== sampling, bundled model, {args.images} images in one batch (guidance {pipe.config.guidance_scale:g})")
    print(f"{'sampler':18s} {'fp32 img/s':>10s} {'bf16 img/s':>10s} {'ratio':>6s} {'cpu ratio':>9s}   bf16 vs fp32 images")
    for r in rows:
        print(f"{r['sampler'] + '-' + str(r['steps']):18s} {r['fp32_img_s']:10.3f} {r['bf16_img_s']:10.3f} "
              f"{r['ratio']:6.2f} {r['ratio_cpu']:9.2f}   mean |diff| {r['mae_mean']:.4f} (max per image "
              f"{r['mae_max']:.4f}), min Pearson r {r['corr_min']:.4f}", flush=True)
    print("   (target: >= 4x images/s)")

    caches = _prepare(work, args.phantom, model_dir / "vae")
    t = report["training"] = training_steps(caches, work, args.train_steps, args.threads or torch.get_num_threads())
    print(f"\n== training step (batch 32, AdamW, EMA, the chexgen trainer; {args.train_steps} steps each)")
    for r in t:
        print(f"{r['preset']:8s} fp32 {r['fp32_s']:.3f} s/step, bf16 {r['bf16_s']:.3f} s/step: {r['ratio']:.2f}x "
              "(target >= 2.5x)", flush=True)

    if args.loss_steps > 0:
        lc = report["loss"] = loss_curves(caches["tiny-f4"], work, args.loss_steps, args.threads or 0)
        print(f"\n== loss curves, tiny-f4, {lc['steps']} steps (smoothed over {lc['window']}): final "
              + ", ".join(f"{k} {v:.4f}" for k, v in lc["final"].items()))
        print(f"   max |bf16 - fp32| (same seed) {lc['bf16_vs_fp32_max']:.4f} vs max |fp32 seed 0 - seed 1| "
              f"{lc['fp32_seed_vs_seed_max']:.4f}: {'within' if lc['within_noise'] else 'OUTSIDE'} run-to-run noise")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"\nwork folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
