"""Source adapters on row subsets of the real metadata shipped in torchxrayvision, plus bad-input cases."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from chexgen.data.sources._common import parse_age, parse_view, xrv_data_file
from chexgen.data.sources.chexpert import load_chexpert
from chexgen.data.sources.nih import load_nih
from chexgen.data.sources.nlmcxr import load_nlmcxr, mesh_to_labels
from chexgen.data.sources.padchest import load_padchest, map_padchest_labels, parse_sentence_groups
from chexgen.data.sources.registry import SOURCES, get_source, load_source
from chexgen.data.sources.siim import load_siim, merge_runs, parse_rle, rle_decode, rle_encode
from chexgen.data.sources.vindr import load_vindr_cxr, reader_vote
from chexgen.errors import ChexgenError


def test_nih_real_rows_map_labels_boxes_and_other_findings():
    res = load_nih(limit=3000)
    assert len(res.records) == 3000 and not res.rejects
    first = res.records[0]
    assert first.id == "nih/00000001_000" and first.labels["Cardiomegaly"] == 1
    assert first.labels["Fracture"] is None and first.labels["Pleural Effusion"] == 0
    assert first.sex == "M" and first.age == 57 and first.view == "PA"
    hernia = next(r for r in res.records if "Hernia" in r.extra["source_labels"])
    assert "hiatal hernia" in hernia.extra["other_findings"]
    boxed = [r for r in res.records if r.boxes]
    assert boxed, "the BBox list covers some of the first 3000 images"
    for r in boxed:
        for d in r.extra.get("findings", []):
            assert r.labels[d["label"]] == 1 and d["side"] in ("left", "right", "bilateral", None)


def test_nih_bad_rows_are_rejected_with_row_and_reason(tmp_path):
    src = gzip.open(xrv_data_file("Data_Entry_2017_v2020.csv.gz"), "rt").read().splitlines()[:6]
    src[2] = src[2].replace(",58,M,", ",fifty,M,")
    src[3] = src[3].replace("Cardiomegaly", "Dragon")
    path = tmp_path / "Data_Entry_2017_v2020.csv"
    path.write_text("\n".join(src) + "\n")
    res = load_nih(path)
    reasons = {j.line: j.reason for j in res.rejects}
    assert set(reasons) == {2, 3}
    assert "fifty" in reasons[2] and "Dragon" in reasons[3]
    assert len(res.records) == 3
    (tmp_path / "bad.csv").write_text("Image Index,Finding Labels\na.png,Edema\n")
    with pytest.raises(ChexgenError, match="missing column.*Patient Age"):
        load_nih(tmp_path / "bad.csv")


def test_nih_missing_images_rejected_when_checked(tmp_path):
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    (tmp_path / "images_001" / "images" / "00000001_000.png").write_bytes(b"x")
    res = load_nih(limit=5, image_root=tmp_path, check_images=True)
    assert len(res.records) == 1 and len(res.rejects) == 4
    assert res.records[0].image.endswith("images_001/images/00000001_000.png")
    assert all("not found" in j.reason for j in res.rejects)


def test_chexpert_real_rows_keep_uncertain_and_views(tmp_path):
    res = load_chexpert(limit=2000)
    assert len(res.records) == 2000
    second = res.records[1]
    assert second.labels["Cardiomegaly"] == -1 and second.labels["Lung Opacity"] == 1
    assert second.labels["Pneumonia"] is None and second.view == "AP" and second.sex == "F"
    assert {r.view for r in res.records} >= {"AP", "PA", "LAT"}
    assert second.patient_id == "patient00002" and second.split == "train"
    lines = gzip.open(xrv_data_file("chexpert_train.csv.gz"), "rt").read().splitlines()[:4]
    lines[1] = lines[1].replace(",1.0,", ",2.0,", 1)
    lines[2] = lines[2].replace(",87,", ",old,")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    bad = load_chexpert(tmp_path / "train.csv")
    assert [j.line for j in bad.rejects] == [1, 2]
    assert "not in 1/0/-1" in bad.rejects[0].reason and "old" in bad.rejects[1].reason


def test_padchest_real_rows_ages_localisations_and_devices():
    res = load_padchest(limit=2000)
    assert len(res.records) + len(res.rejects) == 2000
    r = res.records[0]
    assert r.age == 2014 - 1930 and r.sex == "F" and r.view == "PA" and r.labels["No Finding"] == 1
    assert all(v in (0, 1) for v in r.labels.values())
    with_details = [x for x in res.records if x.extra.get("findings")]
    assert with_details
    labels, other, details, _ = map_padchest_labels(
        ["pleural effusion", "NSG tube", "kyphosis"],
        parse_sentence_groups("[['pleural effusion', 'loc left', 'loc costophrenic angle'], ['NSG tube']]"))
    assert labels["Pleural Effusion"] == 1 and labels["Support Devices"] == 1 and labels["No Finding"] == 0
    assert other == ["kyphosis"]
    assert {"label": "Pleural Effusion", "side": "left", "zone": "lower", "severity": None, "kind": None} in details
    assert any(d["kind"] == "ng_tube" for d in details)


def test_vindr_reader_votes_and_boxes():
    assert [reader_vote(v, 3) for v in (0, 1, 2, 3)] == [0, -1, 1, 1]
    res = load_vindr_cxr(limit=3000)
    assert res.records and not res.rejects
    r = next(x for x in res.records if x.boxes)
    assert r.extra["readers"] >= 1 and all(b.source.startswith("R") for b in r.boxes)
    assert r.labels["Edema"] is None and r.labels["Pleural Effusion"] in (0, 1, -1)


def test_siim_rle_roundtrip_merge_and_malformed(tmp_path):
    mask = np.zeros((1024, 1024), bool)
    mask[100:200, 50:60] = True
    mask[300:310, 900:1000] = True
    rle = rle_encode(mask)
    assert (rle_decode(rle) == mask).all()
    a, b = np.zeros_like(mask), np.zeros_like(mask)
    a[10:50, 10:20] = True
    b[30:80, 15:40] = True  # overlaps a
    runs = np.concatenate([parse_rle(rle_encode(a)), parse_rle(rle_encode(b))])
    assert (rle_decode(merge_runs(runs)) == (a | b)).all()
    res = load_siim(limit=400)
    pos = [r for r in res.records if r.labels["Pneumothorax"] == 1]
    assert pos and all(r.masks[0].rle and r.extra["findings"][0]["side"] in ("left", "right") for r in pos)
    (tmp_path / "train-rle.csv").write_text("ImageId, EncodedPixels\nA,-1\nB,5 3 2\nC,1 x\nD,1048570 100\nE,10 5\n")
    bad = load_siim(tmp_path / "train-rle.csv")
    assert [r.id for r in bad.records] == ["siim/A", "siim/E"]
    assert [j.line for j in bad.rejects] == [2, 3, 4]
    assert "even" in bad.rejects[0].reason and "integer" in bad.rejects[1].reason and "past" in bad.rejects[2].reason


def test_nlmcxr_reads_reports_and_mesh():
    res = load_nlmcxr(limit=60)
    assert 50 <= len(res.records) <= 60
    r = res.records[0]
    assert r.report and ("FINDINGS:" in r.report or "IMPRESSION:" in r.report) and r.extra["mesh"]
    labels = mesh_to_labels(["Pleural Effusion/right/small", "Cardiac Shadow/enlarged/mild", "Calcified Granuloma"])
    assert labels["Pleural Effusion"] == 1 and labels["Cardiomegaly"] == 1 and labels["Lung Lesion"] is None


def test_parsers():
    assert parse_age("058Y") == 58 and parse_age("6M") == 0.5 and parse_age(None) is None
    with pytest.raises(ValueError):
        parse_age("abc")
    with pytest.raises(ValueError):
        parse_age(412)
    assert parse_view("POSTEROANTERIOR") == "PA" and parse_view("L") == "LAT" and parse_view("COSTAL") is None


def test_registry_knows_every_source_and_explains_missing_paths():
    for name in ("nih", "chexpert", "padchest", "mimic", "bimcv", "vindr_pcxr", "brax", "ranzcr", "vindr_cxr",
                 "siim", "nlmcxr", "vindr_rib", "object_cxr", "chestx_det", "ralo", "medfmc"):
        assert callable(SOURCES[name].load_function())
    assert get_source("VinDr-CXR").name == "vindr_cxr"
    with pytest.raises(ChexgenError, match="known sources"):
        get_source("nope")
    with pytest.raises(ChexgenError, match="not shipped"):
        load_source("mimic")
    assert len(load_source("nih", limit=10, image_root=None).records) == 10
