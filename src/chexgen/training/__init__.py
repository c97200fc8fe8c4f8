"""chexgen.training."""
