"""The template writer's phrase bank: every sentence it can write, by label and status.

Kept apart from the writer's logic so wording can be reviewed (and extended) in one
place. Each phrasing must read back to the same label and status under
:mod:`chexgen.curation.extractor`; ``tests/test_curation_extractor.py`` checks that
over random metadata. Templates take ``{sev}``, ``{sev_adv}``, ``{loc_adj}``,
``{loc}``, ``{side_adj}``, ``{side_sided}``, ``{side_loc}`` and ``{kind}``.
"""

from __future__ import annotations

from chexgen.data.vocabulary import SEVERITIES, ZONES

# ---------------------------------------------------------------------------
# Phrase bank. Each positive template gets {sev} (severity word, may be ""),
# {loc_adj} (e.g. "right lower zone", may be "") and {loc} (e.g. " in the
# right lower zone", may be ""). Double spaces are squeezed afterwards.
# ---------------------------------------------------------------------------

# Severity words for (small, moderate, large) of chexgen.data.vocabulary.SEVERITIES, by label.
_SEVERITY_WORDS: dict[str, tuple[str, str, str]] = {
    "default": ("small", "moderate", "large"),
    "Cardiomegaly": ("mild", "moderate", "marked"),
    "Enlarged Cardiomediastinum": ("mild", "moderate", "marked"),
    "Edema": ("mild", "moderate", "severe"),
    "Atelectasis": ("mild", "moderate", "extensive"),
    "Pleural Other": ("mild", "moderate", "extensive"),
    "Consolidation": ("small", "moderate", "extensive"),
}
SEV_WORDS: dict[str, dict[str, str]] = {label: dict(zip(SEVERITIES, words)) for label, words in _SEVERITY_WORDS.items()}

# How each zone of chexgen.data.vocabulary.ZONES is written.
ZONE_WORDS: dict[str, str] = dict(zip(ZONES, ("upper zone", "mid zone", "lower zone")))

POSITIVE: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        "{sev} widening of the mediastinum.",
        "The cardiomediastinal silhouette is {sev_adv} enlarged.",
        "{sev} mediastinal widening.",
    ),
    "Cardiomegaly": (
        "{sev} cardiomegaly.",
        "The heart is {sev_adv} enlarged.",
        "{sev} enlargement of the cardiac silhouette.",
    ),
    "Lung Opacity": (
        "{sev} {loc_adj} airspace opacity.",
        "{sev} patchy opacity{loc}.",
        "There is a {sev} area of increased opacity{loc}.",
    ),
    "Lung Lesion": (
        "{sev} {loc_adj} {kind}.",
        "A {sev} {kind} is seen{loc}.",
        "There is a {sev} {kind}{loc}.",
    ),
    "Edema": (
        "{sev} pulmonary edema.",
        "{sev} interstitial pulmonary edema.",
        "Findings of {sev} pulmonary edema.",
    ),
    "Consolidation": (
        "{sev} {loc_adj} consolidation.",
        "{sev} airspace consolidation{loc}.",
        "There is {sev} consolidation{loc}.",
    ),
    "Pneumonia": (
        "Findings consistent with {loc_adj} pneumonia.",
        "Appearances are compatible with {loc_adj} pneumonia.",
        "{loc_adj} pneumonia.",
    ),
    "Atelectasis": (
        "{sev} {loc_adj} atelectasis.",
        "{sev} atelectasis{loc}.",
        "There is {sev} atelectasis{loc}.",
    ),
    "Pneumothorax": (
        "{sev} {side_adj} pneumothorax.",
        "There is a {sev} {side_adj} pneumothorax.",
        "{sev} pneumothorax{side_loc}.",
    ),
    "Pleural Effusion": (
        "{sev} {side_adj} pleural effusion.",
        "There is a {sev} {side_adj} pleural effusion.",
        "{sev} pleural effusion{side_loc}.",
    ),
    "Pleural Other": (
        "{sev} {side_adj} pleural thickening.",
        "There is {sev} pleural thickening{side_loc}.",
    ),
    "Fracture": (
        "{side_sided} {kind}.",
        "A {side_sided} {kind} is present.",
    ),
}

# Plural forms used when one label has a "bilateral" side.
BILATERAL: dict[str, tuple[str, ...]] = {
    "Pleural Effusion": ("{sev} bilateral pleural effusions.", "There are {sev} bilateral pleural effusions."),
    "Pneumothorax": ("{sev} bilateral pneumothoraces.", "There are {sev} bilateral pneumothoraces."),
}

APICAL_CAP = ("{sev} {side_adj} apical pleural cap.", "There is a {sev} {side_adj} apical pleural cap.")

