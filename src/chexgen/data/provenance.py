"""The one way chexgen marks an image file as synthetic and records where it came from.

Every synthetic PNG chexgen writes (``generate``, the demo, the phantom cohort) carries two
text chunks: ``chexgen:synthetic = "true"`` and ``chexgen:provenance`` = the provenance as
sorted JSON (model, checkpoint hash, prompt, seed, sampler, steps, guidance, version, ...).
Non-finite numbers are refused: they would make invalid JSON.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from chexgen.errors import ChexgenError

__all__ = ["SYNTHETIC_KEY", "PROVENANCE_KEY", "image_provenance", "synthetic_png_text", "read_provenance"]

SYNTHETIC_KEY = "chexgen:synthetic"
PROVENANCE_KEY = "chexgen:provenance"


def image_provenance(run: Mapping[str, Any], prompt: str, seed: int, condition_id: str | None = None) -> dict[str, Any]:
    """Provenance of one image: the run's (backend, model, hashes, sampler, steps, ...) plus its prompt and seed."""
    prov = {**run, "prompt": prompt, "seed": int(seed)}
    if condition_id is not None:
        prov["condition_id"] = condition_id
    return prov


def synthetic_png_text(provenance: Mapping[str, Any]) -> dict[str, str]:
    """PNG text chunks that mark an image synthetic and carry its provenance."""
    try:
        blob = json.dumps(dict(provenance), sort_keys=True, allow_nan=False)
    except ValueError as err:
        raise ChexgenError(f"provenance holds a non-finite number ({err}): {dict(provenance)!r}") from None
    return {SYNTHETIC_KEY: "true", PROVENANCE_KEY: blob}


def read_provenance(path: "str | os.PathLike") -> dict[str, Any] | None:
    """The provenance of a chexgen-marked synthetic PNG, or None when the file carries no marking."""
    from chexgen.data.imageio import read_png_text

    text = read_png_text(path)
    if text.get(SYNTHETIC_KEY) != "true":
        return None
    try:
        return json.loads(text.get(PROVENANCE_KEY, "{}"))
    except json.JSONDecodeError as err:
        raise ChexgenError(f"{path}: unreadable {PROVENANCE_KEY} text chunk ({err})") from None
