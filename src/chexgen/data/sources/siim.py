"""SIIM-ACR Pneumothorax Segmentation (2019): ``train-rle.csv``.

Columns ``ImageId`` (a DICOM SOP instance UID) and ``EncodedPixels``: ``-1``
for no pneumothorax, otherwise a run-length encoding of a 1024x1024 mask in
the competition's *relative* convention: pairs ``(gap, length)`` where the
first gap counts from pixel 0 and every later gap from the end of the previous
run, pixels numbered column by column (Fortran order). An image with several
pneumothorax components has several rows. Shipped in torchxrayvision as
``siim-pneumothorax-train-rle.csv.gz`` (12,954 rows) and read there at run time.

One record per image: ``labels`` Pneumothorax 1 / 0 (the other 13 unknown),
one ``Mask(name="pneumothorax", rle=...)`` holding all components merged, and
``extra.findings`` with the side the mask lies on (patient right = image left
on the frontal views this set holds). Malformed encodings (odd number of
values, non-integers, runs past the image) go to the rejects.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from chexgen.data.conditions import decode_rle, encode_rle
from chexgen.data.labels import LABELS
from chexgen.data.manifest import Mask, Record
from chexgen.data.sources._common import Reject, SourceResult, find_file, read_csv

__all__ = ["rle_decode", "rle_encode", "parse_rle", "merge_runs", "load_siim"]

SIZE = 1024


def parse_rle(rle: str, width: int = SIZE, height: int = SIZE) -> np.ndarray:
    """Validate a relative RLE and return absolute ``(start, length)`` pairs; raises ``ValueError``."""
    try:
        values = np.array(rle.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        raise ValueError("RLE holds a value that is not an integer") from None
    if len(values) == 0 or len(values) % 2:
        raise ValueError(f"RLE needs an even, non-zero number of values, got {len(values)}")
    gaps, lengths = values[0::2], values[1::2]
    if (gaps < 0).any() or (lengths <= 0).any():
        raise ValueError("RLE gaps must be >= 0 and run lengths > 0")
    ends = np.cumsum(gaps + lengths)
    starts = ends - lengths
    if ends[-1] > width * height:
        raise ValueError(f"RLE runs past the end of a {width}x{height} image ({ends[-1]} > {width * height})")
    return np.stack([starts, lengths], axis=1)


def rle_decode(rle: str, width: int = SIZE, height: int = SIZE) -> np.ndarray:
    """Relative RLE -> bool mask of shape (height, width) at SIIM's 1024 px by default (see
    :func:`chexgen.data.conditions.decode_rle`, the one decoder chexgen has)."""
    return decode_rle(rle, width, height, where="SIIM RLE")


rle_encode = encode_rle  # bool mask (height, width) -> relative RLE, "-1" when empty


def merge_runs(runs: np.ndarray) -> str:
    """Union of absolute ``(start, length)`` runs (possibly overlapping) as one relative RLE."""
    runs = runs[np.argsort(runs[:, 0], kind="stable")]
    merged: list[list[int]] = []
    for start, length in runs.tolist():
        end = start + length
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, prev = [], 0
    for start, end in merged:
        out += [start - prev, end - start]
        prev = end
    return " ".join(map(str, out))


def _side(runs: np.ndarray, height: int = SIZE, width: int = SIZE) -> str:
    """Side of the mask's centre of mass: patient right is image left on frontal views."""
    cols = runs[:, 0] // height
    weights = runs[:, 1]
    cx = float((cols * weights).sum() / weights.sum()) / width
    return "right" if cx < 0.5 else "left"


def load_siim(root: str | os.PathLike | None = None, *, image_root: str | os.PathLike | None = None,
              check_images: bool = False, limit: int | None = None, image_ext: str = ".dcm") -> SourceResult:
    """Read SIIM-ACR RLE masks into one record per image (``limit`` counts CSV rows)."""
    path = find_file(root, ["train-rle.csv", "siim-pneumothorax-train-rle.csv.gz"], "SIIM-ACR RLE",
                     xrv_fallback="siim-pneumothorax-train-rle.csv.gz")
    frame = read_csv(path, nrows=limit)
    frame.columns = [c.strip() for c in frame.columns]
    if "ImageId" not in frame.columns or "EncodedPixels" not in frame.columns:
        from chexgen.errors import ChexgenError

        raise ChexgenError(f"{path}: expected columns ImageId and EncodedPixels, found {list(frame.columns)}")
    result = SourceResult(source="siim", files=[str(path)])
    runs_by_image: dict[str, list[np.ndarray]] = defaultdict(list)
    rles_by_image: dict[str, list[str]] = defaultdict(list)
    order: list[str] = []
    bad: set[str] = set()
    for row, (iid, rle) in enumerate(zip(frame["ImageId"].astype(str).tolist(),
                                         frame["EncodedPixels"].astype(str).tolist()), start=1):
        iid = iid.strip()
        if iid not in runs_by_image and iid not in rles_by_image:
            order.append(iid)
            runs_by_image[iid] = []
        rle = rle.strip()
        if rle in ("-1", "", "nan"):
            continue
        try:
            runs_by_image[iid].append(parse_rle(rle))
            rles_by_image[iid].append(rle)
        except ValueError as e:
            result.rejects.append(Reject("siim", str(path), row, f"malformed RLE: {e}", iid))
            bad.add(iid)
    prefix = str(image_root) + os.sep if image_root is not None else ""
    for n, iid in enumerate(order, start=1):
        if iid in bad:
            continue
        rel = iid + image_ext
        if check_images and image_root is not None and not os.path.exists(prefix + rel):
            result.rejects.append(Reject("siim", str(path), n, f"image {prefix + rel} not found", iid))
            continue
        labels: dict[str, int | None] = {name: None for name in LABELS}
        comps = runs_by_image[iid]
        labels["Pneumothorax"] = 1 if comps else 0
        masks, extra = [], {}
        if comps:
            rles = rles_by_image[iid]
            merged = rles[0] if len(rles) == 1 else merge_runs(np.concatenate(comps))
            masks.append(Mask(name="pneumothorax", rle=merged, width=SIZE, height=SIZE))
            extra["findings"] = [{"label": "Pneumothorax", "side": _side(np.concatenate(comps)),
                                  "severity": None, "zone": None, "kind": None}]
            extra["components"] = len(comps)
        result.records.append(Record(id=f"siim/{iid}", image=prefix + rel, dataset="siim", width=SIZE,
                                     height=SIZE, labels=labels, masks=masks, extra=extra))
    return result
