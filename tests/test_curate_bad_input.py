"""curate on damaged NIH metadata: whole-file problems stop with one line, bad rows become rejects."""

from __future__ import annotations

import gzip
import json

import pytest

from chexgen.cli import main
from chexgen.data.sources._common import xrv_data_file

BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
GOOD_BOX = "00000001_000.png,Cardiomegaly,100,200,300,250"


@pytest.fixture(scope="module")
def entries() -> list[str]:
    with gzip.open(xrv_data_file("Data_Entry_2017_v2020.csv.gz"), "rt") as f:
        return [next(f).rstrip("\n") for _ in range(6)]  # header + 5 rows (images 00000001_000 .. 00000003_001)


def _curate(tmp_path, entries, boxes=None):
    folder = tmp_path / "nih"
    folder.mkdir(exist_ok=True)
    (folder / "Data_Entry_2017_v2020.csv").write_text("\n".join(entries) + "\n")
    if boxes is not None:
        (folder / "BBox_List_2017.csv").write_text("\n".join([BOX_HEADER, *boxes]) + "\n")
    out = tmp_path / "oc.jsonl"
    rc = main(["curate", "--source", f"nih={folder}", "--out", str(out), "--tokenizer", "none", "--no-plots"])
    rejects_file = tmp_path / "oc.rejects.jsonl"
    rejects = [json.loads(x) for x in rejects_file.read_text().splitlines()] if rejects_file.exists() else None
    return rc, out, rejects


@pytest.mark.parametrize("bad_box, reason", [
    ("00000001_002.png,Effusion,abc,200,100,100", "box x 'abc' is not a number"),
    ("00000001_002.png,Effusion,100", "box y is missing"),
    ("00000001_002.png,Dragon,100,100,50,50", "unknown box label 'Dragon'"),
    ("00000001_002.png,Effusion,1500,1600,50,50", "outside the 1024 x 1024 image"),
    ("00000001_002.png,Effusion,100,100,0,50", "zero-size box"),
])
def test_bad_box_rows_are_rejects(tmp_path, entries, bad_box, reason):
    rc, out, rejects = _curate(tmp_path, entries, [GOOD_BOX, bad_box])
    assert rc == 1
    assert len(rejects) == 1 and reason in rejects[0]["reason"]
    assert rejects[0]["file"].endswith("BBox_List_2017.csv") and rejects[0]["line"] == 2
    assert rejects[0]["id"] == "nih/00000001_002" and rejects[0]["source"] == "nih"
    records = {json.loads(x)["id"]: json.loads(x) for x in out.read_text().splitlines()}
    assert len(records) == 5  # the image itself is kept, without the bad box
    assert "boxes" not in records["nih/00000001_002"] and len(records["nih/00000001_000"]["boxes"]) == 1


@pytest.mark.parametrize("edit, reason", [
    (lambda row: row.replace(",80,M,", ",80,Q,"), "Patient Gender 'Q' is not M or F"),
    (lambda row: row.replace(",M,PA,", ",M,XX,"), "View Position 'XX' is not PA or AP"),
    (lambda row: row.split(",")[0] + ",No Finding,0", "missing value(s)"),
])
def test_bad_entry_rows_are_rejects_not_nulls(tmp_path, entries, edit, reason):
    rows = list(entries)
    rows[4] = edit(rows[4])  # 00000002_000
    rc, out, rejects = _curate(tmp_path, rows)
    assert rc == 1
    assert [(r["line"], r["id"]) for r in rejects] == [(4, "nih/00000002_000")] and reason in rejects[0]["reason"]
    assert len(out.read_text().splitlines()) == 4


def test_unterminated_quote_is_one_line_exit_2(tmp_path, entries, capsys):
    rows = list(entries)
    rows[3] = rows[3].replace("Cardiomegaly|Effusion", '"Cardiomegaly|Effusion')
    rc, out, _ = _curate(tmp_path, rows)
    err = capsys.readouterr().err
    assert rc == 2 and "not a readable CSV" in err and "row 3" in err and "Data_Entry_2017_v2020.csv" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_rerun_removes_temp_files_left_by_a_killed_run(tmp_path, entries):
    stale = tmp_path / ".oc.jsonl.k2x9q0ab.jsonl.tmp"  # what a kill during the manifest write leaves
    stale.write_bytes(b"x" * 1000)
    other = tmp_path / ".unrelated.jsonl.k2x9q0ab.jsonl.tmp"
    other.write_bytes(b"y")
    rc, out, _ = _curate(tmp_path, entries)
    assert rc == 0 and out.is_file()
    assert not stale.exists() and other.exists()
