"""The three experiments of the paper, each resumable per seed.

Layout of a results folder::

    config.resolved.yaml       every setting, defaults filled in, seeds included
    runs/<condition>/seed_<s>.json   one training run (skipped when present: resume)
    metrics.json               summaries (mean, sd, n) and Wilcoxon p-values
    <table>.md / <table>.csv   tables
    <plot>.png                 plots (and gradcam/ for pretraining)

A run file is written only after its run finished, atomically, so an interrupted experiment
restarts at the first missing run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml

from chexgen.data.manifest import Record
from chexgen.downstream import report
from chexgen.downstream.config import Cohort, ExperimentConfig, load_cohort
from chexgen.downstream.data import ManifestDataset
from chexgen.downstream.fairness import gap_summary, subgroup_correlation, subgroup_metrics
from chexgen.downstream.sampling import k_shot, label_key_fn, mix_synthetic, parity_additions, subsample_fraction
from chexgen.downstream.stats import format_mean_sd, summarize, wilcoxon_p
from chexgen.downstream.trainer import PRIMARY_METRIC, FitResult, fit, predict_dataset, score
from chexgen.utils import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["run_experiment", "run_augment", "run_pretrain", "run_fairness"]

log = logging.getLogger(__name__)


def _seed_rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) for p in parts])


def _dataset(cfg: ExperimentConfig, parts: Sequence[tuple[Sequence[Record], Path | None]], augment: bool) -> ManifestDataset:
    records, roots = [], []
    for recs, root in parts:
        records.extend(recs)
        roots.extend([root] * len(recs))
    return ManifestDataset(records, roots, cfg.sample_spec(augment=augment))


def _run_file(out: Path, condition: str, seed: int) -> Path:
    return out / "runs" / condition / f"seed_{seed}.json"


def _cached_or_run(path: Path, job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if path.is_file():
        log.info("resume: %s exists, skipping", path)
        return json.loads(path.read_text(encoding="utf-8"))
    result = job()
    atomic_write_json(path, result, nan_as_null=True)
    return result


def _fit_record(res: FitResult, **extra: Any) -> dict[str, Any]:
    return {"metrics": res.metrics, "val_metrics": res.val_metrics, "init": res.init, "best_epoch": res.best_epoch,
            "seconds": round(res.seconds, 2), **extra}


def _write_config(cfg: ExperimentConfig, out: Path) -> None:
    atomic_write_text(out / "config.resolved.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _summaries(runs: dict[str, list[dict]], baseline: str) -> dict[str, Any]:
    """Per condition and metric: mean/sd/n, and Wilcoxon p against ``baseline`` (paired by seed)."""
    out: dict[str, Any] = {}
    base = runs.get(baseline, [])
    for cond, rs in runs.items():
        keys = sorted({k for r in rs for k in r["metrics"]})
        entry: dict[str, Any] = {}
        for k in keys:
            vals = [r["metrics"].get(k, float("nan")) for r in rs]
            s = summarize(vals).to_dict()
            if cond != baseline and base:
                bseeds = {r["seed"]: r["metrics"].get(k, float("nan")) for r in base}
                paired = [(r["metrics"].get(k, float("nan")), bseeds[r["seed"]]) for r in rs if r["seed"] in bseeds]
                s["wilcoxon_p_vs_" + baseline] = wilcoxon_p([a for a, _ in paired], [b for _, b in paired])
            entry[k] = s
        out[cond] = entry
    return out


def _metric_table_rows(runs: dict[str, list[dict]], summaries: dict[str, Any], baseline: str, metric_keys: Sequence[str]) -> list[dict]:
    rows = []
    for cond, rs in runs.items():
        row: dict[str, Any] = {"condition": cond, "n_train": rs[0].get("n_train") if rs else None, "seeds": len(rs),
                               "init": rs[0].get("init") if rs else None}
        for k in metric_keys:
            s = summaries[cond].get(k)
            row[k] = format_mean_sd(summarize([r["metrics"].get(k, float("nan")) for r in rs])) if s else "n/a"
            if s and "wilcoxon_p_vs_" + baseline in s:
                row[f"p({k})"] = s["wilcoxon_p_vs_" + baseline]
        rows.append(row)
    return rows


def _set_up(cfg: ExperimentConfig, cohort: Cohort | None):
    """What every experiment starts with: the cohort, the output folder (config written), the label key,
    the real test set and the real validation set (None without one)."""
    cohort = cohort or load_cohort(cfg)
    out = Path(cfg.output)
    _write_config(cfg, out)
    key = label_key_fn(cfg.task, cfg.classes, cfg.mask, cfg.uncertain_as)
    test = _dataset(cfg, [(cohort.test, cohort.real_root)], augment=False)
    val = _dataset(cfg, [(cohort.val, cohort.real_root)], augment=False) if cohort.val else None
    return cohort, out, key, test, val


# -- augmentation -------------------------------------------------------------------------------
def run_augment(cfg: ExperimentConfig, cohort: Cohort | None = None) -> dict[str, Any]:
    """Real only vs real + k x synthetic (k in ``cfg.multipliers``), label distribution kept, N seeds."""
    cohort, out, key, test, val = _set_up(cfg, cohort)
    conditions = ["real"] + [f"real+{k:g}x" for k in cfg.multipliers]
    runs: dict[str, list[dict]] = {c: [] for c in conditions}
    for seed in cfg.seeds:
        real_train = subsample_fraction(cohort.train, cfg.real_fraction, key, _seed_rng(seed, 0))
        for k, cond in zip([0.0] + list(cfg.multipliers), conditions):
            def job(k=k) -> dict[str, Any]:
                parts = [(real_train, cohort.real_root)]
                mix: dict[str, Any] = {}
                if k > 0:
                    plan = mix_synthetic(real_train, cohort.synthetic, k, key, _seed_rng(seed, 1, int(k * 1000)))
                    parts.append((plan.synthetic, cohort.synthetic_root))
                    mix = {"n_synthetic": len(plan.synthetic), "reused": plan.reused, "shortfall": plan.shortfall}
                train = _dataset(cfg, parts, augment=True)
                res = fit(cfg.model_spec(), train, test, cfg.train, seed=seed, val_set=val)
                return _fit_record(res, seed=seed, n_train=len(train), n_real=len(real_train), **mix)

            runs[cond].append(_cached_or_run(_run_file(out, cond, seed), job))
            log.info("augment %s seed %d: %s", cond, seed, runs[cond][-1]["metrics"].get(PRIMARY_METRIC[cfg.task]))

    summaries = _summaries(runs, "real")
    primary = PRIMARY_METRIC[cfg.task]
    keys = sorted({k for rs in runs.values() for r in rs for k in r["metrics"]}, key=lambda k: (k != primary, k))
    rows = _metric_table_rows(runs, summaries, "real", keys)
    cols = ["condition", "n_train", "seeds", "init", primary, f"p({primary})"] + [k for k in keys if k != primary]
    md = report.write_table(rows, cols, out / "augment_table", title=f"Augmentation ({cfg.task}, {primary})")
    report.bar_plot(conditions, [summaries[c][primary]["mean"] for c in conditions], [summaries[c][primary]["sd"] for c in conditions],
                    primary, out / "augment.png", title=f"real {cfg.real_fraction:g} + synthetic")
    result = {"experiment": "augment", "task": cfg.task, "primary_metric": primary, "classes": cfg.classes,
              "seeds": cfg.seeds, "summaries": summaries, "runs": runs}
    atomic_write_json(out / "metrics.json", result, nan_as_null=True)
    result["table_markdown"] = md
    return result


# -- supervised pretraining on synthetic data --------------------------------------------------
def _budgets(cfg: ExperimentConfig) -> list[tuple[str, float | int]]:
    return [(f"frac={f:g}", f) for f in cfg.fractions] + [(f"shot={k}", k) for k in cfg.shots]


def _positives_fn(cfg: ExperimentConfig) -> Callable[[Record], set[str]]:
    if cfg.task == "classification":
        key = label_key_fn("classification", cfg.classes, uncertain_as=cfg.uncertain_as)
        return lambda r: set(key(r))
    if cfg.task == "detection":
        return lambda r: {b.label for b in r.boxes}
    if cfg.task == "segmentation":
        from chexgen.downstream.data import matching_masks

        return lambda r: {"mask"} if matching_masks(r, cfg.mask) else set()
    return lambda r: {"severity"}


def run_pretrain(cfg: ExperimentConfig, cohort: Cohort | None = None) -> dict[str, Any]:
    """Pretrain on k x synthetic, fine-tune on fractions / k-shot of real; compare with ``cfg.baselines`` inits."""
    import dataclasses

    from chexgen.downstream.models import imagenet_weights_file

    cohort, out, key, test, val = _set_up(cfg, cohort)
    positives = _positives_fn(cfg)
    cls_for_shots = list(cfg.classes) if cfg.task in ("classification", "detection") else ["mask"]
    inits = ["synthetic"] + [b for b in cfg.baselines if b != "synthetic"]
    skipped: dict[str, str] = {}
    arch = cfg.model_spec().arch_name
    if "imagenet" in inits and imagenet_weights_file(arch) is None:
        skipped["imagenet"] = f"no torchvision ImageNet weights for {arch} in the torch hub cache"
        inits.remove("imagenet")
    runs: dict[str, list[dict]] = {}
    pre_cfg = dataclasses.replace(cfg.train, epochs=cfg.pretrain_epochs or cfg.train.epochs)
    for seed in cfg.seeds:
        state_path = out / "pretrained" / f"seed_{seed}.pt"
        pre_file = _run_file(out, "pretrain", seed)
        if not (state_path.is_file() and pre_file.is_file()):
            plan = mix_synthetic(cohort.train, cohort.synthetic, cfg.pretrain_multiplier, key, _seed_rng(seed, 2))
            pre_set = _dataset(cfg, [(plan.synthetic, cohort.synthetic_root)], augment=True)
            res = fit(cfg.model_spec(), pre_set, test, pre_cfg, seed=seed, keep_model=True)
            with atomic_path(state_path, suffix=".pt") as tmp:
                torch.save(res.state_dict, tmp)
            atomic_write_json(pre_file, _fit_record(res, seed=seed, n_train=len(pre_set), shortfall=plan.shortfall),
                              nan_as_null=True)
        runs.setdefault("pretrain", []).append(json.loads(pre_file.read_text(encoding="utf-8")))
        for bname, budget in _budgets(cfg):
            if isinstance(budget, float):
                subset = subsample_fraction(cohort.train, budget, key, _seed_rng(seed, 3, int(budget * 1e6)))
            else:
                subset = k_shot(cohort.train, budget, positives, cls_for_shots, _seed_rng(seed, 4, budget))
            train = _dataset(cfg, [(subset, cohort.real_root)], augment=True)
            for init in inits:
                cond = f"{init}/{bname}"

                def job(init=init, train=train) -> dict[str, Any]:
                    if init == "synthetic":
                        state = torch.load(state_path, map_location="cpu", weights_only=True)
                        res = fit(cfg.model_spec(init="scratch"), train, test, cfg.train, seed=seed, val_set=val, init_state=state)
                        res.init = "synthetic-pretrained"
                    else:
                        res = fit(cfg.model_spec(init=init), train, test, cfg.train, seed=seed, val_set=val)
                    return _fit_record(res, seed=seed, n_train=len(train), budget=bname)

                runs.setdefault(cond, []).append(_cached_or_run(_run_file(out, cond.replace("/", "_"), seed), job))

    primary = PRIMARY_METRIC[cfg.task]
    summaries: dict[str, Any] = {}
    rows = []
    for bname, _ in _budgets(cfg):
        group = {i: runs[f"{i}/{bname}"] for i in inits}
        base = inits[1] if len(inits) > 1 else "synthetic"
        s = _summaries(group, base)
        for i in inits:
            summaries[f"{i}/{bname}"] = s[i]
            m = s[i][primary]
            rows.append({"budget": bname, "init": i, "n_train": group[i][0]["n_train"], primary: format_mean_sd(summarize([r["metrics"][primary] for r in group[i]])),
                         f"p({primary}) vs {base}": m.get("wilcoxon_p_vs_" + base)})
    summaries["pretrain"] = _summaries({"pretrain": runs["pretrain"]}, "pretrain")["pretrain"]
    cols = ["budget", "init", "n_train", primary, f"p({primary}) vs {inits[1] if len(inits) > 1 else 'synthetic'}"]
    md = report.write_table(rows, cols, out / "pretrain_table", title=f"Pretraining on synthetic ({cfg.task}, {primary})")
    for kind, xs in (("frac", cfg.fractions), ("shot", cfg.shots)):
        if not xs:
            continue
        series = {}
        for i in inits:
            names = [f"{kind}={x:g}" if kind == "frac" else f"{kind}={x}" for x in xs]
            series[i] = (list(xs), [summaries[f"{i}/{n}"][primary]["mean"] for n in names], [summaries[f"{i}/{n}"][primary]["sd"] for n in names])
        report.curve_plot(series, "fraction of real training data" if kind == "frac" else "shots per class", primary,
                          out / f"pretrain_{kind}.png", log_x=kind == "frac" and min(xs) < 0.1)
    if cfg.task == "classification" and cfg.gradcam_cases > 0:
        _gradcam_cases(cfg, cohort, out, runs)
    result = {"experiment": "pretrain", "task": cfg.task, "primary_metric": primary, "classes": cfg.classes, "seeds": cfg.seeds,
              "inits": inits, "skipped_inits": skipped, "summaries": summaries, "runs": runs}
    atomic_write_json(out / "metrics.json", result, nan_as_null=True)
    result["table_markdown"] = md
    return result


def _gradcam_cases(cfg: ExperimentConfig, cohort: Cohort, out: Path, runs: dict) -> None:
    """Grad-CAM of the first seed's synthetic-pretrained model (before fine-tuning) on positive test cases."""
    from chexgen.downstream.gradcam import grad_cam, save_overlay
    from chexgen.downstream.models import build_model

    seed = cfg.seeds[0]
    model, _ = build_model(cfg.model_spec(init="scratch"))
    model.load_state_dict(torch.load(out / "pretrained" / f"seed_{seed}.pt", map_location="cpu", weights_only=True))
    test = _dataset(cfg, [(cohort.test, cohort.real_root)], augment=False)
    done = 0
    for i in range(len(test)):
        sample = test[i]
        pos = np.flatnonzero(sample["labels"].numpy() > 0.5)
        if not len(pos):
            continue
        c = int(pos[0])
        cam = grad_cam(model, sample["image"], c)
        save_overlay(sample["image"][0].numpy(), cam, out / "gradcam" / f"{cohort.test[i].id}_{cfg.classes[c].replace(' ', '_')}.png",
                     title=f"{cohort.test[i].id}: {cfg.classes[c]} (synthetic-pretrained)")
        done += 1
        if done >= cfg.gradcam_cases:
            break


