"""One rule for bad records, shared by every job that reads many of them.

A job over many records (``prepare``, ``train-vae``, ``evaluate``, ``curate``,
``generate`` with conditions) never stops on one bad record and never skips one
silently. It

1. leaves the record out and adds a :class:`Reject` (file, line, id, reason) to
   a :class:`RejectLog`,
2. finishes everything else,
3. writes the log atomically as ``rejects.jsonl`` next to its output
   (:func:`rejects_path_for`) and prints one summary line
   (:meth:`RejectLog.summary`),
4. exits with :data:`EXIT_REJECTED` (1) when anything was rejected, 0 otherwise.

Only input that is unusable as a whole stops a job with a
:class:`~chexgen.errors.ChexgenError` (exit :data:`EXIT_UNUSABLE`, 2): a missing
or unreadable file, a file in the wrong format or encoding, missing columns, or
no usable record at all.

Each line of ``rejects.jsonl`` is one JSON object::

    {"file": "data/nih.csv", "line": 17, "id": "nih/00000001_002", "reason": "...", "source": "nih"}

``line`` is the 1-based position of the record in ``file``: the line of a JSONL
manifest or prompt file, the data row of a CSV or Parquet table (header not
counted); ``null`` when the problem is not tied to one row (e.g. a duplicate id
found while merging sources). ``source`` is present for dataset adapters only.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from chexgen.utils import atomic_path

__all__ = [
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_UNUSABLE",
    "Reject",
    "RejectLog",
    "rejects_path_for",
    "read_rejects",
]

log = logging.getLogger(__name__)

#: Everything was used.
EXIT_OK = 0
#: The job finished, but some records were rejected (listed in the rejects file).
EXIT_REJECTED = 1
#: Unusable input: nothing was done (the CLI's exit code for a :class:`~chexgen.errors.ChexgenError`).
EXIT_UNUSABLE = 2


@dataclass
class Reject:
    """A record that a job left out, and why.

    Positional order ``(source, file, line, reason, id)`` is the one the dataset
    adapters have always used; new code passes keywords.
    """

    source: str | None
    file: str
    line: int | None  # 1-based line (JSONL) or data row (CSV / Parquet); None = not tied to a row
    reason: str
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "line": self.line, "id": self.id, "reason": self.reason}
        if self.source is not None:
            d["source"] = self.source
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Reject":
        return cls(source=d.get("source"), file=str(d.get("file", "")), line=d.get("line"),
                   reason=str(d.get("reason", "")), id=d.get("id"))

    def __str__(self) -> str:
        where = f"{self.file}: line {self.line}" if self.line is not None else self.file
        return f"{where}" + (f" ({self.id})" if self.id else "") + f": {self.reason}"


class RejectLog:
    """Rejected records of one job, in the order they were found."""

    def __init__(self, entries: Iterable[Reject] = ()) -> None:
        self.entries: list[Reject] = list(entries)

    def add(self, file: str | os.PathLike, line: int | None, reason: str, id: str | None = None,
            source: str | None = None) -> Reject:
        """Record one rejected record (logged at warning level) and return it."""
        entry = Reject(source=source, file=str(file), line=line, reason=reason, id=id)
        self.entries.append(entry)
        log.warning("rejected %s", entry)
        return entry

    def extend(self, entries: Iterable[Reject]) -> None:
        self.entries.extend(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Reject]:
        return iter(self.entries)

    def ids(self) -> set[str]:
        return {e.id for e in self.entries if e.id is not None}

    def write(self, path: str | os.PathLike) -> Path:
        """Write every entry as JSONL, atomically (an empty file when nothing was rejected).

        Writing the empty file too means a rerun never leaves an older run's
        rejects lying next to a clean result.
        """
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                for entry in self.entries:
                    f.write(json.dumps(entry.to_dict(), ensure_ascii=False) + "\n")
        return path

    def summary(self, path: str | os.PathLike | None = None, what: str = "records") -> str:
        """One line for the job's output: how many were rejected and where they are listed."""
        if not self.entries:
            return f"rejected: no {what}"
        where = f" (listed in {path})" if path is not None else ""
        return f"rejected: {len(self.entries)} {what}{where}"

    def exit_code(self) -> int:
        """:data:`EXIT_REJECTED` when anything was rejected, else :data:`EXIT_OK`."""
        return EXIT_REJECTED if self.entries else EXIT_OK


def rejects_path_for(output: str | os.PathLike) -> Path:
    """Where a job writing ``output`` lists its rejects.

    A folder output gets ``<folder>/rejects.jsonl``; a file output
    ``<dir>/<stem>.rejects.jsonl`` (``openchest.jsonl`` -> ``openchest.rejects.jsonl``).
    """
    output = Path(output)
    if output.suffix == "" or output.is_dir():
        return output / "rejects.jsonl"
    return output.with_name(output.name.split(".")[0] + ".rejects.jsonl")


def read_rejects(path: str | os.PathLike) -> list[Reject]:
    """Read a rejects file back (lines cut by a crash are ignored)."""
    path = Path(path)
    out: list[Reject] = []
    if not path.is_file():
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        for text in f:
            text = text.strip()
            if not text:
                continue
            try:
                d = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(d, dict):
                out.append(Reject.from_dict(d))
    return out
