"""Peak CPU memory of converting an official checkpoint, relative to the size of its weights.

Builds a random official-layout checkpoint (DiT-XL/2 width, ``--depth`` blocks;
``--depth 28`` is the paper-size model, 2.4 GB in float32), then converts it in a
fresh process twice:

- ``chexgen``: ``convert_official_checkpoint`` (memory-mapped load, meta-device
  model, tensors assigned; writes the pipeline folder);
- ``naive``: ``torch.load`` into memory, a normally initialised ChexGenDiT,
  ``load_state_dict`` (copy), ``save_pretrained``.

Prints peak resident memory above the post-import baseline divided by the
weight bytes (1.0 = exactly one copy). Usage::

    python benchmarks/official_convert_memory.py            # depth 8 (~0.7 GB), about a minute
    python benchmarks/official_convert_memory.py --depth 28 # paper size
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CHILD = r"""
import json, resource, sys, time
import torch
from chexgen.models.dit import ChexGenDiT  # noqa: F401  (imports counted in the baseline)
from chexgen.models import official
import chexgen.pipelines.convert_official as conv
import diffusers, accelerate  # noqa: F401

def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

mode, ckpt, out = sys.argv[1], sys.argv[2], sys.argv[3]
base = rss_kb()
t0 = time.perf_counter()
if mode == "chexgen":
    conv.convert_official_checkpoint(ckpt, out, num_heads=16, hash_checkpoint=False)
else:
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    sd = official.strip_prefix(raw["state_dict_ema"])
    arch = official.infer_architecture(sd, num_heads=16)
    mapped = official.map_official_state_dict(sd)
    model = ChexGenDiT(**arch.transformer_kwargs())
    model.load_state_dict(mapped.state_dict)
    model.save_pretrained(out + "/transformer")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kb": base, "peak_kb": peak, "seconds": time.perf_counter() - t0}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=8, help="Transformer blocks (28 = paper size).")
    ap.add_argument("--hidden", type=int, default=1152, help="Width (1152 = DiT-XL).")
    ap.add_argument("--tmp", default=None, help="Scratch folder (default: a temporary one).")
    args = ap.parse_args()

    from test_official_convert import official_state_dict  # the test's official-layout builder

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t0 = time.perf_counter()
        sd = official_state_dict(depth=args.depth, hidden=args.hidden, grid=16, std=0.02)
        # The official layout at XL size has caption width 20 here (the test's); add the real 4096-wide
        # caption tensors so the byte count matches a real checkpoint.
        cap = 4096
        sd["y_embedder.y_embedding"] = torch.randn(120, cap)
        sd["y_embedder.y_proj.fc1.weight"] = torch.randn(args.hidden, cap) * 0.02
        nbytes = sum(v.numel() * v.element_size() for k, v in sd.items() if k != "pos_embed")
        ckpt = Path(tmp) / "official.pth"
        torch.save({"state_dict_ema": {"module." + k: v for k, v in sd.items()}}, ckpt)
        del sd
        print(f"checkpoint: depth {args.depth}, width {args.hidden}, {nbytes / 2**30:.2f} GiB of weights "
              f"(built in {time.perf_counter() - t0:.0f} s)")
        results = {}
        for mode in ("chexgen", "naive"):
            out = Path(tmp) / f"out_{mode}"
            proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(ckpt), str(out)],
                                  capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            ratio = (r["peak_kb"] - r["base_kb"]) * 1024 / nbytes
            results[mode] = ratio
            print(f"{mode:8s} peak memory above baseline = {ratio:.2f} x weights ({r['seconds']:.1f} s)")
        print(f"chexgen / naive peak ratio: {results['chexgen'] / results['naive']:.2f}")


if __name__ == "__main__":
    main()
