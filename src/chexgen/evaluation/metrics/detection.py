"""Detection: mAP and mAR at IoU 0.5 of box predictions (torchmetrics ``MeanAveragePrecision``).

COCO 101-point interpolation, at most 100 detections per image. torchmetrics and its
pycocotools backend are optional (the ``downstream`` extra): only detection needs them. A missing
one is a ``ModuleNotFoundError`` that the CLI turns into one line naming the extra
(:data:`chexgen.errors.EXTRAS`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["compute_map50"]


def compute_map50(preds: list[dict], targets: list[dict], classes: Sequence[str] = ()) -> dict[str, float]:
    """``map50`` / ``mar50`` (and ``ap50/<class>``, ``ar50/<class>`` when ``classes`` is given).

    ``preds``: per image ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,);
    ``targets``: per image ``boxes`` and ``labels``. Labels are 1-based class indices.
    A value torchmetrics cannot define (no ground truth) is NaN.
    """
    import pycocotools  # noqa: F401 - torchmetrics' mAP backend; missing, the CLI names the extra
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_thresholds=[0.5], box_format="xyxy", class_metrics=bool(classes))

    def _t(d: dict, keys: tuple[str, ...]) -> dict:
        out = {}
        for k in keys:
            v = torch.as_tensor(np.asarray(d[k]))
            out[k] = v.reshape(-1, 4).float() if k == "boxes" else (v.float() if k == "scores" else v.long())
        return out

    metric.update([_t(p, ("boxes", "scores", "labels")) for p in preds], [_t(t, ("boxes", "labels")) for t in targets])
    res = metric.compute()

    def _val(x) -> float:
        v = float(x)
        return float("nan") if v < 0 else v  # torchmetrics reports -1 for "no ground truth"

    out = {"map50": _val(res["map_50"]), "mar50": _val(res["mar_100"])}
    if classes:
        ids = [int(i) for i in torch.as_tensor(res["classes"]).reshape(-1)]
        per_map = torch.as_tensor(res["map_per_class"]).reshape(-1)
        per_mar = torch.as_tensor(res["mar_100_per_class"]).reshape(-1)
        for k, cid in enumerate(ids):
            if 1 <= cid <= len(classes):
                out[f"ap50/{classes[cid - 1]}"] = _val(per_map[k])
                out[f"ar50/{classes[cid - 1]}"] = _val(per_mar[k])
    return out
