"""Curation end to end: real metadata subsets -> checked reports -> manifest, rejects, statistics; selections."""

from __future__ import annotations

import gzip
import json

import pytest

from chexgen.cli import main
from chexgen.curation.output import record_row, write_curated_manifest
from chexgen.curation.pipeline import curate_records
from chexgen.curation.report_writer import Report, ReportWriter, TemplateReportWriter
from chexgen.curation.selections import apply_selection, by_views, format_steps, paper_selection
from chexgen.curation.statistics import compute_stats, write_stats
from chexgen.data.manifest import Record, read_manifest
from chexgen.data.sources._common import xrv_data_file
from chexgen.data.sources.registry import load_source


def _real(n: int = 600) -> list[Record]:
    recs = []
    for name in ("nih", "chexpert", "padchest", "vindr_cxr", "siim"):
        recs += load_source(name, limit=n).records
    return recs


def test_real_metadata_reports_all_pass_qc_and_round_trip(tmp_path):
    records = _real()
    out, rejects, stats = curate_records(records, TemplateReportWriter(seed=1))
    assert stats.written == len(records) and stats.flagged == 0 and not rejects and stats.agreement == 1.0
    assert all(r.extra["qc"]["passed"] and r.report and r.impression for r in out)
    assert all(record_row(r) == r.to_dict() for r in out[:300])
    for suffix in ("jsonl", "parquet"):
        path = tmp_path / f"m.{suffix}"
        write_curated_manifest(path, out)
        back = read_manifest(path)
        assert [b.to_dict() for b in back[:50]] == [r.to_dict() for r in out[:50]] and len(back) == len(out)


def test_several_processes_give_the_same_output(monkeypatch):
    import copy

    from chexgen.curation import pipeline

    monkeypatch.setattr(pipeline, "_MIN_SLICE", 50)
    records = _real(120)
    twin = copy.deepcopy(records)
    one, rej1, st1 = curate_records(records, TemplateReportWriter(seed=4))
    two, rej2, st2 = curate_records(twin, TemplateReportWriter(seed=4), workers=2)
    assert [r.to_dict() for r in one] == [r.to_dict() for r in two] and st1 == st2 and rej1 == rej2 == []


class _Liar(ReportWriter):
    """Always claims a pneumothorax: the QC must flag it."""

    name = "liar"

    def write(self, record: Record) -> Report:
        return Report(findings="Large left pneumothorax.", impression="Large left pneumothorax.",
                      text="FINDINGS: Large left pneumothorax.\nIMPRESSION: Large left pneumothorax.")


def test_failing_reports_are_flagged_and_source_reports_kept():
    rec = Record(id="x", dataset="t", labels={"Pneumothorax": 0, "Edema": 1})
    out, rejects, stats = curate_records([rec], _Liar(), max_attempts=2)
    assert not out and stats.flagged == 1 and "Pneumothorax: metadata absent, report present" in rejects[0].reason
    kept, _, _ = curate_records([Record(id="y", dataset="t", labels={"Edema": 1})], _Liar(), keep_failed=True)
    assert kept[0].extra["qc"]["passed"] is False and kept[0].extra["qc"]["attempts"] == 3
    real = Record(id="z", dataset="mimic", labels={"Edema": 1}, report="FINDINGS: Mild pulmonary edema.")
    out, rejects, stats = curate_records([real], _Liar())
    assert out[0].report == "FINDINGS: Mild pulmonary edema." and out[0].extra["qc"]["writer"] == "source"
    assert stats.source_reports == 1 and stats.source_reports_agreeing == 1 and not rejects


def test_selections_count_every_step():
    recs = [Record(id=f"m{i}", dataset="mimic", view=v, patient_id=p, impression=imp)
            for i, (v, p, imp) in enumerate([("PA", "10000032", "Small effusion."), ("AP", "10000033", "Edema."),
                                             ("PA", "19000001", "Normal."), ("PA", "18000001", "word " * 130),
                                             ("PA", "18000002", None)])]
    recs.append(Record(id="n1", dataset="nih", view="PA", impression="x"))
    count = lambda texts: [len(t.split()) + 2 for t in texts]  # noqa: E731 - whitespace "tokenizer"
    train, steps = paper_selection(recs, "stage2-train", count)
    assert [r.id for r in train] == ["m0"]
    assert [(s.before, s.after) for s in steps] == [(6, 5), (5, 4), (4, 3), (3, 2), (2, 1)]
    test, _ = paper_selection(recs, "stage2-test", count)
    assert [r.id for r in test] == ["m2"]
    kept, st = apply_selection(recs, [("lateral", by_views(["LAT"]))])
    assert kept == [] and "removed" in format_steps(st)


def test_statistics_tables_and_plots(tmp_path):
    out, _, _ = curate_records(_real(150), TemplateReportWriter())
    st = compute_stats(out, count_tokens=lambda texts: [len(t.split()) for t in texts], token_sample=100)
    files = write_stats(st, tmp_path / "stats")
    names = {f.name for f in files}
    assert {"stats.md", "stats.csv", "cases_per_source.png", "label_prevalence.png"} <= names
    md = (tmp_path / "stats" / "stats.md").read_text()
    assert "| cases |" in md and "nih" in md and "report tokens" in md
    assert st.per_source["nih"] == 150 and st.known["nih"]["Fracture"] == 0


def test_curate_command_writes_outputs_and_exit_code_reports_rejects(tmp_path, capsys):
    out = tmp_path / "oc.jsonl"
    rc = main(["curate", "--source", "nih", "--source", "siim", "--limit", "40", "--out", str(out),
               "--tokenizer", "none", "--no-plots"])
    assert rc == 0
    recs = read_manifest(out)
    assert len(recs) == 80 and all(r.report for r in recs)
    assert (tmp_path / "oc_stats" / "stats.md").is_file() and (tmp_path / "oc.rejects.jsonl").read_text() == ""
    lines = gzip.open(xrv_data_file("Data_Entry_2017_v2020.csv.gz"), "rt").read().splitlines()[:5]
    lines[3] = lines[3].replace(",58,M,", ",999,M,")
    (tmp_path / "nih.csv").write_text("\n".join(lines) + "\n")
    rc = main(["curate", "--source", f"nih={tmp_path / 'nih.csv'}", "--out", str(tmp_path / "b.jsonl"),
               "--tokenizer", "none", "--no-plots"])
    assert rc == 1
    rejects = [json.loads(x) for x in (tmp_path / "b.rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"source": "nih", "file": str(tmp_path / "nih.csv"), "line": 3, "id": "nih/00000001_002",
                        "reason": "age 999 is outside 0..120 years"}]
    assert main(["curate", "--source", "mimic", "--out", str(tmp_path / "c.jsonl")]) == 2
    assert "not shipped" in capsys.readouterr().err


@pytest.mark.slow
def test_full_shipped_metadata_all_reports_pass_qc():
    """All ~496k NIH + CheXpert + PadChest rows: every template report reads back exactly (minutes)."""
    records = []
    for name in ("nih", "chexpert", "padchest"):
        records += load_source(name).records
    assert len(records) > 490_000
    _, rejects, stats = curate_records(records, TemplateReportWriter(seed=0))
    assert stats.flagged == 0 and not rejects
