"""chexgen.commands."""
