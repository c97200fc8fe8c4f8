"""Patient re-identification privacy score: does a synthetic image look like a training patient?

The network is the one CheXGenBench scores privacy with (its ``metrics/privacy_metrics.py``; weights
``ResNet-50_epoch11_data_handling_RPN.pth`` from ``raman07/Patient_ReIdentification_MIMIC``, trained on
MIMIC-CXR to tell whether two radiographs show the same patient), written here in torchvision terms:

* each branch is a torchvision ResNet-50 with 3 input channels whose ``fc`` maps 2048 -> 128,
  followed by a sigmoid;
* the head ``fc_end`` (128 -> 1) takes ``|branch(a) - branch(b)|``; ``sigmoid(head)`` is the score,
  the probability that ``a`` and ``b`` come from one patient;
* input: the gray image as 3 equal channels, resized to 224 x 224, intensities in [0, 1] (no
  normalisation, as its ``Resize((224, 224))`` + ``ToTensor()`` transform gives).

State dict keys are ``model.*`` (the ResNet) and ``fc_end.*``, as CheXGenBench saves them.

Since the branch embedding of an image does not depend on the other image, every synthetic image is
scored against every training image for the cost of one forward pass per image plus a cheap
``N x M x 128`` head. Reported: per synthetic image its best-matching training image and score; the
share and count of synthetic images whose best score exceeds ``threshold`` (default 0.5, the
network's decision boundary between "same" and "other" patient; CheXGenBench's code reports mean /
max scores without fixing one); the score distribution (mean, median, max, histogram); and, where a
synthetic image's source record is a training image, CheXGenBench's own paired protocol: the score
against that source (mean / max).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chexgen.errors import ChexgenError

__all__ = ["SiameseReID", "load_reid_network", "ReIDResult", "compute_reid", "source_rows", "REID_INPUT_SIZE",
           "DEFAULT_REID_THRESHOLD"]

REID_INPUT_SIZE = 224
DEFAULT_REID_THRESHOLD = 0.5


class SiameseReID(nn.Module):
    """Siamese ResNet-50 patient verification network (see the module docstring)."""

    def __init__(self, n_features: int = 128, in_channels: int = 3) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.model = resnet50(weights=None)
        if in_channels == 1:
            self.model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        elif in_channels != 3:
            raise ChexgenError(f"in_channels must be 1 or 3, got {in_channels}")
        self.in_channels = in_channels
        self.model.fc = nn.Linear(2048, n_features)
        self.fc_end = nn.Linear(n_features, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Gray ``[B, 1, H, W]`` in [0, 1] -> the network's input ``[B, C, 224, 224]``."""
        x = images.float().clamp(0, 1)
        if tuple(x.shape[-2:]) != (REID_INPUT_SIZE, REID_INPUT_SIZE):
            x = F.interpolate(x, size=(REID_INPUT_SIZE, REID_INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
        return x.repeat(1, self.in_channels, 1, 1) if self.in_channels == 3 else x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Branch output for preprocessed images: ``sigmoid(resnet(x))``, ``[B, n_features]``."""
        return torch.sigmoid(self.model(x))

    def score_embeddings(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Same-patient probability of embeddings ``a`` and ``b`` (broadcasting over leading dims)."""
        return torch.sigmoid(self.fc_end((a - b).abs())).squeeze(-1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Logit that the preprocessed images ``x1`` and ``x2`` show the same patient."""
        return self.fc_end((self.embed(x1) - self.embed(x2)).abs())


def load_reid_network(path: "str | os.PathLike", device: "str | torch.device" = "cpu") -> SiameseReID:
    """Load CheXGenBench-format weights (a state dict, optionally under ``state_dict`` / with ``module.``)."""
    if not os.path.isfile(path):
        raise ChexgenError(f"re-identification weights {path}: file not found")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickles with code, truncated files, ...: many exception types
        raise ChexgenError(f"re-identification weights {path}: not a plain state dict ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or "fc_end.weight" not in {k.removeprefix("module.") for k in state}:
        raise ChexgenError(f"re-identification weights {path}: expected a Siamese ResNet-50 state dict with "
                           "'model.*' and 'fc_end.*' keys")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    n_features = int(state["fc_end.weight"].shape[1])
    in_channels = int(state["model.conv1.weight"].shape[1]) if "model.conv1.weight" in state else 3
    net = SiameseReID(n_features=n_features, in_channels=in_channels)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ChexgenError(f"re-identification weights {path}: do not fit the Siamese ResNet-50 "
                           f"({str(err).splitlines()[0]})") from None
    return net.to(device).eval()


@dataclass
class ReIDResult:
    """Per synthetic image: best training match and score (and the paired score, when known); summary."""

    best_score: list[float]
    best_index: list[int]
    paired_score: list[float | None]
    threshold: float
    histogram: dict[str, list[float]] = field(default_factory=dict)

    @property
    def flagged(self) -> list[bool]:
        return [s > self.threshold for s in self.best_score]

    def summary(self) -> dict[str, float | int | None]:
        s = np.asarray(self.best_score, np.float64)
        paired = np.asarray([p for p in self.paired_score if p is not None], np.float64)
        return {
            "threshold": self.threshold,
            "n_synthetic": int(s.size),
            "count_above": int((s > self.threshold).sum()),
            "fraction_above": float((s > self.threshold).mean()) if s.size else float("nan"),
            "mean": float(s.mean()) if s.size else float("nan"),
            "median": float(np.median(s)) if s.size else float("nan"),
            "max": float(s.max()) if s.size else float("nan"),
            "paired_n": int(paired.size),
            "paired_mean": float(paired.mean()) if paired.size else None,
            "paired_max": float(paired.max()) if paired.size else None,
        }


def source_rows(train_records: Sequence, synthetic_records: Sequence) -> list[int | None]:
    """For each synthetic record, the training row it was generated from: by ``extra["source_id"]`` only.

    (Matching by prompt text would pair an image with any training case that shares a common
    impression such as "No acute cardiopulmonary process.", which is not its source.)
    """
    rows = {r.id: i for i, r in enumerate(train_records)}
    return [rows.get(str(s.extra.get("source_id"))) if s.extra.get("source_id") is not None else None
            for s in synthetic_records]


@torch.no_grad()
def _embed_all(net: SiameseReID, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(net.parameters()).device
    out = [net.embed(net.preprocess(images[i:i + batch_size].float()).to(device)).float().cpu()
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


@torch.no_grad()
def compute_reid(net: SiameseReID, synthetic_images: torch.Tensor, train_images: torch.Tensor,
                 threshold: float = DEFAULT_REID_THRESHOLD, source_index: Sequence[int | None] | None = None,
                 batch_size: int = 32, chunk: int = 64) -> ReIDResult:
    """Score every synthetic image (``[N, 1, H, W]`` in [0, 1]) against every training image (``[M, 1, h, w]``).

    ``source_index[i]``: the training row synthetic image ``i`` was generated from (its paired score), or None.
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ChexgenError(f"re-identification threshold must be within [0, 1], got {threshold}")
    if synthetic_images.shape[0] == 0 or train_images.shape[0] == 0:
        raise ChexgenError("re-identification needs at least one synthetic and one training image")
    es = _embed_all(net, synthetic_images, batch_size)
    et = _embed_all(net, train_images, batch_size)
    net_cpu_head = copy.deepcopy(net.fc_end).float().cpu()  # the N x M head runs on the CPU embeddings
    best_s, best_i = [], []
    for i in range(0, es.shape[0], chunk):
        diff = (es[i:i + chunk, None, :] - et[None, :, :]).abs()
        scores = torch.sigmoid(net_cpu_head(diff)).squeeze(-1)  # [chunk, M]
        v, j = scores.max(dim=1)
        best_s += v.tolist()
        best_i += j.tolist()
    paired: list[float | None] = [None] * es.shape[0]
    if source_index is not None:
        if len(source_index) != es.shape[0]:
            raise ValueError(f"{len(source_index)} source indices for {es.shape[0]} synthetic images")
        for i, j in enumerate(source_index):
            if j is not None:
                paired[i] = float(torch.sigmoid(net_cpu_head((es[i] - et[j]).abs())).item())
    counts, edges = np.histogram(np.asarray(best_s), bins=10, range=(0.0, 1.0))
    return ReIDResult(best_score=[float(s) for s in best_s], best_index=[int(j) for j in best_i],
                      paired_score=paired, threshold=float(threshold),
                      histogram={"edges": edges.tolist(), "counts": counts.astype(float).tolist()})
