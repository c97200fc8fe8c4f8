"""``chexgen benchmark`` end to end: a tiny real set, a tiny chexgen pipeline and a tiny Stable Diffusion
pipeline (with a prompt template), the VAE upper bound, RAD-DINO-class / XRV / classifier features and a
re-identification network, all random and built here; report, leaderboard, resume after a kill, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _diffusers_models import make_tiny_sd_pipeline
from conftest import make_tiny_pipeline

from chexgen.cli import main
from chexgen.data.imageio import load_gray, save_png
from chexgen.data.manifest import Record, read_manifest, write_manifest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
FINDINGS = ["Cardiomegaly", "Pleural Effusion", "No Finding"]


class _TinyClassifier(torch.nn.Module):
    """A random 14-class "classifier": (features, scores) from [B, 1, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 14)

    def forward(self, x):
        f = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1)
        return f, torch.sigmoid(self.fc(f))


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory, tiny_t5_dir):
    """A folder with a real set (9 cases, 3 findings), two tiny models, extractors and a re-ID network."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from chexgen.evaluation.reid import SiameseReID

    root = tmp_path_factory.mktemp("bench")
    make_tiny_pipeline(tiny_t5_dir).save_pretrained(root / "cx")
    make_tiny_sd_pipeline(root / "sd")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=14, image_size=28)).save_pretrained(str(root / "raddino"))
    BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(
        str(root / "raddino"))
    torch.jit.script(_TinyClassifier()).save(str(root / "clf.pt"))
    net = SiameseReID()
    with torch.no_grad():
        net.fc_end.weight.fill_(-50.0)
        net.fc_end.bias.fill_(3.0)
    torch.save(net.state_dict(), root / "reid.pth")
    rng = np.random.default_rng(0)
    recs = []
    for i in range(9):
        f = FINDINGS[i % 3]
        save_png(root / "real" / "images" / f"r{i}.png", rng.random((32, 32)).astype(np.float32))
        recs.append(Record(id=f"r{i}", image=f"images/r{i}.png", split="test", sex="F" if i % 2 else "M", age=40 + i,
                           race="White", labels={f: 1, **({} if f == "No Finding" else {"No Finding": 0})},
                           impression=f"{f}, case {i}."))
    write_manifest(root / "real" / "manifest.jsonl", recs)
    return root


def _config(root: Path, name: str, steps: int = 20, **extra_models) -> Path:
    text = f"""
out: out-{name}
real: real/manifest.jsonl
split: test
images_per_prompt: 2
batch_size: 2
bootstrap: 20
distribution_bootstrap: 4
kid_subsets: 5
analysis_size: 64
min_finding_images: 2
grid_prompts: 4
models:
  - {{name: cx, model: cx, steps: {steps}, sampler: ddim}}
  - {{name: sd, backend: diffusers, model: sd, steps: {steps}, prompt_template: roentgen-v2}}
  - {{name: vae-upper, backend: vae-reconstruction, model: cx}}
extractors:
  - {{name: rad-dino, kind: rad-dino, weights: raddino}}
  - {{name: xrv, kind: xrv, random_init: true}}
  - {{name: clf, kind: classifier, weights: clf.pt, image_size: 32}}
