"""Fast writing of large curated manifests.

:func:`chexgen.data.manifest.write_manifest` builds each row with
``dataclasses.asdict``, which deep-copies every nested value: ~10x slower than
needed at OpenChest scale (half a million records). The records here were
built by chexgen's own adapters, so a shallow conversion gives the very same
rows (``tests/test_curation_pipeline.py`` checks equality with
``Record.to_dict``) and the files read back with ``read_manifest``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from chexgen.data.manifest import Record
from chexgen.utils import atomic_path

__all__ = ["record_row", "write_curated_manifest"]

_KEEP_EMPTY = ("id", "synthetic")
_NESTED = ("labels", "masks", "boxes", "provenance", "extra")


def record_row(record: Record) -> dict[str, Any]:
    """The row :meth:`Record.to_dict` gives, built without deep copies."""
    d = {k: v for k, v in record.__dict__.items() if (v is not None and v != [] and v != {}) or k in _KEEP_EMPTY}
    if record.boxes:
        d["boxes"] = [dict(b.__dict__) for b in record.boxes]
    if record.masks:
        d["masks"] = [dict(m.__dict__) for m in record.masks]
    return d


def write_curated_manifest(path: str | os.PathLike, records: Sequence[Record], chunk: int = 20000) -> int:
    """Write records atomically as JSONL, or Parquet when the suffix is ``.parquet`` / ``.pq``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pandas as pd
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer = None
            columns: list[str] | None = None
            try:
                for start in range(0, len(records), chunk):
                    rows = []
                    for r in records[start:start + chunk]:
                        d = record_row(r)
                        for key in _NESTED:
                            if key in d:
                                d[key] = json.dumps(d[key], ensure_ascii=False)
                        rows.append(d)
                    frame = pd.DataFrame(rows)
                    if columns is None:
                        columns = [f for f in Record.__dataclass_fields__]
                    frame = frame.reindex(columns=columns)
                    for c in frame.columns:  # one schema for every chunk: everything but flags as text
                        if c not in ("age", "severity", "width", "height", "synthetic"):
                            frame[c] = frame[c].astype("string")
                        elif c in ("width", "height"):
                            frame[c] = frame[c].astype("Int64")
                        elif c != "synthetic":
                            frame[c] = frame[c].astype("Float64")
                    table = pa.Table.from_pandas(frame, preserve_index=False)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()
            if writer is None:
                pd.DataFrame(columns=list(Record.__dataclass_fields__)).to_parquet(tmp, index=False)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(record_row(r), ensure_ascii=False))
                    f.write("\n")
    return len(records)
