"""A real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) reading a study end to end."""

from __future__ import annotations

import os

import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium); .ci/run installs it", allow_module_level=True)
pytest.importorskip("playwright", reason="playwright is in the test extra")
from _reader_data import create_tiny_study, free_port, start_server, stop_server  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from sqlalchemy import select  # noqa: E402

from chexgen.reader_study import storage  # noqa: E402
from chexgen.reader_study.images import check_png_pixels_only  # noqa: E402
from chexgen.reader_study.study import load_key  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture()
def served(tmp_path):
    study, tokens = create_tiny_study(tmp_path, cases=4, image_size=128)
    port = free_port()
    proc = start_server(study.root, port, tmp_path / "server.log")
    yield study, tokens, f"http://127.0.0.1:{port}"
    stop_server(proc)


def _db_answers(study):
    with storage.make_sessionmaker(storage.make_engine(study.db_url()))() as s:
        rows = storage.answer_rows(s)
        changes = s.scalars(select(storage.AnswerChange)).all()
    return rows, changes


def _pixel(page, x_frac=0.5, y_frac=0.5) -> int:
    return page.evaluate("""([fx, fy]) => {
        const c = document.getElementById('viewer');
        const d = c.getContext('2d').getImageData(Math.floor(c.width * fx), Math.floor(c.height * fy), 1, 1).data;
        return d[0]; }""", [x_frac, y_frac])


def test_rater_reads_by_keyboard_resumes_after_reload(served):
    study, tokens, base = served
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            failed: list[tuple[int, str]] = []
            page.on("console", lambda m: problems.append(m.text)
                    if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
            page.on("response", lambda r: failed.append((r.status, r.url.replace(base, ""))) if r.status >= 400 else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            images: list[bytes] = []
            page.on("response", lambda r: images.append(r.body()) if "/img/" in r.url and r.ok else None)

            # invite link -> logged in -> reading view at item 1; the token is gone from the address bar
            page.goto(f"{base}/login#t={tokens['ann']}")
            page.wait_for_selector("body[data-ready='0']")
            assert page.url == f"{base}/read"
            assert page.inner_text("#progress") == "0 / 12"
            assert page.inner_text("#item-number") == "Item 1 of 12"
            assert page.inner_text("#report").strip() != ""

            # window / level by mouse drag changes the rendered pixels; invert and zoom by keys
            box = page.locator("#viewer").bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            before = _pixel(page)
            assert page.inner_text("#wl") == "W 255 / L 128"
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx - 155, cy + 40, steps=5)
            page.mouse.up()
            assert page.inner_text("#wl") == "W 100 / L 168"
            narrowed = _pixel(page)
            assert narrowed != before
            page.keyboard.press("i")
            assert "inverted" in page.inner_text("#wl") and abs(_pixel(page) - (255 - narrowed)) <= 1
            page.keyboard.press("+")
            assert page.inner_text("#zoom") == "125%"
            page.keyboard.press("0")
            assert page.inner_text("#wl") == "W 255 / L 128" and page.inner_text("#zoom") == "100%"

            # answer five items by keyboard only: agreement key 1..5 = -2..+2, R / S, confidence 7..9, Enter
            plan = [("5", "r", "9"), ("1", "s", "7"), ("3", "s", "8"), ("4", "r", "8"), ("2", "s", "9")]
            for pos, (score, call, conf) in enumerate(plan):
                for key in (score, call, conf):
                    page.keyboard.press(key)
                assert page.locator(f"#agree-{score}").get_attribute("class").endswith("selected")
                page.keyboard.press("Enter")
                page.wait_for_selector(f"body[data-ready='{pos + 1}']")
                assert page.inner_text("#progress") == f"{pos + 1} / 12"
            rows, _ = _db_answers(study)
            assert [(r["agreement"], r["realism"], r["confidence"]) for r in rows] == [
                (2, "real", 3), (-2, "synthetic", 1), (0, "synthetic", 2), (1, "real", 2), (-1, "synthetic", 3)]
            assert all(r["rater"] == "ann" and r["elapsed_ms"] is not None for r in rows)

            # Enter without a full answer saves nothing and says what is missing
            page.keyboard.press("4")
            page.keyboard.press("Enter")
            page.locator("#status", has_text="real or synthetic").wait_for()  # (no eval: the page's CSP forbids it)
            assert len(_db_answers(study)[0]) == 5

            # reload mid-study: back at item 6 with an empty form
            page.reload()
            page.wait_for_selector("body[data-ready='5']")
            assert page.inner_text("#progress") == "5 / 12" and page.inner_text("#item-number") == "Item 6 of 12"
            assert page.locator(".choice.selected").count() == 0

            # go back one item and change the answer explicitly: logged as a change, then back to item 6
            page.keyboard.press("ArrowLeft")
            page.wait_for_selector("body[data-ready='4']")
            assert page.inner_text("#save").startswith("Change answer")
            assert page.locator("#agree-2").get_attribute("class").endswith("selected")
            page.keyboard.press("5")
            page.keyboard.press("Enter")
            page.wait_for_selector("body[data-ready='5']")
            rows, changes = _db_answers(study)
            assert len(rows) == 5 and rows[4]["agreement"] == 2 and rows[4]["revision"] == 1 and len(changes) == 1

            # a fresh browser context (another device) resumes at the same item
            other = browser.new_context()
            page2 = other.new_page()
            page2.goto(f"{base}/login#t={tokens['ann']}")
            page2.wait_for_selector("body[data-ready='5']")
            assert page2.inner_text("#progress") == "5 / 12"

            # the image bytes the browser got carry nothing but pixels
            fetched = page.evaluate("""async () => {
                const src = '/img/' + (await (await fetch('/api/item/5')).json()).item;
                return Array.from(new Uint8Array(await (await fetch(src)).arrayBuffer())); }""")
            images.append(bytes(fetched))
            assert len(images) >= 7
            for data in images:
                check_png_pixels_only(data, size=128)
                assert b"chexgen" not in data
            served_names = set(page.content().split()) | set(page2.content().split())
            key = load_key(study)
            assert not any(it["record_id"] in " ".join(served_names) for it in key["items"])

            # the study lead's view shows the progress
            lead = browser.new_context().new_page()
            lead.goto(f"{base}/login#t={tokens['lead']}")
            lead.wait_for_selector("#progress")
            assert "5 / 12" in lead.inner_text("tr[data-rater='ann']")
            assert "0 / 12" in lead.inner_text("tr[data-rater='bob']")
        finally:
            browser.close()
    assert problems == []  # no script error, no CSP violation
    assert failed == [(422, "/api/answer")]  # only the deliberately incomplete answer
