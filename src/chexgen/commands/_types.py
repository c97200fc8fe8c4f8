"""argparse ``type=`` functions for numeric options.

Every numeric option of every command uses one of these, so ``--guidance nan``,
``--steps -3`` or ``--size inf`` stop at parse time with argparse's own one-line
error (``chexgen generate: error: argument --guidance: expected a finite number,
got 'nan'``, exit 2) instead of writing black images or ``NaN`` into JSON.

``float('nan')`` and ``float('inf')`` parse in Python, so a plain ``type=float``
lets them through; these functions do not.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["finite_float", "nonneg_float", "positive_float", "positive_int", "nonneg_int", "any_int",
           "probability"]


def _float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def finite_float(text: str) -> float:
    """Any finite number (no nan / inf)."""
    return _float(text)


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A finite number in [0, 1]."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def any_int(text: str) -> int:
    """Any integer (negative allowed), with a clear message for non-integers."""
    return _int(text)


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value