reid: {{weights: reid.pth, threshold: 0.5}}
"""
    path = root / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished(bench_dir):
    """One uninterrupted run (in this process)."""
    torch.set_num_threads(1)
    assert main(["benchmark", "--config", str(_config(bench_dir, "full")), "--no-progress"]) == 0
    return bench_dir / "out-full"


def test_benchmark_writes_report_leaderboard_and_metrics(finished):
    m = json.loads((finished / "metrics.json").read_text())
    assert list(m["models"]) == ["cx", "sd", "vae-upper"]
    cx, sd, up = (m["models"][k] for k in ("cx", "sd", "vae-upper"))
    for model in (cx, sd, up):
        assert model["n_images"] == 18 and model["n_matched"] == 18
        for key in ("fd_rad-dino", "kid_rad-dino", "precision_rad-dino", "coverage_rad-dino", "fd_xrv", "ms_ssim",
                    "pearson", "memorised_fraction", "reid_fraction", "seconds_per_image"):
            assert key in model["metrics"], key
        fd = model["metrics"]["fd_rad-dino"]
        assert fd["low"] <= fd["value"] <= fd["high"] and fd["label"] == "FD-RAD-DINO"
    assert cx["timing"]["model_calls_per_image"] == 40  # 20 guided steps: 2 denoiser samples each
    assert sd["timing"]["model_calls_per_image"] == 40 and up["timing"]["model_calls_per_image"] == 0
    assert cx["settings"]["backend"] == "chexgen" and sd["settings"]["pipeline"] == "StableDiffusionPipeline"
    assert up["settings"]["backend"] == "vae-reconstruction"
    # the template reached the diffusers model's prompts, and its provenance
    sd_recs = read_manifest(finished / "models" / "sd" / "manifest.jsonl")
    assert sd_recs[0].impression == "40 year old White male. Cardiomegaly, case 0."
    assert sd_recs[0].provenance["prompt_template"].startswith("roentgen-v2")
    tests = m["paired_tests"]["feature_distance_rad-dino"]
    means = {k: np.mean(list(v["per_prompt"]["feature_distance_rad-dino"].values())) for k, v in m["models"].items()}
    assert tests["best"] == min(means, key=means.get) and len(tests["tests"]) == 2
    assert all(0 <= t["p_value"] <= 1 and t["n"] == 9 for t in tests["tests"].values())
    assert {r["finding"] for r in m["per_finding"]} == set(FINDINGS)
    fd = m["paired_fd"]["fd_rad-dino"]
    assert fd["best"] == min((k for k in m["models"]), key=lambda k: m["models"][k]["metrics"]["fd_rad-dino"]["value"])
    assert set(fd["tests"]) == set(m["models"]) - {fd["best"]}
    assert all(t["low"] <= t["high"] and 0 < t["p_value"] <= 1 and t["n_prompts"] == 9 for t in fd["tests"].values())

    md = (finished / "leaderboard.md").read_text()
    for heading in ("The paper's table", "CheXGenBench columns", "All metrics", "Paired tests", "paired bootstrap",
                    "Per finding"):
        assert heading in md
    assert "FID-XRV" in md and "FD-RAD-DINO" in md and "re-ID match" in md
    with open(finished / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["cx", "sd", "vae-upper"]
    assert float(rows[0]["FD-RAD-DINO"]) == pytest.approx(cx["metrics"]["fd_rad-dino"]["value"])

    from bs4 import BeautifulSoup

    soup = BeautifulSoup((finished / "report.html").read_text(), "html.parser")
    titles = [h.get_text() for h in soup.find_all("h2")]
    assert titles[0].startswith("The paper's table") and "Side by side" in titles and "Feature space" in titles
    imgs = soup.find_all("img")
    assert len(imgs) == 2 and all(i["src"].startswith("data:image/png;base64,") for i in imgs)
    assert not soup.find_all(["link", "script"])  # self-contained


def test_vae_upper_bound_is_the_pipeline_vae_decoding_a_seeded_posterior_sample(bench_dir, finished):
    from chexgen.models.vae import RadiographVAE
    from chexgen.pipelines.base import PipelineConfig

    cfg = PipelineConfig.from_dict(json.loads((bench_dir / "cx" / "chexgen_config.json").read_text()))
    vae = RadiographVAE.from_pretrained(bench_dir / "cx" / "vae", spec=cfg.vae).eval()
    rec = read_manifest(finished / "models" / "vae-upper" / "manifest.jsonl")[3]  # prompt 1, image 1: seed 3
    assert rec.extra["source_id"] == "r1" and rec.provenance["seed"] == 3
    x = torch.from_numpy(load_gray(bench_dir / "real" / "images" / "r1.png"))[None, None]
    with torch.no_grad():
        mean, std = vae.encode_moments(x)
        noise = torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(3))
        want = vae.decode(mean + std * noise[None]).clamp(0, 1)[0, 0].numpy()
    got = load_gray(finished / "models" / "vae-upper" / rec.image)
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6


def test_benchmark_resumes_after_a_kill_and_matches_an_uninterrupted_run(bench_dir, finished):
    cfg = _config(bench_dir, "killed")
    out = bench_dir / "out-killed"
    cmd = [sys.executable, "-m", "chexgen.cli", "benchmark", "--config", str(cfg), "--no-progress"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    images = out / "models" / "cx" / "images"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if images.is_dir() and len(list(images.glob("*.png"))) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    assert not (out / "leaderboard.md").exists()
    before = {p.name: p.stat().st_mtime_ns for p in images.glob("*.png")}
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert all(p.stat().st_mtime_ns == before[p.name] for p in images.glob("*.png") if p.name in before)
    for model in ("cx", "sd", "vae-upper"):
        a = sorted((finished / "models" / model / "images").glob("*.png"))
        b = sorted((out / "models" / model / "images").glob("*.png"))
        assert [p.name for p in a] == [p.name for p in b] and len(a) == 18
        assert all(np.array_equal(load_gray(x), load_gray(y)) for x, y in zip(a, b))
    full = json.loads((finished / "metrics.json").read_text())["models"]
    resumed = json.loads((out / "metrics.json").read_text())["models"]
    for model in full:
        for key, value in full[model]["metrics"].items():
            if key != "seconds_per_image":
                assert resumed[model]["metrics"][key]["value"] == pytest.approx(value["value"], nan_ok=True), key


def test_precision_per_model_and_for_the_run(bench_dir, tmp_path, monkeypatch):
    from chexgen.benchmark import load_config
    from chexgen.benchmark.models import open_backend, prepare_models

    monkeypatch.setenv("CHEXGEN_CPU_BF16", "0")  # auto = fp32 here, whatever this CPU has
    text = _config(bench_dir, "prec", steps=2).read_text().replace(
        "{name: cx, model: cx, steps: 2, sampler: ddim}", "{name: cx, model: cx, steps: 2, sampler: ddim, "
        "precision: bfloat16}")
    path = bench_dir / "prec.yaml"
    path.write_text(text)
    from chexgen.benchmark.run import _records, real_prompt_items

    cfg = load_config(path)
    assert cfg.precision == "auto" and cfg.models[0].precision == "bf16"  # aliases are normalised
    recs, _ = _records(cfg.real, cfg.split, "real", cfg.max_prompts)
    prepared = {pm.entry.name: pm for pm in prepare_models(cfg, real_prompt_items(recs, cfg.real))}
    cx = open_backend(prepared["cx"], cfg, "cpu", Path(cfg.real).parent)
    sd = open_backend(prepared["sd"], cfg, "cpu", Path(cfg.real).parent)
    assert cx.settings()["precision"] == "bf16" and sd.settings()["dtype"] == "float32"  # per model; run's auto
    cfg.precision = "bf16"  # what `chexgen benchmark --precision bf16` sets
    assert open_backend(prepared["sd"], cfg, "cpu", Path(cfg.real).parent).settings()["dtype"] == "bfloat16"


@pytest.mark.parametrize("change, match", [
    ("backend: diffusers, model: cx", "--backend diffusers"),
    ("backend: magic, model: cx", "unknown backend 'magic'"),
    ("model: no-such-owner/no-such-model", "no local copy in the Hugging Face cache"),
    ("model: cx, prompt_template: '{age} {view}: {impression}'", "has no view"),
    ("model: cx, sampler: bogus", "unknown sampler"),
    ("model: sd, sampler: ddim", "sampler / text_encoder are for chexgen models"),
    ("backend: monai, model: bundle", "MONAI bundles cannot be driven"),
    ("model: cx, precision: fp64", "unknown precision 'fp64'"),
    ("model: sd, backend: diffusers, dtype: float16, precision: bf16", "dtype float16 contradicts precision bf16"),
])
def test_bad_model_entries_stop_before_anything_is_generated(bench_dir, tmp_path, capsys, change, match):
    (bench_dir / "bundle" / "configs").mkdir(parents=True, exist_ok=True)
    (bench_dir / "bundle" / "configs" / "inference.json").write_text("{}")
    cfg = _config(bench_dir, "bad", steps=2).read_text().replace("{name: cx, model: cx, steps: 2, sampler: ddim}",
                                                                 "{name: cx, " + change + "}")
    path = bench_dir / "bad.yaml"
    path.write_text(cfg)
    out = tmp_path / "bad-out"
    code = main(["benchmark", "--config", str(path), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists(), err
    assert len(err.splitlines()) == 1 and match in err and "models[0] (cx)" in err, err


def test_config_errors_name_the_file_and_key(bench_dir, capsys):
    path = bench_dir / "typo.yaml"
    path.write_text(_config(bench_dir, "t").read_text().replace("images_per_prompt:", "images_per_promt:"))
    assert main(["benchmark", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "unknown key(s) 'images_per_promt'" in err


@pytest.mark.slow
def test_two_processes_shard_the_generation_and_match_one(bench_dir, finished):
    out = bench_dir / "out-dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "chexgen.cli",
           "benchmark", "--config", str(_config(bench_dir, "dist")), "--no-progress"]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (out / "timing").glob("cx.rank*.json")) == ["cx.rank0.json", "cx.rank1.json"]
    full = json.loads((finished / "metrics.json").read_text())["models"]
    dist = json.loads((out / "metrics.json").read_text())["models"]
    for model in full:
        assert dist[model]["timing"]["images"] == 18
        for key, value in full[model]["metrics"].items():
            if key != "seconds_per_image":
                assert dist[model]["metrics"][key]["value"] == pytest.approx(value["value"], nan_ok=True), key


def _feature_set(name: str, features: np.ndarray, prompts: list[int]):
    from chexgen.benchmark.sets import ImageSet
    from chexgen.evaluation.features import FeatureSet

    recs = [Record(id=f"{name}{i}", image=f"{i}.png", extra={"prompt_index": g}) for i, g in enumerate(prompts)]
    return ImageSet(name=name, records=recs, features={"f": FeatureSet(features)},
                    images=np.zeros((len(recs), 4, 4), np.float16))


def test_paired_fd_separates_models_whose_own_intervals_overlap():
    """Two models on the same prompts and seeds: one a little off the real distribution, one on it. Their FDs
    differ by less than either one's sampling noise, but every draw of the paired bootstrap shares the noise."""
    from chexgen.benchmark.config import ExtractorEntry
    from chexgen.benchmark.scoring import compare_distances
    from chexgen.evaluation import bootstrap_two_sample_ci, compute_fid

    rng = np.random.default_rng(0)
    d, n_prompts, per = 8, 60, 2
    real = _feature_set("real", rng.normal(size=(120, d)), list(range(120)))
    shared = rng.normal(size=(n_prompts * per, d))  # the same seeds: most of the two models' images agree
    prompts = [g for g in range(n_prompts) for _ in range(per)]
    good = _feature_set("good", shared, prompts)
    off = _feature_set("off", shared + np.r_[0.7, np.zeros(d - 1)], prompts)
    same = _feature_set("same", shared.copy(), prompts)
    entries = [ExtractorEntry(name="f", kind="classifier")]

    res = compare_distances(real, {"off": off, "good": good}, entries, n_boot=200)["fd_f"]
    assert res["best"] == "good" and res["values"]["off"] > res["values"]["good"]
    t = res["tests"]["off"]
    assert t["n_prompts"] == n_prompts and t["difference"] == pytest.approx(res["values"]["off"] - res["values"]["good"])
    assert 0 < t["low"] and t["p_value"] < 0.02
    # the two models' own intervals overlap: unpaired, nothing would be decided
    rf = real.features["f"].features
    ci_good = bootstrap_two_sample_ci(compute_fid, rf, shared, n_boot=200, recentre=True)
    ci_off = bootstrap_two_sample_ci(compute_fid, rf, off.features["f"].features, n_boot=200, recentre=True)
    assert ci_off.low < ci_good.high
    # identical images: a zero difference on every draw, no evidence either way
    t0 = compare_distances(real, {"good": good, "same": same}, entries, n_boot=50)["fd_f"]["tests"]
    (only,) = t0.values()
    assert only["difference"] == 0 and only["low"] == only["high"] == 0 and only["p_value"] == 1.0
    # prompts only one model has are left out of the draws
    part = _feature_set("part", shared[: 20 * per] + 0.7, prompts[: 20 * per])
    assert compare_distances(real, {"good": good, "part": part}, entries, n_boot=20)["fd_f"]["tests"]["part"][
        "n_prompts"] == 20
