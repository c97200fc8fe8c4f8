"""Identifiers of real patients must not reach a synthetic release.

A synthetic record made from a real one (e.g. a MIMIC-CXR prompt) keeps a
link to its source only as a **salted hash** (:func:`salted_id`): HMAC-SHA256
of the source id under a secret salt that stays with the data owner, outside
the release (:func:`load_salt`). Whoever holds the salt can map a synthetic
image back to its prompt's source; nobody else can, and the hash cannot be
matched against the public dataset's ids.

:func:`identifier_index` collects, from a real (training) manifest, the values
that identify a person or an encounter: record ids, patient / study ids,
image file stems (MIMIC-CXR names files by DICOM id), and under ``extra`` any
key that names an id, accession number, date or name.
:func:`find_identifiers` looks for those values in any text of the synthetic
side: manifest fields, provenance, PNG text chunks, DICOM header values.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from chexgen.errors import ChexgenError
from chexgen.utils import atomic_path

__all__ = [
    "SALTED_PREFIX",
    "salted_id",
    "is_salted_id",
    "load_salt",
    "IdentifierIndex",
    "identifier_index",
    "find_identifiers",
    "record_texts",
    "dicom_texts",
]

SALTED_PREFIX = "sh1:"
_SALTED_RE = re.compile(r"^sh1:[0-9a-f]{24}$")
_ID_KEYS = re.compile(r"(^|_)(id|ids|uid|mrn|accession|accession_number|number)$|patient|study|subject|dicom", re.I)
_DATE_KEYS = re.compile(r"date|time|birth|dob", re.I)
_NAME_KEYS = re.compile(r"name|physician|operator|institution", re.I)
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
MIN_ID_LENGTH = 5  # shorter values ("1", "PA", "2019") would match everywhere


def salted_id(value: str, salt: bytes) -> str:
    """The salted hash standing in for a real source id: ``sh1:`` + 24 hex of HMAC-SHA256(salt, value)."""
    return SALTED_PREFIX + hmac.new(salt, str(value).encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def is_salted_id(value: Any) -> bool:
    """Whether ``value`` looks like an id made by :func:`salted_id` (not a raw identifier)."""
    return isinstance(value, str) and bool(_SALTED_RE.match(value))


def load_salt(path: str | os.PathLike, create: bool = False) -> bytes:
    """Read the salt file (hex); with ``create``, make a new random one (owner-only permissions) if absent."""
    p = Path(path)
    if not p.is_file():
        if not create:
            raise ChexgenError(f"{p}: salt file not found (create one with --new-salt, and keep it out of the "
                               "release)")
        with atomic_path(p, suffix=".salt") as tmp:
            tmp.write_text(secrets.token_hex(32) + "\n", encoding="ascii")
            os.chmod(tmp, 0o600)
    text = p.read_text(encoding="ascii", errors="replace").strip()
    try:
        salt = bytes.fromhex(text)
    except ValueError:
        raise ChexgenError(f"{p}: expected a salt of hex digits") from None
    if len(salt) < 16:
        raise ChexgenError(f"{p}: salt too short ({len(salt)} bytes; at least 16)")
    return salt


@dataclass
class IdentifierIndex:
    """Identifying values of a real manifest: ``value -> what it is`` (e.g. ``"patient_id of train line 3"``)."""

    ids: dict[str, str] = field(default_factory=dict)  # matched as whole tokens
    phrases: dict[str, str] = field(default_factory=dict)  # names / dates: matched as substrings

    def __len__(self) -> int:
        return len(self.ids) + len(self.phrases)


def _walk(obj: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v, key)
    else:
        yield key, obj


def _usable_id(v: str) -> bool:
    return len(v) >= MIN_ID_LENGTH and not is_salted_id(v)


def identifier_index(records: Iterable, name: str = "train") -> IdentifierIndex:
    """Collect the identifying values of real ``records`` (see module doc)."""
    index = IdentifierIndex()
    for i, rec in enumerate(records, start=1):
        where = f"{name} record {rec.id!r}"
        for label, value in (("id", rec.id), ("patient_id", rec.patient_id), ("study_id", rec.study_id)):
            if value is not None and _usable_id(str(value)):
                index.ids.setdefault(str(value), f"{label} of {where}")
        if rec.image:
            stem = Path(rec.image).stem
            if _usable_id(stem) and re.search(r"\d", stem):
                index.ids.setdefault(stem, f"image file name of {where}")
        for key, value in _walk(rec.extra or {}):
            if value is None or isinstance(value, bool):
                continue
            text = str(value).strip()
            leaf = key.rsplit(".", 1)[-1]
            if _DATE_KEYS.search(leaf) and len(text) >= 6:
                index.phrases.setdefault(text, f"extra.{key} (date) of {where}")
            elif _NAME_KEYS.search(leaf) and len(text) >= 3 and re.search(r"[A-Za-z]", text):
                index.phrases.setdefault(text, f"extra.{key} (name) of {where}")
            elif _ID_KEYS.search(leaf) and _usable_id(text):
                index.ids.setdefault(text, f"extra.{key} of {where}")
    return index


def find_identifiers(texts: Iterable[tuple[str, str]], index: IdentifierIndex) -> list[str]:
    """Messages for every identifying value of ``index`` found in ``(where, text)`` pairs."""
    found: list[str] = []
    for where, text in texts:
        if not text:
            continue
        for tok in _TOKEN.findall(text):
            for cand in {tok, tok.rstrip("."), Path(tok).stem}:
                if cand in index.ids:
                    found.append(f"{where}: {cand!r} is the {index.ids[cand]}")
                    break
        for phrase, what in index.phrases.items():
            if phrase in text:
                found.append(f"{where}: {phrase!r} is the {what}")
    return list(dict.fromkeys(found))


def record_texts(rec) -> list[tuple[str, str]]:
    """Every text of a manifest record as ``(where, text)`` pairs (fields, extra, provenance)."""
    out = [(f"record {rec.id!r} field id", str(rec.id))]
    for name in ("image", "dataset", "patient_id", "study_id", "report", "impression"):
        v = getattr(rec, name)
        if v:
            out.append((f"record {rec.id!r} field {name}", str(v)))
    for key, v in _walk(rec.extra or {}):
        if v is not None:
            out.append((f"record {rec.id!r} extra.{key}", str(v)))
    for key, v in _walk(rec.provenance or {}):
        if v is not None:
            out.append((f"record {rec.id!r} provenance.{key}", str(v)))
    return out


def dicom_texts(ds, where: str) -> list[tuple[str, str]]:
    """Every string-like header value of a pydicom dataset (sequences included) as ``(where, text)`` pairs."""
    out: list[tuple[str, str]] = []

    def visit(d) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item)
            elif elem.tag != 0x7FE00010 and elem.VR not in ("OB", "OW", "OF", "OD", "OL", "UN"):
                value = elem.value
                if value is None or value == "":
                    continue
                out.append((f"{where} {elem.keyword or elem.tag}", str(value)))

    visit(ds)
    return out