# -- fairness ----------------------------------------------------------------------------------
def run_fairness(cfg: ExperimentConfig, cohort: Cohort | None = None) -> dict[str, Any]:
    """Subgroup metrics on real and synthetic test sets, their correlation, and parity mitigation."""
    cohort, out, key, test, val = _set_up(cfg, cohort)
    stest = _dataset(cfg, [(cohort.synthetic_test, cohort.synthetic_test_root)], augment=False) if cohort.synthetic_test else None

    def groups_of(res: FitResult, records: list[Record]) -> list[dict]:
        order = np.argsort(res.outputs["index"])
        g = subgroup_metrics(records, res.outputs["targets"][order], res.outputs["scores"][order], cfg.attributes,
                             cfg.intersections, cfg.train.threshold)
        return [x.to_dict() for x in g]

    runs: dict[str, list[dict]] = {"baseline": [], "mitigated": []}
    for seed in cfg.seeds:
        real_train = subsample_fraction(cohort.train, cfg.real_fraction, key, _seed_rng(seed, 0))

        def base_job() -> dict[str, Any]:
            train = _dataset(cfg, [(real_train, cohort.real_root)], augment=True)
            res = fit(cfg.model_spec(), train, test, cfg.train, seed=seed, val_set=val, keep_model=stest is not None)
            rec = _fit_record(res, seed=seed, n_train=len(train), groups=groups_of(res, cohort.test))
            if stest is not None:
                so = predict_dataset("classification", res.model, stest, cfg.train)
                rec["synthetic_metrics"] = score("classification", so, tuple(cfg.classes), cfg.train.threshold)
                rec["synthetic_groups"] = groups_of(FitResult({}, {}, "", 0, 0.0, outputs=so), cohort.synthetic_test)
            return rec

        def mit_job() -> dict[str, Any]:
            plan = parity_additions(real_train, cohort.synthetic, cfg.parity_attributes, _seed_rng(seed, 5))
            train = _dataset(cfg, [(real_train, cohort.real_root), (plan.synthetic, cohort.synthetic_root)], augment=True)
            res = fit(cfg.model_spec(), train, test, cfg.train, seed=seed, val_set=val)
            return _fit_record(res, seed=seed, n_train=len(train), n_synthetic=len(plan.synthetic), shortfall=plan.shortfall,
                               added=plan.drawn, groups=groups_of(res, cohort.test))

        runs["baseline"].append(_cached_or_run(_run_file(out, "baseline", seed), base_job))
        runs["mitigated"].append(_cached_or_run(_run_file(out, "mitigated", seed), mit_job))

    from chexgen.downstream.fairness import GroupMetric

    def gm(rows: list[dict]) -> list[GroupMetric]:
        return [GroupMetric(**r) for r in rows]

    per_seed: dict[str, list[dict]] = {"baseline": [], "mitigated": []}
    scopes = [None] + list(cfg.attributes)
    for cond in ("baseline", "mitigated"):
        for r in runs[cond]:
            entry = {}
            for metric in ("auroc", "f1_weighted"):
                for scope in scopes:
                    entry[f"{metric}/{scope or 'all'}"] = gap_summary(gm(r["groups"]), metric, cfg.min_group_size, scope)
            if cond == "baseline" and "synthetic_groups" in r:
                for metric in ("f1_weighted", "auroc"):
                    entry[f"real_vs_synthetic/{metric}"] = subgroup_correlation(gm(r["groups"]), gm(r["synthetic_groups"]), metric, cfg.min_group_size)
            per_seed[cond].append(entry)

    summary: dict[str, Any] = {}
    rows = []
    for metric in ("auroc", "f1_weighted"):
        for scope in scopes:
            k = f"{metric}/{scope or 'all'}"
            for field in ("worst", "gap"):
                b = [e[k][field] for e in per_seed["baseline"]]
                m = [e[k][field] for e in per_seed["mitigated"]]
                sb, sm = summarize(b), summarize(m)
                summary[f"{k}/{field}"] = {"baseline": sb.to_dict(), "mitigated": sm.to_dict(), "wilcoxon_p": wilcoxon_p(m, b)}
                rows.append({"metric": metric, "groups": scope or "all", "statistic": field,
                             "baseline": format_mean_sd(sb), "mitigated": format_mean_sd(sm), "p": wilcoxon_p(m, b),
                             "worst group (seed 0, baseline)": per_seed["baseline"][0][k]["worst_group"]})
    for metric in ("f1_weighted", "auroc"):
        vals = [e.get(f"real_vs_synthetic/{metric}", {}).get("pearson_r", float("nan")) for e in per_seed["baseline"]]
        summary[f"real_vs_synthetic/{metric}/pearson_r"] = summarize(vals).to_dict()
    md = report.write_table(rows, ["metric", "groups", "statistic", "baseline", "mitigated", "p", "worst group (seed 0, baseline)"],
                            out / "fairness_table", title="Worst-group metric and best-worst gap, before and after parity mitigation")

    group_rows = _group_table(runs)
    report.write_table(group_rows, ["group", "n", "auroc real", "auroc synthetic", "auroc mitigated", "f1 real", "f1 synthetic", "f1 mitigated"],
                       out / "fairness_groups", title="Subgroup metrics (mean ± sd over seeds)")
    _fairness_plots(runs, out)
    result = {"experiment": "fairness", "task": cfg.task, "classes": cfg.classes, "seeds": cfg.seeds, "summary": summary,
              "per_seed": per_seed, "runs": runs}
    atomic_write_json(out / "metrics.json", result, nan_as_null=True)
    result["table_markdown"] = md
    return result


