"""verify and audit-release end to end on tiny sets made from real radiographs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _release_data import gray_u8, pneumonia_jpegs, write_synthetic_set, write_train_set
from PIL import Image

from chexgen.cli import main
from chexgen.data.manifest import read_manifest, write_manifest
from chexgen.release.dicom import write_synthetic_dicom

CLASSIFIER = Path(__file__).resolve().parents[1] / "src" / "chexgen" / "assets" / "demo" / "classifier"


def test_verify_png_jpeg_dicom_and_corrupt(tmp_path, capsys):
    jpegs = pneumonia_jpegs()
    syn = write_synthetic_set(tmp_path / "syn", [gray_u8(jpegs[0], 256), gray_u8(jpegs[9], 256)])
    recs = read_manifest(syn)
    folder = tmp_path / "check"
    folder.mkdir()
    png = syn.parent / recs[0].image
    (folder / "a.png").write_bytes(png.read_bytes())
    marked = np.asarray(Image.open(png))
    Image.fromarray(marked).save(folder / "b.jpg", quality=85)  # re-saved: metadata gone, watermark stays
    write_synthetic_dicom(folder / "c.dcm", marked, recs[0].provenance, record=recs[0])
    Image.open(jpegs[5]).convert("L").save(folder / "real.jpg")  # a real radiograph
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "broken.dcm").write_bytes(b"\x00" * 200)
    rc = main(["verify", str(folder), "--manifest", str(syn), "--no-progress", "--json", str(tmp_path / "v.json")])
    out = capsys.readouterr().out
    assert rc == 1  # two files skipped
    payload = recs[0].provenance["watermark"]["payload"]
    by_name = {Path(r["path"]).name: r for r in json.loads((tmp_path / "v.json").read_text())["results"]}
    assert set(by_name) == {"a.png", "b.jpg", "c.dcm", "real.jpg"}
    assert by_name["a.png"]["payload"] == payload and by_name["a.png"]["provenance"] == "match"
    assert by_name["a.png"]["synthetic_marked"] and by_name["c.dcm"]["synthetic_marked"]
    assert by_name["c.dcm"]["kind"] == "dicom" and by_name["c.dcm"]["provenance"] == "match"
    assert by_name["b.jpg"]["kind"] == "jpeg" and not by_name["b.jpg"]["synthetic_marked"]
    assert by_name["b.jpg"]["provenance"] == "match: manifest record syn_0000"
    assert not by_name["real.jpg"]["watermark_found"] and by_name["real.jpg"]["provenance"] == "no watermark"
    assert "broken.png" in out and "broken.dcm" in out and "2 skipped" in out
    assert out.count("skipped: ") == 2


def test_verify_mismatch_and_single_file(tmp_path, capsys):
    syn = write_synthetic_set(tmp_path / "syn", [gray_u8(pneumonia_jpegs()[1], 256)])
    rec = read_manifest(syn)[0]
    png = syn.parent / rec.image
    # provenance copied from another image: the payload in the pixels no longer matches
    prov = dict(rec.provenance, watermark=dict(rec.provenance["watermark"], payload="chexgen:000000:000000"))
    from chexgen.data.imageio import save_png

    save_png(tmp_path / "x.png", np.asarray(Image.open(png)) / 255.0,
             text={"chexgen:synthetic": "true", "chexgen:provenance": json.dumps(prov)})
    assert main(["verify", str(tmp_path / "x.png"), "--no-progress"]) == 0
    assert "mismatch" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "nothing")]) == 2


def _audit(tmp_path, syn, train, name):
    return main(["audit-release", str(syn), "--train", str(train), "--out", str(tmp_path / name),
                 "--features", str(CLASSIFIER), "--no-progress", "--salt-file", str(tmp_path / "salt.hex")])


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    jpegs = pneumonia_jpegs()
    train, train_imgs = write_train_set(root / "train", jpegs[:8])
    return root, train, train_imgs, [gray_u8(p, 128) for p in jpegs[8:]]


def test_audit_passes_on_a_clean_set(sets, capsys):
    root, train, _, others = sets
    (root / "salt.hex").write_text("ab" * 32)
    extras = [{"source_id": "sh1:" + "1" * 24, "source_dataset": "real"} for _ in range(4)]
    syn = write_synthetic_set(root / "clean", others[:4], extras=extras)
    rc = _audit(root, syn, train, "clean-audit")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "reidentification: MISSING" in out and "PASS" in out
    released = read_manifest(root / "clean-audit" / "release" / "manifest.jsonl")
    assert [r.id for r in released] == [f"syn_{i:04d}" for i in range(4)]
    assert all((root / "clean-audit" / "release" / r.image).is_file() for r in released)
    html = (root / "clean-audit" / "report.html").read_text()
    assert "Checks" in html and "PASS" in html and "Closest pairs" in html


def test_audit_fails_on_source_id_unwatermarked_and_near_copy(sets, capsys):
    root, train, train_imgs, others = sets
    (root / "salt.hex").write_text("ab" * 32)
    images = [others[0], others[1], others[2], train_imgs[3]]  # the last is a planted copy of a training image
    extras = [{"source_id": "s50414268"}, {}, {}, {}]  # record 0 carries a real study id
    syn = write_synthetic_set(root / "dirty", images, extras=extras, watermark=[True, False, True, True])
    recs = read_manifest(syn)
    recs[2].extra = {"source_id": "sh1:" + "2" * 24}
    write_manifest(syn, recs)
    rc = _audit(root, syn, train, "dirty-audit")
    out = capsys.readouterr().out
    assert rc == 1
    assert "identifiers: FAIL" in out and "marking: FAIL" in out and "memorisation: FAIL" in out
    assert "syn_0000: [identifiers]" in out and "'s50414268' is the id of" in out
    assert "syn_0001: [marking]" in out and "no watermark" in out
    assert "syn_0003: [memorisation] near copy of training image 's50414270'" in out
    released = [r.id for r in read_manifest(root / "dirty-audit" / "release" / "manifest.jsonl")]
    assert released == ["syn_0002"]
    metrics = json.loads((root / "dirty-audit" / "metrics.json").read_text())
    assert metrics["checks"]["memorisation"]["status"] == "fail"
    html = (root / "dirty-audit" / "report.html").read_text()
    assert "Flagged near copies" in html


def test_audit_missing_image_and_salt_inside(sets, capsys):
    root, train, _, others = sets
    syn = write_synthetic_set(root / "gone", others[:2])
    (syn.parent / "images" / "syn_0001.png").unlink()
    (syn.parent / "salt.hex").write_text("cd" * 32)
    rc = main(["audit-release", str(syn), "--train", str(train), "--out", str(root / "gone-audit"),
               "--features", str(CLASSIFIER), "--no-progress", "--salt-file", str(syn.parent / "salt.hex")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "images: FAIL" in out and "syn_0001" in out and "image not found" in out
    assert "salt file" in out and "inside the synthetic set" in out
    assert read_manifest(root / "gone-audit" / "release" / "manifest.jsonl") == []


def test_audit_salts_raw_source_ids_when_asked(sets, tmp_path, capsys):
    root, train, _, others = sets
    syn = write_synthetic_set(tmp_path / "raw", others[:2], extras=[{"source_id": "gen-src-1"},
                                                                   {"source_id": "gen-src-2"}])
    salt = tmp_path / "owner" / "salt.hex"
    args = ["audit-release", str(syn), "--train", str(train), "--out", str(tmp_path / "a"), "--features",
            str(CLASSIFIER), "--no-progress", "--salt-file", str(salt)]
    assert main(args) == 1 and "not a salted hash" in capsys.readouterr().out  # raw ids fail by default
    assert main(args + ["--salt-source-ids"]) == 0, capsys.readouterr().out
    released = read_manifest(tmp_path / "a" / "release" / "manifest.jsonl")
    ids = [r.extra["source_id"] for r in released]
    assert all(i.startswith("sh1:") for i in ids) and len(set(ids)) == 2 and salt.is_file()
    assert [r.extra["source_id"] for r in read_manifest(syn)] == ["gen-src-1", "gen-src-2"]  # working copy kept


def test_audit_scores_re_identification_with_chexgenbench_weights(sets, tmp_path, capsys):
    import torch

    from chexgen.evaluation.reid import SiameseReID

    root, train, train_imgs, others = sets
    torch.manual_seed(0)
    net = SiameseReID()
    with torch.no_grad():  # same patient only for (nearly) identical embeddings: sigmoid(3 - 50 * sum|a - b|)
        net.fc_end.weight.fill_(-50.0)
        net.fc_end.bias.fill_(3.0)
    weights = tmp_path / "ResNet-50_epoch11_data_handling_RPN.pth"
    torch.save(net.state_dict(), weights)  # a plain state dict, as CheXGenBench ships it
    syn = write_synthetic_set(tmp_path / "syn", [others[0], train_imgs[2]])  # the second: a training image
    (tmp_path / "salt.hex").write_text("ab" * 32)
    rc = main(["audit-release", str(syn), "--train", str(train), "--out", str(tmp_path / "audit"), "--features",
               str(CLASSIFIER), "--no-progress", "--salt-file", str(tmp_path / "salt.hex"), "--reid-model",
               str(weights), "--require-reid"])
    out = capsys.readouterr().out
    assert rc == 1 and "reidentification: FAIL" in out
    assert "syn_0001: [reidentification] re-identification score" in out and "syn_0000: [reidentification]" not in out
    check = json.loads((tmp_path / "audit" / "metrics.json").read_text())["checks"]["reidentification"]
    assert check["status"] == "fail" and check["n_failed"] == 1
    (tmp_path / "junk.pth").write_bytes(b"not a model")
    rc = main(["audit-release", str(syn), "--train", str(train), "--out", str(tmp_path / "bad"), "--features",
               str(CLASSIFIER), "--no-progress", "--salt-file", str(tmp_path / "salt.hex"), "--reid-model",
               str(tmp_path / "junk.pth")])
    err = capsys.readouterr().err
    assert rc == 2 and "neither TorchScript" in err and not (tmp_path / "bad").exists()
