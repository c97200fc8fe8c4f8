"""User-facing errors.

Anything the user can fix (a bad file, a bad option, a missing model) raises
:class:`ChexgenError` with a message that names the file, the row and what was
expected. The CLI prints it as one line and exits non-zero; library callers can
catch it.
"""

from __future__ import annotations

__all__ = ["ChexgenError"]


class ChexgenError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""
