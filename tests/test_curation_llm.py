"""LLM writer and client against a real local HTTP server (127.0.0.1 only) that speaks the OpenAI chat API."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chexgen.curation.llm_client import LLMClient
from chexgen.curation.llm_writer import LLMReportWriter, parse_report
from chexgen.curation.pipeline import curate_records
from chexgen.data.manifest import Record
from chexgen.errors import ChexgenError

PHRASE = {
    "Enlarged Cardiomediastinum": "widened mediastinum", "Cardiomegaly": "cardiomegaly",
    "Lung Opacity": "lung opacity", "Lung Lesion": "pulmonary nodule", "Edema": "pulmonary edema",
    "Consolidation": "consolidation", "Pneumonia": "pneumonia", "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax", "Pleural Effusion": "pleural effusion", "Pleural Other": "pleural thickening",
    "Fracture": "rib fracture", "Support Devices": "support devices",
}


class FakeRadiologist:
    """Server-side behaviour: writes reports from the metadata in the prompt; can fail on purpose."""

    def __init__(self):
        self.requests: list[dict] = []
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.fail_codes: list[int] = []  # answered (in order) before any real answer
        self.sloppy_first_attempt = False  # drop uncertain findings unless the prompt says "(attempt"

    def answer(self, payload: dict) -> tuple[int, dict]:
        with self._lock:
            self.requests.append(payload)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            return self._answer(payload)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, payload: dict) -> tuple[int, dict]:
        if self.fail_codes:
            return self.fail_codes.pop(0), {"error": "busy"}
        system, user = payload["messages"][0]["content"], payload["messages"][-1]["content"]
        if system.startswith("You check"):
            return 200, _chat(json.dumps({"consistent": True, "issues": [], "corrected_report": ""}))
        lines = dict(re.findall(r"^([A-Za-z ]+): (present|absent|uncertain)$", user, re.M))
        sentences = []
        for label, status in lines.items():
            if label in PHRASE and status == "present":
                sentences.append(PHRASE[label].capitalize() + ".")
            elif label in PHRASE and status == "uncertain":
                if self.sloppy_first_attempt and "(attempt" not in user:
                    continue
                sentences.append(f"Possible {PHRASE[label]}.")
        if lines.get("No Finding") == "present":
            sentences.append("No acute cardiopulmonary abnormality.")
        body = " ".join(sentences) or "No comment."
        text = (f"PATIENT INFORMATION: Adult.\nTECHNIQUE: Chest radiograph.\nFINDINGS: {body}\n"
                f"IMPRESSION: {body}")
        return 200, _chat(text)


def _chat(content: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


@pytest.fixture()
def server():
    brain = FakeRadiologist()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/chat/completions"
            code, body = brain.answer(payload)
            data = json.dumps(body).encode()
            self.send_response(code)
            if code == 429:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep test output quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield brain, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _record(**labels) -> Record:
    return Record(id="r1", sex="F", age=60, view="PA", labels=labels)


def test_retries_on_5xx_and_429_then_answers(server, tmp_path):
    brain, url = server
    brain.fail_codes = [500, 429, 503]
    client = LLMClient(url, "fake", cache_dir=tmp_path / "cache", backoff_s=0.01)
    answer = client.chat([{"role": "system", "content": "x"}, {"role": "user", "content": "Cardiomegaly: present"}])
    assert "Cardiomegaly." in answer
    assert client.requests_sent == 4 and len(brain.requests) == 4


def test_gives_up_after_max_retries_and_does_not_retry_client_errors(server):
    brain, url = server
    brain.fail_codes = [500] * 10
    client = LLMClient(url, "fake", backoff_s=0.001, max_retries=2)
    with pytest.raises(ChexgenError, match="gave up after 3 attempts"):
        client.chat([{"role": "user", "content": "hi"}])
    brain.fail_codes = [400]
    sent = client.requests_sent
    with pytest.raises(ChexgenError, match="HTTP 400"):
        client.chat([{"role": "user", "content": "hi"}])
    assert client.requests_sent == sent + 1


def test_cache_means_a_rerun_never_pays_twice(server, tmp_path):
    brain, url = server
    writer = LLMReportWriter(LLMClient(url, "fake", cache_dir=tmp_path / "cache"))
    rec = _record(**{"Pleural Effusion": 1, "No Finding": 0})
    first = writer.write(rec)
    n = len(brain.requests)
    assert n == 2  # generation + QC fix pass
    again = LLMReportWriter(LLMClient(url, "fake", cache_dir=tmp_path / "cache")).write(rec)
    assert again.text == first.text and len(brain.requests) == n
    assert "pleural effusion" in first.impression.lower()


def test_rate_limit_spaces_requests(server):
    _, url = server
    client = LLMClient(url, "fake", rate_per_s=20, workers=4)
    start = time.monotonic()
    answers = client.chat_many([[{"role": "user", "content": f"Edema: present {i}"}] for i in range(6)])
    assert len(answers) == 6
    assert time.monotonic() - start >= 5 / 20 - 0.01


def test_rule_check_decides_and_failed_llm_reports_are_rewritten_with_feedback(server, tmp_path):
    brain, url = server
    brain.sloppy_first_attempt = True
    writer = LLMReportWriter(LLMClient(url, "fake", cache_dir=tmp_path / "c"), fix_pass=False)
    rec = _record(**{"Cardiomegaly": 1, "Pneumonia": -1, "No Finding": 0})
    out, rejects, stats = curate_records([rec], writer, max_attempts=3, llm_check=writer.check)
    assert stats.rewritten == 1 and stats.flagged == 0 and not rejects
    assert "Possible pneumonia" in out[0].report
    assert out[0].extra["qc"]["attempts"] == 2 and out[0].extra["qc"]["llm"]["consistent"] is True
    retry_prompt = [p for p in brain.requests if "(attempt 2)" in p["messages"][-1]["content"]][0]
    assert "Pneumonia: metadata uncertain, report not stated" in retry_prompt["messages"][-1]["content"]


def test_curation_batches_llm_requests(server, tmp_path):
    brain, url = server
    brain.delay = 0.05
    writer = LLMReportWriter(LLMClient(url, "fake", workers=4), fix_pass=False)
    recs = [Record(id=f"b{i}", labels={"Edema": 1, "No Finding": 0}) for i in range(8)]
    out, rejects, stats = curate_records(recs, writer)
    assert len(out) == 8 and stats.passed_first == 8 and not rejects
    assert brain.max_in_flight >= 2 and len(brain.requests) == 8


def test_missing_configuration_is_a_clear_error(monkeypatch):
    for var in ("CHEXGEN_LLM_BASE_URL", "OPENAI_BASE_URL", "CHEXGEN_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ChexgenError, match="base URL"):
        LLMClient.from_env(model="m")


def test_parse_report_sections():
    s = parse_report("**FINDINGS:** Small effusion.\nIMPRESSION: Effusion.")
    assert s == {"FINDINGS": "Small effusion.", "IMPRESSION": "Effusion."}


def test_curate_command_with_llm_writer_and_cache(server, tmp_path):
    from chexgen.cli import main
    from chexgen.data.manifest import read_manifest

    brain, url = server
    args = ["curate", "--source", "nih", "--limit", "4", "--writer", "llm", "--llm-base-url", url,
            "--llm-model", "fake", "--llm-qc", "--tokenizer", "none", "--no-plots", "--out", str(tmp_path / "l.jsonl")]
    assert main(args) == 0
    recs = read_manifest(tmp_path / "l.jsonl")
    assert len(recs) == 4 and all(r.extra["qc"]["writer"] == "llm" and r.extra["qc"]["llm"]["consistent"] for r in recs)
    assert "Cardiomegaly." in recs[0].report
    sent = len(brain.requests)
    assert main(args) == 0 and len(brain.requests) == sent  # the rerun is answered from the cache
    assert (tmp_path / "l_llm_cache").is_dir()
