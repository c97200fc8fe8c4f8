"""chexgen.diffusion: the noise schedule and samplers (training losses live in ``losses``)."""

from chexgen.diffusion.schedule import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, NoiseSchedule

__all__ = ["NoiseSchedule", "NUM_TRAIN_TIMESTEPS", "BETA_START", "BETA_END"]
