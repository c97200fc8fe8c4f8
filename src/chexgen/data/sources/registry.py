"""The registry of dataset adapters: one name per public dataset format.

``load_source("nih")`` reads the copy of the metadata that torchxrayvision
ships; ``load_source("mimic", "/data/mimic-cxr-jpg", mimic_iv="/data/mimiciv")``
reads a local download. Every adapter returns a
:class:`~chexgen.data.sources._common.SourceResult` (records + rejects).
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

from chexgen.data.sources._common import SourceResult
from chexgen.errors import ChexgenError

__all__ = ["SourceSpec", "SOURCES", "get_source", "load_source", "list_sources"]


@dataclass(frozen=True)
class SourceSpec:
    """How to read one dataset: ``module:function``, what it is, whether a package ships its metadata."""

    name: str
    loader: str
    description: str
    shipped: bool = False  # True: torchxrayvision ships the metadata, so no path is needed
    openchest: bool = False  # one of the paper's eight OpenChest sources

    def load_function(self) -> Callable[..., SourceResult]:
        module, func = self.loader.split(":")
        return getattr(importlib.import_module(f"chexgen.data.sources.{module}"), func)


SOURCES: dict[str, SourceSpec] = {s.name: s for s in (
    SourceSpec("nih", "nih:load_nih", "NIH ChestX-ray14: Data_Entry CSV + BBox list", shipped=True, openchest=True),
    SourceSpec("chexpert", "chexpert:load_chexpert", "CheXpert train/valid CSV (1/0/-1/blank)", shipped=True,
               openchest=True),
    SourceSpec("padchest", "padchest:load_padchest", "PadChest label CSV (174 findings, localizations)",
               shipped=True, openchest=True),
    SourceSpec("mimic", "mimic:load_mimic", "MIMIC-CXR-JPG metadata, CheXpert/NegBio labels, split, reports; "
               "MIMIC-IV demographics", openchest=True),
    SourceSpec("bimcv", "bimcv:load_bimcv", "BIMCV-COVID19+ labels TSV + participants", openchest=True),
    SourceSpec("vindr_pcxr", "vindr:load_vindr_pcxr", "VinDr-PCXR image labels + boxes", openchest=True),
    SourceSpec("brax", "brax:load_brax", "BRAX master spreadsheet (CheXpert labels)", openchest=True),
    SourceSpec("ranzcr", "ranzcr:load_ranzcr", "RANZCR CLiP device placement labels + line annotations",
               openchest=True),
    SourceSpec("vindr_cxr", "vindr:load_vindr_cxr", "VinDr-CXR reader boxes (Kaggle VinBigData layout)",
               shipped=True),
    SourceSpec("siim", "siim:load_siim", "SIIM-ACR pneumothorax RLE masks", shipped=True),
    SourceSpec("nlmcxr", "nlmcxr:load_nlmcxr", "Indiana University reports (NLMCXR XML, MeSH)", shipped=True),
    SourceSpec("vindr_rib", "downstream_sets:load_vindr_rib", "VinDr-RibCXR rib polygons"),
    SourceSpec("object_cxr", "downstream_sets:load_object_cxr", "Object-CXR foreign-object annotations"),
    SourceSpec("chestx_det", "downstream_sets:load_chestx_det", "ChestX-Det boxes and polygons (13 classes)"),
    SourceSpec("ralo", "downstream_sets:load_ralo", "RALO lung opacity severity scores"),
    SourceSpec("medfmc", "downstream_sets:load_medfmc", "MedFMC-ChestDR 19-class labels"),
)}


def list_sources() -> list[SourceSpec]:
    """Every registered source, in registry order."""
    return list(SOURCES.values())


def get_source(name: str) -> SourceSpec:
    """The source called ``name`` (case and ``-``/``_`` ignored); unknown names raise ChexgenError listing them."""
    key = name.strip().lower().replace("-", "_")
    if key not in SOURCES:
        raise ChexgenError(f"unknown source {name!r}; known sources: {', '.join(SOURCES)}")
    return SOURCES[key]


def load_source(name: str, path: str | os.PathLike | None = None, **options: Any) -> SourceResult:
    """Read dataset ``name`` from ``path`` (or the shipped copy); ``options`` the adapter does not take are ignored."""
    spec = get_source(name)
    if path is None and not spec.shipped:
        raise ChexgenError(f"source {spec.name!r} is not shipped with any package: give its folder or file "
                           f"(e.g. --source {spec.name}=/path/to/{spec.name})")
    fn = spec.load_function()
    accepted = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
    return fn(path, **kwargs) if path is not None or "root" in accepted else fn(**kwargs)
