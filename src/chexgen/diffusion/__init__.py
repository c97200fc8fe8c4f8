"""chexgen.diffusion: the noise schedule and samplers (training losses live in ``losses``)."""

from chexgen.diffusion.samplers import (
    DEFAULT_STEPS,
    SAMPLERS,
    denoise,
    get_sampler_spec,
    guided_prediction,
    initial_noise,
    make_generators,
    make_scheduler,
    model_calls_per_image,
)
from chexgen.diffusion.schedule import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, NoiseSchedule

__all__ = [
    "NoiseSchedule",
    "NUM_TRAIN_TIMESTEPS",
    "BETA_START",
    "BETA_END",
    "SAMPLERS",
    "DEFAULT_STEPS",
    "make_scheduler",
    "model_calls_per_image",
    "get_sampler_spec",
    "guided_prediction",
    "initial_noise",
    "make_generators",
    "denoise",
]
