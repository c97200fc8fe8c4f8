"""Spatial conditions: masks and boxes rendered as one gray condition image.

The ControlNet adapter sees a condition the way the paper describes it: as an
image, encoded by the pipeline's own VAE into a condition latent. This module
turns masks (binary or multi-class; PNG or SIIM run-length encoding, any size)
and labelled boxes into that image, and back (box extraction, for round-trip
tests and for checking generated data).

**Palette.** One fixed gray level per class (:data:`PALETTE`), background 0.
A single channel works with both the 1-channel VAE of the small presets and the
RGB SD VAE (which sees the gray image repeated to RGB). The 16 classes are the
13 finding classes of chexgen's label space (``No Finding`` has no extent) plus
three anatomy classes (lungs, heart, ribs); levels are ``k / 16`` so that
neighbouring classes differ by 16 8-bit gray values. Dataset-specific names map
onto them by alias (NIH ``Effusion`` -> ``Pleural Effusion``, ``Mass`` /
``Nodule`` -> ``Lung Lesion``, ``Infiltrate`` -> ``Lung Opacity``, VinDr
``Aortic enlargement`` -> ``Enlarged Cardiomediastinum``, ``rib_3_left`` ->
``ribs``, ...). The original label stays on the :class:`Box`; only the drawn
level is shared.

**Filled boxes, not outlines.** The VAE downsamples 8x and a DiT-XL/2 token
covers 16x16 pixels: a 1-2 px outline falls below one latent pixel and blurs
into noise, while a filled rectangle marks every token inside the box, which is
what the adapter needs to place a finding there. Filled boxes also survive
resizing to any output size. Price: overlapping boxes occlude each other, so
boxes are drawn largest first (a small box inside a large one stays visible),
and two overlapping boxes *of the same class* merge into one region.

**Draw order.** Anatomy masks (lungs, heart, ribs), then boxes (largest area
first), then finding masks. Later layers overwrite earlier ones.

**Geometry.** Boxes are in pixels of the stored image (``x0, y0`` inclusive,
``x1, y1`` exclusive, as :class:`chexgen.data.manifest.Box`). The stored image
frame is mapped onto the square output exactly as
:func:`chexgen.data.imageio.fit_square` maps the image (``"crop"``: center
square crop; ``"pad"``: black padding), or with ``"stretch"`` (independent x/y
scaling). Masks of a size other than the frame are resized to the frame first.

**Documented edge cases.**

- A box partly outside the image is clipped to the image (a debug log line);
  a box entirely outside, with zero or negative area, or with non-finite
  coordinates raises :class:`~chexgen.errors.ChexgenError`. A box that the
  ``"crop"`` policy cuts away entirely is dropped (logged); use ``"pad"`` to keep
  the whole field of view.
- A box or mask smaller than one output pixel still covers one pixel, so a
  small finding never vanishes by downsampling.
- A mask file must be binary (0 and one foreground value); other masks raise an
  error unless a ``threshold`` is given, or are read as multi-class label maps
  with an explicit value -> class mapping. An empty mask raises unless
  ``allow_empty=True``. A SIIM RLE of ``-1`` is the format's "no finding" and
  decodes to an empty mask.
- An unknown class name raises an error listing the palette.
"""

from __future__ import annotations

import logging
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Box, Record
from chexgen.errors import ChexgenError

__all__ = [
    "ConditionClass",
    "PALETTE",
    "PALETTE_STEP",
    "FIT_POLICIES",
    "LabelledMask",
    "resolve_class",
    "palette_value",
    "decode_rle",
    "encode_rle",
    "load_mask",
    "load_label_map",
    "resize_mask",
    "validate_box",
    "FrameToSquare",
    "render_condition",
    "render_binary_condition",
    "extract_boxes",
    "class_masks",
    "record_condition",
    "CONDITION_STYLES",
    "RecordConditionRenderer",
]

logger = logging.getLogger(__name__)

FIT_POLICIES = ("crop", "pad", "stretch")


# ---------------------------------------------------------------------------------------------- palette
@dataclass(frozen=True)
class ConditionClass:
    """One drawable class: its canonical ``name``, gray ``value`` in (0, 1] and ``kind``."""

    name: str
    value: float
    kind: str  # "anatomy" or "finding"


