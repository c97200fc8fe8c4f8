"""Optional dependencies: import one, or fail with one line naming the extra that installs it.

The base install (``pip install chexgen``) runs every command of the README's quick start;
extras add optional backends (``eval``: CLIP and Inception feature extractors; ``downstream``:
U-Net segmentation and detection mAP). A missing one is a :class:`~chexgen.errors.ChexgenError`
such as ``the CLIP extractor needs the 'eval' extra: pip install 'chexgen[eval]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from chexgen.errors import ChexgenError

__all__ = ["require", "missing_extra_message"]


def missing_extra_message(feature: str, extra: str) -> str:
    return f"{feature} needs the '{extra}' extra: pip install 'chexgen[{extra}]'"


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``; if it (or its top-level package) is not installed, raise a one-line error.

    Only a missing module is translated: an ``ImportError`` raised *inside* an installed package
    (a broken install) propagates unchanged, so it is not misreported as a missing extra.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if module == missing or module.startswith(missing + "."):
            raise ChexgenError(missing_extra_message(feature, extra)) from None
        raise
