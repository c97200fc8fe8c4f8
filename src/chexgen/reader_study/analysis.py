"""Reader study analysis: the answer key is joined here, and only here.

Statistics (each a plain function on a tidy answers table, tested against hand-computed values):

* image-report agreement per source (real and each model) and rater: n, mean +- sd (ddof 1),
  median and the share of each score -2..+2 (the paper's Figure 2c distribution plot);
* between two sources, per rater and pooled over raters: the two-sided **Wilcoxon signed-rank**
  test on (rater, case) pairs when the same case was read for both (paired design: at least half
  of the smaller group has a partner), else the two-sided **Mann-Whitney U** test (scipy);
* inter-rater agreement on the scale: **weighted Cohen's kappa** for every pair of raters
  (scikit-learn, quadratic weights by default) and **Krippendorff's alpha** (ordinal level) over
  all raters, per source and overall; unweighted kappa and nominal alpha on real/synthetic calls.
  Alpha comes from the ``krippendorff`` package (the widely used implementation; handles missing
  answers and every level of measurement) and is checked against hand-computed values in tests;
* real or synthetic: accuracy with the **Wilson 95% CI** and the two-sided **binomial test**
  against chance (0.5), per rater, per source and pooled (scipy ``binomtest``);
* per finding (each positive label of a case; "No Finding" when none): mean agreement per source
  and real-or-synthetic accuracy.

Answers flagged "image quality unacceptable" stay in the table (and are counted per source) but a
missing score is simply missing.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from chexgen.errors import ChexgenError
from chexgen.reader_study import storage
from chexgen.reader_study.study import Study, load_key

__all__ = [
    "SCALE",
    "AnalysisResult",
    "load_answers",
    "score_summary",
    "compare_sources",
    "compare_two",
    "rater_agreement",
    "weighted_kappa",
    "krippendorff_alpha",
    "proportion_test",
    "realism_accuracy",
    "per_finding",
    "distribution_plot_png",
    "analyse_answers",
    "analyse_study",
]

log = logging.getLogger(__name__)
SCALE = (-2, -1, 0, 1, 2)


# ---------------------------------------------------------------------------- data
def load_answers(study: Study, db_url: str | None = None) -> pd.DataFrame:
    """All current answers joined with the answer key: one row per (rater, item)."""
    key = load_key(study)
    by_id = {it["id"]: it for it in key["items"]}
    engine = storage.make_engine(study.db_url(db_url))
    try:
        storage.check_database(engine, study.uid)
        with storage.make_sessionmaker(engine)() as s:
            rows = storage.answer_rows(s)
    finally:
        engine.dispose()
    out = []
    for r in rows:
        it = by_id.get(r["item"])
        if it is None:
            raise ChexgenError(f"{study.root}: answer for item {r['item']} that is not in the answer key")
        out.append({**r, "case": it["case"], "source": it["source"], "model": it["model"],
                    "synthetic": bool(it["synthetic"]), "stratum": it["stratum"],
                    "findings": "; ".join(it["findings"]) or "No Finding"})
    cols = list(storage.EXPORT_COLUMNS) + ["case", "source", "model", "synthetic", "stratum", "findings"]
    return pd.DataFrame(out, columns=cols)


# ---------------------------------------------------------------------------- agreement scores
def score_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per source and rater (and pooled as rater "all"): n, mean, sd, median, share of each score."""
    rows = []
    scored = df.dropna(subset=["agreement"])
    for (source, rater), g in _with_pooled(scored).groupby(["source", "rater"], sort=True):
        v = g["agreement"].astype(float).to_numpy()
        row = {"source": source, "rater": rater, "n": len(v), "mean": float(v.mean()),
               "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "median": float(np.median(v)),
               "quality_flags": int(df[(df.source == source) & ((df.rater == rater) | (rater == "all"))]
                                    ["quality_unacceptable"].sum())}
        for s in SCALE:
            row[f"share_{s:+d}"] = float(np.mean(v == s))
        rows.append(row)
    return pd.DataFrame(rows)


def _with_pooled(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.assign(rater="all")], ignore_index=True)


