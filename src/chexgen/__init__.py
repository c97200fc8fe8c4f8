"""chexgen: a generative foundation model toolkit for chest radiographs."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "ChexGenPipeline"]


def __getattr__(name: str):
    # Lazy so that `import chexgen` (and the CLI's --help) does not import torch.
    if name == "ChexGenPipeline":
        from chexgen.pipeline import ChexGenPipeline

        return ChexGenPipeline
    raise AttributeError(f"module 'chexgen' has no attribute {name!r}")
