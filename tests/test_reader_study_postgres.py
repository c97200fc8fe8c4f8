"""The reader study on a real PostgreSQL server (a throwaway cluster), where Debian's postgresql is installed.

Skipped, with the reason, on machines without the server binaries or the psycopg driver.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time

import pytest

pytest.importorskip("psycopg", reason="PostgreSQL driver not installed (pip install 'psycopg[binary]')")
pytest.importorskip("fastapi")
BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
if not BIN:
    pytest.skip("PostgreSQL server binaries absent (apt-get install -y postgresql)", allow_module_level=True)
from _reader_data import create_tiny_study, free_port, login  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from chexgen.errors import ChexgenError  # noqa: E402
from chexgen.reader_study.analysis import analyse_study  # noqa: E402
from chexgen.reader_study.app import create_app  # noqa: E402
from chexgen.reader_study.study import load_key  # noqa: E402


def _as_postgres(*cmd: str) -> list[str]:
    # the server refuses to run as root
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@pytest.fixture()
def pg_url():
    bindir = os.path.dirname(BIN[-1])
    root = tempfile.mkdtemp(prefix="chexgen-pg-")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = os.path.join(root, "data"), free_port()
    subprocess.run(_as_postgres(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"), check=True,
                   capture_output=True)
    subprocess.run(_as_postgres(f"{bindir}/pg_ctl", "-D", data, "-o", f"-F -k {root} -p {port} -h ''", "-w",
                                "-l", os.path.join(root, "log"), "start"), check=True, capture_output=True)
    try:
        for _ in range(50):
            if subprocess.run([f"{bindir}/pg_isready", "-h", root, "-p", str(port)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        subprocess.run(_as_postgres(f"{bindir}/createdb", "-h", root, "-p", str(port), "-U", "postgres", "study"),
                       check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@/study?host={root}&port={port}"
    finally:
        subprocess.run(_as_postgres(f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_study_on_postgresql(tmp_path, pg_url):
    study, tokens = create_tiny_study(tmp_path, cases=3, db_url=pg_url)
    assert study.meta["database"] == "external" and not (study.root / "study.db").exists()
    with pytest.raises(ChexgenError, match="external database; pass --db"):
        study.db_url()
    key = {it["id"]: it for it in load_key(study)["items"]}
    for name in ("ann", "bob"):
        c = TestClient(create_app(study, pg_url))
        csrf = login(c, tokens[name])
        for pos in range(len(key)):
            item = key[c.get(f"/api/item/{pos}").json()["item"]]
            body = {"item": item["id"], "agreement": 2 if item["source"] == "real" else -1,
                    "realism": "real", "confidence": 2}
            assert c.post("/api/answer", json=body, headers={"X-CSRF-Token": csrf}).status_code == 200
        # the unique constraint holds on PostgreSQL too
        assert c.post("/api/answer", json=body, headers={"X-CSRF-Token": csrf}).status_code == 409
    res = analyse_study(study, db_url=pg_url)
    s = res.scores.set_index(["source", "rater"])
    assert s.loc[("real", "all"), "mean"] == 2 and s.loc[("alpha", "all"), "mean"] == -1
    assert len(res.answers) == 2 * len(key)
    # a second study is refused in a database that already holds one
    with pytest.raises(ChexgenError, match="already holds study"):
        create_tiny_study(tmp_path / "again", cases=3, db_url=pg_url)
    assert not (tmp_path / "again" / "study").exists()
