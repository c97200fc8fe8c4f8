"""Shared pieces of the source adapters: results, rejects, field parsers, locating files.

An adapter reads one public dataset's own files and returns a
:class:`SourceResult`: valid :class:`~chexgen.data.manifest.Record` objects
plus a :class:`Reject` for every row it could not use (row number and
reason), so one bad row never stops a million-row run. Problems with a
whole file (missing file, missing column) raise
:class:`~chexgen.errors.ChexgenError` instead.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.data.rejects import Reject
from chexgen.errors import ChexgenError

__all__ = [
    "Reject",
    "SourceResult",
    "require_columns",
    "find_file",
    "xrv_data_file",
    "parse_age",
    "parse_sex",
    "parse_view",
    "empty_labels",
    "image_path",
    "read_csv",
]


@dataclass
class SourceResult:
    """What an adapter read: records, rejects, and the files it used."""

    source: str
    records: list[Record] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def extend(self, other: "SourceResult") -> None:
        self.records.extend(other.records)
        self.rejects.extend(other.rejects)
        self.files.extend(other.files)


def read_csv(path: str | os.PathLike, **kwargs: Any):
    """``pandas.read_csv`` with every way a file can be unreadable turned into one ChexgenError naming it.

    An unterminated quote, a wrong encoding, a truncated gzip or an empty file make
    the whole file unusable (there is no reliable next row to continue from), so
    they stop the job (exit 2) instead of becoming per-row rejects.
    """
    import zlib

    import pandas as pd

    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise ChexgenError(f"{path}: empty file (no header row)") from None
    except pd.errors.ParserError as e:
        detail = str(e).replace("Error tokenizing data. C error: ", "").strip()
        raise ChexgenError(f"{path}: not a readable CSV ({detail}; an unterminated quote or a row with too "
                           "many fields)") from None
    except UnicodeDecodeError as e:
        raise ChexgenError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except (OSError, EOFError, zlib.error) as e:
        raise ChexgenError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def require_columns(frame: Any, columns: Iterable[str], path: str | os.PathLike) -> None:
    """Raise a ChexgenError naming the file and every missing column."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ChexgenError(
            f"{path}: missing column(s) {missing}; found {list(frame.columns)[:30]}"
        )


def xrv_data_file(name: str) -> Path:
    """A metadata file shipped inside the installed torchxrayvision package (read at run time, never copied).

    The package is located without importing it (importing pulls in torch and takes seconds).
    """
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise ChexgenError("torchxrayvision is not installed; give the dataset's file or folder with "
                           "--source NAME=PATH")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        raise ChexgenError(f"{path}: not shipped by the installed torchxrayvision")
    return path


def find_file(root: str | os.PathLike | None, candidates: Sequence[str], what: str,
              xrv_fallback: str | None = None) -> Path:
    """Resolve a dataset file: ``root`` may be the file itself or a folder holding one of ``candidates``.

    Without ``root``, fall back to the copy torchxrayvision ships (``xrv_fallback``) if there is one.
    """
    if root is None:
        if xrv_fallback is None:
            raise ChexgenError(f"{what}: give the dataset folder or file (it is not shipped with any package)")
        return xrv_data_file(xrv_fallback)
    root = Path(root)
    if root.is_file():
        return root
    if root.is_dir():
        for c in candidates:
            p = root / c
            if p.is_file():
                return p
        raise ChexgenError(f"{root}: no {what} file found; looked for {list(candidates)}")
    raise ChexgenError(f"{root}: not found (expected the {what} file or its folder)")


_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
_AGE_RX = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", re.I)


def parse_age(value: Any) -> float | None:
    """Age in years from a number or DICOM-style string ("058Y", "6M"); ``None`` if blank.

    Raises ``ValueError`` for text that is not an age or for ages outside 0..120.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        age = float(value)
    else:
        s = str(value).strip()
        if s == "" or s.lower() in ("nan", "none", "unknown"):
            return None
        m = _AGE_RX.match(s)
        if not m:
            raise ValueError(f"age {value!r} is not a number or a DICOM age like '058Y'")
        age = float(m.group(1)) * _AGE_UNITS[(m.group(2) or "Y").upper()]
    if not 0 <= age <= 120:
        raise ValueError(f"age {age:g} is outside 0..120 years")
    return age


_SEX = {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O"}


def parse_sex(value: Any) -> str | None:
    """'M' / 'F' / 'O' from the spellings datasets use; unknown or blank -> ``None``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return _SEX.get(str(value).strip().lower())


_VIEW = {"pa": "PA", "posteroanterior": "PA", "ap": "AP", "anteroposterior": "AP", "ap supine": "AP",
         "ap_horizontal": "AP", "ap horizontal": "AP", "lateral": "LAT", "lat": "LAT", "l": "LAT", "rl": "LAT",
         "ll": "LL", "left lateral": "LL"}


def parse_view(value: Any) -> str | None:
    """'PA' / 'AP' / 'LAT' / 'LL' from the spellings datasets use; anything else -> ``None``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return _VIEW.get(str(value).strip().lower())


def empty_labels(known: Iterable[str] = ()) -> dict[str, int | None]:
    """All 14 labels unknown, except those in ``known`` which start absent (0)."""
    known = set(known)
    return {name: (0 if name in known else None) for name in LABELS}


def image_path(image_root: str | os.PathLike | None, relative: str) -> str:
    """Where a record's image lives: under ``image_root`` if given, else the dataset-relative path."""
    return str(Path(image_root) / relative) if image_root is not None else relative
