"""Pair synthetic records with the real records they were generated from.

A synthetic record names its origin in one of two ways (as ``chexgen generate``
writes them): ``extra["source_id"]`` (the real record's id) or
``provenance["prompt"]`` (the text it was generated from). Prompts are matched
against the real record's impression, report or own prompt after light
normalisation (lower case, brackets stripped, whitespace collapsed, trailing
full stop dropped) and, if that fails, after removing a leading demographic
prefix such as ``"sex:Male, age:71.0, race:Black. "``.

Images of the same prompt form a *group* (the k seeds the diversity metric
compares); the group key is the source id when there is one, else the
normalised prompt.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record

__all__ = ["normalize_prompt", "prompt_of", "group_key", "match_to_real", "label_matrix"]

_DEMOGRAPHIC = re.compile(r"^\s*sex:[^,]*,\s*age:[^,]*,\s*race:[^.]*\.\s*", re.IGNORECASE)


def normalize_prompt(text: str | None) -> str:
    if not text:
        return ""
    t = re.sub(r"[\[\]\(\)\{\}]", " ", str(text).lower())
    t = re.sub(r"\s+", " ", t).strip()
    return t.rstrip(". ").strip()


def prompt_of(record: Record) -> str | None:
    """The prompt a synthetic record was generated from (provenance, then extra)."""
    prov = record.provenance or {}
    return prov.get("prompt") or record.extra.get("prompt")


def group_key(record: Record) -> str:
    """Key shared by the images generated for one prompt (source id, else prompt, else the record id)."""
    src = record.extra.get("source_id")
    if src not in (None, ""):
        return f"source:{src}"
    p = normalize_prompt(prompt_of(record))
    return f"prompt:{p}" if p else f"id:{record.id}"


def match_to_real(real: Sequence[Record], synthetic: Sequence[Record]) -> list[int | None]:
    """For each synthetic record, the index of its real source record (or None when unknown)."""
    by_id = {r.id: i for i, r in enumerate(real)}
    by_text: dict[str, int] = {}
    for i, r in enumerate(real):
        for text in (prompt_of(r), r.impression, r.report):
            key = normalize_prompt(text)
            if key:
                by_text.setdefault(key, i)
                stripped = normalize_prompt(_DEMOGRAPHIC.sub("", text or ""))
                if stripped:
                    by_text.setdefault(stripped, i)
    out: list[int | None] = []
    for s in synthetic:
        src = s.extra.get("source_id")
        if src is not None and str(src) in by_id:
            out.append(by_id[str(src)])
            continue
        p = prompt_of(s)
        idx = None
        if p:
            idx = by_text.get(normalize_prompt(p))
            if idx is None:
                idx = by_text.get(normalize_prompt(_DEMOGRAPHIC.sub("", p)))
        out.append(idx)
    return out


def label_matrix(records: Sequence[Record]) -> np.ndarray:
    """[N, 14] labels in LABELS order: 1 / 0 / -1, NaN where not stated."""
    out = np.full((len(records), len(LABELS)), math.nan)
    for i, r in enumerate(records):
        for j, name in enumerate(LABELS):
            v = r.labels.get(name)
            if v is not None:
                out[i, j] = float(v)
    return out
