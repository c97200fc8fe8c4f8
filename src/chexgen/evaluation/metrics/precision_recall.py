"""k-NN precision / recall (Kynkäänniemi et al. 2019) and density / coverage (Naeem et al. 2020).

FID mixes fidelity and coverage in one number; these split it:

* precision: share of synthetic samples that fall inside the real manifold
  (inside some real sample's k-NN ball) -> fidelity;
* recall: share of real samples inside the synthetic manifold -> coverage of
  the real variety (mode collapse lowers it);
* density / coverage: the outlier-robust variants of the two.

Distances are Euclidean on the given features, computed in chunks with torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["PrecisionRecall", "knn_radii", "compute_precision_recall"]


def _t(x) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.detach().to(torch.float64).cpu()


def _pairwise(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    return torch.cat([torch.cdist(a[i : i + chunk], b) for i in range(0, a.shape[0], chunk)], 0)


def knn_radii(features, k: int = 3) -> torch.Tensor:
    """Distance of each sample to its k-th nearest neighbour in the same set (self excluded)."""
    f = _t(features)
    if f.shape[0] <= k:
        raise ValueError(f"need more than k={k} samples for k-NN radii, got {f.shape[0]}")
    d = _pairwise(f, f)
    # the k+1-th smallest includes the zero self-distance
    return d.kthvalue(k + 1, dim=1).values


@dataclass
class PrecisionRecall:
    precision: float
    recall: float
    density: float
    coverage: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def compute_precision_recall(real, synthetic, k: int = 3) -> PrecisionRecall:
    """Precision, recall, density and coverage of ``synthetic`` against ``real`` features [n, d]."""
    r, s = _t(real), _t(synthetic)
    if r.ndim != 2 or s.ndim != 2 or r.shape[1] != s.shape[1]:
        raise ValueError(f"expected [n, d] feature arrays with equal d, got {tuple(r.shape)} and {tuple(s.shape)}")
    r_rad = knn_radii(r, k)
    s_rad = knn_radii(s, k)
    d_rs = _pairwise(r, s)  # [n_real, n_syn]
    inside_real = d_rs <= r_rad[:, None]  # synthetic j inside real i's ball
    precision = inside_real.any(0).double().mean().item()
    recall = (d_rs <= s_rad[None, :]).any(1).double().mean().item()
    density = inside_real.sum(0).double().mean().item() / k
    coverage = (d_rs.min(1).values <= r_rad).double().mean().item()
    return PrecisionRecall(precision=precision, recall=recall, density=density, coverage=coverage)
