"""Grad-CAM maps for the downstream classifiers (where in the image a class score comes from).

Gradient-weighted class activation: the last convolutional feature map, weighted per channel
by the spatial mean of the class score's gradient, summed, rectified and scaled to [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["grad_cam", "target_layer", "save_overlay"]


def target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage of a classifier built by :func:`~chexgen.downstream.models.build_model`."""
    net = getattr(model, "net", model)
    if hasattr(net, "features"):  # DenseNet
        return net.features
    if hasattr(net, "layer4"):  # ResNet
        return net.layer4
    raise ValueError(f"no Grad-CAM target layer known for {type(net).__name__}")


def grad_cam(model: nn.Module, image: torch.Tensor, class_index: int, layer: nn.Module | None = None) -> np.ndarray:
    """Map (H, W) in [0, 1] for one gray image (1, H, W) and one output class."""
    layer = layer or target_layer(model)
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        out.retain_grad()
        store["act"] = out

    handle = layer.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        x = image[None].detach().clone().requires_grad_(True)
        logits = model(x)
        model.zero_grad(set_to_none=True)
        logits[0, class_index].backward()
        act, grad = store["act"], store["act"].grad
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        cam = cam.detach().numpy()
    finally:
        handle.remove()
        model.train(was_training)
    top = cam.max()
    return (cam / top).astype(np.float32) if top > 0 else np.zeros_like(cam, dtype=np.float32)


def save_overlay(image: np.ndarray, cam: np.ndarray, path: str | Path, title: str = "") -> None:
    """Image and its Grad-CAM side by side as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chexgen.utils import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(5, 2.7))
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[1].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[1].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
