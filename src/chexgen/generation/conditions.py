"""Spatial conditions of a generation job, read from the files users have (masks, RLE CSVs, boxes, manifests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chexgen.errors import ChexgenError

__all__ = ["ConditionOptions", "parse_mask_classes", "read_conditions"]


@dataclass
class ConditionOptions:
    """Where a job's masks / boxes come from (the ``spatial control`` options of ``chexgen generate``).

    masks: a folder of mask PNGs or a SIIM-style RLE ``.csv(.gz)``; boxes: COCO JSON, box CSV or manifest.
    mask_class: class of binary masks; mask_classes: ``{pixel value: class}`` to read label maps.
    mask_threshold: binarise non-binary masks at this fraction of their maximum (None: refuse them).
    mask_size: ``(width, height)`` the RLE strings refer to. include_empty_masks: keep ``-1`` RLE rows.
    max_conditions: use only the first N conditions.
    """

    masks: str | None = None
    boxes: str | None = None
    mask_class: str = "Pneumothorax"
    mask_classes: dict[int, str] | None = None
    mask_threshold: float | None = None
    mask_size: tuple[int, int] = (1024, 1024)
    include_empty_masks: bool = False
    max_conditions: int | None = None

    @property
    def requested(self) -> bool:
        """Whether any masks or boxes were asked for (a control job)."""
        return bool(self.masks or self.boxes)


def parse_mask_classes(text: str | None) -> dict[int, str] | None:
    """``'1=lungs,2=heart'`` -> ``{1: 'lungs', 2: 'heart'}``."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        try:
            value, name = part.split("=", 1)
            out[int(value)] = name.strip()
        except ValueError:
            raise ChexgenError(f"--mask-classes: expected 'VALUE=NAME' pairs, got {part!r}") from None
    return out


def read_conditions(opts: ConditionOptions, rejects: list[dict[str, Any]] | None = None):
    """The :class:`~chexgen.data.condition_sources.ConditionInput` list of ``opts`` (masks and boxes merged by id).

    With ``rejects``, bad box rows are listed there and skipped instead of stopping the read.
    """
    from chexgen.data.condition_sources import (
        merge_conditions,
        read_box_csv,
        read_box_file,
        read_mask_folder,
        read_rle_csv,
    )

    if opts.mask_threshold is not None and not 0 < opts.mask_threshold < 1:
        raise ChexgenError(f"--mask-threshold is a fraction of the mask's maximum, in (0, 1); "
                           f"got {opts.mask_threshold}")
    if opts.max_conditions is not None and opts.max_conditions < 1:
        raise ChexgenError(f"--max-conditions must be >= 1, got {opts.max_conditions}")
    groups = []
    if opts.masks:
        path = Path(opts.masks)
        if path.is_dir():
            groups.append(read_mask_folder(path, class_name=opts.mask_class, classes=opts.mask_classes,
                                           threshold=opts.mask_threshold))
        elif path.name.lower().endswith((".csv", ".csv.gz")):
            w, h = opts.mask_size
            groups.append(read_rle_csv(path, class_name=opts.mask_class, width=w, height=h,
                                       include_empty=opts.include_empty_masks, limit=opts.max_conditions))
        else:
            raise ChexgenError(f"--masks {path}: expected a folder of PNG masks or an RLE .csv(.gz)")
    if opts.boxes:
        p = Path(opts.boxes)
        if p.name.lower().endswith((".csv", ".csv.gz")):
            groups.append(read_box_csv(p, rejects=rejects))
        else:
            groups.append(read_box_file(p))
    if not groups:
        raise ChexgenError("no conditions: give --masks and/or --boxes")
    conditions = merge_conditions(*groups)
    if opts.max_conditions is not None:
        conditions = conditions[: opts.max_conditions]
    return conditions
