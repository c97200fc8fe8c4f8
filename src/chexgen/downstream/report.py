"""Tables (Markdown and CSV) and plots of downstream results."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

from chexgen.utils import atomic_path, atomic_write_text

__all__ = ["markdown_table", "write_table", "bar_plot", "curve_plot", "scatter_plot"]


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.4g}"
    return "" if v is None else str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], stem: str | Path, title: str | None = None) -> str:
    """Write ``stem.md`` and ``stem.csv``; returns the Markdown text."""
    stem = Path(stem)
    md = (f"## {title}\n\n" if title else "") + markdown_table(rows, columns)
    atomic_write_text(stem.with_suffix(".md"), md)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c) for c in columns})
    atomic_write_text(stem.with_suffix(".csv"), buf.getvalue())
    return md


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def bar_plot(labels: Sequence[str], means: Sequence[float], sds: Sequence[float], ylabel: str, path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(labels)), 3.2))
    ax.bar(range(len(labels)), means, yerr=sds, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _save(fig, Path(path))


def curve_plot(series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, path: str | Path, log_x: bool = False, title: str = "") -> None:
    """``series``: name -> (x, mean, sd)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, (x, m, s) in series.items():
        ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=name)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, Path(path))


def scatter_plot(x: Sequence[float], y: Sequence[float], names: Sequence[str], xlabel: str, ylabel: str, path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.scatter(x, y, s=18)
    for xi, yi, n in zip(x, y, names):
        ax.annotate(n, (xi, yi), fontsize=6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _save(fig, Path(path))
