"""Write mask / box guided generations as ready-to-use segmentation and detection data.

For every generated image :func:`write_controlled_outputs` writes, under ``out``:

- ``images/<id>.png``: the radiograph (8- or 16-bit gray), PNG text
  ``chexgen:synthetic = true`` and ``chexgen:provenance`` (JSON);
- ``conditions/<id>.png``: the condition exactly as the model saw it (palette gray levels);
- ``masks/<id>__<class>.png``: one binary mask (0/255) per mask class, in the
  generated image's pixels (the input masks mapped through the same square fit);
- ``boxes.coco.json``: every box, in the generated image's pixels (COCO ``[x, y, w, h]``);
- ``manifest.jsonl``: one :class:`~chexgen.data.manifest.Record` per image with
  ``synthetic = true``, provenance, the prompt as ``impression``, ``masks`` (paths
  to the mask PNGs) and ``boxes`` (original labels, output pixel coordinates).

Ids are ``<condition id>_s<seed>`` so a rerun with the same seeds overwrites,
never duplicates. Files are written atomically.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from chexgen.data.condition_sources import ConditionInput, write_coco
from chexgen.data.conditions import FrameToSquare, resolve_class, validate_box
from chexgen.data.imageio import save_png
from chexgen.data.manifest import Box, Mask, Record, write_manifest

__all__ = ["write_controlled_outputs", "condition_targets"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def condition_targets(condition: ConditionInput, size: int, policy: str) -> tuple[dict[str, np.ndarray], list[Box]]:
    """Masks (one per canonical class, united) and boxes of ``condition`` in the ``size`` px output frame."""
    geometry = FrameToSquare(condition.width, condition.height, size, policy)
    masks: dict[str, np.ndarray] = {}
    for m in condition.masks:
        name = resolve_class(m.name).name
        mapped = geometry.map_mask(m.mask)
        masks[name] = masks[name] | mapped if name in masks else mapped
    boxes = []
    for i, b in enumerate(condition.boxes):
        mapped = geometry.map_box(validate_box(b, condition.width, condition.height, where=f"{condition.id}: box {i}"))
        if mapped is not None:
            boxes.append(Box(b.label, mapped.x0, mapped.y0, mapped.x1, mapped.y1, source=b.source))
    return masks, boxes


def write_controlled_outputs(
    out: "str | os.PathLike",
    output: Any,
    conditions: Sequence[ConditionInput],
    provenance: dict[str, Any],
    policy: str,
    bits: int = 8,
    manifest_name: str = "manifest.jsonl",
    palette: str = "chexgen-gray16-v1",
) -> list[Record]:
    """Write images, conditions, masks, COCO boxes and the synthetic manifest (see module docstring).

    ``output`` is a :class:`~chexgen.control_pipeline.ControlPipelineOutput`;
    ``provenance`` holds the run-level fields (model, checkpoint hashes, sampler,
    steps, guidance, conditioning scale, version); prompt, seed and condition id
    are added per image.
    """
    out = Path(out)
    by_id = {c.id: c for c in conditions}
    size = int(output.images.shape[-1])
    records: list[Record] = []
    coco_items = []
    for k in range(output.images.shape[0]):
        cond = by_id[output.condition_ids[k]]
        seed = int(output.seeds[k])
        rid = f"{_safe(cond.id)}_s{seed}"
        prov = {**provenance, "prompt": output.prompts[k], "seed": seed, "condition_id": cond.id}
        image_rel = f"images/{rid}.png"
        save_png(out / image_rel, output.images[k, 0].numpy(), bits=bits,
                 text={"chexgen:synthetic": "true", "chexgen:provenance": json.dumps(prov, sort_keys=True)})
        cond_rel = f"conditions/{rid}.png"
        save_png(out / cond_rel, output.conditions[k, 0].numpy(), bits=8,
                 text={"chexgen:condition": f"palette {palette}"})
        masks, boxes = condition_targets(cond, size, policy)
        mask_entries = []
        for name, mask in masks.items():
            rel = f"masks/{rid}__{_safe(name)}.png"
            save_png(out / rel, mask.astype(np.float32), bits=8)
            mask_entries.append(Mask(name=name, path=rel))
        records.append(Record(
            id=rid, image=image_rel, width=size, height=size, impression=output.prompts[k], masks=mask_entries,
            boxes=boxes, synthetic=True, provenance=prov, extra={"condition_image": cond_rel},
        ))
        coco_items.append((rid, image_rel, size, size, boxes))
    write_coco(out / "boxes.coco.json", coco_items)
    write_manifest(out / manifest_name, records)
    return records
