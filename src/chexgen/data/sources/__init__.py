"""chexgen.data.sources: one small adapter per public dataset format (see :mod:`.registry`)."""
