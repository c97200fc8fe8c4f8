import json

import pytest

from chexgen.data.labels import LABELS, labels_to_vector, normalize_label_name
from chexgen.data.manifest import Box, Mask, Record, read_manifest, write_manifest
from chexgen.errors import ChexgenError


def _record(i: int, **kw) -> Record:
    return Record(
        id=f"r{i}",
        image=f"images/r{i}.png",
        dataset="phantom",
        split="train",
        view="PA",
        sex="F",
        age=54.0,
        labels={"Pleural Effusion": 1, "Cardiomegaly": 0, "Edema": -1},
        report="Findings: small right pleural effusion.",
        masks=[Mask(name="lungs", path="masks/r0_lungs.png")],
        boxes=[Box(label="Pleural Effusion", x0=3, y0=4, x1=30, y1=40)],
        **kw,
    )


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path, suffix):
    recs = [_record(i) for i in range(3)]
    recs[1].provenance = {"model": "tiny", "seed": 7}
    recs[2].extra = {"site": "A", "per_lung_severity": [1.0, 2.5]}
    path = tmp_path / f"m{suffix}"
    assert write_manifest(path, recs) == 3
    back = read_manifest(path)
    assert back == recs
    assert back[0].resolve(back[0].image, tmp_path) == tmp_path / "images/r0.png"


def _write_lines(path, rows):
    path.write_text("\n".join(json.dumps(r) if not isinstance(r, str) else r for r in rows) + "\n")


@pytest.mark.parametrize(
    "bad,line,fieldname",
    [
        ({"id": "b", "age": "old"}, 2, "age"),
        ({"id": "b", "labels": {"Pleural Effusion": 2}}, 2, "labels.Pleural Effusion"),
        ({"id": "b", "labels": {"Dragon": 1}}, 2, "labels.Dragon"),
        ({"id": "b", "view": "XX"}, 2, "view"),
        ({"id": "b", "boxes": [{"label": "x", "x0": 5, "y0": 0, "x1": 4, "y1": 3}]}, 2, "boxes[0]"),
        ({"id": "b", "masks": [{"name": "m"}]}, 2, "masks[0]"),
        ({"id": ""}, 2, "id"),
    ],
)
def test_validation_names_file_line_and_field(tmp_path, bad, line, fieldname):
    path = tmp_path / "bad.jsonl"
    _write_lines(path, [{"id": "a"}, bad])
    with pytest.raises(ChexgenError) as e:
        read_manifest(path)
    msg = str(e.value)
    assert str(path) in msg and f"line {line}" in msg and f"'{fieldname}'" in msg


def test_invalid_json_and_duplicates(tmp_path):
    path = tmp_path / "m.jsonl"
    _write_lines(path, [{"id": "a"}, "{not json"])
    with pytest.raises(ChexgenError, match="line 2: not valid JSON"):
        read_manifest(path)
    _write_lines(path, [{"id": "a"}, {"id": "a"}])
    with pytest.raises(ChexgenError, match="duplicate id 'a'"):
        read_manifest(path)
    with pytest.raises(ChexgenError, match="not found"):
        read_manifest(tmp_path / "missing.jsonl")


def test_write_is_atomic_on_failure(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [_record(0)])
    before = path.read_text()
    with pytest.raises(ChexgenError):
        write_manifest(path, [_record(1), {"id": "x", "sex": "Q"}])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


def test_label_helpers():
    assert normalize_label_name("pleural_effusion") == "Pleural Effusion"
    assert len(LABELS) == 14
    vec = labels_to_vector({"No Finding": 1, "Edema": -1}, uncertain_as=0.5)
    assert vec[0] == 1.0 and vec[LABELS.index("Edema")] == 0.5 and sum(vec) == 1.5
