"""Pipelines: prompts (and spatial conditions) -> synthetic chest radiographs.

- :class:`ChexGenPipeline`: text to image (``pipelines.text2img``).
- :class:`ChexGenControlPipeline`: text + masks / boxes through a ControlNet adapter
  (``pipelines.control``); it adds condition latents to the base pipeline and nothing else.
- ``pipelines.base``: what both share (call defaults, input checks, seeds, batching, latent
  clipping, the noise schedule read back from the saved scheduler config).
"""

from chexgen.pipelines.base import CONFIG_NAME, PipelineConfig, SamplingSettings, resolve_sampling
from chexgen.pipelines.control import CONTROL_INFO, ChexGenControlPipeline, ControlPipelineOutput
from chexgen.pipelines.text2img import ChexGenPipeline, PipelineOutput

__all__ = [
    "ChexGenPipeline",
    "ChexGenControlPipeline",
    "PipelineConfig",
    "PipelineOutput",
    "ControlPipelineOutput",
    "SamplingSettings",
    "resolve_sampling",
    "CONFIG_NAME",
    "CONTROL_INFO",
]
