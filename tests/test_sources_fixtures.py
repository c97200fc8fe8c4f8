"""Adapters written from public documentation, on tiny files the tests write in the documented layouts."""

from __future__ import annotations

import json

import pytest

from chexgen.data.labels import LABELS
from chexgen.data.sources.bimcv import load_bimcv
from chexgen.data.sources.brax import load_brax
from chexgen.data.sources.downstream_sets import (
    MEDFMC_CLASSES,
    load_chestx_det,
    load_medfmc,
    load_object_cxr,
    load_ralo,
    load_vindr_rib,
)
from chexgen.data.sources.mimic import extract_sections, load_mimic, race_group
from chexgen.data.sources.ranzcr import RANZCR_COLUMNS, load_ranzcr
from chexgen.data.sources.vindr import load_vindr_pcxr
from chexgen.errors import ChexgenError

LABEL_HEADER = ",".join(LABELS)

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 FINDINGS:
 
 Small left pleural effusion.  No pneumothorax.
 
 IMPRESSION:
 
 Small left pleural effusion.
"""


@pytest.fixture()
def mimic(tmp_path):
    cxr, iv = tmp_path / "mimic-cxr-jpg", tmp_path / "mimiciv" / "hosp"
    cxr.mkdir()
    iv.mkdir(parents=True)
    (cxr / "mimic-cxr-2.0.0-metadata.csv").write_text(
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime\n"
        "d1,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.5\n"
        "d2,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.5\n"
        "d3,19000001,53000001,CHEST (PORTABLE AP),AP,2539,3050,21900101,1.0\n"
        "d4,19999999,53000002,CHEST (PORTABLE AP),AP,2539,3050,2190xx01,1.0\n")
    blank = "," * (len(LABELS) - 1)
    effusion = ["0.0" if n == "No Finding" else "1.0" if n == "Pleural Effusion" else
                "0.0" if n == "Pneumothorax" else "" for n in LABELS]
    (cxr / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        f"subject_id,study_id,{LABEL_HEADER}\n10000032,50414267,{','.join(effusion)}\n19000001,53000001,1.0{blank}\n")
    (cxr / "mimic-cxr-2.0.0-split.csv").write_text(
        "dicom_id,study_id,subject_id,split\nd1,50414267,10000032,train\nd2,50414267,10000032,train\n"
        "d3,53000001,19000001,test\n")
    rep = cxr / "files" / "p10" / "p10000032"
    rep.mkdir(parents=True)
    (rep / "s50414267.txt").write_text(REPORT)
    (iv / "patients.csv").write_text("subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod\n"
                                     "10000032,F,52,2180,2014 - 2016,\n19000001,M,70,2185,2017 - 2019,\n"
                                     "19999999,M,40,2185,2017 - 2019,\n")
    (iv / "admissions.csv").write_text("subject_id,hadm_id,race\n10000032,1,WHITE\n10000032,2,UNKNOWN\n"
                                       "10000032,3,WHITE - OTHER EUROPEAN\n19000001,4,BLACK/AFRICAN AMERICAN\n")
    return cxr, tmp_path / "mimiciv"


def test_mimic_join_sections_split_and_rejects(mimic):
    cxr, iv = mimic
    res = load_mimic(cxr, mimic_iv=iv)
    ids = [r.id for r in res.records]
    assert ids == ["mimic/d1", "mimic/d2", "mimic/d3"]
    d1, d2, d3 = res.records
    assert d1.view == "PA" and d2.view == "LAT" and d1.split == "train" and d3.split == "test"
    assert d1.sex == "F" and d1.age == 52 and d1.race == "White" and d3.race == "Black" and d3.age == 75
    assert d1.labels["Pleural Effusion"] == 1 and d1.labels["Pneumothorax"] == 0 and d1.labels["Edema"] is None
    assert d1.impression == "Small left pleural effusion." and "FINDINGS: Small left pleural effusion" in d1.report
    assert d3.report is None and d1.image == "files/p10/p10000032/s50414267/d1.jpg"
    assert d1.width == 2544 and d1.height == 3056 and d1.patient_id == "10000032"
    assert [j.line for j in res.rejects] == [4] and "StudyDate" in res.rejects[0].reason
    without_iv = load_mimic(cxr, limit=1)
    assert without_iv.records[0].sex is None and len(without_iv.records) == 1


def test_mimic_helpers_and_missing_files(tmp_path):
    assert extract_sections(REPORT)["IMPRESSION"] == "Small left pleural effusion."
    assert race_group("HISPANIC/LATINO - PUERTO RICAN") == "Hispanic/Latino" and race_group("PATIENT DECLINED") is None
    with pytest.raises(ChexgenError, match="metadata"):
        load_mimic(tmp_path)


def test_vindr_pcxr_votes_and_boxes(tmp_path):
    (tmp_path / "image_labels_train.csv").write_text(
        "image_id,rad_ID,No finding,Pneumonia,Bronchitis,Lung tumor\n"
        "a,R1,0,1,1,0\na,R2,0,1,0,0\na,R3,0,0,1,0\nb,R1,1,0,0,0\nc,R1,0,7,0,0\n")
    (tmp_path / "annotations_train.csv").write_text(
        "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\na,R1,Consolidation,10,20,110,220\n")
    res = load_vindr_pcxr(tmp_path)
    a, b = res.records
    assert a.labels["Pneumonia"] == 1 and a.labels["Lung Lesion"] == 0 and a.labels["Edema"] is None
    assert a.extra["other_findings"] == ["bronchitis"] and a.boxes[0].label == "Consolidation"
    assert b.labels["No Finding"] == 1 and [j.id for j in res.rejects] == ["c"]


def test_brax_ages_and_labels(tmp_path):
    vals = ",".join("1.0" if n == "Cardiomegaly" else "" for n in LABELS)
    bad = ",".join("3.0" if n == "Edema" else "" for n in LABELS)
    (tmp_path / "master_spreadsheet_update.csv").write_text(
        f"PngPath,PatientID,AccessionNumber,ViewPosition,PatientSex,PatientAge,{LABEL_HEADER}\n"
        f"images/1.png,p1,a1,PA,F,85 or more,{vals}\nimages/2.png,p2,a2,AP,M,abc,{vals}\n"
        f"images/3.png,p3,a3,L,M,40,{bad}\nimages/4.png,p4,a4,AP,M,040Y,{vals}\n")
    res = load_brax(tmp_path)
    assert [r.id for r in res.records] == ["brax/images/1", "brax/images/4"]
    assert res.records[0].extra["age_censored"] and res.records[0].age == 85 and res.records[1].age == 40
    assert res.records[0].labels["Cardiomegaly"] == 1 and res.records[0].labels["Edema"] is None
    assert [j.line for j in res.rejects] == [2, 3]


def test_bimcv_labels_participants_and_images(tmp_path):
    labels_dir = tmp_path / "derivatives" / "labels"
    labels_dir.mkdir(parents=True)
    (labels_dir / "labels_covid19_posi.tsv").write_text(
        "ReportID\tLabels\tLabelsLocalizationsBySentence\n"
        "ses-E1\t['COVID 19', 'pleural effusion']\t[['pleural effusion', 'loc right']]\n"
        "ses-E2\t['COVID 19 uncertain']\t[]\nses-E3\t[]\t[]\n")
    (tmp_path / "participants.tsv").write_text("participant\tage\tgender\nsub-S1\t[63, 64]\tF\n")
    img = tmp_path / "sub-S1" / "ses-E1" / "mod-rx"
    img.mkdir(parents=True)
    (img / "sub-S1_ses-E1_run-1_bp-chest_vp-pa_cr.png").write_bytes(b"x")
    res = load_bimcv(tmp_path)
    e1, e2 = res.records
    assert e1.labels["Pneumonia"] == 1 and e1.labels["Pleural Effusion"] == 1 and e1.view == "PA"
    assert e1.age == 63 and e1.sex == "F" and e1.patient_id == "sub-S1"
    assert e1.extra["findings"][0]["side"] == "right"
    assert e2.labels["Pneumonia"] == -1 and e2.image is None
    assert [j.line for j in res.rejects] == [3]


def test_ranzcr_devices_and_lines(tmp_path):
    header = "StudyInstanceUID," + ",".join(RANZCR_COLUMNS) + ",PatientID\n"
    row = lambda uid, on: uid + "," + ",".join("1" if c in on else "0" for c in RANZCR_COLUMNS) + ",p\n"  # noqa: E731
    (tmp_path / "train.csv").write_text(header + row("u1", {"ETT - Abnormal", "CVC - Normal"}) + row("u2", set())
                                        + "u3," + ",".join(["2"] * len(RANZCR_COLUMNS)) + ",p\n")
    (tmp_path / "train_annotations.csv").write_text(
        'StudyInstanceUID,label,data\nu1,ETT - Abnormal,"[[1, 2], [3, 4]]"\nu1,CVC - Normal,"oops"\n')
    res = load_ranzcr(tmp_path)
    u1, u2 = res.records
    assert u1.labels["Support Devices"] == 1 and u2.labels["Support Devices"] == 0 and u1.labels["Edema"] is None
    assert {d["kind"] for d in u1.extra["findings"]} == {"et_tube", "central_line"}
    assert u1.extra["other_findings"] == ["endotracheal tube in abnormal position"]
    assert u1.extra["lines"] == [{"label": "ETT - Abnormal", "points": [[1, 2], [3, 4]]}]
    assert sorted(j.reason.split()[0] for j in res.rejects) == ["annotation", "device"]


def test_downstream_sets(tmp_path):
    rib = {"img": {"0": "a.png", "1": "b.png"}, "R1": {"0": [{"x": 1, "y": 2}, {"x": 3, "y": 4}, {"x": 5, "y": 1}]},
           "L1": {"0": [[1, 1], [2, 2], [3, 1]]}}
    (tmp_path / "annotations.json").write_text(json.dumps(rib))
    r = load_vindr_rib(tmp_path)
    assert len(r.records) == 1 and set(r.records[0].extra["polygons"]) == {"R1", "L1"} and r.rejects[0].line == 2

    (tmp_path / "train.csv").write_text("image_name,annotation\n1.jpg,0 10 10 50 60;2 5 5 20 5 10 30\n2.jpg,\n"
                                        "3.jpg,7 1 2\n")
    o = load_object_cxr(tmp_path)
    assert [len(x.boxes) for x in o.records] == [2, 0] and o.records[0].boxes[1].y1 == 30 and o.rejects[0].line == 3

    det = [{"file_name": "1.png", "syms": ["Effusion", "Emphysema"], "boxes": [[1, 2, 30, 40], [5, 5, 9, 9]],
            "polygons": [[[1, 2], [30, 40], [1, 40]], []]}, {"file_name": "2.png", "syms": [], "boxes": []},
           {"file_name": "3.png", "syms": ["Unicorn"], "boxes": [[1, 1, 2, 2]]}]
    (tmp_path / "ChestX_Det_train.json").write_text(json.dumps(det))
    c = load_chestx_det(tmp_path)
    assert c.records[0].labels["Pleural Effusion"] == 1 and c.records[0].extra["other_findings"] == ["emphysema"]
    assert c.records[1].labels["No Finding"] == 1 and c.records[1].labels["Edema"] is None
    assert "Unicorn" in c.rejects[0].reason

    (tmp_path / "ralo-dataset-metadata.csv").write_text(
        "FileName,Geographic Extent (Mean),Lung Opacity (Mean)\n1.jpg,3.5,2.0\n2.jpg,0,0\n3.jpg,9,1\n")
    ra = load_ralo(tmp_path)
    assert [x.severity for x in ra.records] == [3.5, 0.0] and ra.records[1].labels["Lung Opacity"] == 0
    assert ra.records[0].extra["opacity_score"] == 2.0 and ra.rejects[0].line == 3

    ones = ["1" if c in ("nodule", "TB") else "0" for c in MEDFMC_CLASSES]
    (tmp_path / "chest_train.txt").write_text(f"x1.png {' '.join(ones)}\nx2.png {' '.join(['0'] * 19)}\nx3.png 1 0\n")
    m = load_medfmc(tmp_path)
    assert m.records[0].labels["Lung Lesion"] == 1 and m.records[0].extra["other_findings"] == ["tuberculosis"]
    assert m.records[1].labels["No Finding"] == 1 and m.rejects[0].line == 3


def test_curate_command_on_mimic_with_stage2_selection(mimic, tmp_path, capsys):
    from chexgen.cli import main
    from chexgen.data.manifest import read_manifest

    cxr, iv = mimic
    out = tmp_path / "stage2.jsonl"
    rc = main(["curate", "--source", f"mimic={cxr}", "--mimic-iv", str(iv), "--select", "stage2-train",
               "--out", str(out), "--no-plots"])
    printed = capsys.readouterr().out
    assert rc == 1  # the bad StudyDate row is rejected
    recs = read_manifest(out)
    assert [r.id for r in recs] == ["mimic/d1"]  # PA, p10, real impression under 120 MiniLM tokens
    assert recs[0].report.startswith("FINDINGS: Small left pleural effusion") and recs[0].extra["qc"]["writer"] == "source"
    assert "view is PA" in printed and "impression < 120 tokens" in printed
