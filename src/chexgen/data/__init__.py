"""chexgen.data."""
