"""Generator backends: one small interface (:class:`GeneratorBackend`) for every generator chexgen drives."""

from chexgen.generation.backends.base import GeneratedBatch, GeneratorBackend
from chexgen.generation.backends.chexgen import ChexGenBackend
from chexgen.generation.backends.diffusers import DiffusersBackend
from chexgen.generation.backends.reconstruction import VAEReconstructionBackend

__all__ = ["GeneratorBackend", "GeneratedBatch", "ChexGenBackend", "DiffusersBackend", "VAEReconstructionBackend"]
