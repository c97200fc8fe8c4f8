"""Paths of the files bundled with chexgen (the one place that knows where they are).

``demo/``: the bundled phantom-trained demo model — ``pipeline/`` (DiT + gray VAE, text encoder
by reference), ``control/`` (ControlNet adapter, base ``../pipeline``), ``classifier/`` (the
phantom classifier the demo scores with), ``prevalence.yaml`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ASSETS_DIR", "demo_model_dir", "demo_pipeline_dir", "demo_control_dir", "demo_classifier_dir",
           "RETRAIN_HINT"]

ASSETS_DIR = Path(__file__).resolve().parent
RETRAIN_HINT = "retrain it with `bash scripts/train_demo_model.sh` (see src/chexgen/assets/demo/MODEL_CARD.md)"


def demo_model_dir() -> Path:
    """The bundled demo model folder (pipeline/, control/, classifier/, prevalence.yaml, MODEL_CARD.md)."""
    return ASSETS_DIR / "demo"


def demo_pipeline_dir() -> Path:
    """The bundled demo pipeline (``chexgen generate``'s model when none is given)."""
    return demo_model_dir() / "pipeline"


def demo_control_dir() -> Path:
    """The bundled ControlNet adapter (``chexgen generate --masks/--boxes``' adapter when no model is given)."""
    return demo_model_dir() / "control"


def demo_classifier_dir() -> Path:
    """The bundled phantom classifier."""
    return demo_model_dir() / "classifier"
