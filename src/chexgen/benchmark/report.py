"""The benchmark's outputs: ``leaderboard.md`` / ``.csv``, ``metrics.json`` and one self-contained ``report.html``.

Tables (each shown only when its columns exist):

* the paper's layout (Figure 2a): FID-CLIP, FID-XRV, MS-SSIM, Pearson, for extractors of kind
  ``clip`` / ``xrv``;
* CheXGenBench's: FD-RAD-DINO, KID-RAD-DINO, precision / recall / density / coverage on RAD-DINO,
  re-identification;
* every metric of every model with its bootstrap CI, then wall time and model calls per image;
* the paired tests (each model against the best on per-prompt measures), the paired bootstrap of every
  model's FD against the best one's, and the per-finding rows.

The HTML reuses :func:`chexgen.evaluation.report.render_html` (tables first, then figures: a grid of
the same prompts and seeds across models under the real images, and one t-SNE of all sets).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from chexgen.benchmark.config import ExtractorEntry
from chexgen.benchmark.scoring import ModelScores, metric_label
from chexgen.evaluation.report import Figure, json_safe, render_html
from chexgen.utils import atomic_write_json, atomic_write_text

__all__ = ["leaderboard_tables", "write_outputs", "format_value"]


def format_value(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def _cell(m: dict[str, Any] | None, ci: bool = True) -> str:
    if m is None:
        return "–"
    text = format_value(m.get("value"))
    if ci and m.get("low") is not None and m.get("high") is not None and math.isfinite(m["low"]):
        text += f" [{format_value(m['low'], 3)}, {format_value(m['high'], 3)}]"
    return text


def _paper_keys(entries: Sequence[ExtractorEntry], keys: set[str]) -> list[str]:
    by_kind: dict[str, str] = {}
    for e in entries:
        by_kind.setdefault(e.kind, e.name)
    want = [f"fd_{by_kind[k]}" for k in ("clip", "xrv") if k in by_kind] + ["ms_ssim", "pearson"]
    return [k for k in want if k in keys] if any(k in by_kind for k in ("clip", "xrv")) else []


def _chexgenbench_keys(entries: Sequence[ExtractorEntry], keys: set[str]) -> list[str]:
    rad = next((e.name for e in entries if e.kind == "rad-dino"), None)
    want = ([f"{m}_{rad}" for m in ("fd", "kid", "precision", "recall", "density", "coverage")] if rad else [])
    want += ["reid_fraction", "reid_score_mean"]
    return [k for k in want if k in keys] if rad or "reid_fraction" in keys else []


def leaderboard_tables(scores: Sequence[ModelScores], entries: Sequence[ExtractorEntry]) -> list[dict[str, Any]]:
    """Summary tables: dicts with ``title``, ``columns``, ``rows``, ``note`` (what the HTML and markdown show)."""
    keys = {k for s in scores for k in s.metrics}
    order = [k for s in scores for k in s.metrics]
    all_keys = list(dict.fromkeys(order))
    tables = []
    for title, chosen, note in (
        ("The paper's table (ChexGen Figure 2a)", _paper_keys(entries, keys),
         "FID on CLIP and TorchXRayVision features (lower is better), MS-SSIM among the images of one prompt (lower "
         "= more diverse), Pearson r of classifier scores on synthetic vs real source images (higher is better)."),
        ("CheXGenBench columns", _chexgenbench_keys(entries, keys),
         "FD / KID on RAD-DINO features (lower is better), precision / recall / density / coverage (higher is "
         "better), share of synthetic images matched to a training patient by the re-identification network."),
        ("All metrics (value [95% bootstrap CI])", all_keys,
         "Arrows: lower (FD, KID, MS-SSIM, memorised, re-ID, time, calls) or higher (P, R, D, C, Pearson, AUROC) is "
         "better; see metrics.json for descriptions."),
    ):
        if not chosen:
            continue
        columns = ["model"] + [f"{metric_label(k, entries)} {'↓' if _better(scores, k) == 'lower' else '↑'}"
                               for k in chosen]
        rows = [[s.name] + [_cell(s.metrics.get(k), ci=title.startswith("All")) for k in chosen] for s in scores]
        tables.append({"title": title, "columns": columns, "rows": rows, "note": note,
                       "id": title.split()[0].lower()})
    return tables


def _better(scores: Sequence[ModelScores], key: str) -> str:
    for s in scores:
        if key in s.metrics:
            return s.metrics[key].get("better", "lower")
    return "lower"


def _tests_table(tests: dict[str, dict[str, Any]], entries: Sequence[ExtractorEntry]) -> dict[str, Any] | None:
    rows = []
    for key, t in tests.items():
        for name, w in t["tests"].items():
            rows.append([key, t["best"], name, w.get("n"), format_value(t["means"][name]),
                         format_value(t["means"][t["best"]]), format_value(w.get("median_difference")),
                         format_value(w.get("p_value"))])
    if not rows:
        return None
    return {"title": "Paired tests against the best model (per prompt, two-sided Wilcoxon signed-rank)",
            "columns": ["per-prompt measure (lower is better)", "best", "model", "prompts", "model mean",
                        "best mean", "median diff (model - best)", "p"], "rows": rows, "id": "tests",
            "note": "ms_ssim: MS-SSIM among a prompt's images; score_abs_error: mean |classifier score synthetic - "
                    "real source|; feature_distance_<e>: cosine distance to the real source image on <e> features."}


def _fd_tests_table(fd_tests: dict[str, dict[str, Any]], entries: Sequence[ExtractorEntry]) -> dict[str, Any] | None:
    rows = []
    for key, t in fd_tests.items():
        for name, d in t["tests"].items():
            rows.append([metric_label(key, entries), t["best"], name, d["n_prompts"], format_value(t["values"][name]),
                         format_value(t["values"][t["best"]]), format_value(d["difference"]),
                         f"[{format_value(d['low'])}, {format_value(d['high'])}]", format_value(d["p_value"])])
    if not rows:
        return None
    return {"title": "Fréchet distances against the best model (paired bootstrap)",
            "columns": ["distance (lower is better)", "best", "model", "prompts", "model value", "best value",
                        "difference (model - best)", "interval of the difference", "p"], "rows": rows,
            "id": "fd-tests",
            "note": "Each draw resamples the real images and the shared prompts once, for both models: the "
                    "interval is that of the difference on the same prompts and seeds, which the two models' own "
                    "FD intervals cannot give (they overlap even when one model is better on nearly every draw)."}


def _findings_table(rows: Sequence[dict[str, Any]], first: str) -> dict[str, Any] | None:
    if not rows:
        return None
    return {"title": "Per finding", "id": "findings",
            "columns": ["finding", "model", "real images", "synthetic images", f"FD ({first})",
                        f"distance to source ({first})", "AUROC"],
            "rows": [[r["finding"], r["model"], r["n_real"], r["n_synthetic"], format_value(r["fd"]),
                      format_value(r["distance_to_source"]), format_value(r["auroc"])] for r in rows],
            "note": "Findings of the real source images (first positive label); FD on few images is biased upwards: "
                    "compare models within a row group, not across findings."}


def _markdown(tables: Sequence[dict[str, Any]], title: str, note: str) -> str:
    out = [f"# {title}", "", note, ""]
    for t in tables:
        out += [f"## {t['title']}", ""]
        if t.get("note"):
            out += [t["note"], ""]
        out.append("| " + " | ".join(map(str, t["columns"])) + " |")
        out.append("|" + "|".join("---" for _ in t["columns"]) + "|")
        out += ["| " + " | ".join(str(c) for c in row) + " |" for row in t["rows"]]
        out.append("")
    return "\n".join(out)


def _csv(scores: Sequence[ModelScores], entries: Sequence[ExtractorEntry]) -> str:
    keys = list(dict.fromkeys(k for s in scores for k in s.metrics))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "n_images"] + [f"{metric_label(k, entries)}{suffix}" for k in keys
                                        for suffix in ("", " low", " high")])
    for s in scores:
        row: list[Any] = [s.name, s.n_images]
        for k in keys:
            m = s.metrics.get(k, {})
            row += [m.get("value"), m.get("low"), m.get("high")]
        w.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in row])
    return buf.getvalue()


def write_outputs(out: Path, results: dict[str, Any], scores: Sequence[ModelScores],
                  entries: Sequence[ExtractorEntry], tests: dict, findings: list, figures: Sequence[Figure],
                  title: str, fd_tests: dict | None = None) -> dict[str, str]:
    """Write leaderboard.md / .csv, metrics.json and report.html into ``out`` (atomically); returns their paths."""
    tables = leaderboard_tables(scores, entries)
    extra = [t for t in (_tests_table(tests, entries), _fd_tests_table(fd_tests or {}, entries),
                         _findings_table(findings, entries[0].name)) if t]
    note = (f"{results['inputs']['n_prompts']} prompts x {results['inputs']['images_per_prompt']} images per model, "
            f"real set {results['inputs']['real']} ({results['inputs']['n_real']} images); chexgen "
            f"{results.get('chexgen_version', '')}.")
    paths = {"leaderboard_md": out / "leaderboard.md", "leaderboard_csv": out / "leaderboard.csv",
             "metrics_json": out / "metrics.json", "report_html": out / "report.html"}
    atomic_write_text(paths["leaderboard_md"], _markdown(tables + extra, title, note))
    atomic_write_text(paths["leaderboard_csv"], _csv(scores, entries))
    results = {**results, "tables": tables + extra}
    atomic_write_json(paths["metrics_json"], json_safe(results))
    atomic_write_text(paths["report_html"], render_html({**results, "metrics": {}}, figures, title))
    return {k: str(v) for k, v in paths.items()}
