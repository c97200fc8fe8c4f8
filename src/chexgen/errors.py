"""User-facing errors.

Anything the user can fix (a bad file, a bad option, a missing model) raises
:class:`ChexgenError` with a message that names the file, the row and what was
expected. The CLI prints it as one line and exits 2; library callers can catch it.

An optional dependency that is not installed is one of those: :data:`EXTRAS`
says which ``pip install 'chexgen[EXTRA]'`` brings each one, and
:func:`missing_extra_message` turns a ``ModuleNotFoundError`` into that one line
(the CLI does this for every command).
"""

from __future__ import annotations

__all__ = ["ChexgenError", "EXTRAS", "missing_extra_message"]


class ChexgenError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""


#: Top-level module of each optional dependency -> (the extra that installs it, the PyPI name).
EXTRAS: dict[str, tuple[str, str]] = {
    "open_clip": ("eval", "open-clip-torch"),
    "torch_fidelity": ("eval", "torch-fidelity"),
    "torchmetrics": ("eval", "torchmetrics"),
    "segmentation_models_pytorch": ("downstream", "segmentation-models-pytorch"),
    "pycocotools": ("downstream", "pycocotools"),
}


def missing_extra_message(err: ModuleNotFoundError) -> str | None:
    """One line naming the extra to install when ``err`` is about an optional dependency, else None."""
    top = (err.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    extra, package = EXTRAS[top]
    return (f"this needs the optional package {package} (module {top!r}), which is not installed: "
            f"pip install 'chexgen[{extra}]'")
