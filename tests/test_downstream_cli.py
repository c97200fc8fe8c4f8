"""`chexgen downstream augment|pretrain|fairness` end to end on a tiny drawn cohort."""

from __future__ import annotations

import json

import pytest
import yaml

from chexgen.cli import main
from chexgen.downstream.toy import make_toy_cohort

TINY = ["--arch", "densenet-tiny", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--lr", "3e-3",
        "--classes", "Cardiomegaly,Pleural Effusion", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here on one torch thread (shared fixture in conftest.py)."""


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    real = make_toy_cohort(root / "real", 60, size=32, seed=0)
    syn = make_toy_cohort(root / "syn", 90, size=32, seed=1, synthetic=True, id_prefix="syn",
                          splits=(0.7, 0.0, 0.3))
    return root, real, syn


def test_augment_writes_results_and_resumes(cohorts, capsys):
    root, real, syn = cohorts
    cfg = root / "augment.yaml"
    cfg.write_text(yaml.safe_dump({"experiment": "augment", "real": "real/manifest.jsonl", "synthetic": "syn/manifest.jsonl",
                                   "output": "out_aug", "seeds": [0, 1], "multipliers": [1], "train": {"num_threads": 1}}))
    assert main(["downstream", "augment", "--config", str(cfg), *TINY]) == 0
    out = root / "out_aug"
    printed = capsys.readouterr().out
    assert "| real+1x |" in printed
    for name in ("metrics.json", "augment_table.md", "augment_table.csv", "augment.png", "config.resolved.yaml"):
        assert (out / name).is_file(), name
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["seeds"] == [0, 1] and resolved["train"]["epochs"] == 1 and resolved["arch"] == "densenet-tiny"
    metrics = json.loads((out / "metrics.json").read_text())
    s = metrics["summaries"]["real+1x"]["auroc_macro"]
    assert s["n"] == 2 and 0 <= s["mean"] <= 1 and "wilcoxon_p_vs_real" in s
    runs = metrics["runs"]
    assert runs["real+1x"][0]["n_synthetic"] == runs["real+1x"][0]["n_real"] and not runs["real+1x"][0]["shortfall"]
    assert runs["real"][0]["init"] == "scratch"

    # Resume: a finished run file is reused, a deleted one is recomputed.
    keep = out / "runs" / "real" / "seed_0.json"
    gone = out / "runs" / "real+1x" / "seed_1.json"
    before = keep.stat().st_mtime_ns
    gone.unlink()
    assert main(["downstream", "augment", "--config", str(cfg), *TINY]) == 0
    assert keep.stat().st_mtime_ns == before and gone.is_file()


def test_fairness_reports_groups_correlation_and_mitigation(cohorts):
    root, real, syn = cohorts
    out = root / "out_fair"
    args = ["downstream", "fairness", "--real", str(real), "--synthetic", str(syn), "--output", str(out), "--seeds", "0", *TINY]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    base = m["runs"]["baseline"][0]
    assert {g["group"] for g in base["groups"]} >= {"sex=F", "sex=M", "sex=F&age_band=66+"}
    assert base["synthetic_groups"] and "synthetic_metrics" in base
    mit = m["runs"]["mitigated"][0]
    assert mit["n_synthetic"] > 0 and mit["n_train"] == base["n_train"] + mit["n_synthetic"]
    assert "auroc/all/gap" in m["summary"] and "real_vs_synthetic/f1_weighted/pearson_r" in m["summary"]
    for name in ("fairness_table.md", "fairness_groups.csv", "fairness_groups.png", "fairness_real_vs_synthetic.png"):
        assert (out / name).is_file(), name


def test_pretrain_fractions_shots_and_gradcam(cohorts):
    root, real, syn = cohorts
    out = root / "out_pre"
    args = ["downstream", "pretrain", "--real", str(real), "--synthetic", str(syn), "--output", str(out), "--seeds", "0",
            "--fractions", "0.5,1", "--shots", "2", *TINY]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["inits"] == ["synthetic", "scratch"] and "imagenet" in m["skipped_inits"]
    assert set(m["summaries"]) >= {"synthetic/frac=0.5", "scratch/frac=1", "synthetic/shot=2", "pretrain"}
    assert m["runs"]["synthetic/frac=1"][0]["init"] == "synthetic-pretrained"
    assert m["runs"]["scratch/shot=2"][0]["n_train"] < m["runs"]["scratch/frac=1"][0]["n_train"]
    assert (out / "pretrained" / "seed_0.pt").is_file() and (out / "pretrain_frac.png").is_file()
    assert len(list((out / "gradcam").glob("*.png"))) >= 1


def test_config_errors_are_one_line(cohorts, capsys):
    root, real, syn = cohorts
    bad = root / "bad.yaml"
    bad.write_text("real: real/manifest.jsonl\nsynthetic: syn/manifest.jsonl\nepochz: 3\n")
    assert main(["downstream", "augment", "--config", str(bad)]) == 2
    assert "unknown key(s) ['epochz']" in capsys.readouterr().err
    assert main(["downstream", "fairness", "--real", str(real), "--synthetic", str(syn), "--task", "segmentation"]) == 2


@pytest.mark.parametrize("task,extra,metric", [
    ("segmentation", {"arch": "resnet18", "width": 4}, "dice_pos"),
    ("detection", {"arch": "resnet18", "width": 4, "classes": ["Lung Lesion"]}, "map50"),
    ("regression", {"arch": "resnet18"}, "mae"),
])
def test_augment_runs_every_task(cohorts, task, extra, metric):
    from chexgen.downstream.config import load_config
    from chexgen.downstream.experiments import run_augment

    root, real, syn = cohorts
    cfg = load_config(None, {"experiment": "augment", "task": task, "real": str(real), "synthetic": str(syn),
                             "output": str(root / f"out_{task}"), "seeds": [0], "multipliers": [1], "image_size": 32,
                             "train.epochs": 1, "train.batch_size": 16, "train.device": "cpu", **extra})
    res = run_augment(cfg)
    runs = res["runs"]
    assert runs["real+1x"][0]["n_synthetic"] == runs["real"][0]["n_train"]
    assert metric in runs["real+1x"][0]["metrics"] and res["primary_metric"] in res["summaries"]["real"]
