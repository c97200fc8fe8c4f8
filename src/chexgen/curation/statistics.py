"""Statistics of a curated manifest, like the paper's Fig. 1b and Extended Data Table 1.

Cases per source, label prevalence per source (positive and uncertain), views,
sex and age distributions, report length in words and in tokens of the chosen
text encoder. Written as a markdown table, CSV tables and PNG plots.
"""

from __future__ import annotations

import csv
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.utils import atomic_path, atomic_write_text

__all__ = ["ManifestStats", "compute_stats", "write_stats"]

AGE_BINS = (0, 19, 41, 66, 200)  # 0-18, 19-40, 41-65, 66+ as in the fairness study
AGE_NAMES = ("0-18", "19-40", "41-65", "66+")


@dataclass
class ManifestStats:
    total: int = 0
    per_source: Counter = field(default_factory=Counter)
    positives: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    uncertain: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    known: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    views: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    sexes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    age_groups: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    ages: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    report_words: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    report_tokens: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    tokenizer: str | None = None


def compute_stats(records: Sequence[Record], count_tokens: Callable[[Sequence[str]], list[int]] | None = None,
                  token_sample: int = 20000, seed: int = 0) -> ManifestStats:
    """Gather the statistics; tokens are counted on a seeded sample of ``token_sample`` reports per run."""
    st = ManifestStats(total=len(records))
    for r in records:
        src = r.dataset or "unknown"
        st.per_source[src] += 1
        for name in LABELS:
            v = r.labels.get(name)
            if v is not None:
                st.known[src][name] += 1
            if v == 1:
                st.positives[src][name] += 1
            elif v == -1:
                st.uncertain[src][name] += 1
        st.views[src][r.view or "unknown"] += 1
        st.sexes[src][r.sex or "unknown"] += 1
        if r.age is not None:
            st.ages[src].append(r.age)
            st.age_groups[src][AGE_NAMES[int(np.searchsorted(AGE_BINS, r.age, side="right")) - 1]] += 1
        else:
            st.age_groups[src]["unknown"] += 1
        if r.report:
            st.report_words[src].append(len(r.report.split()))
    if count_tokens is not None:
        with_text = [r for r in records if r.report]
        sample = with_text if len(with_text) <= token_sample else random.Random(seed).sample(with_text, token_sample)
        for r, n in zip(sample, count_tokens([r.report for r in sample])):
            st.report_tokens[r.dataset or "unknown"].append(n)
        st.tokenizer = getattr(count_tokens, "name", "tokenizer")
    return st


def _pct(n: int, d: int) -> str:
    return f"{100.0 * n / d:.1f}" if d else "-"


def _summary(values: list[float] | list[int]) -> str:
    if not values:
        return "-"
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.1f} ± {a.std():.1f} (median {np.median(a):.0f})"


def _table_rows(st: ManifestStats) -> tuple[list[str], list[list[str]]]:
    sources = sorted(st.per_source)
    header = ["", *sources, "all"]
    rows = [["cases", *[str(st.per_source[s]) for s in sources], str(st.total)]]
    for name in LABELS:
        cells = []
        for s in sources:
            cells.append(f"{_pct(st.positives[s][name], st.per_source[s])}"
                         + (f" (+{_pct(st.uncertain[s][name], st.per_source[s])}?)" if st.uncertain[s][name] else "")
                         if st.known[s][name] else "n/a")
        total_pos = sum(st.positives[s][name] for s in sources)
        rows.append([f"{name} %", *cells, _pct(total_pos, st.total)])
    for key in ("PA", "AP", "LAT", "LL", "unknown"):
        rows.append([f"view {key} %", *[_pct(st.views[s][key], st.per_source[s]) for s in sources],
                     _pct(sum(st.views[s][key] for s in sources), st.total)])
    for key in ("F", "M", "O", "unknown"):
        rows.append([f"sex {key} %", *[_pct(st.sexes[s][key], st.per_source[s]) for s in sources],
                     _pct(sum(st.sexes[s][key] for s in sources), st.total)])
    for key in (*AGE_NAMES, "unknown"):
        rows.append([f"age {key} %", *[_pct(st.age_groups[s][key], st.per_source[s]) for s in sources],
                     _pct(sum(st.age_groups[s][key] for s in sources), st.total)])
    rows.append(["age (years)", *[_summary(st.ages[s]) for s in sources],
                 _summary([a for s in sources for a in st.ages[s]])])
    rows.append(["report words", *[_summary(st.report_words[s]) for s in sources],
                 _summary([a for s in sources for a in st.report_words[s]])])
    if st.tokenizer:
        rows.append(["report tokens", *[_summary(st.report_tokens[s]) for s in sources],
                     _summary([a for s in sources for a in st.report_tokens[s]])])
    return header, rows


