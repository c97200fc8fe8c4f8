"""The one side / severity / zone vocabulary and the finding record that phantom, curation and demo share."""

from __future__ import annotations

import numpy as np
import pytest

from chexgen.curation import _phrases as P
from chexgen.curation.report_writer import TemplateReportWriter, finding_details
from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.data.vocabulary import SEVERITIES, SIDES, ZONES, Finding, severity_at, side_at, zone_at
from chexgen.errors import ChexgenError
from chexgen.phantom import findings as phantom_findings


def test_positions_map_to_words_at_the_edges():
    # frontal view: the image's left half is the patient's right
    assert side_at(0.1) == "right" and side_at(0.49) == "right" and side_at(0.5) == "left"
    assert [zone_at(y) for y in (0.0, 0.39, 0.4, 0.59, 0.6, 1.0)] == ["upper", "upper", "middle", "middle",
                                                                    "lower", "lower"]
    assert zone_at(0.41, edges=(0.42, 0.6)) == "upper"
    assert [severity_at(a) for a in (0.0, 0.019, 0.02, 0.079, 0.08)] == ["small", "small", "moderate",
                                                                        "moderate", "large"]
    with pytest.raises(ValueError, match="increasing"):
        zone_at(0.5, edges=(0.6, 0.4))


def test_finding_from_dict_checks_every_word():
    f = Finding.from_dict({"label": "pleural effusion", "side": "left", "severity": "small", "zone": "lower"})
    assert f == Finding("Pleural Effusion", "left", "small", "lower")
    assert Finding.from_dict(f.to_dict()) == f
    assert Finding("Fracture", kind="rib_fracture").slug == "rib_fracture"
    assert Finding("Pleural Effusion").slug == "pleural_effusion"
    for key, bad in (("side", "middle"), ("severity", "huge"), ("zone", "apex")):
        with pytest.raises(ChexgenError, match=f"row 3: '{key}' must be one of"):
            Finding.from_dict({"label": "Edema", key: bad}, where="row 3")
    with pytest.raises(ChexgenError, match="row 4: .*label"):
        Finding.from_dict({"side": "left"}, where="row 4")


def test_phrase_bank_words_cover_the_vocabulary():
    assert set(P.ZONE_WORDS) == set(ZONES)
    for label, words in P.SEV_WORDS.items():
        assert list(words) == list(SEVERITIES), label
    assert P.SEV_WORDS["Cardiomegaly"]["large"] == "marked" and P.SEV_WORDS["default"]["small"] == "small"


def test_phantom_findings_use_the_vocabulary_and_read_back_in_the_writer():
    rng = np.random.default_rng(0)
    prevalence = phantom_findings.load_prevalence("balanced")
    seen = []
    for _ in range(200):
        seen.extend(phantom_findings.sample_findings(rng, prevalence))
    assert phantom_findings.Finding is Finding
    for f in seen:
        assert f.side in SIDES + (None,) and f.severity in SEVERITIES + (None,) and f.zone in ZONES + (None,)
    labels = {name: int(any(f.label == name for f in seen)) for name in LABELS}
    record = Record(id="r", labels=labels, extra={"findings": [f.to_dict() for f in seen]})
    parsed = [d for dets in finding_details(record).values() for d in dets]
    assert sorted(parsed, key=repr) == sorted(seen, key=repr)
    one = Record(id="e", view="PA", labels={n: int(n == "Pleural Effusion") for n in LABELS},
                 extra={"findings": [Finding("Pleural Effusion", "left", "large", "lower").to_dict()]})
    assert TemplateReportWriter().write(one).impression == "Large left pleural effusion."