UNCERTAIN: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": ("Possible mediastinal widening.", "Mediastinal widening cannot be excluded."),
    "Cardiomegaly": ("Possible mild cardiomegaly.", "Borderline enlargement of the cardiac silhouette.",
                     "Cardiomegaly cannot be excluded."),
    "Lung Opacity": ("Possible {loc_adj} opacity.", "Questionable opacity{loc}."),
    "Lung Lesion": ("Possible {loc_adj} {kind}.", "A {kind}{loc} cannot be excluded."),
    "Edema": ("Possible mild pulmonary edema.", "Pulmonary edema cannot be excluded."),
    "Consolidation": ("Possible {loc_adj} consolidation.", "Consolidation{loc} cannot be excluded."),
    "Pneumonia": ("Possible {loc_adj} pneumonia.", "Pneumonia cannot be excluded.",
                  "Findings may represent {loc_adj} pneumonia."),
    "Atelectasis": ("Possible {loc_adj} atelectasis.", "Findings may represent atelectasis{loc}."),
    "Pneumothorax": ("Possible {sev} {side_adj} pneumothorax.", "A {side_adj} pneumothorax cannot be excluded."),
    "Pleural Effusion": ("Possible {sev} {side_adj} pleural effusion.",
                         "A {side_adj} pleural effusion cannot be excluded."),
    "Pleural Other": ("Possible {side_adj} pleural thickening.",),
    "Fracture": ("Possible {side_sided} {kind}.", "A {side_sided} {kind} cannot be excluded."),
    "Support Devices": ("Possible overlying support device.",),
}

DEVICES: dict[str, tuple[str, ...]] = {
    "et_tube": ("Endotracheal tube in place.", "An endotracheal tube is present."),
    "endotracheal_tube": ("Endotracheal tube in place.", "An endotracheal tube is present."),
    "central_line": ("{side_sided} central venous catheter in place.", "A {side_sided} central line is present."),
    "picc": ("{side_sided} PICC line in place.",),
    "pacemaker": ("{side_sided} cardiac pacemaker with leads in place.", "A {side_sided} pacemaker is present."),
    "ng_tube": ("Nasogastric tube in place.", "An enteric tube is present."),
    "tracheostomy": ("Tracheostomy tube in place.",),
    "chest_tube": ("{side_sided} chest tube in place.",),
    "swan_ganz": ("Pulmonary artery catheter in place.",),
    None: ("Support devices are in place.", "Lines and tubes are present.", "Medical devices are present."),
}

# Pertinent negatives by anatomical group; each entry: (labels that must all be 0, phrasings).
NEGATIVE_SINGLE: dict[str, tuple[str, ...]] = {
    "Pneumothorax": ("pneumothorax",),
    "Pleural Effusion": ("pleural effusion", "effusion"),
    "Consolidation": ("focal consolidation", "consolidation"),
    "Edema": ("pulmonary edema",),
    "Pneumonia": ("pneumonia",),
    "Lung Opacity": ("focal opacity",),
    "Lung Lesion": ("suspicious pulmonary nodule", "pulmonary nodule"),
    "Atelectasis": ("atelectasis",),
    "Pleural Other": ("pleural thickening",),
    "Fracture": ("acute fracture", "displaced rib fracture"),
    "Enlarged Cardiomediastinum": ("mediastinal widening",),
}
LUNG_LABELS = ("Lung Opacity", "Consolidation", "Edema", "Pneumonia", "Atelectasis", "Lung Lesion")
LUNGS_CLEAR = ("The lungs are clear.", "Both lungs are clear.", "The lungs are clear bilaterally.")
HEART_NORMAL = ("Heart size is normal.", "Normal heart size.", "The heart is not enlarged.")
SILHOUETTE_NORMAL = ("The cardiomediastinal silhouette is within normal limits.",
                      "Normal cardiomediastinal silhouette.",
                      "The cardiomediastinal silhouette is unremarkable.")
NORMAL_IMPRESSION = ("No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.",
                      "Normal chest radiograph.", "No acute cardiopulmonary disease.")

# Core negatives that radiologists state almost always; the rest only sometimes.
CORE_NEGATIVES = ("Pneumothorax", "Pleural Effusion", "Consolidation")
OPTIONAL_NEG_P = {"Edema": 0.5, "Pneumonia": 0.15, "Lung Opacity": 0.2, "Lung Lesion": 0.2,
                   "Atelectasis": 0.1, "Pleural Other": 0.1, "Fracture": 0.35,
                   "Enlarged Cardiomediastinum": 0.3}

LUNG_GROUP = ("Lung Opacity", "Consolidation", "Pneumonia", "Atelectasis", "Edema", "Lung Lesion")
PLEURA_GROUP = ("Pleural Effusion", "Pneumothorax", "Pleural Other")
HEART_GROUP = ("Cardiomegaly", "Enlarged Cardiomediastinum")

OTHER_PHRASES: dict[str, tuple[str, ...]] = {
    "emphysema": ("Hyperinflated lungs with emphysematous changes.", "Emphysema."),
    "fibrosis": ("Interstitial fibrotic changes.", "Pulmonary fibrosis."),
    "hernia": ("Hiatal hernia.",),
    "hiatal hernia": ("Hiatal hernia.",),
    "scoliosis": ("Scoliosis of the thoracic spine.", "Thoracic scoliosis."),
    "aortic elongation": ("Elongation of the thoracic aorta.", "Unfolded thoracic aorta."),
    "calcified granuloma": ("Calcified granuloma.",),
    "granuloma": ("Calcified granuloma.",),
    "kyphosis": ("Thoracic kyphosis.",),
}
