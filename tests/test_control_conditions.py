"""Condition rendering: palette, SIIM RLE, masks, boxes, round trips on real torchxrayvision data."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexgen.data.condition_sources import (
    read_box_csv,
    read_box_file,
    read_coco,
    read_mask_folder,
    read_rle_csv,
    write_coco,
)
from chexgen.data.conditions import (
    PALETTE,
    FrameToSquare,
    LabelledMask,
    RecordConditionRenderer,
    decode_rle,
    encode_rle,
    extract_boxes,
    load_label_map,
    load_mask,
    record_condition,
    render_condition,
    resize_mask,
    resolve_class,
)
from chexgen.data.imageio import fit_square
from chexgen.data.manifest import Box, Mask, Record
from chexgen.errors import ChexgenError


def _xrv_data(name: str) -> Path:
    import torchxrayvision

    path = Path(os.path.dirname(torchxrayvision.__file__)) / "data" / name
    if not path.is_file():  # pragma: no cover - depends on the installed wheel
        pytest.skip(f"torchxrayvision does not ship {name}")
    return path


# ---------------------------------------------------------------------------------------------- palette
def test_palette_levels_distinct_and_aliases_resolve():
    values = [c.value for c in PALETTE]
    assert len(set(values)) == len(values) == 16
    assert min(np.diff(sorted(values))) >= 1 / 16 - 1e-9 and max(values) <= 1.0
    assert resolve_class("Effusion").name == "Pleural Effusion"
    assert resolve_class("Nodule/Mass").name == "Lung Lesion"
    assert resolve_class("rib_3_left").name == "ribs"
    assert resolve_class("lung_right").name == "lungs"
    assert resolve_class("pneumothorax").name == "Pneumothorax"
    # phantom cohort mask names
    assert resolve_class("finding_0_pleural_effusion").name == "Pleural Effusion"
    assert resolve_class("finding_2_nodule").name == "Lung Lesion"
    assert resolve_class("device_1_et_tube").name == "Support Devices"
    assert resolve_class("rib_left_12").name == "ribs"
    with pytest.raises(ChexgenError, match="unknown condition class 'Unicorn'"):
        resolve_class("Unicorn")


# ---------------------------------------------------------------------------------------------- RLE
def test_rle_round_trip_and_siim_orientation():
    mask = np.zeros((6, 5), bool)  # height 6, width 5
    mask[1:3, 3] = True  # column 3, rows 1-2
    mask[5, 4] = True
    rle = encode_rle(mask)
    # column-major flat index: column 3 row 1 = 3*6+1 = 19; then (4*6+5)=29 -> relative start 29-21=8
    assert rle == "19 2 8 1"
    assert np.array_equal(decode_rle(rle, width=5, height=6), mask)
    assert encode_rle(np.zeros((4, 4), bool)) == "-1"
    assert not decode_rle("-1", 4, 4).any()


@pytest.mark.parametrize("bad", ["1 2 3", "a b", "0 5 30 2", "-3 2"])
def test_rle_errors(bad):
    with pytest.raises(ChexgenError, match="RLE"):
        decode_rle(bad, 4, 4, where="row 7")


def test_real_siim_masks_render_at_any_size():
    path = _xrv_data("siim-pneumothorax-train-rle.csv.gz")
    conds = read_rle_csv(path, limit=60)
    assert len(conds) == 60 and all(c.masks[0].mask.any() for c in conds)
    assert len(read_rle_csv(path, limit=10, include_empty=True)) == 10
    # Each decoded SIIM string re-encodes to itself (single-row images).
    with gzip.open(path, "rt") as f:
        rows = [r for r in csv.reader(f)][1:400]
    ids = [r[0] for r in rows]
    single = [r for r in rows if r[1].strip() != "-1" and ids.count(r[0]) == 1][:20]
    for image_id, rle in single:
        assert encode_rle(decode_rle(rle, 1024, 1024)) == rle.strip()

    total = np.zeros((1024, 1024))
    for cond in conds:
        total += cond.masks[0].mask
    value = resolve_class("Pneumothorax").value
    for size in (64, 100, 256):
        acc = np.zeros((size, size))
        for cond in conds[:60]:
            img = render_condition(size, cond.masks, frame=(cond.width, cond.height))
            drawn = np.isclose(img, value)
            assert set(np.unique(img)) <= {0.0, np.float32(value)}
            frac_src = cond.masks[0].mask.mean()
            assert drawn.any()
            assert abs(drawn.mean() - frac_src) < 0.02 + 0.5 * frac_src
            acc += drawn
        # Anatomy check (catches a transposed decoder): pneumothoraces sit in the two lungs, most
        # in the upper half; the mediastinum (central columns) is nearly free of them.
        cols = acc.sum(0) / acc.sum()
        rows_ = acc.sum(1) / acc.sum()
        mid = slice(int(size * 0.46), int(size * 0.54))
        assert cols[mid].mean() < 0.5 * cols.max()
        assert rows_[: size // 2].sum() > 0.6


def test_real_nih_boxes_render_and_round_trip_at_any_size():
    conds = read_box_csv(_xrv_data("BBox_List_2017.csv.gz"))
    assert sum(len(c.boxes) for c in conds) == 984
    labels = {b.label for c in conds for b in c.boxes}
    assert {"Effusion", "Infiltrate", "Mass", "Nodule"} <= labels
    for size in (128, 300):
        scale = size / 1024
        for cond in conds[::3]:
            for box in cond.boxes:  # one box at a time: boxes of one image may overlap
                img = render_condition(size, boxes=[box], frame=(1024, 1024))
                (got,) = extract_boxes(img)
                assert got.label == resolve_class(box.label).name
                for a, b in zip((got.x0, got.y0, got.x1, got.y1), (box.x0, box.y0, box.x1, box.y1)):
                    assert abs(a - b * scale) <= 1.0


# ---------------------------------------------------------------------------------------------- boxes
def test_box_round_trip_several_boxes_within_a_pixel():
    rng = np.random.default_rng(0)
    classes = [c.name for c in PALETTE if c.kind == "finding"]
    for trial in range(20):
        size = int(rng.integers(64, 300))
        boxes = []
        # Non-overlapping boxes on a coarse grid of cells, fractional coordinates.
        cells = rng.permutation(9)[: int(rng.integers(1, 5))]
        for cell in cells:
            cx, cy = (cell % 3) * size / 3, (cell // 3) * size / 3
            x0, y0 = cx + rng.uniform(1, size / 9), cy + rng.uniform(1, size / 9)
            x1, y1 = x0 + rng.uniform(2, size / 6), y0 + rng.uniform(2, size / 6)
            boxes.append(Box(str(rng.choice(classes)), x0, y0, x1, y1))
        got = extract_boxes(render_condition(size, boxes=boxes, frame=(size, size)))
        assert len(got) == len(boxes)
        want = sorted(boxes, key=lambda b: (round(b.y0), round(b.x0)))
        got = sorted(got, key=lambda b: (b.y0, b.x0))
        for g, w in zip(got, want):
            assert g.label == w.label
            assert max(abs(g.x0 - w.x0), abs(g.y0 - w.y0), abs(g.x1 - w.x1), abs(g.y1 - w.y1)) <= 1.0


def test_box_edge_cases():
    # Partly outside: clipped (documented), not an error.
    img = render_condition(100, boxes=[Box("Nodule", -20, 90, 10, 130)], frame=(100, 100))
    (got,) = extract_boxes(img)
    assert (got.x0, got.y0, got.x1, got.y1) == (0, 90, 10, 100)
    # A sub-pixel box after downscaling still covers one pixel.
    (tiny,) = extract_boxes(render_condition(32, boxes=[Box("Nodule", 500, 500, 503, 503)], frame=(1024, 1024)))
    assert (tiny.x1 - tiny.x0, tiny.y1 - tiny.y0) == (1, 1)
    # A small box drawn inside a big one stays visible (largest first).
    both = [Box("Nodule", 40, 40, 50, 50), Box("Pleural Effusion", 10, 10, 90, 90)]
    got = {b.label: b for b in extract_boxes(render_condition(100, boxes=both, frame=(100, 100)))}
    assert (got["Lung Lesion"].x0, got["Pleural Effusion"].x1) == (40, 90)
    with pytest.raises(ChexgenError, match="entirely outside"):
        render_condition(64, boxes=[Box("Nodule", 200, 200, 210, 210)], frame=(100, 100))
    with pytest.raises(ChexgenError, match="zero or negative area"):
        render_condition(64, boxes=[Box("Nodule", 20, 20, 20, 30)], frame=(100, 100))
    with pytest.raises(ChexgenError, match="unknown condition class"):
        render_condition(64, boxes=[Box("Dragon", 20, 20, 30, 30)], frame=(100, 100))
    with pytest.raises(ChexgenError, match="width, height"):
        render_condition(64, boxes=[Box("Nodule", 20, 20, 30, 30)])


# ---------------------------------------------------------------------------------------------- masks
def test_mask_loading_errors_and_resize(tmp_path):
    binary = np.zeros((40, 60), np.uint8)
    binary[10:20, 5:25] = 255
    Image.fromarray(binary).save(tmp_path / "ok.png")
    m = load_mask(tmp_path / "ok.png")
    assert m.dtype == bool and m.sum() == 200

    soft = binary.copy()
    soft[10:20, 25] = 128  # anti-aliased edge
    Image.fromarray(soft).save(tmp_path / "soft.png")
    with pytest.raises(ChexgenError, match="soft.png: mask is not binary"):
        load_mask(tmp_path / "soft.png")
    assert load_mask(tmp_path / "soft.png", threshold=0.5).sum() == 210

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ChexgenError, match="empty.png: mask is empty"):
        load_mask(tmp_path / "empty.png")
    assert not load_mask(tmp_path / "empty.png", allow_empty=True).any()
    with pytest.raises(ChexgenError, match="not found"):
        load_mask(tmp_path / "missing.png")

    # Wrong size -> resized to the frame; a one-pixel lesion survives 16x downsampling.
    one = np.zeros((512, 512), bool)
    one[100, 300] = True
    small = resize_mask(one, 32, 32)
    assert small.sum() == 1 and small[100 // 16, 300 // 16]
    img = render_condition(64, [LabelledMask("Pneumothorax", binary > 0)], frame=(120, 80), policy="stretch")
    ys, xs = np.nonzero(img)
    # 60x40 mask -> 120x80 frame (cols 10..50, rows 20..40) -> 64x64: x * 64/120, y * 64/80.
    got = np.array([xs.min(), xs.max() + 1, ys.min(), ys.max() + 1])
    assert np.abs(got - np.array([10 * 64 / 120, 50 * 64 / 120, 16, 32])).max() <= 1.0


def test_multiclass_label_map_and_draw_order(tmp_path):
    lab = np.zeros((64, 64), np.uint8)
    lab[8:56, 4:30] = 1  # right lung (image left)
    lab[8:56, 34:60] = 1
    lab[30:50, 24:40] = 2  # heart
    lab[10:20, 10:20] = 3  # lesion inside the lung
    Image.fromarray(lab).save(tmp_path / "labels.png")
    masks = load_label_map(tmp_path / "labels.png", {1: "lungs", 2: "heart", 3: "Nodule"})
    img = render_condition(64, masks[::-1])  # draw order must not depend on input order
    assert img[15, 15] == pytest.approx(resolve_class("Lung Lesion").value)
    assert img[40, 32] == pytest.approx(resolve_class("heart").value)
    assert img[40, 10] == pytest.approx(resolve_class("lungs").value)
    assert img[2, 2] == 0
    with pytest.raises(ChexgenError, match=r"label value\(s\) \[3\] have no class"):
        load_label_map(tmp_path / "labels.png", {1: "lungs", 2: "heart"})


def test_condition_follows_image_fit_policy():
    # A bright box in a non-square image must land where fit_square puts the same pixels.
    w, h = 90, 60
    image = np.zeros((h, w), np.float32)
    box = Box("Nodule", 50, 20, 70, 40)
    image[20:40, 50:70] = 1.0
    for policy in ("crop", "pad"):
        fitted = fit_square(image, 60, policy)
        cond = render_condition(60, boxes=[box], frame=(w, h), policy=policy)
        ys, xs = np.nonzero(fitted > 0.5)
        (got,) = extract_boxes(cond)
        assert abs(got.x0 - xs.min()) <= 1 and abs(got.x1 - (xs.max() + 1)) <= 1
        assert abs(got.y0 - ys.min()) <= 1 and abs(got.y1 - (ys.max() + 1)) <= 1
    assert FrameToSquare(90, 60, 60, "crop").map_box(Box("Nodule", 0, 0, 10, 10)) is None


def test_record_condition_and_sources(tmp_path):
    mask = np.zeros((32, 32), bool)
    mask[4:12, 20:28] = True
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    rec = Record(id="a", width=32, height=32, boxes=[Box("Effusion", 2, 20, 14, 30)],
                 masks=[Mask("Pneumothorax", path="m.png"), Mask("lungs", rle=encode_rle(~mask), width=32, height=32)])
    cond = record_condition(rec, tmp_path, 32)
    assert cond[8, 24] == pytest.approx(resolve_class("Pneumothorax").value)
    assert cond[25, 5] == pytest.approx(resolve_class("Pleural Effusion").value)
    assert record_condition(Record(id="b"), tmp_path, 32) is None
    only_findings = record_condition(rec, tmp_path, 32, kinds=("finding",), use_boxes=False)
    assert only_findings[8, 24] > 0 and only_findings[25, 5] == 0 and only_findings.max() == cond[8, 24]
    lungs = resolve_class("lungs").value
    assert np.isclose(cond, lungs).any() and not np.isclose(only_findings, lungs).any()

    # the cached-condition renderer: finding masks only, masks / boxes / alternating per record
    value = resolve_class("Pneumothorax").value
    finding_masks = RecordConditionRenderer(kinds=("finding",), style="masks")(rec, tmp_path, 32)
    np.testing.assert_array_equal(finding_masks, only_findings)
    boxes_only = RecordConditionRenderer(kinds=("finding",), style="boxes")(rec, tmp_path, 32)
    assert boxes_only[25, 5] > 0 and boxes_only[8, 24] == 0 and not np.isclose(boxes_only, value).any()
    np.testing.assert_array_equal(RecordConditionRenderer()(rec, tmp_path, 32), cond)
    alt = RecordConditionRenderer(kinds=("finding",), style="alternate")
    styles = [alt.style_for(Record(id=f"case_{i}")) for i in range(200)]
    assert set(styles) == {"masks", "boxes"} and 70 < styles.count("boxes") < 130
    assert styles == [alt.style_for(Record(id=f"case_{i}")) for i in range(200)]  # stable choice
    drawn = alt(rec, tmp_path, 32)
    expected = finding_masks if alt.style_for(rec) == "masks" else boxes_only
    np.testing.assert_array_equal(drawn, expected)
    with pytest.raises(ChexgenError, match="unknown condition style"):
        RecordConditionRenderer(style="outline")
    with pytest.raises(ChexgenError, match="condition kinds"):
        RecordConditionRenderer(kinds=("bone",))

    folder = read_mask_folder(tmp_path)
    assert [c.id for c in folder] == ["m"] and folder[0].masks[0].name == "Pneumothorax"

    (tmp_path / "boxes.csv").write_text("image_id,label,x0,y0,x1,y1,width,height\nq,Mass,1,2,10,12,64,64\n"
                                        "q,Nodule,30,30,40,44,64,64\nr,Effusion,0,0,5,5,64,64\n")
    conds = read_box_file(tmp_path / "boxes.csv")
    assert [len(c.boxes) for c in conds] == [2, 1]
    write_coco(tmp_path / "out.json", [(c.id, c.id + ".png", c.width, c.height, c.boxes) for c in conds])
    back = read_coco(tmp_path / "out.json")
    assert [(b.x0, b.y0, b.x1, b.y1) for b in back[0].boxes] == [(1, 2, 10, 12), (30, 30, 40, 44)]
    assert json.loads((tmp_path / "out.json").read_text())["annotations"][0]["chexgen_label"] == "Mass"
    (tmp_path / "bad.csv").write_text("image_id,label,x0,y0,x1,y1,width,height\nq,Dragon,1,2,10,12,64,64\n")
    with pytest.raises(ChexgenError, match="bad.csv: line 2: unknown condition class"):
        read_box_csv(tmp_path / "bad.csv")