def compare_two(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Two-sided test of agreement scores between two sources (tables with rater, case, agreement)."""
    from scipy.stats import mannwhitneyu, wilcoxon

    a = a.dropna(subset=["agreement"])
    b = b.dropna(subset=["agreement"])
    pairs = a.merge(b, on=["rater", "case"], suffixes=("_a", "_b"))
    out = {"n_a": len(a), "n_b": len(b), "mean_a": _mean(a["agreement"]), "mean_b": _mean(b["agreement"]),
           "n_pairs": len(pairs), "test": None, "statistic": math.nan, "p": math.nan}
    if min(len(a), len(b)) == 0:
        return out
    if len(pairs) >= max(1, min(len(a), len(b)) / 2):
        d = (pairs["agreement_a"] - pairs["agreement_b"]).astype(float).to_numpy()
        out.update(test="wilcoxon", mean_diff=float(d.mean()))
        if np.all(d == 0):
            out.update(statistic=0.0, p=1.0)  # identical scores: no evidence of a difference
        else:
            res = wilcoxon(pairs["agreement_a"].astype(float), pairs["agreement_b"].astype(float),
                           zero_method="wilcox", alternative="two-sided")
            out.update(statistic=float(res.statistic), p=float(res.pvalue))
    else:
        res = mannwhitneyu(a["agreement"].astype(float), b["agreement"].astype(float), alternative="two-sided")
        out.update(test="mann-whitney", statistic=float(res.statistic), p=float(res.pvalue),
                   mean_diff=out["mean_a"] - out["mean_b"])
    return out


def _mean(s: pd.Series) -> float:
    return float(s.astype(float).mean()) if len(s) else math.nan


def compare_sources(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`compare_two` for every pair of sources (models first, then real), per rater and pooled."""
    sources = _source_order(df["source"].unique())
    rows = []
    for sa, sb in itertools.combinations(sources, 2):
        for rater in sorted(df["rater"].unique()) + ["all"]:
            sel = df if rater == "all" else df[df.rater == rater]
            r = compare_two(sel[sel.source == sa], sel[sel.source == sb])
            rows.append({"source_a": sa, "source_b": sb, "rater": rater, **r})
    return pd.DataFrame(rows)


def _source_order(sources) -> list[str]:
    return sorted((s for s in sources if s != "real")) + (["real"] if "real" in set(sources) else [])


# ---------------------------------------------------------------------------- inter-rater agreement
def weighted_kappa(a: Sequence[int], b: Sequence[int], weights: str | None = "quadratic",
                   labels: Sequence = SCALE) -> float:
    """Cohen's kappa of two raters over the fixed ``labels`` (scikit-learn), NaN when undefined."""
    from sklearn.metrics import cohen_kappa_score

    if len(a) == 0:
        return math.nan
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # undefined kappa (one category only) is returned as NaN
        k = cohen_kappa_score(list(a), list(b), labels=list(labels), weights=weights)
    return float(k)


def krippendorff_alpha(matrix: np.ndarray, level: str = "ordinal", domain: Sequence | None = SCALE) -> float:
    """Krippendorff's alpha of a raters x units matrix (NaN = not rated); NaN when fewer than 2 values pair."""
    import krippendorff

    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] < 2:
        return math.nan
    pairable = m[:, np.sum(~np.isnan(m), axis=0) >= 2]
    values = np.unique(pairable[~np.isnan(pairable)])
    if len(values) < 2:
        return math.nan  # one value only: no expected disagreement, alpha undefined
    return float(krippendorff.alpha(reliability_data=m, level_of_measurement=level,
                                    value_domain=list(domain) if domain is not None else None))


