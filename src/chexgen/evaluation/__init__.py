"""chexgen.evaluation."""
