"""chexgen's own pipelines (trained, bundled or converted official checkpoints) as a generator backend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from chexgen.errors import ChexgenError
from chexgen.generation.backends.base import GeneratedBatch, GeneratorBackend
from chexgen.pipelines.base import SamplingSettings, image_generators

if TYPE_CHECKING:
    from chexgen.data.condition_sources import ConditionInput
    from chexgen.pipelines import ChexGenControlPipeline, ChexGenPipeline

__all__ = ["ChexGenBackend"]


class ChexGenBackend(GeneratorBackend):
    """A :class:`ChexGenPipeline`, or with ``control`` a :class:`ChexGenControlPipeline` on it.

    One engine batch is one sampling run (one forward per step for the whole batch).
    """

    name = "chexgen"

    def __init__(self, pipe: "ChexGenPipeline", sampling: SamplingSettings, model_name: str | None = None,
                 control: "ChexGenControlPipeline | None" = None, conditioning_scale: float = 1.0,
                 control_guidance: str | None = None) -> None:
        self.pipe = pipe
        self.sampling = sampling
        self.model_name = model_name or str(pipe.source_path or "unsaved pipeline")
        self.control = control
        self.conditioning_scale = float(conditioning_scale)
        if control is not None:
            if control.base is not pipe:
                raise ChexgenError("the control pipeline must be built on the backend's pipeline")
            self.supports_conditions = True
            self.condition_policy = control.fit_policy
            self.condition_palette = control.controlnet.config.palette
            control._scale(conditioning_scale)  # validates
        # None: the adapter's stored default (ChexGenControlPipeline.control_guidance)
        self.control_guidance = control._guidance(control_guidance) if control is not None else None

    @property
    def resolution(self) -> int:
        return int(self.pipe.config.resolution)

    def settings(self) -> dict[str, Any]:
        s = self.sampling
        out: dict[str, Any] = {
            "backend": self.name,
            "model": self.model_name,
            "checkpoint_sha256": self.pipe.checkpoint_sha256(),
            "sampler": s.sampler,
            "steps": s.steps,
            "guidance": s.guidance,
            "precision": self.pipe.precision,
        }
        if s.eta:
            out["eta"] = s.eta
        if self.pipe.config.clip_latents is not None:
            out["clip_latents"] = self.pipe.config.clip_latents
        if self.control is not None:
            path = self.control.control_path
            weights = Path(path) / "diffusion_pytorch_model.safetensors" if path is not None else None
            from chexgen.utils import sha256_file

            out.update(
                control_model=str(path) if path is not None else "unsaved adapter",
                control_sha256=sha256_file(weights) if weights is not None and weights.is_file() else None,
                conditioning_scale=self.conditioning_scale,
                control_guidance=self.control_guidance,
            )
        return out

    def check_condition(self, condition: "ConditionInput") -> None:
        if self.control is None:
            raise ChexgenError("this model has no ControlNet adapter; give --control-model for masks / boxes")
        self.control.render(condition)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int],
                 conditions: "Sequence[ConditionInput] | None" = None) -> GeneratedBatch:
        gens = image_generators(list(seeds))
        if conditions is None:
            images = self.pipe.generate_batches(list(prompts), gens, self.sampling, batch_size=max(1, len(prompts)),
                                                progress=False)
            return GeneratedBatch(images[:, 0].numpy())
        if self.control is None:
            raise ChexgenError("conditions given to a backend without a ControlNet adapter")
        rendered = self.control.render_all(conditions)
        images = self.control.generate_rendered(list(prompts), rendered, gens, self.sampling,
                                                conditioning_scale=self.conditioning_scale,
                                                control_guidance=self.control_guidance,
                                                batch_size=max(1, len(prompts)), progress=False)
        return GeneratedBatch(images[:, 0].numpy(), rendered[:, 0].numpy())
