#!/usr/bin/env python
"""Evaluation speed on this machine: extractor images/s at 224 px, FID / KID / precision-recall on big feature sets.

    python benchmarks/evaluation.py                      # defaults: 16 images per extractor, 10k x 1024 FID
    python benchmarks/evaluation.py --images 64 --clip-model ViT-L-14 --threads 2

Extractors use random weights (the hub is unreachable here); speed does not
depend on the weight values. All numbers come from this one run; the last
lines are ratios between them.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

_CPU: dict[str, float] = {}


def _time(fn, repeat: int = 1, key: str | None = None) -> float:
    """Best wall time over ``repeat`` runs; the CPU time of that run goes to ``_CPU[key]``.

    On a shared machine wall time depends on the load; CPU seconds (all threads of this process)
    are the steadier number to compare runs by.
    """
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if wall < best:
            best, best_cpu = wall, cpu
    if key:
        _CPU[key] = best_cpu
    return best


def bench_extractors(n_images: int, batch: int, clip_model: str) -> dict[str, float]:
    from chexgen.evaluation.features import ClassifierExtractor, build_extractor

    torch.manual_seed(0)
    images = torch.rand(n_images, 1, 224, 224)
    out = {}
    cases = [
        ("xrv", lambda: build_extractor("xrv", random_init=True)),
        (f"clip:{clip_model}", lambda: build_extractor("clip", clip_model, random_init=True)),
        ("inception", lambda: build_extractor("inception", random_init=True)),
        ("classifier:densenet121-like (xrv net via ClassifierExtractor)",
         lambda: ClassifierExtractor(build_extractor("xrv", random_init=True).model.features2, input_size=224)),
    ]
    for name, make in cases:
        ex = make()
        ex(images[:1])  # warm-up (allocations, lazy init)
        secs = _time(lambda ex=ex: [ex(images[i : i + batch]) for i in range(0, n_images, batch)], key=name)
        out[name] = n_images / secs
        out[name + " per_cpu_s"] = n_images / _CPU[name]
        print(f"{name:<64s} {out[name]:8.2f} images/s wall, {out[name + ' per_cpu_s']:6.2f} images/CPU-s "
              f"(dim {ex.dim}, input {ex.input_size} px)", flush=True)
        del ex
    return out


def bench_metrics(n: int, d: int) -> dict[str, float]:
    from chexgen.evaluation import compute_fid, compute_kid, compute_precision_recall

    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d)) * 1.1 + 0.05
    out = {}
    out["fid_feature_space_s"] = _time(lambda: compute_fid(a, b, method="feature"), key="fid")
    out["fid_feature_space_cpu_s"] = _CPU["fid"]
    print(f"FID {n} x {d} (feature space, eigh)            {out['fid_feature_space_s']:.2f} s wall, "
          f"{_CPU['fid']:.2f} CPU-s", flush=True)
    small = 500
    out["fid_sample_space_500_s"] = _time(lambda: compute_fid(a[:small], b[:small], method="sample"), 3)
    out["fid_feature_space_500_s"] = _time(lambda: compute_fid(a[:small], b[:small], method="feature"), 3)
    print(f"FID {small} x {d}: sample space {out['fid_sample_space_500_s']:.3f} s, "
          f"feature space {out['fid_feature_space_500_s']:.3f} s", flush=True)
    out["kid_100x1000_s"] = _time(lambda: compute_kid(a, b, subsets=100, subset_size=1000))
    print(f"KID {n} x {d} (100 subsets of 1000)           {out['kid_100x1000_s']:.2f} s", flush=True)
    m = min(n, 5000)
    out[f"precision_recall_{m}_s"] = _time(lambda: compute_precision_recall(a[:m], b[:m], k=3))
    print(f"precision/recall {m} x {d} (k=3)               {out[f'precision_recall_{m}_s']:.2f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16, help="images per extractor")
    ap.add_argument("--batch", type=int, default=8, help="batch size")
    ap.add_argument("--clip-model", default="ViT-B-16", help="open_clip model (paper: ViT-L-14, 768-d)")
    ap.add_argument("--fid-n", type=int, default=10000, help="samples per set for the FID timing")
    ap.add_argument("--fid-d", type=int, default=1024, help="feature dimension for the FID timing")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="do not flush denormal floats (random-init nets produce many; trained ones do not, "
                         "so flushing makes random-weight timings representative)")
    ap.add_argument("--skip-extractors", action="store_true", help="only time the metrics")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(not args.keep_denormals)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, flush denormals "
          f"{not args.keep_denormals}", flush=True)
    res: dict = {}
    if not args.skip_extractors:
        res["images_per_s"] = bench_extractors(args.images, args.batch, args.clip_model)
    res["metrics"] = bench_metrics(args.fid_n, args.fid_d)
    m = res["metrics"]
    print(f"ratio: FID at 500 images, feature-space / sample-space path = "
          f"{m['fid_feature_space_500_s'] / m['fid_sample_space_500_s']:.1f}x")
    if "images_per_s" in res:
        ips = res["images_per_s"]
        xrv = ips["xrv"]
        for k, v in ips.items():
            if k != "xrv" and not k.endswith("per_cpu_s"):
                print(f"ratio: {k} / xrv images/s = {v / xrv:.2f}")
        print(f"ratio: extracting 10k images with xrv / FID on their features = "
              f"{(10000 / xrv) / m['fid_feature_space_s']:.0f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