_ANATOMY = ("lungs", "heart", "ribs")
_FINDINGS = tuple(name for name in LABELS if name != "No Finding")
PALETTE_STEP = 1.0 / 16.0
PALETTE: tuple[ConditionClass, ...] = tuple(
    ConditionClass(name, (i + 1) * PALETTE_STEP, "anatomy" if name in _ANATOMY else "finding")
    for i, name in enumerate(_ANATOMY + _FINDINGS)
)
_BY_NAME = {c.name: c for c in PALETTE}


def _fold(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


# Dataset-specific names (NIH ChestX-ray14 BBox list, VinDr-CXR, SIIM, phantom masks) -> palette class.
_ALIASES: dict[str, str] = {
    **{_fold(c.name): c.name for c in PALETTE},
    "lung": "lungs", "lungfield": "lungs", "lungfields": "lungs",
    "cardiacsilhouette": "heart",
    "rib": "ribs",
    "effusion": "Pleural Effusion",
    "infiltrate": "Lung Opacity", "infiltration": "Lung Opacity", "opacity": "Lung Opacity",
    "ild": "Lung Opacity", "pulmonaryfibrosis": "Lung Opacity",
    "nodule": "Lung Lesion", "mass": "Lung Lesion", "nodulemass": "Lung Lesion", "lesion": "Lung Lesion",
    "lesions": "Lung Lesion", "otherlesion": "Lung Lesion", "calcification": "Lung Lesion",
    "pleuralthickening": "Pleural Other", "apicalcap": "Pleural Other",
    "aorticenlargement": "Enlarged Cardiomediastinum",
    "ribfracture": "Fracture", "fractures": "Fracture",
    "supportdevice": "Support Devices", "device": "Support Devices", "devices": "Support Devices",
    "ettube": "Support Devices", "endotrachealtube": "Support Devices", "centralline": "Support Devices",
    "pacemaker": "Support Devices", "tube": "Support Devices", "line": "Support Devices",
}
_SIDE = r"(left|right|l|r)?"
_PATTERNS = (
    (re.compile(rf"^{_SIDE}(lung|lungs){_SIDE}$"), "lungs"),
    (re.compile(rf"^{_SIDE}(rib|ribs)\d*{_SIDE}\d*$"), "ribs"),
    (re.compile(rf"^{_SIDE}(posterior|anterior)?rib\d*{_SIDE}(posterior|anterior)?$"), "ribs"),
)


# Numbered mask names of the phantom cohort: finding_<n>_<slug>, device_<n>_<slug>.
_NUMBERED = re.compile(r"^(finding|device)\d+(.+)$")


def resolve_class(name: str) -> ConditionClass:
    """Palette class for a label or mask name (aliases included); unknown names raise ChexgenError."""
    key = _fold(name)
    numbered = _NUMBERED.match(key)
    if numbered:
        key = numbered.group(2) if numbered.group(1) == "finding" else "device"
    canon = _ALIASES.get(key)
    if canon is None:
        for pattern, target in _PATTERNS:
            if pattern.match(key):
                canon = target
                break
    if canon is None:
        raise ChexgenError(
            f"unknown condition class {name!r}; expected one of: {', '.join(c.name for c in PALETTE)} "
            "(or an alias such as Effusion, Nodule, Mass, Infiltrate, rib_3_left)"
        )
    return _BY_NAME[canon]


def palette_value(name: str) -> float:
    """Gray level (0..1] drawn for class ``name``."""
    return resolve_class(name).value


# ---------------------------------------------------------------------------------------------- masks
@dataclass
class LabelledMask:
    """A boolean mask ``(H, W)`` of one class; ``name`` may be an alias (resolved when drawn)."""

    name: str
    mask: np.ndarray

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask).astype(bool)
        if self.mask.ndim != 2:
            raise ChexgenError(f"mask {self.name!r}: expected a 2-D array, got shape {self.mask.shape}")


