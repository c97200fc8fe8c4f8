"""chexgen: a generative foundation model toolkit for chest radiographs."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "ChexGenPipeline", "ChexGenControlPipeline"]


def __getattr__(name: str):
    # Lazy so that `import chexgen` (and the CLI's --help) does not import torch.
    if name in ("ChexGenPipeline", "ChexGenControlPipeline"):
        import chexgen.pipelines as pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'chexgen' has no attribute {name!r}")
