"""Reader-study web app through its HTTP API (FastAPI TestClient on a temporary SQLite database)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
from _reader_data import create_tiny_study, login  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import select  # noqa: E402

from chexgen.reader_study import storage  # noqa: E402
from chexgen.reader_study.app import create_app, is_loopback  # noqa: E402
from chexgen.reader_study.images import check_png_pixels_only, png_chunks  # noqa: E402
from chexgen.reader_study.study import load_key, reissue_tokens  # noqa: E402


@pytest.fixture()
def tiny(tmp_path):
    study, tokens = create_tiny_study(tmp_path, cases=4)
    return study, tokens


def _client(study) -> TestClient:
    return TestClient(create_app(study))


def _answer(item: str, agreement: int = 1, realism: str = "real", confidence: int = 2, **kw) -> dict:
    return {"item": item, "agreement": agreement, "realism": realism, "confidence": confidence, **kw}


def _post(c, csrf, body):
    return c.post("/api/answer", json=body, headers={"X-CSRF-Token": csrf})


def test_login_read_answer_resume_and_progress(tiny):
    study, tokens = tiny
    c = _client(study)
    assert c.get("/read", follow_redirects=False).status_code == 303  # not logged in -> login page
    assert c.get("/api/state").status_code == 401
    csrf = login(c, tokens["ann"])
    state = c.get("/api/state").json()
    assert state == {"answered": 0, "total": 12, "current": 0, "tasks": ["agreement", "realism", "comment"]}
    seen = []
    for pos in range(5):
        item = c.get(f"/api/item/{pos}").json()
        assert item["answer"] is None and item["total"] == 12
        seen.append(item["item"])
        r = _post(c, csrf, _answer(item["item"], agreement=pos - 2, comment=f"note {pos}"))
        assert r.status_code == 200, r.text
        assert r.json() == {"saved": True, "answered": pos + 1, "total": 12, "next": pos + 1}
    # a second client (another device) with the same invite resumes at item 6
    other = _client(study)
    login(other, tokens["ann"])
    assert other.get("/api/state").json()["current"] == 5
    assert "5 / 12" in other.get("/read").text
    # an earlier item comes back with its answer; a later one is not shown yet
    back = other.get("/api/item/2").json()
    assert back["item"] == seen[2] and back["answer"]["agreement"] == 0 and back["answer"]["comment"] == "note 2"
    assert other.get("/api/item/7").status_code == 409
    assert other.get("/api/item/12").status_code == 404
    # every rater has a permutation of the same items, in an order of their own
    bob = _client(study)
    login(bob, tokens["bob"])
    bob_items = [bob.get("/api/item/0").json()["item"]]
    assert bob.get("/api/state").json()["answered"] == 0
    with storage.make_sessionmaker(storage.make_engine(study.db_url()))() as s:
        orders = {}
        for r in s.scalars(select(storage.Rater).where(storage.Rater.role == "rater")):
            orders[r.name] = [a.item_id for a in s.scalars(select(storage.Assignment).where(
                storage.Assignment.rater_id == r.id).order_by(storage.Assignment.position))]
    assert sorted(orders["ann"]) == sorted(orders["bob"]) and len(set(orders["ann"])) == 12
    assert orders["ann"] != orders["bob"] and orders["bob"][0] == bob_items[0]


def test_double_answer_refused_and_revision_logged(tiny):
    study, tokens = tiny
    c = _client(study)
    csrf = login(c, tokens["ann"])
    first = c.get("/api/item/0").json()["item"]
    assert _post(c, csrf, _answer(first, agreement=2)).status_code == 200
    again = _post(c, csrf, _answer(first, agreement=-2))
    assert again.status_code == 409 and "already answered" in again.json()["detail"]
    # out of order: item 3 before item 2
    third = c.get("/api/item/1").json()["item"]  # the current one may be fetched
    with storage.make_sessionmaker(storage.make_engine(study.db_url()))() as s:
        rater = s.scalar(select(storage.Rater).where(storage.Rater.name == "ann"))
        later = s.scalar(select(storage.Assignment.item_id).where(storage.Assignment.rater_id == rater.id,
                                                                  storage.Assignment.position == 3))
    assert _post(c, csrf, _answer(later)).status_code == 409
    assert _post(c, csrf, _answer("0123456789abcdef")).status_code == 404
    assert _post(c, csrf, _answer(third, revise=True)).status_code == 409  # nothing to revise yet
    # an explicit change is stored and logged with old and new values
    r = _post(c, csrf, _answer(first, agreement=-1, revise=True))
    assert r.status_code == 200 and r.json()["answered"] == 1
    assert c.get("/api/item/0").json()["answer"] | {} == {
        "agreement": -1, "realism": "real", "confidence": 2, "comment": None, "quality_unacceptable": False,
        "revision": 1}
    with storage.make_sessionmaker(storage.make_engine(study.db_url()))() as s:
        changes = s.scalars(select(storage.AnswerChange)).all()
        answers = s.scalars(select(storage.Answer)).all()
    assert len(answers) == 1 and len(changes) == 1
    assert json.loads(changes[0].old)["agreement"] == 2 and json.loads(changes[0].new)["agreement"] == -1


def test_answer_validation(tiny):
    study, tokens = tiny
    c = _client(study)
    csrf = login(c, tokens["ann"])
    item = c.get("/api/item/0").json()["item"]
    assert _post(c, csrf, _answer(item, agreement=3)).status_code == 422
    assert _post(c, csrf, _answer(item, realism="maybe")).status_code == 422
    r = _post(c, csrf, {"item": item, "agreement": 1})
    assert r.status_code == 422 and "real or synthetic" in r.json()["detail"]
    # "image quality unacceptable" may be given without scores
    r = _post(c, csrf, {"item": item, "quality_unacceptable": True, "comment": "  motion blur "})
    assert r.status_code == 200
    a = c.get("/api/item/0").json()["answer"]
    assert a["quality_unacceptable"] is True and a["agreement"] is None and a["comment"] == "motion blur"


def test_csrf_and_cross_origin_refused(tiny):
    study, tokens = tiny
    c = _client(study)
    csrf = login(c, tokens["ann"])
    item = c.get("/api/item/0").json()["item"]
    assert c.post("/api/answer", json=_answer(item)).status_code == 403
    assert _post(c, "0" * 64, _answer(item)).status_code == 403
    # bob's CSRF token does not work for ann's session
    bob = _client(study)
    bob_csrf = login(bob, tokens["bob"])
    assert bob_csrf != csrf and _post(c, bob_csrf, _answer(item)).status_code == 403
    r = c.post("/api/answer", json=_answer(item), headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
    assert r.status_code == 403
    assert _post(c, csrf, _answer(item)).status_code == 200
    with storage.make_sessionmaker(storage.make_engine(study.db_url()))() as s:
        assert len(s.scalars(select(storage.Answer)).all()) == 1


def test_tokens_hashed_expiry_and_reissue(tiny):
    study, tokens = tiny
    with storage.make_sessionmaker(storage.make_engine(study.db_url()))() as s:
        raters = s.scalars(select(storage.Rater)).all()
    assert {r.name for r in raters} == {"ann", "bob", "lead"}
    stored = {r.token_hash for r in raters}
    assert not stored & set(tokens.values())  # never the plain token
    assert stored == {storage.hash_token(t) for t in tokens.values()}
    assert (study.root / "study.db").read_bytes().find(tokens["ann"].encode()) == -1
    c = _client(study)
    bad = c.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert bad.status_code == 401 and "not valid" in bad.text
    # expire ann's token: login refused with a clear message, a live session stops working
    csrf = login(c, tokens["ann"])
    engine = storage.make_engine(study.db_url())
    with storage.make_sessionmaker(engine).begin() as s:
        s.scalar(select(storage.Rater).where(storage.Rater.name == "ann")).token_expires_at = (
            storage.utcnow() - dt.timedelta(minutes=1))
    r = c.get("/api/state")
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    item_post = _post(c, csrf, _answer("0123456789abcdef"))
    assert item_post.status_code == 401
    fresh = _client(study)
    r = fresh.post("/login", data={"token": tokens["ann"]}, follow_redirects=False)
    assert r.status_code == 401 and "expired" in r.text and "new link" in r.text
    # a re-issued token works; the old one does not
    new = reissue_tokens(study, ["ann"])["ann"]
    assert new != tokens["ann"]
    assert fresh.post("/login", data={"token": tokens["ann"]}, follow_redirects=False).status_code == 401
    login(fresh, new)
    assert fresh.get("/api/state").status_code == 200


def test_rater_sees_only_own_answers_and_lead_view(tiny):
    study, tokens = tiny
    ann, bob, lead = _client(study), _client(study), _client(study)
    ann_csrf = login(ann, tokens["ann"])
    login(bob, tokens["bob"])
    for pos in range(3):
        item = ann.get(f"/api/item/{pos}").json()["item"]
        assert _post(ann, ann_csrf, _answer(item, comment="ann's secret")).status_code == 200
    # bob's view of the same items shows no answer, and his progress is his own
    assert bob.get("/api/state").json()["answered"] == 0
    for pos in range(1):
        assert bob.get(f"/api/item/{pos}").json()["answer"] is None
    assert "ann's secret" not in bob.get("/read").text
    # lead pages need the lead token
    assert bob.get("/api/lead/progress").status_code == 403
    assert bob.get("/lead/export.csv").status_code == 403
    assert bob.get("/lead").status_code == 403
    r = lead.post("/login", data={"token": tokens["lead"]}, follow_redirects=False)
    assert r.headers["location"] == "/lead"
    prog = {p["rater"]: p for p in lead.get("/api/lead/progress").json()}
    assert prog["ann"]["answered"] == 3 and prog["bob"]["answered"] == 0 and prog["ann"]["total"] == 12
    page = lead.get("/lead").text
    assert "3 / 12" in page and "0 / 12" in page
    rows = list(csv.DictReader(io.StringIO(lead.get("/lead/export.csv").text)))
    assert len(rows) == 3 and {r["rater"] for r in rows} == {"ann"} and rows[0]["position"] == "1"
    assert lead.get("/api/state").status_code == 403  # the lead has no reading list


def test_nothing_unblinding_reaches_the_browser(tiny):
    study, tokens = tiny
    key = load_key(study)
    c = _client(study)
    csrf = login(c, tokens["ann"])
    secret_words = {"alpha", "beta", "synthetic", "real-0", ".png", "case-", "/data/"}
    secret_words |= {it["record_id"] for it in key["items"]}
    texts = []
    for pos in range(12):
        item = c.get(f"/api/item/{pos}")
        texts.append(item.text)
        body = item.json()
        img = c.get(body["image"])
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert img.headers["content-disposition"] == 'inline; filename="image.png"'
        check_png_pixels_only(img.content, size=64)
        assert [k for k, _ in png_chunks(img.content)] == ["IHDR", "IDAT", "IEND"]
        assert b"chexgen" not in img.content
        assert _post(c, csrf, _answer(body["item"])).status_code == 200
    for t in texts:
        payload = json.loads(t)
        for w in secret_words:
            assert w not in payload["text"] and w not in payload["item"] and w not in payload["image"]
        assert set(payload) == {"position", "answered", "total", "item", "image", "text", "answer"}
    page = c.get("/read").text
    assert not any(w in page for w in ("alpha", "beta", "real-0", "case-"))
    # same size and bit depth for every source (8-bit gray 64 x 64), on disk too
    for f in (study.root / "images").iterdir():
        check_png_pixels_only(f.read_bytes(), size=64)


@pytest.mark.parametrize("path", [
    "/img/../study.json", "/img/..%2Fstudy.json", "/img/..%2F..%2Fkey.json", "/img/%2e%2e%2fkey.json",
    "/img/....//key.json", "/static/../key.json", "/static/..%2F..%2Fstudy.py", "/static/%2e%2e/app.py",
    "/img/0123456789abcdef/../../key.json", "/img/..\\key.json", "/static/..%5capp.py", "/img/%00",
])
def test_path_traversal_reaches_nothing(tiny, path):
    study, tokens = tiny
    c = _client(study)
    login(c, tokens["ann"])
    r = c.get(path)
    assert r.status_code in (404, 400, 405), (path, r.status_code)
    for leak in (study.uid.encode(), b"record_id", b"create_app", b"csrf_secret", b"import "):
        assert leak not in r.content


def test_images_only_for_logged_in_raters(tiny):
    study, tokens = tiny
    some = next((study.root / "images").iterdir()).stem
    c = _client(study)
    assert c.get(f"/img/{some}").status_code == 401
    login(c, tokens["ann"])
    assert c.get(f"/img/{some}").status_code == 200


def test_security_headers_and_cookie(tiny):
    study, tokens = tiny
    c = _client(study)
    r = c.post("/login", data={"token": tokens["ann"]}, follow_redirects=False)
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = c.get("/read")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script>" not in page.text  # no inline script (the CSP would block it)


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
