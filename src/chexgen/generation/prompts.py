"""Prompts for generation: read from the files users have, with the manifest record each came from.

``.txt`` (one per line), ``.csv`` (a column), ``.json`` / ``.jsonl`` (strings or objects) or a
chexgen manifest (impression, else report; labels and demographics travel to the synthetic
records). Errors name the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from chexgen.data.manifest import Record, record_from_dict
from chexgen.errors import ChexgenError

__all__ = ["PromptItem", "read_prompts", "prompts_from_texts", "prompts_digest"]


@dataclass
class PromptItem:
    """One prompt, with the manifest record it came from (if any) and where it was read."""

    prompt: str
    source: Record | None = None
    where: str = ""


# ---------------------------------------------------------------------------- reading prompts
def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ChexgenError(f"{where}: empty prompt (expected text, got {text!r})")
    return text.strip()


def _row_prompt(row: dict, column: str | None, where: str) -> PromptItem:
    """A prompt from a JSON object: ``column`` (default ``prompt``), else a manifest record's text."""
    key = column or "prompt"
    if key in row:
        return PromptItem(_check_text(row[key], f"{where}: field {key!r}"), None, where)
    if column is None and "id" in row and ("impression" in row or "report" in row):
        return _record_prompt(record_from_dict(row, where=where), None, where)
    raise ChexgenError(f"{where}: no field {key!r} (fields: {', '.join(map(str, row)) or 'none'}); use --column")


def _record_prompt(rec: Record, column: str | None, where: str, demographic: bool = False) -> PromptItem:
    if column:
        text = getattr(rec, column, None) if column in Record.__dataclass_fields__ else rec.extra.get(column)
        what = f"field {column!r}"
    else:
        text = rec.impression or rec.report
        what = "impression/report"
    text = _check_text(text, f"{where} (record {rec.id}): {what}")
    if demographic:
        from chexgen.data.prompts import demographic_prompt

        text = demographic_prompt(rec, text=text)
    return PromptItem(text, rec, where)


def read_prompts(
    path: str | os.PathLike, column: str | None = None, manifest: bool | None = None, demographic: bool = False
) -> list[PromptItem]:
    """Prompts from ``.txt`` (one per non-blank line), ``.csv`` (``column``, default ``prompt``),
    ``.json`` (a list of strings / objects, or ``{"prompts": [...]}``), ``.jsonl`` (strings or
    objects) or a chexgen manifest (``.parquet``, or ``manifest=True``; text = impression, else
    report, else ``column``). ``demographic`` prefixes manifest prompts with sex/age/race as
    the official prompts do. Errors name the file and line.
    """
    p = Path(path)
    if not p.is_file():
        raise ChexgenError(f"prompt file {p} does not exist")
    suffix = p.suffix.lower()
    if manifest or suffix == ".parquet" or demographic:
        from chexgen.data.manifest import iter_manifest

        items = [_record_prompt(r, column, f"{p}: record {i}", demographic)
                 for i, r in enumerate(iter_manifest(p), start=1)]
    else:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ChexgenError(f"cannot read prompt file {p}: {err}") from err
        items = _parse_text(p, suffix, text, column)
    if not items:
        raise ChexgenError(f"prompt file {p} holds no prompts")
    return items


def _parse_text(p: Path, suffix: str, text: str, column: str | None) -> list[PromptItem]:
    items: list[PromptItem] = []
    if suffix == ".txt":
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                items.append(PromptItem(line.strip(), None, f"{p}: line {n}"))
    elif suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        key = column or "prompt"
        if reader.fieldnames is None or key not in reader.fieldnames:
            raise ChexgenError(f"{p}: no column {key!r} (columns: {', '.join(reader.fieldnames or [])}); use --column")
        for n, row in enumerate(reader, start=2):
            items.append(PromptItem(_check_text(row[key], f"{p}: line {n}: column {key!r}"), None, f"{p}: line {n}"))
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ChexgenError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("prompts"), list):
            data = data["prompts"]
        if not isinstance(data, list):
            raise ChexgenError(f"{p}: expected a JSON list of prompts (or {{\"prompts\": [...]}})")
        for n, row in enumerate(data):
            where = f"{p}: item {n}"
            items.append(_row_prompt(row, column, where) if isinstance(row, dict)
                         else PromptItem(_check_text(row, where), None, where))
    elif suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{p}: line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ChexgenError(f"{where}: not valid JSON ({e.msg})") from None
            items.append(_row_prompt(row, column, where) if isinstance(row, dict)
                         else PromptItem(_check_text(row, where), None, where))
    else:
        raise ChexgenError(f"{p}: unsupported prompt file type {suffix or '(none)'}; "
                           "use .txt, .csv, .json, .jsonl or a manifest (.parquet / --manifest)")
    return items




def prompts_from_texts(texts: Sequence[str], where: str = "prompt") -> list[PromptItem]:
    """Prompts given directly (command line, Python): each must hold text."""
    return [PromptItem(_check_text(t, f"{where} {i + 1}"), None, f"{where} {i + 1}") for i, t in enumerate(texts)]


def prompts_digest(items: Sequence[PromptItem]) -> str:
    """SHA-256 of the prompt texts in order (what a resumed run must match)."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.prompt.encode("utf-8") + b"\n")
    return h.hexdigest()
