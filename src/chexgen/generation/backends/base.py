"""The interface every generator backend implements: prompts + seeds [+ conditions] -> gray images.

The generation engine (:func:`chexgen.generation.engine.generate_to_folder`) and the benchmark
talk to generators only through :class:`GeneratorBackend`, so a chexgen pipeline, a converted
official checkpoint or another project's pipeline are planned, sharded, resumed and written the
same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from chexgen.data.condition_sources import ConditionInput

__all__ = ["GeneratedBatch", "GeneratorBackend"]


@dataclass
class GeneratedBatch:
    """Images ``[B, H, W]`` float32 in [0, 1] and, for conditioned batches, the drawn conditions ``[B, H, W]``."""

    images: np.ndarray
    conditions: np.ndarray | None = None


class GeneratorBackend(ABC):
    """A generator the engine can drive.

    Contract: image ``j`` of a batch depends only on ``prompts[j]``, ``seeds[j]`` (and
    ``conditions[j]``) and the batch layout; the same call gives the same pixels.
    """

    #: short backend name recorded in provenance (``chexgen``, ``diffusers``, ...)
    name: str = "backend"
    #: whether :meth:`generate` accepts spatial conditions
    supports_conditions: bool = False
    #: how condition frames map onto the square output (``pad`` / ``crop``); conditioned backends only
    condition_policy: str | None = None
    #: palette the conditions are drawn with; conditioned backends only
    condition_palette: str | None = None

    @property
    @abstractmethod
    def resolution(self) -> int:
        """Side of the square images it makes, in pixels."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What decides its pixels besides prompt and seed (backend, model, weights hash, sampler, steps,
        guidance, ...): recorded as each image's provenance and compared when a run resumes."""

    def check_condition(self, condition: "ConditionInput") -> None:
        """Raise :class:`~chexgen.errors.ChexgenError` if ``condition`` cannot be used (before any sampling)."""

    @abstractmethod
    def generate(self, prompts: Sequence[str], seeds: Sequence[int],
                 conditions: "Sequence[ConditionInput] | None" = None) -> GeneratedBatch:
        """One batch of images, one per prompt / seed (/ condition)."""
