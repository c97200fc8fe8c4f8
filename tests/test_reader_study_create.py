"""Creating reader studies: sampling, blinding, settings checks, bad input, and the CLI."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")
from _reader_data import create_tiny_study, make_manifests  # noqa: E402
from PIL import Image  # noqa: E402

from chexgen.cli import main  # noqa: E402
from chexgen.data.imageio import read_png_text  # noqa: E402
from chexgen.data.manifest import read_manifest, write_manifest  # noqa: E402
from chexgen.errors import ChexgenError  # noqa: E402
from chexgen.reader_study.images import check_png_pixels_only, encode_blinded_png, png_chunks  # noqa: E402
from chexgen.reader_study.study import (  # noqa: E402
    StudySettings,
    SyntheticSource,
    allocate_cases,
    create_study,
    load_key,
    load_study,
    rater_order,
    stratum_of,
)


def _settings(real, syn, **kw) -> StudySettings:
    base = dict(real=str(real), synthetic=[SyntheticSource(str(p), m) for p, m in zip(syn, ("alpha", "beta"))],
                raters=["ann", "bob"], cases=6, image_size=64)
    base.update(kw)
    return StudySettings(**base)


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_study_layout_items_and_blinding(tmp_path):
    study, tokens = create_tiny_study(tmp_path, cases=6)
    assert set(tokens) == {"ann", "bob", "lead"}
    key = load_key(study)
    assert len(key["cases"]) == 6 and len(key["items"]) == 18
    per_case = Counter(it["case"] for it in key["items"])
    assert set(per_case.values()) == {3}  # real + alpha + beta for every case
    for case in key["cases"]:
        sources = {it["source"]: it for it in key["items"] if it["case"] == case["case"]}
        assert set(sources) == {"real", "alpha", "beta"}
        assert sources["real"]["record_id"] == case["real_id"]
        # the synthetic images of a case were generated from that case's record
        assert sources["alpha"]["record_id"] == "alpha-" + case["real_id"][5:] + "-0"
        assert len({it["text"] for it in sources.values()}) == 1
    # the source files were 16-bit 40x48 (real) and 8-bit 32x32 with text chunks (synthetic) ...
    src = tmp_path / "data" / "alpha" / "syn-000-0.png"
    assert read_png_text(src)["chexgen:synthetic"] == "true"
    # ... every served image is an 8-bit 64x64 gray PNG of pixels only, named by an opaque id
    files = sorted((study.root / "images").iterdir())
    assert len(files) == 18
    for f in files:
        data = f.read_bytes()
        check_png_pixels_only(data, size=64)
        assert b"chexgen" not in data and b"tEXt" not in data
        with Image.open(f) as im:
            assert im.mode == "L" and im.size == (64, 64) and not im.info
    assert {f.stem for f in files} == {it["id"] for it in key["items"]}
    # the public study file names no model per item and holds no answer key
    meta = json.loads((study.root / "study.json").read_text())
    assert "items" not in meta and "cases" not in meta
    assert _leftovers(tmp_path) == []


def test_blinded_png_differs_only_in_pixels():
    a = encode_blinded_png(np.full((8, 8), 0.5))
    assert [k for k, _ in png_chunks(a)] == ["IHDR", "IDAT", "IEND"]
    with pytest.raises(ValueError, match="beyond the pixels"):
        import io

        buf = io.BytesIO()
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("chexgen:synthetic", "true")
        Image.new("L", (8, 8)).save(buf, format="PNG", pnginfo=info)
        check_png_pixels_only(buf.getvalue())
    with pytest.raises(ValueError, match="8-bit gray"):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((8, 8), np.uint16)).save(buf, format="PNG")
        check_png_pixels_only(buf.getvalue())


def test_stratified_sampling_covers_findings(tmp_path):
    study, _ = create_tiny_study(tmp_path, cases=6)
    strata = Counter(c["stratum"] for c in load_key(study)["cases"])
    # 12 records over 6 finding patterns: 6 cases give one of each stratum present in the pool
    assert sum(strata.values()) == 6 and len(strata) == 6
    assert strata == Counter(study.meta["strata"])


def test_allocation_rules():
    sizes = {"No Finding": 60, "Pneumothorax": 30, "Fracture": 10}
    assert allocate_cases(sizes, 10) == {"No Finding": 6, "Pneumothorax": 3, "Fracture": 1}
    assert allocate_cases(sizes, 3) == {"No Finding": 1, "Pneumothorax": 1, "Fracture": 1}
    assert allocate_cases({"No Finding": 60, "Pneumothorax": 2, "Fracture": 10}, 12, "equal") == {
        "No Finding": 5, "Pneumothorax": 2, "Fracture": 5}
    with pytest.raises(ChexgenError, match="only 100 real records are eligible"):
        allocate_cases(sizes, 101)


def test_stratum_is_rarest_positive_finding():
    from chexgen.data.manifest import Record

    r = Record(id="x", labels={"Pleural Effusion": 1, "Pneumothorax": 1, "Edema": 0})
    assert stratum_of(r, {"Pleural Effusion": 50, "Pneumothorax": 3}) == "Pneumothorax"
    assert stratum_of(Record(id="y", labels={"Edema": 0}), {}) == "No Finding"


def test_orders_are_seeded_permutations():
    a, b = rater_order(0, 0, 50), rater_order(0, 1, 50)
    assert sorted(a) == list(range(50)) and a != b and rater_order(0, 0, 50) == a and rater_order(1, 0, 50) != a


def test_same_settings_is_a_no_op_other_settings_refused(tmp_path):
    real, syn = make_manifests(tmp_path / "data")
    out = tmp_path / "study"
    made = create_study(_settings(real, syn), out, progress=False)
    before = sorted(p.name for p in (out / "images").iterdir())
    again = create_study(_settings(real, syn), out, progress=False)
    assert again.existed and again.tokens == {} and again.study.uid == made.study.uid
    with pytest.raises(ChexgenError, match=r"other settings \(cases, seed\)"):
        create_study(_settings(real, syn, cases=5, seed=3), out, progress=False)
    # a changed manifest is other settings too
    recs = read_manifest(real)
    recs[0].impression = "changed"
    write_manifest(real, recs)
    with pytest.raises(ChexgenError, match="other settings"):
        create_study(_settings(real, syn), out, progress=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(ChexgenError, match="not a reader study folder"):
        create_study(_settings(real, syn), tmp_path / "junk", progress=False)


def test_unmatched_synthetic_manifest_refused_nothing_created(tmp_path):
    real, syn = make_manifests(tmp_path / "data")
    recs = read_manifest(syn[1])
    for r in recs:
        r.extra["source_id"] = "elsewhere-" + r.id
        r.provenance = {"model": "beta", "prompt": "a prompt no real record has"}
    write_manifest(syn[1], recs)
    with pytest.raises(ChexgenError, match=r"beta.jsonl: none of its 12 records matches"):
        create_study(_settings(real, syn), tmp_path / "study", progress=False)
    assert not (tmp_path / "study").exists() and _leftovers(tmp_path) == []


def test_unreadable_image_refused_nothing_created(tmp_path):
    real, syn = make_manifests(tmp_path / "data")
    for f in (tmp_path / "data" / "beta").iterdir():
        f.write_bytes(b"this is not a png")
    with pytest.raises(ChexgenError, match=r"record 'beta-\d+-0' \(beta\).*syn-\d+-0.png: cannot read image"):
        create_study(_settings(real, syn), tmp_path / "study", progress=False)
    assert not (tmp_path / "study").exists() and _leftovers(tmp_path) == []


def test_settings_errors():
    with pytest.raises(ChexgenError, match="needs real images"):
        StudySettings(real="r", synthetic=[SyntheticSource("s")], raters=["a"], include_real=False).check()
    with pytest.raises(ChexgenError, match="unknown task"):
        StudySettings(real="r", synthetic=[SyntheticSource("s")], raters=["a"], tasks=["vibes"]).check()
    with pytest.raises(ChexgenError, match="rater name"):
        StudySettings(real="r", synthetic=[SyntheticSource("s")], raters=["../x"]).check()


def test_models_filter_and_partial_cases(tmp_path):
    real, syn = make_manifests(tmp_path / "data")
    made = create_study(_settings(real, syn, models=["beta"], tasks=["agreement"], include_real=False), tmp_path / "s1",
                        progress=False)
    assert made.study.meta["models"] == ["beta"] and {i["source"] for i in load_key(made.study)["items"]} == {"beta"}
    with pytest.raises(ChexgenError, match=r"--models \['gamma'\] not found"):
        create_study(_settings(real, syn, models=["gamma"]), tmp_path / "s2", progress=False)
    # drop half of beta's records: by default those cases are not eligible; --partial-cases keeps them
    recs = read_manifest(syn[1])[:6]
    write_manifest(syn[1], recs)
    with pytest.raises(ChexgenError, match="only 6 real records are eligible"):
        create_study(_settings(real, syn, cases=8), tmp_path / "s3", progress=False)
    made = create_study(_settings(real, syn, cases=8, require_all_models=False), tmp_path / "s4", progress=False)
    items = load_key(made.study)["items"]
    assert len(items) == 8 * 2 + sum(1 for i in items if i["source"] == "beta") and \
        0 < sum(1 for i in items if i["source"] == "beta") < 8


def test_cli_create_tokens_add_rater_export(tmp_path, capsys):
    real, syn = make_manifests(tmp_path / "data")
    out = tmp_path / "study"
    argv = ["reader-study", "create", str(out), "--real", str(real), "--synthetic", f"alpha={syn[0]}",
            "--synthetic", f"beta={syn[1]}", "--cases", "4", "--raters", "ann,bob", "--image-size", "64",
            "--base-url", "http://127.0.0.1:9000"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 cases, 12 items per rater" in printed and printed.count("http://127.0.0.1:9000/login#t=") == 3
    assert main(argv) == 0 and "already exists with these settings" in capsys.readouterr().out
    assert main(argv[:-2] + ["--cases", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other settings (cases)" in err and "Traceback" not in err
    assert main(["reader-study", "tokens", str(out), "--rater", "bob"]) == 0
    assert capsys.readouterr().out.count("/login#t=") == 1
    assert main(["reader-study", "tokens", str(out), "--rater", "zed"]) == 2
    assert "no rater 'zed'" in capsys.readouterr().err
    assert main(["reader-study", "add-rater", str(out), "cy"]) == 0
    assert "cy" in capsys.readouterr().out
    assert main(["reader-study", "export", str(out), "--out", str(tmp_path / "a.csv")]) == 0
    assert (tmp_path / "a.csv").read_text().startswith("rater,position,item,agreement")
    assert main(["reader-study", "analyse", str(out)]) == 2
    assert "no answers yet" in capsys.readouterr().err
    assert main(["reader-study", "serve", str(tmp_path / "nothing")]) == 2
    assert "not a reader study folder" in capsys.readouterr().err
    unmatched = tmp_path / "data" / "empty.jsonl"
    write_manifest(unmatched, [{"id": "s1", "image": "alpha/syn-000-0.png", "synthetic": True,
                                "extra": {"source_id": "nobody"}}])
    assert main(["reader-study", "create", str(tmp_path / "s2"), "--real", str(real), "--synthetic", str(unmatched),
                 "--raters", "ann"]) == 2
    assert "none of its 1 records matches" in capsys.readouterr().err
    assert not (tmp_path / "s2").exists()
    assert load_study(out).meta["n_items"] == 12


def test_dicom_and_exif_jpeg_sources_lose_their_headers(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    dcm = get_testdata_file("RG1_UNCI.dcm")
    if dcm is None:
        pytest.skip("pydicom-data not installed")
    real, syn = make_manifests(tmp_path / "data", n_real=2)
    recs = read_manifest(real)
    recs[0].image = dcm
    jpg = tmp_path / "data" / "real" / "exif.jpg"
    exif = Image.Exif()
    exif[0x010F] = "AcmeScanner"  # Make
    exif[0x9286] = "patient 1234"  # UserComment
    Image.fromarray((np.random.default_rng(0).random((50, 40)) * 255).astype(np.uint8)).save(jpg, exif=exif)
    assert b"AcmeScanner" in jpg.read_bytes()
    recs[1].image = str(jpg)
    write_manifest(real, recs)
    made = create_study(_settings(real, syn, cases=2, raters=["ann"]), tmp_path / "study", progress=False)
    key = load_key(made.study)
    for it in key["items"]:
        if it["source"] == "real":
            data = (made.study.root / "images" / it["image"]).read_bytes()
            check_png_pixels_only(data, size=64)
            for marker in (b"DICM", b"AcmeScanner", b"patient 1234", b"Exif", b"eXIf"):
                assert marker not in data


def test_moved_manifest_with_same_content_is_the_same_study(tmp_path):
    real, syn = make_manifests(tmp_path / "data")
    create_study(_settings(real, syn), tmp_path / "study", progress=False)
    moved = tmp_path / "data" / "real-copy.jsonl"
    moved.write_bytes(real.read_bytes())
    assert create_study(_settings(moved, syn), tmp_path / "study", progress=False).existed
