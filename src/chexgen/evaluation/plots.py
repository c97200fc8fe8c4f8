"""Figures for the evaluation report: t-SNE of features, image grids, pair galleries, as PNG bytes.

Everything renders off-screen (matplotlib Agg / PIL) and returns PNG bytes, so
the report can inline them as base64 and stay one self-contained file.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

__all__ = ["compute_tsne", "tsne_plot_png", "image_to_png", "grid_png", "finding_of"]


def finding_of(labels: dict | None) -> str:
    """One display finding per image: the first positive label that is not 'No Finding', else 'No Finding'."""
    from chexgen.data.labels import LABELS

    labels = labels or {}
    for name in LABELS:
        if name != "No Finding" and labels.get(name) == 1:
            return name
    return "No Finding" if labels.get("No Finding") == 1 or labels else "unlabelled"


def compute_tsne(features: np.ndarray, seed: int = 0, perplexity: float = 30.0, pca_dims: int = 50) -> np.ndarray:
    """2-D t-SNE embedding (after PCA to ``pca_dims``, the usual speed-up); perplexity capped for small sets."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, np.float64)
    n = x.shape[0]
    if n < 3:
        return np.zeros((n, 2))
    k = min(pca_dims, n - 1, x.shape[1])
    if x.shape[1] > k:
        x = PCA(n_components=k, random_state=seed).fit_transform(x)
    perp = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)


def tsne_plot_png(
    embedding: np.ndarray, is_synthetic: Sequence[bool], findings: Sequence[str], title: str = "t-SNE of features"
) -> bytes:
    """Scatter of a 2-D embedding: colour = finding, marker = real (o) / synthetic (x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    emb = np.asarray(embedding)
    syn = np.asarray(is_synthetic, bool)
    names = sorted(set(findings))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=100)
    for ci, name in enumerate(names):
        sel = np.array([f == name for f in findings])
        for flag, marker, tag in ((False, "o", "real"), (True, "x", "synthetic")):
            m = sel & (syn == flag)
            if m.any():
                ax.scatter(emb[m, 0], emb[m, 1], s=18, marker=marker, color=cmap(ci % cmap.N),
                           label=f"{name} ({tag})", alpha=0.8, linewidths=1.0)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def image_to_png(image: np.ndarray) -> bytes:
    """(H, W) float image in [0,1] -> 8-bit gray PNG bytes."""
    arr = (np.clip(np.asarray(image, np.float32), 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def grid_png(rows: Sequence[Sequence[np.ndarray]], tile: int = 128, gap: int = 4) -> bytes:
    """Tile rows of (H, W) images (resized to ``tile`` px) into one gray PNG; short rows are left blank."""
    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("grid needs at least one image")
    canvas = Image.new("L", (n_cols * tile + (n_cols - 1) * gap, n_rows * tile + (n_rows - 1) * gap), 255)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            arr = (np.clip(np.asarray(img, np.float32), 0, 1) * 255).round().astype(np.uint8)
            canvas.paste(Image.fromarray(arr, mode="L").resize((tile, tile), Image.BILINEAR),
                         (j * (tile + gap), i * (tile + gap)))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
