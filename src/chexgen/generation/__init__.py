"""Generation: prompts (and spatial conditions) -> a folder of synthetic radiographs with a manifest.

- ``prompts``: reading prompts from files and manifests.
- ``conditions``: reading masks / boxes for spatially controlled jobs.
- ``plan``: the deterministic plan (ids, seeds, batches, shards) and the settings a resume must match.
- ``backends``: the :class:`GeneratorBackend` interface and the generators behind it.
- ``writer``: the one writer of images, condition files, COCO boxes and the manifest.
- ``engine``: :func:`generate_to_folder`, planned, sharded, resumable and streamed.
- ``job``: :func:`run_generation`, one ``chexgen generate`` job from options to folder.
"""

from chexgen.generation.backends import ChexGenBackend, GeneratedBatch, GeneratorBackend
from chexgen.generation.conditions import ConditionOptions, read_conditions
from chexgen.generation.engine import GenerationResult, generate_to_folder
from chexgen.generation.job import GenerateOptions, run_generation
from chexgen.generation.plan import PlannedImage, plan_batches, plan_images, shard, shard_batches
from chexgen.generation.prompts import PromptItem, prompts_digest, prompts_from_texts, read_prompts
from chexgen.generation.writer import OutputWriter

__all__ = [
    "PromptItem",
    "read_prompts",
    "prompts_from_texts",
    "prompts_digest",
    "ConditionOptions",
    "read_conditions",
    "PlannedImage",
    "plan_images",
    "plan_batches",
    "shard",
    "shard_batches",
    "GeneratorBackend",
    "GeneratedBatch",
    "ChexGenBackend",
    "OutputWriter",
    "GenerationResult",
    "generate_to_folder",
    "GenerateOptions",
    "run_generation",
]
