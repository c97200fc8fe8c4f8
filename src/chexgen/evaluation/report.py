"""The evaluation report: ``metrics.json`` (every number) and ``report.html`` (one self-contained page).

The HTML has no external references: figures are PNGs inlined as base64
``data:`` URIs and the style sheet is inline, so the file can be mailed or
archived alone. Both files are written atomically.

The results dict this module renders is the one :func:`chexgen.evaluation.suite.evaluate_sets`
returns; sections that are absent (no scores, no pairs, no comparison) are skipped.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from chexgen.utils import atomic_write_json, atomic_write_text

__all__ = ["Figure", "render_html", "write_report", "json_safe"]


@dataclass
class Figure:
    """One inlined image with a heading and an optional caption."""

    title: str
    png: bytes
    caption: str = ""
    section: str = "figures"
    alt: str = ""


@dataclass
class _Section:
    title: str
    body: list[str] = field(default_factory=list)


def json_safe(obj: Any) -> Any:
    """Plain JSON types: numpy scalars / arrays to Python, NaN / inf to None (strict JSON has no NaN)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if np is not None and isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if np is not None and isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.4e}"
    return html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    cap = f"<figcaption>{html.escape(fig.caption)}</figcaption>" if fig.caption else ""
    alt = html.escape(fig.alt or fig.title)
    return (
        f'<figure><h4>{html.escape(fig.title)}</h4>'
        f'<img alt="{alt}" src="data:image/png;base64,{data}">{cap}</figure>'
    )


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f2f2f2}td{font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.6em 1em .6em 0;vertical-align:top}figure h4{margin:.2em 0}
figcaption{font-size:.85em;color:#555;max-width:560px}img{max-width:100%;image-rendering:auto}
.note{color:#666;font-size:.9em}.warn{color:#a15c00}
"""


def render_html(results: dict, figures: Sequence[Figure] = (), title: str = "chexgen evaluation report") -> str:
    """Render the results dict and figures as one HTML page (string)."""
    sections: list[_Section] = []

    for t in results.get("tables", []):  # summary tables a caller puts first (e.g. the demo's quality bar)
        s = _Section(str(t.get("title", "")))
        if t.get("note"):
            s.body.append(f'<p class="note">{html.escape(str(t["note"]))}</p>')
        s.body.append(_table(list(t.get("columns", [])), [list(r) for r in t.get("rows", [])],
                             str(t.get("id", "table"))))
        sections.append(s)

    inputs = results.get("inputs", {})
    s = _Section("Inputs")
    s.body.append(_table(["item", "value"], [(k, json_str(v)) for k, v in inputs.items()], "inputs"))
    sections.append(s)

    metrics = results.get("metrics", {})
    if metrics:  # a caller with its own summary tables (e.g. the benchmark) may leave this out
        s = _Section("Metrics")
        rows = []
        for name, m in metrics.items():
            level = m.get("level")
            ci = "–"
            if m.get("low") is not None and m.get("high") is not None:
                ci = f"[{_fmt(m['low'])}, {_fmt(m['high'])}]"
            rows.append((name, m.get("value"), ci, f"{int(round(100 * level))}%" if level else "–",
                         m.get("better", ""), m.get("description", "")))
        s.body.append(_table(["metric", "value", "bootstrap CI", "level", "better", "what it measures"], rows,
                             "metrics"))
        sections.append(s)

    per_class = results.get("per_class", {})
    if per_class:
        s = _Section("Per class")
        cols = list(per_class)
        names = sorted({n for d in per_class.values() for n in d}, key=lambda n: (n == "macro", n))
        s.body.append(_table(["class"] + cols, [[n] + [per_class[c].get(n) for c in cols] for n in names], "per-class"))
        sections.append(s)

    comparison = results.get("comparison")
    if comparison:
        s = _Section("Comparison of two synthetic sets (paired by prompt)")
        s.body.append(f"<p>Set B: {html.escape(str(comparison.get('name', '')))}</p>")
        s.body.append(_table(["metric (set B)", "value", "bootstrap CI"], [
            (k, m.get("value"), f"[{_fmt(m.get('low'))}, {_fmt(m.get('high'))}]")
            for k, m in comparison.get("metrics", {}).items()], "metrics-b"))
        rows = [(k, v.get("n"), v.get("median_difference"), v.get("statistic"), v.get("p_value"))
                for k, v in comparison.get("tests", {}).items()]
        s.body.append(_table(["per-prompt measure", "pairs", "median diff (A - B)", "W", "p (two-sided)"], rows,
                             "comparison"))
        sections.append(s)

    mem = results.get("memorisation")
    if mem:
        s = _Section("Memorisation")
        s.body.append(
            f"<p>{mem.get('n_flagged', 0)} of {mem.get('n_synthetic', 0)} synthetic images flagged as near "
            f"duplicates of a training image (SSIM &ge; {_fmt(mem.get('thresholds', {}).get('ssim'))} or feature "
            f"distance &le; {_fmt(mem.get('thresholds', {}).get('feature_distance'))}).</p>"
        )
        top = mem.get("closest", [])[:20]
        if top:
            s.body.append(_table(
                ["synthetic", "nearest training (SSIM)", "SSIM", "nearest training (feature)", "feature distance",
                 "flagged"],
                [(p["synthetic_id"], p["ssim_train_id"], p["ssim"], p["feature_train_id"], p["feature_distance"],
                  "yes" if p["flagged"] else "no") for p in top], "memorisation"))
        sections.append(s)

    by_section: dict[str, list[Figure]] = {}
    for fig in figures:
        by_section.setdefault(fig.section, []).append(fig)
    for name, figs in by_section.items():
        s = _Section(name)
        s.body.extend(_img(f) for f in figs)
        sections.append(s)

    warnings = results.get("warnings", [])
    if warnings:
        s = _Section("Warnings")
        s.body.append("<ul>" + "".join(f'<li class="warn">{html.escape(w)}</li>' for w in warnings) + "</ul>")
        sections.append(s)

    body = "".join(f"<section><h2>{html.escape(sec.title)}</h2>{''.join(sec.body)}</section>" for sec in sections)
    created = html.escape(str(results.get("created", "")))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=\"note\">{created} &middot; chexgen "
        f"{html.escape(str(results.get('chexgen_version', '')))} &middot; full numbers in metrics.json</p>"
        f"{body}</body></html>\n"
    )


def json_str(v: Any) -> str:
    if isinstance(v, (dict, list)):
        import json

        return json.dumps(json_safe(v))
    return "–" if v is None else str(v)


def write_report(out_dir: str | Path, results: dict, figures: Sequence[Figure] = (),
                 title: str = "chexgen evaluation report") -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``report.html`` into ``out_dir`` (atomically); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "metrics.json", out / "report.html"
    atomic_write_json(json_path, json_safe(results))
    atomic_write_text(html_path, render_html(results, figures, title))
    return json_path, html_path
