"""The bundled demo model end to end: ``chexgen demo`` and the tools that build and check it.

- ``run``: :func:`run_demo` (held-out phantom cohort, generation, evaluation, one HTML report)
  and :func:`evaluate_demo_model` (also behind ``benchmarks/demo_quality.py``);
- ``control``: the spatial-control part (real SIIM masks / NIH boxes, localisation ratio);
- ``pack``: :func:`pack_demo_model`, training outputs -> a demo model folder.

Bundled paths are owned by :mod:`chexgen.assets`.
"""

from __future__ import annotations

__all__ = ["DemoConfig", "run_demo", "evaluate_demo_model", "nlmcxr_prompts", "bundled_model_dir", "pack_demo_model"]


def __getattr__(name: str):
    # Lazy: importing chexgen.demo (e.g. for DemoConfig in --help) does not import torch.
    if name == "pack_demo_model":
        from chexgen.demo.pack import pack_demo_model

        return pack_demo_model
    if name in __all__:
        import chexgen.demo.run as run

        return getattr(run, name)
    raise AttributeError(f"module 'chexgen.demo' has no attribute {name!r}")