def _plots(st: ManifestStats, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sources = sorted(st.per_source)

    def save(fig, name: str) -> None:
        path = out / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(sources, [st.per_source[s] for s in sources], color="#4c72b0")
    ax.set_ylabel("cases")
    ax.set_title("Cases per source")
    ax.tick_params(axis="x", rotation=30)
    save(fig, "cases_per_source.png")

    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(sources))
    x = np.arange(len(LABELS))
    for k, s in enumerate(sources):
        vals = [100.0 * st.positives[s][n] / st.per_source[s] if st.known[s][n] else 0.0 for n in LABELS]
        ax.bar(x + k * width, vals, width, label=s)
    ax.set_xticks(x + width * (len(sources) - 1) / 2, LABELS, rotation=60, ha="right")
    ax.set_ylabel("% positive")
    ax.set_title("Label prevalence per source")
    ax.legend(fontsize=7)
    save(fig, "label_prevalence.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for s in sources:
        if st.ages[s]:
            axes[0].hist(st.ages[s], bins=np.arange(0, 105, 5), histtype="step", label=s)
    axes[0].set_xlabel("age (years)")
    axes[0].set_title("Age")
    axes[0].legend(fontsize=7)
    keys = ["F", "M", "O", "unknown"]
    bottom = np.zeros(len(sources))
    for key in keys:
        vals = np.array([st.sexes[s][key] / st.per_source[s] * 100 for s in sources])
        axes[1].bar(sources, vals, bottom=bottom, label=key)
        bottom += vals
    axes[1].set_title("Sex (%)")
    axes[1].legend(fontsize=7)
    axes[1].tick_params(axis="x", rotation=30)
    save(fig, "demographics.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    keys = ["PA", "AP", "LAT", "LL", "unknown"]
    bottom = np.zeros(len(sources))
    for key in keys:
        vals = np.array([st.views[s][key] / st.per_source[s] * 100 for s in sources])
        axes[0].bar(sources, vals, bottom=bottom, label=key)
        bottom += vals
    axes[0].set_title("Views (%)")
    axes[0].legend(fontsize=7)
    axes[0].tick_params(axis="x", rotation=30)
    lengths = st.report_tokens if st.tokenizer else st.report_words
    for s in sources:
        if lengths[s]:
            axes[1].hist(lengths[s], bins=40, histtype="step", label=s)
    axes[1].set_xlabel("report length (" + ("tokens" if st.tokenizer else "words") + ")")
    axes[1].set_title("Report length")
    axes[1].legend(fontsize=7)
    save(fig, "views_and_report_length.png")
    return written


def write_stats(st: ManifestStats, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write ``stats.md``, ``stats.csv`` and (optionally) PNG plots into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header, rows = _table_rows(st)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    note = (f"\nTokens counted with `{st.tokenizer}` on a sample of reports.\n" if st.tokenizer else "")
    legend = "\nLabel rows: % positive (+ % uncertain?); n/a = the source does not record that label.\n"
    md_path, csv_path = out / "stats.md", out / "stats.csv"
    atomic_write_text(md_path, f"# Curated manifest: {st.total} records\n\n" + "\n".join(md) + "\n" + legend + note)
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    written = [md_path, csv_path]
    if plots and st.total:
        written += _plots(st, out)
    return written
