"""Ground-truth phantom cohort: chest radiographs rendered from a real CT with findings inserted in 3-D.

Modules, in the order data flows:

* :mod:`.source`: download (pip, no dependencies) and sha256-verify the CT and label map;
* :mod:`.geometry`: divergent-beam PA / AP projection geometry;
* :mod:`.atlas`: the CT projected once per view into components, plus low-resolution fields (cached);
* :mod:`.findings`: finding specs, prevalence configs, sampling, exact labels;
* :mod:`.insertion`: physical 3-D models of the findings, projected alone;
* :mod:`.devices`: support devices as exact projections of tubes, wires and cans;
* :mod:`.variation`: demographics, site and anatomy variation;
* :mod:`.resample`: resampling of projected maps (shared by insertion and render);
* :mod:`.render`: one case -> image, masks, boxes, severity;
* :mod:`.cohort`: the parallel, resumable cohort writer (reports by a writer the caller passes).

The phantom stands on :mod:`chexgen.data` alone (``tests/test_layering.py`` checks it); findings
speak the shared words of :mod:`chexgen.data.vocabulary`.
"""

from chexgen.phantom.atlas import Atlas, load_atlas
from chexgen.phantom.cohort import CohortConfig, make_record, write_cohort
from chexgen.phantom.findings import Finding, Prevalence, load_prevalence
from chexgen.phantom.render import CaseSpec, Rendered, cardiothoracic_ratio, render_case, sample_case
from chexgen.phantom.source import load_ct, locate_source_files

__all__ = [
    "Atlas",
    "CaseSpec",
    "CohortConfig",
    "Finding",
    "Prevalence",
    "Rendered",
    "cardiothoracic_ratio",
    "load_atlas",
    "load_ct",
    "load_prevalence",
    "locate_source_files",
    "make_record",
    "render_case",
    "sample_case",
    "write_cohort",
]
