"""kill -9 of a live reader-study server in the middle of answers: nothing that was answered is lost."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from _reader_data import create_tiny_study, free_port, start_server, stop_server  # noqa: E402

from chexgen.reader_study import storage  # noqa: E402


def _session(base: str, token: str) -> tuple[httpx.Client, str]:
    c = httpx.Client(base_url=base, timeout=10, follow_redirects=True)
    r = c.post("/login", data={"token": token})
    assert r.status_code == 200 and r.url.path == "/read"
    return c, re.search(r'name="csrf-token" content="([0-9a-f]+)"', r.text).group(1)


def _answer_loop(base, token, confirmed, stop, errors):
    """Answer items as fast as possible; record each answer the server confirmed (HTTP 200)."""
    try:
        c, csrf = _session(base, token)
        while not stop.is_set():
            state = c.get("/api/state").json()
            if state["current"] is None:
                return
            item = c.get(f"/api/item/{state['current']}").json()["item"]
            score = (state["current"] % 5) - 2
            body = {"item": item, "agreement": score, "realism": "real", "confidence": 1 + state["current"] % 3}
            r = c.post("/api/answer", json=body, headers={"X-CSRF-Token": csrf})
            if r.status_code == 200:
                confirmed.append((item, score))
    except httpx.HTTPError:
        return  # the server was killed under us
    except Exception as e:  # pragma: no cover - reported by the test
        errors.append(repr(e))


def test_kill_9_loses_no_answer(tmp_path):
    study, tokens = create_tiny_study(tmp_path, raters=("ann", "bob"), cases=12, image_size=64)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(study.root, port, tmp_path / "server.log")
    confirmed = {"ann": [], "bob": []}
    stop, errors = threading.Event(), []
    threads = [threading.Thread(target=_answer_loop, args=(base, tokens[n], confirmed[n], stop, errors))
               for n in ("ann", "bob")]
    try:
        for t in threads:
            t.start()
        deadline = time.time() + 60
        while sum(len(v) for v in confirmed.values()) < 20 and time.time() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: both clients are posting
        proc.wait(10)
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        stop_server(proc)
    assert errors == []
    assert "Bound to 127.0.0.1 only" in (tmp_path / "server.log").read_text()
    n_confirmed = {n: len(v) for n, v in confirmed.items()}
    assert sum(n_confirmed.values()) >= 20 and all(v < 36 for v in n_confirmed.values())

    # the database file is intact, and every confirmed answer is in it with its value
    con = sqlite3.connect(study.root / "study.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    engine = storage.make_engine(study.db_url())
    with storage.make_sessionmaker(engine)() as s:
        stored = {}
        for r in storage.answer_rows(s):
            stored.setdefault(r["rater"], {})[r["item"]] = r["agreement"]
    for name, answers in confirmed.items():
        got = stored.get(name, {})
        for item, score in answers:
            assert got.get(item) == score
        # at most the one answer in flight when the server died was saved without its reply
        assert len(answers) <= len(got) <= len(answers) + 1
    engine.dispose()

    # a restarted server resumes each rater after their last saved answer; finishing adds no duplicate
    proc = start_server(study.root, port, tmp_path / "server.log")
    try:
        for name in ("ann", "bob"):
            c, csrf = _session(base, tokens[name])
            assert c.get("/api/state").json()["answered"] == len(stored.get(name, {}))
            left = []
            _answer_loop(base, tokens[name], left, threading.Event(), errors)
            assert c.get("/api/state").json() == {"answered": 36, "total": 36, "current": None,
                                                  "tasks": ["agreement", "realism", "comment"]}
    finally:
        stop_server(proc)
    with storage.make_sessionmaker(storage.make_engine(study.db_url()))() as s:
        rows = storage.answer_rows(s)
    assert len(rows) == 72 and len({(r["rater"], r["item"]) for r in rows}) == 72
