"""chexgen.curation."""
