"""The benchmark scripts that score the bundled model run end to end (tiny settings, real code paths).

Their imports sit inside functions, so a library change can break them without any import failing at
collection; these runs catch that (a moved module or a changed signature stopped both once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
    [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_sampler_quality_scores_and_chooses_a_default(tmp_path):
    out = _run("sampler_quality.py", "--n", "8", "--samplers", "ddim", "dpmsolver++", "--steps", "2", "--bootstrap",
               "10", "--threads", "1", "--work", str(tmp_path / "w"), "--plot", str(tmp_path / "p.png"))
    assert "default: " in out and (tmp_path / "p.png").stat().st_size > 0
    (summary,) = (tmp_path / "w").glob("*/sampler_quality.json")
    table = json.loads(summary.read_text())
    assert {f"{r['sampler']}-{r['steps']}" for r in table["rows"]} == {"ddim-2", "dpmsolver++-2"}
    assert table["chosen"]["calls"] == 4  # 2 steps x 2 (guidance)


def test_control_benchmark_scores_the_bundled_adapter(tmp_path):
    out = _run("control.py", "--model", str(ROOT / "src" / "chexgen" / "assets" / "demo"), "--out", str(tmp_path),
               "--n", "24", "--heldout", "24", "--test-cases", "4", "--segmenter-steps", "3", "--model-steps", "2",
               "--drop-location", "--control-scale", "1", "2")
    # one row per conditioning scale, each compared with the text-only run of the same seeds
    assert "text + control x1 " in out and "text + control x2 " in out
    assert "hit rate with control x1 / segmenter ceiling" in out and "hit rate with control x2 / segmenter" in out


def test_demo_curve_tabulates_and_plots_scored_models(tmp_path):
    def scored(name: str, mean: float, fid: float) -> str:
        d = {"auroc_generated_mean": mean, "auroc_generated_mean_ci": [mean - 0.02, mean + 0.02],
             "auroc_generated_per_class": {"Lung Lesion": 0.5}, "auroc_real_per_class": {"Lung Lesion": 0.6},
             "fid_real_vs_generated": fid, "auroc_real_mean": 0.9, "fid_real_half_vs_half": 37.0}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"runs": [{"guidance": 4.0, "demo": d, "fid_ci": [fid - 10, fid + 10]}]}))
        return str(path)

    png = tmp_path / "curve.png"
    out = _run("demo_curve.py", "--point", f"2000:{scored('b', 0.85, 200.0)}", "--point",
               f"1000:{scored('a', 0.80, 300.0)}", "--mark", "1500:LR decay", "--out", str(png))
    lines = [ln for ln in out.splitlines() if ln.startswith("| 1,000") or ln.startswith("| 2,000")]
    assert lines == ["| 1,000 | 0.800 [0.780, 0.820] | 0.500 | 300 [290, 310] |",
                     "| 2,000 | 0.850 [0.830, 0.870] | 0.500 | 200 [190, 210] |"]  # sorted by steps
    assert png.is_file() and png.stat().st_size > 10_000
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demo_curve.py"), "--point", "x:y"], env=ENV,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "expected STEPS:FILE" in bad.stderr


def test_demo_quality_compares_two_models_paired(tmp_path):
    """The bundled model against itself: the same cases and seeds give the same images, so the paired FID
    difference is 0 on every draw (and the comparison, the classifier and the runs are in the JSON)."""
    bundled = ROOT / "src" / "chexgen" / "assets" / "demo"
    out = _run("demo_quality.py", "--n", "12", "--steps", "2", "--skip-demo", "--compare", str(bundled),
               "--classifier", str(bundled / "classifier"), "--work", str(tmp_path))
    assert "== paired FID against" in out
    res = json.loads((tmp_path / "demo_quality.json").read_text())
    c = res["comparison"]
    assert c["fid_this"] == c["fid_other"] and c["difference"] == 0 and c["low"] == c["high"] == 0
    assert c["p_value"] == 1.0 and c["other_steps"] == 2 and res["steps"] == 2
    assert res["classifier"] == str(bundled / "classifier") and len(res["runs"]) == 1
