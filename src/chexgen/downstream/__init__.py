"""chexgen.downstream."""
