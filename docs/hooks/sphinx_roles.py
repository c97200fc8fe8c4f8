"""MkDocs hook: show the Sphinx roles of chexgen's docstrings as plain code in the API pages.

chexgen's docstrings cross-reference with Sphinx roles (``:class:`~chexgen.x.Y```, ``:func:``,
``:mod:`` ...), which read well in the source and in ``help()``. mkdocstrings renders the role name
literally in front of the code span (":class:<code>~chexgen.x.Y</code>"); this hook drops the role
and, as Sphinx does, shows only the last component of a name written with a leading ``~``.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|const|py:\w+):<code>(~?)([^<]+)</code>")


def _show(match: re.Match) -> str:
    tilde, name = match.group(1), match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if tilde else name}</code>"


def strip_roles(html: str) -> str:
    """The HTML with every rendered Sphinx role replaced by its code span."""
    return _ROLE.sub(_show, html)


def on_page_content(html: str, **kwargs) -> str:
    return strip_roles(html)
