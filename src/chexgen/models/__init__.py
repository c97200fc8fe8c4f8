"""chexgen.models."""
