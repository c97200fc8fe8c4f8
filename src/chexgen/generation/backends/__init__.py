"""Generator backends: one small interface (:class:`GeneratorBackend`) for every generator chexgen drives."""

from chexgen.generation.backends.base import GeneratedBatch, GeneratorBackend
from chexgen.generation.backends.chexgen import ChexGenBackend

__all__ = ["GeneratorBackend", "GeneratedBatch", "ChexGenBackend"]
