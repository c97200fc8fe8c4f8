"""Small shared helpers: atomic writes, hashing, seeding."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "clean_stale_temp_files", "nan_to_null",
           "sha256_file"]


def _temp_name(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"


def _create_temp(path: Path, suffix: str) -> Path:
    """Create an empty, new temp file beside ``path`` with mode ``0o666 & ~umask``.

    ``tempfile.mkstemp`` always gives 0600, which makes every image, manifest and
    cache written through :func:`atomic_path` unreadable by the rest of a lab's
    group; a plain ``open()`` honours the umask, so this does the same
    (``os.open`` with mode 0o666 lets the kernel apply the umask).
    """
    for _ in range(100):
        tmp = _temp_name(path, suffix)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or exception inside the block leaves no partial file at ``path``. The
    temporary file is named ``.<name>.<8 hex><suffix>`` (so
    :func:`clean_stale_temp_files` can find leftovers of a killed run) and gets
    the permissions a plain ``open()`` would (``0o666 & ~umask``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp(path, suffix or path.suffix + ".tmp")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def clean_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete temp files :func:`atomic_path` left beside ``path`` (a killed run); return them.

    Matches ``.<name>.<8 chars>.<suffix>``: the names :func:`atomic_path` gives now
    and the ``tempfile.mkstemp`` names it gave before. Only call this when no other
    process is writing ``path`` at the same time (e.g. at the start of a job that
    owns its output file).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(r"^\." + re.escape(path.name) + r"\.[0-9a-z_]{8}\..+$")
    removed = []
    for p in path.parent.iterdir():
        if pattern.match(p.name) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _non_finite_key(obj: Any, where: str = "") -> str | None:
    """The key path (``a.b[3]``) of the first nan / inf float inside ``obj``, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "<top level>")
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _non_finite_key(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _non_finite_key(v, f"{where}[{i}]")
            if found:
                return found
    return None


def nan_to_null(obj: Any) -> Any:
    """A copy of a JSON-like ``obj`` with nan / inf floats replaced by None (JSON null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_null(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, *,
                      nan_as_null: bool = False) -> None:
    """Write ``obj`` as JSON atomically; refuse nan / inf (they make the file invalid JSON).

    Raises ``ValueError`` naming the file and the key that holds the non-finite number:
    that is a bug to fix in the writer (or an input that should have been rejected
    earlier), never something to write to disk. Results where "undefined" is a
    legitimate value (an AUROC of a class with one label value) pass
    ``nan_as_null=True`` and get ``null`` there.
    """
    if nan_as_null:
        obj = nan_to_null(obj)
    try:
        text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False)
    except ValueError as err:
        key = _non_finite_key(obj)
        if key is None:
            raise
        raise ValueError(f"{path}: refusing to write a non-finite number (nan / inf) at key {key!r} "
                         "into JSON") from err
    atomic_write_text(path, text + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