def decode_rle(rle: str, width: int, height: int, where: str = "<rle>") -> np.ndarray:
    """Decode a SIIM-ACR run-length string into a bool mask ``(height, width)``.

    SIIM convention: pixels are numbered column by column (the flat index runs down
    a column first), the string alternates *relative* start offsets and run lengths
    (each start counts from the end of the previous run), and ``"-1"`` means no
    pneumothorax (an empty mask).
    """
    text = str(rle).strip()
    flat = np.zeros(width * height, dtype=bool)
    if text in ("-1", ""):
        return flat.reshape(width, height).T
    try:
        numbers = [int(v) for v in text.split()]
    except ValueError:
        raise ChexgenError(f"{where}: RLE must be whitespace-separated integers, got {text[:40]!r}...") from None
    if len(numbers) % 2:
        raise ChexgenError(f"{where}: RLE has an odd number of values ({len(numbers)}); expected start/length pairs")
    pos = 0
    for k in range(0, len(numbers), 2):
        start, length = numbers[k], numbers[k + 1]
        if start < 0 or length <= 0:
            raise ChexgenError(f"{where}: RLE pair {k // 2} has start {start}, length {length}; expected >= 0 and > 0")
        pos += start
        if pos + length > flat.size:
            raise ChexgenError(
                f"{where}: RLE runs past the end of a {width}x{height} image (pixel {pos + length} > {flat.size}); "
                "wrong width/height?"
            )
        flat[pos : pos + length] = True
        pos += length
    return flat.reshape(width, height).T


