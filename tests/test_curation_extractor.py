"""The rule-based extractor and the label-by-label QC rules."""

from __future__ import annotations

import random

import pytest

from chexgen.curation.extractor import extract_labels, extract_mentions
from chexgen.curation.qc import check_report, compare_labels
from chexgen.curation.report_writer import TemplateReportWriter
from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.data.vocabulary import SEVERITIES, SIDES, ZONES


@pytest.mark.parametrize("text, label, value", [
    ("Small left pleural effusion.", "Pleural Effusion", 1),
    ("No pleural effusion or pneumothorax.", "Pneumothorax", 0),
    ("No pleural effusion or pneumothorax.", "Pleural Effusion", 0),
    ("There is no focal air space opacity to suggest a pneumonia.", "Pneumonia", 0),
    ("Findings may represent atelectasis.", "Atelectasis", -1),
    ("A small right pneumothorax cannot be excluded.", "Pneumothorax", -1),
    ("Possible effusion, no pneumothorax.", "Pleural Effusion", -1),
    ("Possible effusion, no pneumothorax.", "Pneumothorax", 0),
    ("No change in the left pleural effusion.", "Pleural Effusion", 1),
    ("The previously seen pneumothorax has resolved.", "Pneumothorax", 0),
    ("Heart size is normal.", "Cardiomegaly", 0),
    ("The heart is mildly enlarged.", "Cardiomegaly", 1),
    ("Borderline enlargement of the cardiac silhouette.", "Cardiomegaly", -1),
    ("Heart size is at the upper limits of normal.", "Cardiomegaly", -1),
    ("The cardiomediastinal silhouette is within normal limits.", "Cardiomegaly", 0),
    ("The cardiomediastinal silhouette is enlarged.", "Enlarged Cardiomediastinum", 1),
    ("Moderate pericardial effusion.", "Pleural Effusion", None),
    ("The lungs are clear.", "Consolidation", 0),
    ("Left-sided cardiac pacemaker with leads in place.", "Support Devices", 1),
    ("Endotracheal tube has been removed.", "Support Devices", 0),
    ("No effusion, but there is a small left pneumothorax.", "Pneumothorax", 1),
    ("Plate-like atelectasis at the left base.", "Atelectasis", 1),
    ("Healed right rib fracture.", "Fracture", 1),
])
def test_extractor_cases(text, label, value):
    assert extract_labels(text)[label] == value


def test_no_finding_is_derived():
    assert extract_labels("No acute cardiopulmonary abnormality.")["No Finding"] == 1
    assert extract_labels("Support devices are in place. No acute cardiopulmonary process.")["No Finding"] == 1
    assert extract_labels("Small effusion. Otherwise no acute cardiopulmonary process.")["No Finding"] == 0
    assert extract_labels("Calcified granuloma.")["No Finding"] is None


def test_mentions_point_at_their_words():
    m = extract_mentions("Moderate right pleural effusion.")[0]
    assert m.label == "Pleural Effusion" and m.sentence[m.start:m.end] == "effusion"


def test_qc_rules():
    assert compare_labels({"Edema": 0}, {"Edema": None}) == []           # unstated negative is fine
    assert [d.label for d in compare_labels({"Edema": None}, {"Edema": 0})] == ["Edema"]  # never looked
    assert [d.label for d in compare_labels({"Edema": -1}, {"Edema": 1})] == ["Edema"]
    assert [d.label for d in compare_labels({"No Finding": 0}, {"No Finding": 1})] == ["No Finding"]
    res = check_report({"Pneumothorax": 1}, "No pneumothorax.")
    assert not res.passed and "metadata present, report absent" in res.summary()


def test_template_output_reads_back_exactly_over_random_metadata():
    """The QC target: 100% agreement on template reports, over random label/detail combinations."""
    rng = random.Random(7)
    kinds = ["nodule", "mass", "et_tube", "central_line", "pacemaker", "rib", "ng_tube", "chest_tube", None]
    for i in range(1500):
        labels = {n: rng.choices([1, 0, -1, None], [0.15, 0.5, 0.1, 0.25])[0] for n in LABELS[1:]}
        sick = any(labels[n] in (1, -1) for n in LABELS[1:-1])
        labels["No Finding"] = 1 if not sick and rng.random() < 0.8 else rng.choice([0, None])
        details = [{"label": n, "side": rng.choice(SIDES + (None,)), "severity": rng.choice(SEVERITIES + (None,)),
                    "zone": rng.choice(ZONES + (None,)), "kind": rng.choice(kinds)}
                   for n in LABELS[1:] if rng.random() < 0.5]
        other = rng.sample(["emphysema", "calcified densities", "soft tissue mass", "kyphosis", "hiatal hernia"], 2)
        rec = Record(id=f"r{i}", sex=rng.choice(["M", "F", None]), age=rng.choice([None, 3, 45, 88]),
                     view=rng.choice(["PA", "AP", "LAT", None]), labels=labels,
                     extra={"findings": details, "other_findings": other})
        report = TemplateReportWriter(seed=i % 3).write(rec)
        result = check_report(labels, report.text)
        assert result.passed, (result.summary(), report.text)
