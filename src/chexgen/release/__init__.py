"""Synthetic marking and release: DICOM export, invisible watermark, verification, release audit.

Layers: :mod:`~chexgen.release.watermark`, :mod:`~chexgen.release.dicom` and
:mod:`~chexgen.release.identifiers` stand on :mod:`chexgen.data` only, so the
generation engine's output writer can call them; :mod:`~chexgen.release.verify`,
:mod:`~chexgen.release.export` and :mod:`~chexgen.release.audit` are jobs on
existing folders (the audit uses :mod:`chexgen.evaluation`). Nothing is imported
here, so importing one module does not pull in the others' dependencies.
"""