def encode_rle(mask: np.ndarray) -> str:
    """Encode a bool mask ``(H, W)`` in the SIIM convention (inverse of :func:`decode_rle`; empty -> ``"-1"``)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    if not flat.any():
        return "-1"
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    out: list[int] = []
    prev_end = 0
    for s, e in zip(starts, ends):
        out += [int(s - prev_end), int(e - s)]
        prev_end = e
    return " ".join(map(str, out))


def _read_raw(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ChexgenError(f"{path}: mask file not found")
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA", "P", "LA"):
                im = im.convert("L")
            return np.asarray(im)
    except (OSError, ValueError) as e:
        raise ChexgenError(f"{path}: cannot read mask image ({e})") from None


def load_mask(
    source: "str | os.PathLike | np.ndarray",
    threshold: float | None = None,
    allow_empty: bool = False,
    where: str | None = None,
) -> np.ndarray:
    """Read a binary mask (PNG path or array) as bool ``(H, W)``.

    A binary mask has background 0 and exactly one foreground value (1, 255, 65535,
    True...). Anything else (anti-aliased edges, label maps) raises unless
    ``threshold`` (a fraction of the largest value) binarises it. Empty masks raise
    unless ``allow_empty``.
    """
    if isinstance(source, np.ndarray):
        arr, where = source, where or "<array>"
    else:
        path = Path(source)
        arr, where = _read_raw(path), where or str(path)
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].max(axis=-1)
    if arr.ndim != 2:
        raise ChexgenError(f"{where}: expected a 2-D mask, got shape {arr.shape}")
    if arr.dtype == bool:
        mask = arr
    elif threshold is not None:
        top = float(arr.max()) if arr.size else 0.0
        mask = arr.astype(np.float64) >= threshold * top if top > 0 else np.zeros(arr.shape, bool)
    else:
        values = np.unique(arr)
        if values.size > 2 or (values.size == 2 and values[0] != 0):
            shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
            raise ChexgenError(
                f"{where}: mask is not binary ({values.size} distinct values: {shown}); expected 0 and one "
                "foreground value. Give a threshold to binarise it, or read it as a multi-class label map."
            )
        mask = arr != 0
    if not allow_empty and not mask.any():
        raise ChexgenError(f"{where}: mask is empty (no foreground pixels); nothing to condition on")
    return mask


def load_label_map(
    source: "str | os.PathLike | np.ndarray", classes: Mapping[int, str], where: str | None = None
) -> list[LabelledMask]:
    """Split a multi-class label image (0 = background, ``value -> class name``) into masks.

    Every class is resolved against the palette up front; a value present in the
    image but missing from ``classes`` raises an error naming it.
    """
    if isinstance(source, np.ndarray):
        arr, where = np.asarray(source), where or "<array>"
    else:
        arr, where = _read_raw(Path(source)), where or str(source)
    if arr.ndim != 2:
        raise ChexgenError(f"{where}: expected a 2-D label map, got shape {arr.shape}")
    for name in classes.values():
        resolve_class(name)
    present = [int(v) for v in np.unique(arr) if v != 0]
    unknown = [v for v in present if v not in classes]
    if unknown:
        raise ChexgenError(f"{where}: label value(s) {unknown} have no class; mapping covers {sorted(classes)}")
    return [LabelledMask(classes[v], arr == v) for v in present]


def _resize_coverage(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Fraction of each output pixel covered by the mask (area average down, bilinear up)."""
    im = Image.fromarray(mask.astype(np.float32), mode="F")
    down = width <= mask.shape[1] and height <= mask.shape[0]
    im = im.resize((width, height), Image.Resampling.BOX if down else Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a bool mask to ``(height, width)``: covered by at least half -> True.

    A non-empty mask never becomes empty: if no output pixel reaches half coverage,
    the most-covered pixel is kept (tiny lesions survive downsampling).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == (height, width):
        return mask.copy()
    cover = _resize_coverage(mask, width, height)
    out = cover >= 0.5
    if mask.any() and not out.any():
        out.flat[int(np.argmax(cover))] = True
    return out


# ---------------------------------------------------------------------------------------------- boxes
def validate_box(box: Box, width: int, height: int, where: str = "<box>") -> Box:
    """Check a box against its image (``width`` x ``height``); return it clipped to the image.

    Zero / negative area, non-finite coordinates, unknown class, or a box entirely
    outside the image raise :class:`ChexgenError`; partial overlap is clipped.
    """
    resolve_class(box.label)
    coords = (box.x0, box.y0, box.x1, box.y1)
    if not all(isinstance(c, (int, float)) and math.isfinite(c) for c in coords):
        raise ChexgenError(f"{where}: box {box.label!r} has non-finite coordinates {coords}")
    if box.x1 <= box.x0 or box.y1 <= box.y0:
        raise ChexgenError(f"{where}: box {box.label!r} has zero or negative area {coords}; expected x0 < x1, y0 < y1")
    cx0, cy0 = max(0.0, float(box.x0)), max(0.0, float(box.y0))
    cx1, cy1 = min(float(width), float(box.x1)), min(float(height), float(box.y1))
    if cx1 <= cx0 or cy1 <= cy0:
        raise ChexgenError(f"{where}: box {box.label!r} {coords} lies entirely outside the {width}x{height} image")
    if (cx0, cy0, cx1, cy1) != tuple(float(c) for c in coords):
        logger.debug("%s: box %s %s clipped to the %dx%d image", where, box.label, coords, width, height)
    return Box(box.label, cx0, cy0, cx1, cy1, source=box.source)


@dataclass(frozen=True)
class FrameToSquare:
    """Maps pixel coordinates of a ``width`` x ``height`` image onto a ``size`` x ``size`` output.

    ``"crop"`` and ``"pad"`` reproduce :func:`chexgen.data.imageio.fit_square`
    (integer center offsets, then uniform scaling); ``"stretch"`` scales x and y
    independently.
    """

    width: int
    height: int
    size: int
    policy: str = "crop"

    def __post_init__(self) -> None:
        if self.policy not in FIT_POLICIES:
            raise ChexgenError(f"unknown fit policy {self.policy!r}; expected one of {FIT_POLICIES}")
        if min(self.width, self.height, self.size) <= 0:
            raise ChexgenError(f"image and output sizes must be positive, got {self.width}x{self.height} -> {self.size}")

    @property
    def _params(self) -> tuple[float, float, float, float]:
        """(offset_x, offset_y, scale_x, scale_y): out = (in - offset) * scale."""
        w, h, n = self.width, self.height, self.size
        if self.policy == "stretch":
            return 0.0, 0.0, n / w, n / h
        if self.policy == "crop":
            s = min(w, h)
            return float((w - s) // 2), float((h - s) // 2), n / s, n / s
        s = max(w, h)
        return -float((s - w) // 2), -float((s - h) // 2), n / s, n / s

    def map_box(self, box: Box) -> Box | None:
        """The box in output pixels, clipped to the output; ``None`` if nothing of it remains."""
        ox, oy, sx, sy = self._params
        x0, x1 = (box.x0 - ox) * sx, (box.x1 - ox) * sx
        y0, y1 = (box.y0 - oy) * sy, (box.y1 - oy) * sy
        x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(self.size), x1), min(float(self.size), y1)
        if x1 <= x0 or y1 <= y0:
            return None
        return Box(box.label, x0, y0, x1, y1, source=box.source)

    def map_mask(self, mask: np.ndarray) -> np.ndarray:
        """Resize a mask to the frame if needed, then crop / pad / stretch it onto the output square."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.height, self.width):
            mask = resize_mask(mask, self.width, self.height)
        if self.policy == "stretch":
            return resize_mask(mask, self.size, self.size)
        ox, oy, _, _ = self._params
        ox, oy = int(ox), int(oy)
        if self.policy == "crop":
            s = min(self.width, self.height)
            square = mask[oy : oy + s, ox : ox + s]
        else:
            s = max(self.width, self.height)
            square = np.zeros((s, s), dtype=bool)
            square[-oy : -oy + self.height, -ox : -ox + self.width] = mask
        if not square.any():
            return np.zeros((self.size, self.size), dtype=bool)
        return resize_mask(square, self.size, self.size)


def _box_pixels(box: Box, size: int) -> tuple[int, int, int, int]:
    """Integer pixel span of an output-space box; at least one pixel in each direction."""
    c0, r0 = int(round(box.x0)), int(round(box.y0))
    c1, r1 = max(int(round(box.x1)), c0 + 1), max(int(round(box.y1)), r0 + 1)
    c0, r0 = min(c0, size - 1), min(r0, size - 1)
    return c0, r0, min(c1, size), min(r1, size)


# ---------------------------------------------------------------------------------------------- render
def render_condition(
    size: int,
    masks: Sequence[LabelledMask] = (),
    boxes: Sequence[Box] = (),
    frame: tuple[int, int] | None = None,
    policy: str = "crop",
    where: str = "<condition>",
) -> np.ndarray:
    """Draw masks and boxes into a ``size`` x ``size`` float32 condition image in [0, 1].

    ``frame = (width, height)`` is the stored image the boxes' coordinates refer to;
    it defaults to the first mask's shape. Masks of another size are resized to the
    frame. See the module docstring for palette, draw order and edge cases.
    """
    if frame is None:
        if masks:
            h, w = masks[0].mask.shape
            frame = (w, h)
        elif boxes:
            raise ChexgenError(f"{where}: boxes need the (width, height) of the image they refer to")
        else:
            frame = (size, size)
    geometry = FrameToSquare(int(frame[0]), int(frame[1]), int(size), policy)
    canvas = np.zeros((size, size), dtype=np.float32)

    def draw_masks(kind: str) -> None:
        for m in masks:
            cls = resolve_class(m.name)
            if cls.kind == kind:
                canvas[geometry.map_mask(m.mask)] = cls.value

    draw_masks("anatomy")
    placed: list[tuple[float, Box]] = []
    for i, box in enumerate(boxes):
        clipped = validate_box(box, geometry.width, geometry.height, where=f"{where}: box {i}")
        mapped = geometry.map_box(clipped)
        if mapped is None:
            logger.info("%s: box %d (%s) lies outside the %s square and is dropped", where, i, box.label, policy)
            continue
        placed.append((mapped.area, mapped))
    for _, box in sorted(placed, key=lambda item: -item[0]):  # stable: equal areas keep input order
        c0, r0, c1, r1 = _box_pixels(box, size)
        canvas[r0:r1, c0:c1] = resolve_class(box.label).value
    draw_masks("finding")
    return canvas


def render_binary_condition(
    size: int,
    masks: Sequence[LabelledMask] = (),
    boxes: Sequence[Box] = (),
    frame: tuple[int, int] | None = None,
    policy: str = "crop",
    where: str = "<condition>",
) -> np.ndarray:
    """Union of all masks and (filled) boxes as white on black: what the official SIIM control model saw.

    Same geometry and checks as :func:`render_condition`; classes are validated but not drawn.
    """
    cond = render_condition(size, masks, boxes, frame=frame, policy=policy, where=where)
    return (cond > 0).astype(np.float32)


def class_masks(condition: np.ndarray, tolerance: float | None = None) -> dict[str, np.ndarray]:
    """Split a rendered condition back into one bool mask per palette class present."""
    tol = PALETTE_STEP / 2 if tolerance is None else tolerance
    cond = np.asarray(condition, dtype=np.float32)
    out = {}
    for cls in PALETTE:
        m = np.abs(cond - cls.value) < tol
        if m.any():
            out[cls.name] = m
    return out


def extract_boxes(
    condition: np.ndarray, kinds: Iterable[str] = ("finding",), min_pixels: int = 1
) -> list[Box]:
    """Boxes of the connected regions of each class level in a rendered condition.

    Inverse of box rendering for non-overlapping boxes (exact at the rendered size);
    labels are the canonical palette names. Regions under ``min_pixels`` are ignored.
    """
    from scipy import ndimage

    wanted = set(kinds)
    boxes: list[Box] = []
    for name, mask in class_masks(condition).items():
        if _BY_NAME[name].kind not in wanted:
            continue
        labelled, n = ndimage.label(mask)
        for k, sl in enumerate(ndimage.find_objects(labelled), start=1):
            if sl is None or int((labelled[sl] == k).sum()) < min_pixels:
                continue
            rows, cols = sl
            boxes.append(Box(name, float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)))
    return sorted(boxes, key=lambda b: (b.y0, b.x0, b.label))


# ---------------------------------------------------------------------------------------------- records
def record_condition(
    record: Record,
    root: "str | os.PathLike | None",
    size: int,
    policy: str = "crop",
    mask_threshold: float | None = None,
    kinds: Sequence[str] = ("anatomy", "finding"),
    use_boxes: bool = True,
) -> np.ndarray | None:
    """The condition image of a manifest record (its masks and boxes), or ``None`` if it has neither.

    Geometry follows the record's ``width`` / ``height`` (the stored image) and the
    same ``policy`` as the image's :func:`~chexgen.data.imageio.fit_square`, so
    condition and image stay aligned. ``kinds`` selects mask classes (e.g.
    ``("finding",)`` leaves anatomy masks out) and ``use_boxes`` the boxes. Used
    by ``chexgen prepare`` to cache condition latents and by ``chexgen generate``
    for manifest conditions.
    """
    selected = [m for m in record.masks if resolve_class(m.name).kind in kinds]
    boxes = list(record.boxes) if use_boxes else []
    if not selected and not boxes:
        return None
    where = f"record {record.id!r}"
    masks: list[LabelledMask] = []
    for m in selected:
        if m.rle is not None:
            arr = decode_rle(m.rle, int(m.width), int(m.height), where=f"{where}: mask {m.name!r}")
        else:
            path = record.resolve(m.path, root)
            arr = load_mask(path, threshold=mask_threshold, allow_empty=True)
        if arr.any():
            masks.append(LabelledMask(m.name, arr))
    frame = None
    if record.width and record.height:
        frame = (record.width, record.height)
    elif masks:
        frame = (masks[0].mask.shape[1], masks[0].mask.shape[0])
    elif record.image:
        from chexgen.data.imageio import load_gray

        h, w = load_gray(record.resolve(record.image, root)).shape
        frame = (w, h)
    return render_condition(size, masks, boxes, frame=frame, policy=policy, where=where)


CONDITION_STYLES = ("both", "masks", "boxes", "alternate")


@dataclass(frozen=True)
class RecordConditionRenderer:
    """A picklable :func:`record_condition` with fixed options (what ``chexgen prepare --conditions`` caches).

    ``kinds``: mask classes drawn (``("finding",)`` leaves lungs, heart and ribs out, so a
    model trained on the cache expects finding masks alone - what a SIIM mask or an NIH box
    file brings at inference). ``style``: ``both`` draws masks and boxes together, ``masks``
    or ``boxes`` only one of them, ``alternate`` draws the masks of half the records and the
    boxes of the other half (chosen by a CRC32 of the record id, so the choice is stable
    across runs and shards): one adapter then serves mask- and box-guided generation.
    """

    kinds: tuple[str, ...] = ("anatomy", "finding")
    style: str = "both"
    mask_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.style not in CONDITION_STYLES:
            raise ChexgenError(f"unknown condition style {self.style!r}; expected one of {', '.join(CONDITION_STYLES)}")
        unknown = set(self.kinds) - {c.kind for c in PALETTE}
        if unknown or not self.kinds:
            raise ChexgenError(f"condition kinds {list(self.kinds)}: expected a non-empty subset of "
                               f"{sorted({c.kind for c in PALETTE})}")

    def style_for(self, record: Record) -> str:
        """``masks`` / ``boxes`` / ``both`` for this record (resolves ``alternate``)."""
        if self.style != "alternate":
            return self.style
        return "boxes" if zlib.crc32(record.id.encode("utf-8")) % 2 else "masks"

    def __call__(self, record: Record, root: "str | os.PathLike | None", size: int,
                 policy: str = "crop") -> np.ndarray | None:
        style = self.style_for(record)
        kinds = () if style == "boxes" else self.kinds
        return record_condition(record, root, size, policy, mask_threshold=self.mask_threshold, kinds=kinds,
                                use_boxes=style != "masks")

    def to_dict(self) -> dict:
        return {"kinds": list(self.kinds), "style": self.style}
