"""Read spatial conditions from the formats users have, and write them back out.

Inputs, each becoming a list of :class:`ConditionInput` (one per image):

- a folder of binary mask PNGs (one class for all, default ``Pneumothorax``), or
  multi-class label PNGs with a ``value -> class`` mapping;
- a SIIM-ACR RLE CSV (``ImageId, EncodedPixels``; several rows of one image are
  united; ``-1`` rows are "no finding" and kept only when asked);
- boxes as COCO JSON (``bbox = [x, y, w, h]``), as a CSV (chexgen's
  ``image_id,label,x0,y0,x1,y1``, NIH ChestX-ray14 ``BBox_List_2017``
  ``x,y,w,h`` or VinDr-CXR ``x_min..y_max``; the header tells which), or as a
  chexgen manifest (masks, boxes and the prompt from ``impression`` / ``report``).

Output: :func:`write_coco` writes boxes of generated images as COCO JSON, ready
for a detector.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from chexgen.data.conditions import LabelledMask, decode_rle, load_label_map, load_mask, resolve_class
from chexgen.data.manifest import Box, read_manifest
from chexgen.errors import ChexgenError
from chexgen.utils import atomic_write_json

__all__ = [
    "ConditionInput",
    "read_mask_folder",
    "read_rle_csv",
    "read_box_file",
    "read_coco",
    "read_box_csv",
    "read_manifest_conditions",
    "merge_conditions",
    "write_coco",
]

SIIM_SIZE = 1024  # SIIM-ACR and NIH ChestX-ray14 images are 1024 x 1024


@dataclass
class ConditionInput:
    """Everything that spatially conditions one generated image.

    ``width`` / ``height`` are the frame the boxes refer to (and masks are resized
    to). ``prompt`` is set when the source carries text (a manifest).
    """

    id: str
    width: int
    height: int
    masks: list[LabelledMask] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    prompt: str | None = None
    where: str = ""  # the file (and line / record) it was read from, for error messages and rejects


def _open_text(path: Path):
    if not path.is_file():
        raise ChexgenError(f"{path}: file not found")
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_mask_folder(
    folder: "str | os.PathLike",
    class_name: str = "Pneumothorax",
    classes: Mapping[int, str] | None = None,
    threshold: float | None = None,
) -> list[ConditionInput]:
    """One condition per PNG in ``folder`` (sorted by name; the id is the file stem).

    Binary masks get ``class_name``; with ``classes`` every PNG is a label map.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ChexgenError(f"{folder}: mask folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise ChexgenError(f"{folder}: no .png masks found")
    resolve_class(class_name)
    out = []
    for path in files:
        if classes:
            masks = load_label_map(path, classes)
            if not masks:
                raise ChexgenError(f"{path}: label map is empty (no foreground pixels)")
        else:
            masks = [LabelledMask(class_name, load_mask(path, threshold=threshold))]
        h, w = masks[0].mask.shape
        out.append(ConditionInput(path.stem, w, h, masks=masks, where=str(path)))
    return out


def read_rle_csv(
    path: "str | os.PathLike",
    class_name: str = "Pneumothorax",
    width: int = SIIM_SIZE,
    height: int = SIIM_SIZE,
    include_empty: bool = False,
    limit: int | None = None,
) -> list[ConditionInput]:
    """Conditions from a SIIM-style RLE CSV (first column image id, second the RLE).

    Rows of the same image are united into one mask; images appear in file order.
    ``-1`` (no pneumothorax) images are skipped unless ``include_empty``; ``limit``
    counts the images kept.
    """
    path = Path(path)
    resolve_class(class_name)
    merged: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or len(header) < 2:
            raise ChexgenError(f"{path}: expected a header 'ImageId, EncodedPixels'")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise ChexgenError(f"{path}: line {lineno}: expected 2 columns (id, rle), got {row}")
            image_id, rle = row[0].strip(), row[1]
            if rle.strip() == "-1" and not include_empty:
                continue  # "no pneumothorax": not a condition unless asked for (and not counted by limit)
            if image_id not in merged and limit is not None and len(merged) >= limit:
                break
            m = decode_rle(rle, width, height, where=f"{path}: line {lineno}")
            merged[image_id] = merged[image_id] | m if image_id in merged else m
            first_line.setdefault(image_id, lineno)
    out = []
    for image_id, mask in merged.items():
        if not mask.any() and not include_empty:
            continue
        masks = [LabelledMask(class_name, mask)] if mask.any() else []
        out.append(ConditionInput(image_id, width, height, masks=masks, where=f"{path}: line {first_line[image_id]}"))
    return out


def _num(value: str, where: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ChexgenError(f"{where}: expected a number, got {value!r}") from None
    if v != v:
        raise ChexgenError(f"{where}: missing coordinate")
    return v


def _box_row(kind: str, row: list[str], cols: dict[str, int], where: str, width: int | None,
             height: int | None) -> tuple[str, "Box | None", int | None, int | None]:
    """(image id, box or None for a no-finding row, frame width, height) of one box CSV row."""
    try:
        w, h = width, height
        if kind == "nih":
            image_id, label = row[0], row[1]
            x, y, bw, bh = (_num(row[cols["bbox [x"] + k], where) for k in range(4))
            box = Box(label, x, y, x + bw, y + bh)
            w, h = w or SIIM_SIZE, h or SIIM_SIZE
        elif kind == "vindr":
            image_id, label = row[cols["image_id"]], row[cols["class_name"]]
            if label.strip().lower() == "no finding":
                return image_id, None, w, h
            box = Box(label, *(_num(row[cols[c]], where) for c in ("x_min", "y_min", "x_max", "y_max")),
                      source=row[cols["rad_id"]] if "rad_id" in cols else None)
        else:
            image_id = row[cols.get("image_id", cols.get("id"))]
            label = row[cols["label"]] if "label" in cols else None
            if not label:
                raise ChexgenError(f"{where}: missing 'label'")
            box = Box(label, *(_num(row[cols[c]], where) for c in ("x0", "y0", "x1", "y1")))
            if "width" in cols and "height" in cols:
                w, h = int(_num(row[cols["width"]], where)), int(_num(row[cols["height"]], where))
        try:
            resolve_class(box.label)
        except ChexgenError as e:
            raise ChexgenError(f"{where}: {e}") from None
        if w is None or h is None:
            raise ChexgenError(f"{where}: image size unknown; add width,height columns to the box CSV")
        return image_id, box, w, h
    except IndexError:
        raise ChexgenError(f"{where}: too few columns ({len(row)}) for the header") from None


def read_box_csv(
    path: "str | os.PathLike", width: int | None = None, height: int | None = None,
    rejects: list[dict] | None = None,
) -> list[ConditionInput]:
    """Boxes from a CSV, grouped by image (file order).

    Recognised headers: ``image_id,label,x0,y0,x1,y1[,width,height]`` (chexgen),
    ``Image Index,Finding Label,Bbox [x,y,w,h]`` (NIH, 1024 x 1024 frame) and
    ``image_id,class_name,...,x_min,y_min,x_max,y_max`` (VinDr-CXR; "No finding"
    rows carry no box and are skipped). The frame size comes from ``width`` /
    ``height`` columns, else the arguments, else 1024 for NIH; otherwise an error.
    With ``rejects`` (a list), a bad row is appended to it (``where``, ``id``, ``reason``) and
    skipped instead of stopping the read.
    """
    path = Path(path)
    groups: dict[str, ConditionInput] = {}
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        cols = {h.lower(): i for i, h in enumerate(header)}
        if "finding label" in cols and "bbox [x" in cols:
            kind = "nih"
        elif {"x_min", "y_min", "x_max", "y_max"} <= set(cols):
            kind = "vindr"
        elif {"x0", "y0", "x1", "y1"} <= set(cols) and ({"image_id", "id"} & set(cols)):
            kind = "chexgen"
        else:
            raise ChexgenError(
                f"{path}: unrecognised box CSV header {header}; expected image_id,label,x0,y0,x1,y1 "
                "(or the NIH BBox_List / VinDr-CXR layouts)"
            )
        for lineno, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            where = f"{path}: line {lineno}"
            try:
                image_id, box, w, h = _box_row(kind, row, cols, where, width, height)
            except ChexgenError as err:
                if rejects is None:
                    raise
                rejects.append({"where": where, "id": row[0] if row else None, "reason": str(err)})
                continue
            if box is None:
                continue
            cond = groups.setdefault(image_id, ConditionInput(image_id, int(w), int(h), where=where))
            cond.boxes.append(box)
    if not groups:
        raise ChexgenError(f"{path}: no boxes found")
    return list(groups.values())


def read_coco(path: "str | os.PathLike") -> list[ConditionInput]:
    """Boxes from a COCO detection JSON (``images``, ``annotations``, ``categories``)."""
    path = Path(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChexgenError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ChexgenError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    try:
        cats = {c["id"]: c["name"] for c in data["categories"]}
        images = {im["id"]: im for im in data["images"]}
        out = {
            i: ConditionInput(str(Path(im.get("file_name", str(i))).stem), int(im["width"]), int(im["height"]))
            for i, im in images.items()
        }
        for k, ann in enumerate(data.get("annotations", [])):
            where = f"{path}: annotations[{k}]"
            if ann["image_id"] not in out:
                raise ChexgenError(f"{where}: image_id {ann['image_id']} not in 'images'")
            if ann["category_id"] not in cats:
                raise ChexgenError(f"{where}: category_id {ann['category_id']} not in 'categories'")
            x, y, w, h = (float(v) for v in ann["bbox"])
            label = cats[ann["category_id"]]
            try:
                resolve_class(label)
            except ChexgenError as e:
                raise ChexgenError(f"{where}: {e}") from None
            out[ann["image_id"]].boxes.append(Box(label, x, y, x + w, y + h))
    except (KeyError, TypeError, ValueError) as e:
        raise ChexgenError(f"{path}: not a COCO detection file ({type(e).__name__}: {e})") from None
    return list(out.values())


def read_manifest_conditions(path: "str | os.PathLike", mask_threshold: float | None = None) -> list[ConditionInput]:
    """Conditions (and prompts) of the manifest records that have masks or boxes."""
    path = Path(path)
    out = []
    for rec in read_manifest(path):
        if not rec.masks and not rec.boxes:
            continue
        masks = []
        for m in rec.masks:
            if m.rle is not None:
                arr = decode_rle(m.rle, int(m.width), int(m.height), where=f"{path}: {rec.id}: mask {m.name!r}")
            else:
                arr = load_mask(rec.resolve(m.path, path.parent), threshold=mask_threshold, allow_empty=True)
            if arr.any():
                masks.append(LabelledMask(m.name, arr))
        if rec.width and rec.height:
            w, h = rec.width, rec.height
        elif masks:
            h, w = masks[0].mask.shape
        else:
            raise ChexgenError(f"{path}: record {rec.id!r} has boxes but no width/height")
        out.append(ConditionInput(rec.id, w, h, masks, list(rec.boxes), prompt=rec.impression or rec.report,
                                  where=f"{path}: record {rec.id!r}"))
    if not out:
        raise ChexgenError(f"{path}: no record has masks or boxes")
    return out


def read_box_file(path: "str | os.PathLike") -> list[ConditionInput]:
    """Boxes from a COCO JSON, a box CSV or a manifest, chosen by the file name."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".jsonl") or name.endswith(".parquet"):
        return read_manifest_conditions(p)
    if name.endswith(".json"):
        return read_coco(p)
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return read_box_csv(p)
    raise ChexgenError(f"{p}: unknown box file type; expected COCO .json, .csv(.gz) or a manifest .jsonl/.parquet")


def merge_conditions(*groups: Sequence[ConditionInput]) -> list[ConditionInput]:
    """Join condition lists by id (masks from one source, boxes from another), first-seen order."""
    merged: dict[str, ConditionInput] = {}
    for group in groups:
        for c in group:
            if c.id not in merged:
                merged[c.id] = ConditionInput(c.id, c.width, c.height, list(c.masks), list(c.boxes), c.prompt, c.where)
            else:
                m = merged[c.id]
                m.masks += c.masks
                m.boxes += c.boxes
                m.prompt = m.prompt or c.prompt
                m.where = "; ".join(w for w in (m.where, c.where) if w)
    return list(merged.values())


def write_coco(path: "str | os.PathLike", images: Iterable[tuple[str, str, int, int, Sequence[Box]]]) -> None:
    """Write ``(image_id, file_name, width, height, boxes)`` items as a COCO detection JSON.

    Category ids follow the palette (canonical names), so files from different runs agree.
    """
    from chexgen.data.conditions import PALETTE

    cat_ids = {c.name: i + 1 for i, c in enumerate(PALETTE)}
    coco = {"images": [], "annotations": [], "categories": [
        {"id": i, "name": n, "supercategory": "anatomy" if PALETTE[i - 1].kind == "anatomy" else "finding"}
        for n, i in cat_ids.items()
    ]}
    ann_id = 1
    for k, (image_id, file_name, w, h, boxes) in enumerate(images, start=1):
        coco["images"].append({"id": k, "file_name": file_name, "width": int(w), "height": int(h),
                               "chexgen_id": image_id})
        for b in boxes:
            bw, bh = float(b.x1 - b.x0), float(b.y1 - b.y0)
            coco["annotations"].append({
                "id": ann_id, "image_id": k, "category_id": cat_ids[resolve_class(b.label).name],
                "bbox": [float(b.x0), float(b.y0), bw, bh], "area": bw * bh, "iscrowd": 0,
                "chexgen_label": b.label,
            })
            ann_id += 1
    atomic_write_json(path, coco)