def _collect(runs: list[dict], field: str, metric: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in runs:
        for g in r.get(field, []):
            out.setdefault(g["group"], []).append(g[metric])
    return out


def _group_table(runs: dict[str, list[dict]]) -> list[dict]:
    n = {g["group"]: g["n"] for g in runs["baseline"][0]["groups"]}
    rows = []
    for group in n:
        row: dict[str, Any] = {"group": group, "n": n[group]}
        for metric, short in (("auroc", "auroc"), ("f1_weighted", "f1")):
            for label, cond, field in (("real", "baseline", "groups"), ("synthetic", "baseline", "synthetic_groups"), ("mitigated", "mitigated", "groups")):
                vals = _collect(runs[cond], field, metric).get(group, [])
                row[f"{short} {label}"] = format_mean_sd(summarize(vals)) if vals else "n/a"
        rows.append(row)
    return rows


def _fairness_plots(runs: dict[str, list[dict]], out: Path) -> None:
    base = _collect(runs["baseline"], "groups", "f1_weighted")
    mit = _collect(runs["mitigated"], "groups", "f1_weighted")
    names = [g for g in base if "&" not in g]
    if names:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = np.arange(len(names))
        fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names)), 3.2))
        for off, (lab, d) in zip((-0.2, 0.2), (("real only", base), ("+ synthetic parity", mit))):
            ax.bar(x + off, [np.nanmean(d.get(g, [np.nan])) for g in names], width=0.4, label=lab,
                   yerr=[np.nanstd(d.get(g, [np.nan])) for g in names], capsize=3)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel("weighted F1")
        ax.legend(fontsize=8)
        report._save(fig, out / "fairness_groups.png")
    syn = _collect(runs["baseline"], "synthetic_groups", "f1_weighted")
    def finite_mean(v: list[float]) -> float:
        v = [x for x in v if x == x]
        return float(np.mean(v)) if v else float("nan")

    common = [g for g in base if g in syn and finite_mean(base[g]) == finite_mean(base[g]) and finite_mean(syn[g]) == finite_mean(syn[g])]
    if common:
        report.scatter_plot([finite_mean(base[g]) for g in common], [finite_mean(syn[g]) for g in common], common,
                            "weighted F1 on real test", "weighted F1 on synthetic test", out / "fairness_real_vs_synthetic.png")


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    runner = {"augment": run_augment, "pretrain": run_pretrain, "fairness": run_fairness}[cfg.experiment]
    return runner(cfg)