def rater_agreement(df: pd.DataFrame, weights: str = "quadratic") -> pd.DataFrame:
    """Pairwise kappa and overall alpha, on the agreement scale and on real/synthetic calls."""
    raters = sorted(df["rater"].unique())
    rows = []
    scopes = [("all", df)] + [(s, df[df.source == s]) for s in _source_order(df["source"].unique())]
    for scope, sel in scopes:
        for field, kind in (("agreement", "scale"), ("realism", "real/synthetic")):
            have = sel.dropna(subset=[field])
            if have.empty:
                continue
            wide = have.pivot_table(index="rater", columns="item", values=field, aggfunc="first")
            if field == "realism":
                wide = wide.apply(lambda c: c.map({"real": 1.0, "synthetic": 0.0}))
            wide = wide.reindex(raters).astype(float)
            alpha = krippendorff_alpha(wide.to_numpy(), "ordinal" if field == "agreement" else "nominal",
                                       SCALE if field == "agreement" else (0.0, 1.0))
            rows.append({"scope": scope, "measure": f"krippendorff_alpha ({'ordinal' if field == 'agreement' else 'nominal'})",
                         "on": kind, "raters": "all", "n_items": int((wide.notna().sum(axis=0) >= 2).sum()),
                         "value": alpha})
            for ra, rb in itertools.combinations(raters, 2):
                both = wide.loc[[ra, rb]].dropna(axis=1)
                if field == "agreement":
                    k = weighted_kappa(both.loc[ra].astype(int), both.loc[rb].astype(int), weights)
                    name = f"cohen_kappa ({weights})"
                else:
                    k = weighted_kappa(both.loc[ra].astype(int), both.loc[rb].astype(int), None, (0, 1))
                    name = "cohen_kappa"
                rows.append({"scope": scope, "measure": name, "on": kind, "raters": f"{ra} vs {rb}",
                             "n_items": both.shape[1], "value": k})
    return pd.DataFrame(rows, columns=["scope", "measure", "on", "raters", "n_items", "value"])


# ---------------------------------------------------------------------------- real or synthetic
def proportion_test(k: int, n: int, chance: float = 0.5) -> dict:
    """Accuracy k/n with the Wilson 95% CI and the two-sided exact binomial test against ``chance``."""
    from scipy.stats import binomtest

    if n == 0:
        return {"n": 0, "correct": 0, "accuracy": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
    res = binomtest(int(k), int(n), chance, alternative="two-sided")
    ci = res.proportion_ci(confidence_level=0.95, method="wilson")
    return {"n": int(n), "correct": int(k), "accuracy": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high),
            "p": float(res.pvalue)}


def realism_accuracy(df: pd.DataFrame) -> pd.DataFrame:
    """Real-or-synthetic accuracy per rater and source (and pooled), with CI and test against chance."""
    have = df.dropna(subset=["realism"]).copy()
    if have.empty:
        return pd.DataFrame()
    have["correct"] = (have["realism"] == "synthetic") == have["synthetic"].astype(bool)
    have["called_real"] = have["realism"] == "real"
    rows = []
    pooled = _with_pooled(have)
    for (rater,), g in pooled.groupby(["rater"], sort=True):
        for source, gs in [("all", g)] + [(s, g[g.source == s]) for s in _source_order(g["source"].unique())]:
            row = {"rater": rater, "source": source, **proportion_test(int(gs["correct"].sum()), len(gs))}
            row["called_real"] = float(gs["called_real"].mean()) if len(gs) else math.nan
            row["mean_confidence"] = float(gs["confidence"].astype(float).mean()) if len(gs) else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- per finding
