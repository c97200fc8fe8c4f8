"""The shared rejects mechanism: one file format, one summary line, one exit-code rule."""

from __future__ import annotations

import json

from chexgen.data.rejects import EXIT_OK, EXIT_REJECTED, Reject, RejectLog, read_rejects, rejects_path_for


def test_reject_log_writes_jsonl_and_reads_back(tmp_path):
    log = RejectLog()
    assert log.exit_code() == EXIT_OK and log.summary() == "rejected: no records"
    log.add("m.jsonl", 3, "not valid JSON", id=None)
    log.add("nih.csv", 7, "unknown box label 'Dragon'", id="nih/1", source="nih")
    path = log.write(tmp_path / "rejects.jsonl")
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows == [{"file": "m.jsonl", "line": 3, "id": None, "reason": "not valid JSON"},
                    {"file": "nih.csv", "line": 7, "id": "nih/1", "reason": "unknown box label 'Dragon'",
                     "source": "nih"}]
    assert read_rejects(path) == log.entries
    assert log.exit_code() == EXIT_REJECTED == 1
    assert log.summary(path) == f"rejected: 2 records (listed in {path})"
    assert log.ids() == {"nih/1"}


def test_empty_log_overwrites_stale_rejects(tmp_path):
    path = tmp_path / "rejects.jsonl"
    path.write_text('{"file": "old", "line": 1, "id": "x", "reason": "old run"}\n')
    RejectLog().write(path)
    assert path.read_text() == "" and read_rejects(path) == []


def test_read_rejects_skips_a_line_cut_by_a_crash(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(Reject(None, "f", 1, "bad", "a").to_dict()) + '\n{"file": "f", "li')
    assert [r.id for r in read_rejects(path)] == ["a"]


def test_rejects_path_next_to_the_output(tmp_path):
    assert rejects_path_for(tmp_path / "cache") == tmp_path / "cache" / "rejects.jsonl"
    assert rejects_path_for(tmp_path / "openchest.jsonl") == tmp_path / "openchest.rejects.jsonl"
    assert rejects_path_for(tmp_path / "oc.parquet") == tmp_path / "oc.rejects.jsonl"
