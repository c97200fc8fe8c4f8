"""chexgen.diffusion."""