def per_finding(df: pd.DataFrame) -> pd.DataFrame:
    """Per finding (each positive label of the case) and source, pooled over raters."""
    x = df.assign(finding=df["findings"].str.split("; ")).explode("finding")
    rows = []
    for (finding, source), g in x.groupby(["finding", "source"], sort=True):
        v = g["agreement"].dropna().astype(float)
        r = g.dropna(subset=["realism"])
        correct = ((r["realism"] == "synthetic") == r["synthetic"].astype(bool)).sum() if len(r) else 0
        rows.append({"finding": finding, "source": source, "cases": g["case"].nunique(), "n": len(v),
                     "mean": float(v.mean()) if len(v) else math.nan,
                     "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                     "realism_n": len(r), "realism_accuracy": float(correct / len(r)) if len(r) else math.nan})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- figure
def distribution_plot_png(df: pd.DataFrame) -> bytes | None:
    """Grouped bars: share of each score -2..+2 per source, one panel per rater and one pooled."""
    scored = df.dropna(subset=["agreement"])
    if scored.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(scored["rater"].unique()) + ["all"]
    sources = _source_order(scored["source"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), sharey=True, squeeze=False)
    width = 0.8 / len(sources)
    for ax, rater in zip(axes[0], panels):
        sel = scored if rater == "all" else scored[scored.rater == rater]
        for j, source in enumerate(sources):
            v = sel[sel.source == source]["agreement"].astype(int).to_numpy()
            share = [float(np.mean(v == s)) if len(v) else 0.0 for s in SCALE]
            label = f"{source} ({v.mean():+.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f})" if len(v) else source
            ax.bar(np.arange(len(SCALE)) + (j - (len(sources) - 1) / 2) * width, share, width, label=label)
        ax.set_xticks(range(len(SCALE)), [f"{s:+d}" if s else "0" for s in SCALE])
        ax.set_title("pooled" if rater == "all" else f"rater {rater}")
        ax.set_xlabel("image-report agreement")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("share of answers")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------- report
@dataclass
class AnalysisResult:
    """Tables of one analysis and where they were written."""

    out: Path | None
    answers: pd.DataFrame
    scores: pd.DataFrame
    comparisons: pd.DataFrame
    agreement: pd.DataFrame
    realism: pd.DataFrame
    findings: pd.DataFrame

    def summary(self) -> str:
        lines = [f"{len(self.answers)} answers from {self.answers['rater'].nunique()} raters"
                 + (f"; report: {self.out / 'report.html'}" if self.out else "")]
        for r in self.scores[self.scores.rater == "all"].itertuples():
            lines.append(f"  agreement {r.source:<12} {r.mean:+.2f} +- {r.sd:.2f} (n={r.n})")
        for r in self.comparisons[self.comparisons.rater == "all"].itertuples():
            lines.append(f"  {r.source_a} vs {r.source_b}: {r.test}, p = {r.p:.3g} (pairs {r.n_pairs})")
        for r in self.agreement[self.agreement.raters == "all"].itertuples():
            if r.scope == "all":
                lines.append(f"  {r.measure} on {r.on}: {r.value:.3f}")
        if not self.realism.empty:
            r = self.realism[(self.realism.rater == "all") & (self.realism.source == "all")].iloc[0]
            lines.append(f"  real-or-synthetic accuracy {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}], "
                         f"binomial p vs chance = {r.p:.3g}")
        return "\n".join(lines)


def analyse_answers(df: pd.DataFrame, kappa_weights: str = "quadratic") -> AnalysisResult:
    """Every table of the analysis for a joined answers table (see :func:`load_answers`)."""
    if df.empty:
        raise ChexgenError("no answers yet: nothing to analyse")
    return AnalysisResult(out=None, answers=df, scores=score_summary(df), comparisons=compare_sources(df),
                          agreement=rater_agreement(df, kappa_weights), realism=realism_accuracy(df),
                          findings=per_finding(df))


def _render_html(study: Study, res: AnalysisResult, figure: bytes | None) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
                      autoescape=select_autoescape(["html"]))

    def table(frame: pd.DataFrame) -> dict:
        cols = list(frame.columns)
        return {"cols": cols, "rows": [[_fmt(v) for v in row] for row in frame.itertuples(index=False)]}

    comments = res.answers.dropna(subset=["comment"])[["rater", "source", "case", "comment"]]
    return env.get_template("report.html").render(
        study=study.meta, summary=res.summary(), scores=table(res.scores), comparisons=table(res.comparisons),
        agreement=table(res.agreement), realism=table(res.realism) if not res.realism.empty else None,
        findings=table(res.findings), comments=table(comments) if not comments.empty else None,
        figure=base64.b64encode(figure).decode() if figure else None)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "—" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def analyse_study(study: Study, out: str | os.PathLike | None = None, db_url: str | None = None,
                  kappa_weights: str = "quadratic") -> AnalysisResult:
    """Join the key, compute every table and write report.html, the CSVs and the figure to ``out``.

    ``out`` (default ``STUDY/analysis``) is written as a whole in a temporary folder and swapped in.
    """
    res = analyse_answers(load_answers(study, db_url), kappa_weights)
    out = Path(out) if out else study.root / "analysis"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        figure = distribution_plot_png(res.answers)
        if figure:
            (tmp / "agreement_distribution.png").write_bytes(figure)
        guarded = res.answers.assign(comment=res.answers["comment"].map(storage.guard_cell))
        for name, frame in (("answers_with_key", guarded), ("scores", res.scores),
                            ("comparisons", res.comparisons), ("rater_agreement", res.agreement),
                            ("realism", res.realism), ("findings", res.findings)):
            frame.to_csv(tmp / f"{name}.csv", index=False)
        (tmp / "report.html").write_text(_render_html(study, res, figure), encoding="utf-8")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    res.out = out
    return res
