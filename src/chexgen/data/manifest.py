"""The manifest: one record type shared by every stage of chexgen.

Real datasets, the phantom cohort, curated OpenChest data and generated
images are all lists of :class:`Record`. A manifest is stored as JSONL (one
record per line, for people) or Parquet (for million-row sets; nested fields
are JSON strings there). Image and mask paths are stored as written; relative
paths are resolved against the manifest file's folder (:meth:`Record.resolve`).

Reading validates every line and raises :class:`~chexgen.errors.ChexgenError`
naming the file, the line and the field that is wrong; with a
:class:`~chexgen.data.rejects.RejectLog` it lists bad records there instead and
keeps going (the house rule for long jobs). A file that is not UTF-8, not valid
Parquet, or holds no usable record is unusable input either way.

Paths can be confined: with ``data_root`` every image and mask path must resolve
(symlinks followed) to a file inside that folder (:func:`resolve_within`), so a
manifest cannot make a job or a server read ``../../../../etc/passwd``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

from chexgen.data.labels import LABELS, normalize_label_name, validate_label_value
from chexgen.data.rejects import RejectLog
from chexgen.errors import ChexgenError
from chexgen.utils import atomic_path

__all__ = [
    "Box",
    "Mask",
    "Record",
    "VIEWS",
    "SEXES",
    "SPLITS",
    "read_manifest",
    "iter_manifest",
    "iter_manifest_lines",
    "read_manifest_lines",
    "write_manifest",
    "record_from_dict",
    "resolve_within",
    "check_record_paths",
]

VIEWS = ("PA", "AP", "LAT", "LL")
SEXES = ("M", "F", "O")
SPLITS = ("train", "val", "test")


@dataclass
class Box:
    """A labelled box in pixel coordinates of the stored image (x0, y0 inclusive; x1, y1 exclusive)."""

    label: str
    x0: float
    y0: float
    x1: float
    y1: float
    source: str | None = None  # e.g. a reader id for multi-reader datasets

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)


@dataclass
class Mask:
    """A named mask: a PNG ``path`` (relative to the manifest) or a run-length encoding ``rle``.

    ``rle`` uses the SIIM-ACR convention (column-major runs of a ``width`` x ``height``
    image, relative start offsets); ``width`` / ``height`` are required with it.
    """

    name: str
    path: str | None = None
    rle: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass
class Record:
    """One chest radiograph (real or synthetic) with everything chexgen knows about it."""

    id: str
    image: str | None = None
    dataset: str | None = None
    split: str | None = None
    view: str | None = None
    sex: str | None = None
    age: float | None = None
    race: str | None = None
    patient_id: str | None = None
    study_id: str | None = None
    width: int | None = None
    height: int | None = None
    labels: dict[str, int | None] = field(default_factory=dict)
    report: str | None = None
    impression: str | None = None
    masks: list[Mask] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    severity: float | None = None
    synthetic: bool = False
    provenance: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- convenience ---------------------------------------------------------
    def resolve(self, path: str | None, root: str | os.PathLike | None,
                data_root: str | os.PathLike | None = None) -> Path | None:
        """Resolve a stored (possibly relative) path against the manifest folder ``root``.

        With ``data_root``, the result must lie inside that folder once symlinks
        are followed (:func:`resolve_within`); a path escaping it raises
        :class:`~chexgen.errors.ChexgenError`. Servers always pass it.
        """
        if path is None:
            return None
        if data_root is not None:
            return resolve_within(path, root, data_root)
        p = Path(path)
        if not p.is_absolute() and root is not None:
            p = Path(root) / p
        return p

    def positive_labels(self) -> list[str]:
        return [name for name in LABELS if self.labels.get(name) == 1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # Drop empty optional values so JSONL stays readable.
        return {k: v for k, v in d.items() if v not in (None, [], {}) or k in ("id", "synthetic")}


_FIELD_NAMES = {f.name for f in fields(Record)}


def resolve_within(path: str | os.PathLike, root: str | os.PathLike | None,
                   data_root: str | os.PathLike) -> Path:
    """``path`` (relative to ``root``) as a real path that must lie inside ``data_root``.

    Symlinks are followed (``os.path.realpath``) before the check, so a link
    inside ``data_root`` pointing outside it is refused too, and so is
    ``../../etc/passwd``. Returns the real path, which is what the caller should
    open (checking one path and opening another would let a swapped link through).
    """
    p = Path(path)
    if not p.is_absolute() and root is not None:
        p = Path(root) / p
    real = Path(os.path.realpath(p))
    base = Path(os.path.realpath(data_root))
    if real != base and base not in real.parents:
        raise ChexgenError(f"path {str(path)!r} resolves to {real}, outside the data root {base} "
                           "(--data-root); refusing to read it")
    return real


def check_record_paths(record: "Record", root: str | os.PathLike | None, data_root: str | os.PathLike) -> None:
    """Raise :class:`~chexgen.errors.ChexgenError` if the image or a mask path of ``record`` leaves ``data_root``."""
    for what, value in [("image", record.image)] + [(f"masks[{i}]", m.path) for i, m in enumerate(record.masks)]:
        if value is not None:
            try:
                resolve_within(value, root, data_root)
            except ChexgenError as e:
                raise _err(f"record {record.id!r}", what, str(e)) from None


def _err(where: str, fieldname: str, msg: str) -> ChexgenError:
    return ChexgenError(f"{where}: field '{fieldname}': {msg}")


def record_from_dict(d: dict[str, Any], where: str = "<record>") -> Record:
    """Validate a plain dict and build a :class:`Record`; ``where`` names file and line in errors."""
    if not isinstance(d, dict):
        raise ChexgenError(f"{where}: expected a JSON object, got {type(d).__name__}")
    unknown = set(d) - _FIELD_NAMES
    if unknown:
        raise ChexgenError(
            f"{where}: unknown field(s) {sorted(unknown)}; put dataset-specific values under 'extra'"
        )
    if "id" not in d or d["id"] in (None, ""):
        raise _err(where, "id", "required, non-empty")
    out: dict[str, Any] = dict(d)
    out["id"] = str(d["id"])

    for key in ("image", "dataset", "race", "patient_id", "study_id", "report", "impression"):
        if out.get(key) is not None and not isinstance(out[key], str):
            raise _err(where, key, f"expected a string, got {out[key]!r}")
    if out.get("split") is not None and out["split"] not in SPLITS:
        raise _err(where, "split", f"expected one of {SPLITS}, got {out['split']!r}")
    if out.get("view") is not None and out["view"] not in VIEWS:
        raise _err(where, "view", f"expected one of {VIEWS}, got {out['view']!r}")
    if out.get("sex") is not None and out["sex"] not in SEXES:
        raise _err(where, "sex", f"expected one of {SEXES}, got {out['sex']!r}")
    for key in ("age", "severity"):
        v = out.get(key)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise _err(where, key, f"expected a number, got {v!r}")
            out[key] = float(v)
    if out.get("age") is not None and not (0 <= out["age"] <= 130):
        raise _err(where, "age", f"expected 0..130 years, got {out['age']}")
    for key in ("width", "height"):
        v = out.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise _err(where, key, f"expected a positive integer, got {v!r}")

    labels = out.get("labels") or {}
    if not isinstance(labels, dict):
        raise _err(where, "labels", "expected an object mapping label name to 1/0/-1/null")
    clean: dict[str, int | None] = {}
    for name, value in labels.items():
        try:
            canon = normalize_label_name(name)
            clean[canon] = validate_label_value(value)
        except (KeyError, ValueError) as e:
            raise _err(where, f"labels.{name}", str(e).strip("'\"")) from None
    out["labels"] = clean

    masks = []
    for i, m in enumerate(out.get("masks") or []):
        if not isinstance(m, dict) or "name" not in m:
            raise _err(where, f"masks[{i}]", "expected an object with 'name' and 'path' or 'rle'")
        try:
            mask = Mask(**m)
        except TypeError as e:
            raise _err(where, f"masks[{i}]", str(e)) from None
        if (mask.path is None) == (mask.rle is None):
            raise _err(where, f"masks[{i}]", "give exactly one of 'path' or 'rle'")
        if mask.rle is not None and (mask.width is None or mask.height is None):
            raise _err(where, f"masks[{i}]", "an 'rle' mask needs 'width' and 'height'")
        masks.append(mask)
    out["masks"] = masks

    boxes = []
    for i, b in enumerate(out.get("boxes") or []):
        if not isinstance(b, dict):
            raise _err(where, f"boxes[{i}]", "expected an object with label, x0, y0, x1, y1")
        try:
            box = Box(**b)
        except TypeError as e:
            raise _err(where, f"boxes[{i}]", str(e)) from None
        coords = (box.x0, box.y0, box.x1, box.y1)
        if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in coords):
            raise _err(where, f"boxes[{i}]", f"coordinates must be finite numbers, got {coords}")
        if box.x1 <= box.x0 or box.y1 <= box.y0:
            raise _err(where, f"boxes[{i}]", f"expected x0 < x1 and y0 < y1, got {coords}")
        boxes.append(box)
    out["boxes"] = boxes

    out["synthetic"] = bool(out.get("synthetic", False))
    if out.get("provenance") is not None and not isinstance(out["provenance"], dict):
        raise _err(where, "provenance", "expected an object")
    if not isinstance(out.get("extra") or {}, dict):
        raise _err(where, "extra", "expected an object")
    out["extra"] = out.get("extra") or {}
    return Record(**out)


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


_NESTED = ("labels", "masks", "boxes", "provenance", "extra")


def _read_parquet(path: Path):
    try:
        import pandas as pd
        import pyarrow  # noqa: F401 - pandas' parquet engine; a clear message when it is missing
    except ImportError:
        raise ChexgenError(f"{path}: reading Parquet needs pandas and pyarrow (pip install pyarrow)") from None
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for a corrupt file
        raise ChexgenError(f"{path}: not a readable Parquet file ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'corrupt'})") from None


def _decode_line(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise ChexgenError(f"{path}: line {lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                           f"{e.start + 1}); save the manifest as UTF-8") from None


def iter_manifest(path: str | os.PathLike, rejects: RejectLog | None = None) -> Iterator[Record]:
    """Yield validated records of a JSONL or Parquet manifest, one at a time.

    Without ``rejects`` the first bad record raises :class:`~chexgen.errors.ChexgenError`;
    with it, bad records (invalid JSON, invalid fields) are added there and skipped.
    Encoding and format errors always raise: the file as a whole is unusable.
    """
    for _, record in iter_manifest_lines(path, rejects):
        yield record


def iter_manifest_lines(path: str | os.PathLike, rejects: RejectLog | None = None) -> Iterator[tuple[int, Record]]:
    """Like :func:`iter_manifest`, yielding ``(line, record)``: the JSONL line or Parquet row (1-based)."""
    path = Path(path)
    if not path.is_file():
        raise ChexgenError(f"{path}: manifest not found")

    def build(d: Any, where: str, line: int) -> Record | None:
        try:
            return record_from_dict(d, where=where)
        except ChexgenError as e:
            if rejects is None:
                raise
            rid = d.get("id") if isinstance(d, dict) and isinstance(d.get("id"), (str, int)) else None
            rejects.add(path, line, str(e).removeprefix(f"{where}: "), id=None if rid is None else str(rid))
            return None

    if _is_parquet(path):
        frame = _read_parquet(path)
        for i, row in enumerate(frame.to_dict(orient="records"), start=1):
            d = {k: v for k, v in row.items() if not _is_missing(v)}
            where = f"{path}: row {i}"
            try:
                for key in _NESTED:
                    if isinstance(d.get(key), str):
                        d[key] = json.loads(d[key])
            except json.JSONDecodeError as e:
                err = ChexgenError(f"{where}: field {key!r}: not valid JSON ({e.msg})")
                if rejects is None:
                    raise err from None
                rejects.add(path, i, str(err).removeprefix(f"{where}: "), id=str(d.get("id")) if d.get("id") else None)
                continue
            rec = build(d, where, i)
            if rec is not None:
                yield i, rec
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode_line(raw, path, lineno)
            if not line.strip():
                continue
            where = f"{path}: line {lineno}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                msg = f"not valid JSON ({e.msg} at column {e.colno})"
                if rejects is None:
                    raise ChexgenError(f"{where}: {msg}") from None
                rejects.add(path, lineno, msg)
                continue
            rec = build(d, where, lineno)
            if rec is not None:
                yield lineno, rec


def _is_missing(v: Any) -> bool:
    try:
        return v is None or (isinstance(v, float) and v != v)
    except Exception:  # pragma: no cover - exotic pandas values
        return False


def read_manifest(path: str | os.PathLike, rejects: RejectLog | None = None,
                  data_root: str | os.PathLike | None = None) -> list[Record]:
    """Read a whole manifest (JSONL or Parquet) into memory, validating every record.

    See :func:`read_manifest_lines` for ``rejects`` and ``data_root``.
    """
    return [r for _, r in read_manifest_lines(path, rejects, data_root)]


def read_manifest_lines(path: str | os.PathLike, rejects: RejectLog | None = None,
                        data_root: str | os.PathLike | None = None) -> list[tuple[int, Record]]:
    """Read a whole manifest as ``(line, record)`` pairs (line: JSONL line or Parquet row, 1-based).

    Args:
        rejects: collect bad records (invalid lines, duplicate ids, paths outside
            ``data_root``) here and leave them out, instead of raising on the first;
            if every record is bad, the manifest is unusable and this raises.
        data_root: refuse image / mask paths that resolve outside this folder
            (symlinks followed); relative paths are resolved against the manifest's folder.
    """
    path = Path(path)
    before = len(rejects) if rejects is not None else 0
    records: list[tuple[int, Record]] = []
    seen: dict[str, int] = {}
    for line, r in iter_manifest_lines(path, rejects):
        problem = None
        unit = "row" if _is_parquet(path) else "line"
        if r.id in seen:
            problem = f"duplicate id {r.id!r} (first at {unit} {seen[r.id]})"
        elif data_root is not None:
            try:
                check_record_paths(r, path.parent, data_root)
            except ChexgenError as e:
                problem = str(e)
        if problem is not None:
            if rejects is None:
                raise ChexgenError(f"{path}: {unit} {line}: {problem}")
            rejects.add(path, line, problem, id=r.id)
            continue
        seen[r.id] = line
        records.append((line, r))
    if rejects is not None and not records and len(rejects) > before:
        first = rejects.entries[before]
        raise ChexgenError(f"{path}: no usable record ({len(rejects) - before} rejected; first: {first})")
    return records


def write_manifest(path: str | os.PathLike, records: Iterable[Record]) -> int:
    """Write records atomically as JSONL (or Parquet by suffix); returns the count."""
    path = Path(path)
    rows = [r.to_dict() if isinstance(r, Record) else record_from_dict(r).to_dict() for r in records]
    with atomic_path(path) as tmp:
        if _is_parquet(path):
            import pandas as pd

            flat = []
            for d in rows:
                d = dict(d)
                for key in _NESTED:
                    if key in d:
                        d[key] = json.dumps(d[key])
                flat.append(d)
            pd.DataFrame(flat).to_parquet(tmp, index=False)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for d in rows:
                    f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return len(rows)
