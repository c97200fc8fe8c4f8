#!/usr/bin/env python
"""Render a chexgen evaluation report in headless Chromium and check what a reader would see.

    python scripts/check_report_html.py OUT_DIR/report.html [--screenshot shot.png]

A copy of the report gets a small probe script appended; Chromium loads it
(``--dump-dom``), the probe records what the browser actually rendered (tables,
metric rows, images that decoded with a non-zero size, external references)
and the script checks it. Exit status 0 = the report renders with its metric
table and images; 1 = a check failed; 2 = no Chromium found.

Needs Chromium (Debian: ``apt-get install chromium``); the default test suite
does not. ``--browser`` picks the executable.
"""

from __future__ import annotations

import argparse
import html as html_lib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_PROBE = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var out = {
    tables: document.querySelectorAll('table').length,
    metric_rows: document.querySelectorAll('table.metrics tbody tr').length,
    metric_names: Array.from(document.querySelectorAll('table.metrics tbody tr td:first-child'))
                      .map(function (td) { return td.textContent; }),
    images: imgs.length,
    images_decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    external: Array.from(document.querySelectorAll('[src],[href]'))
                .map(function (e) { return e.getAttribute('src') || e.getAttribute('href'); })
                .filter(function (u) { return !/^data:/.test(u) && !/^#/.test(u); }),
    title: document.title
  };
  var pre = document.createElement('pre');
  pre.id = 'chexgen-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser(name: str | None) -> str | None:
    for candidate in ([name] if name else BROWSERS):
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    return None


def probe_report(report: Path, browser: str, screenshot: Path | None = None, timeout: float = 120) -> dict:
    """Load ``report`` in headless Chromium and return what the probe saw."""
    text = report.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp}/profile", "--virtual-time-budget=10000"]
        dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True,
                             timeout=timeout)
        if screenshot is not None:
            subprocess.run(flags + [f"--screenshot={screenshot.resolve()}", "--window-size=1200,1600",
                                    report.resolve().as_uri()], capture_output=True, timeout=timeout)
    m = re.search(r'<pre id="chexgen-probe">(.*?)</pre>', dom.stdout, re.S)
    if not m:
        raise RuntimeError(f"Chromium did not render the probe (exit {dom.returncode}): {dom.stderr[-800:]}")
    return json.loads(html_lib.unescape(m.group(1)))


def check(seen: dict, required_metrics: tuple[str, ...] = ("fid",), min_images: int = 1) -> list[str]:
    """Problems found in a probe result (empty list = fine)."""
    problems = []
    if seen["metric_rows"] < 1:
        problems.append("no metric table rows rendered")
    for name in required_metrics:
        if name not in seen["metric_names"]:
            problems.append(f"metric {name!r} missing from the table")
    if seen["images"] < min_images:
        problems.append(f"only {seen['images']} images, expected at least {min_images}")
    if seen["images_decoded"] != seen["images"]:
        problems.append(f"{seen['images'] - seen['images_decoded']} of {seen['images']} images did not decode")
    if seen["external"]:
        problems.append(f"external references (report must be self-contained): {seen['external'][:5]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="report.html written by chexgen evaluate")
    ap.add_argument("--screenshot", type=Path, default=None, help="also save a PNG screenshot of the page")
    ap.add_argument("--browser", default=None, help="Chromium executable (default: search PATH)")
    ap.add_argument("--min-images", type=int, default=1, help="fail if fewer images render")
    ap.add_argument("--metric", action="append", default=None, help="metric that must be in the table (repeat)")
    args = ap.parse_args(argv)
    browser = find_browser(args.browser)
    if browser is None:
        print("no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    if not args.report.is_file():
        print(f"{args.report}: not found", file=sys.stderr)
        return 1
    seen = probe_report(args.report, browser, args.screenshot)
    problems = check(seen, tuple(args.metric or ("fid",)), args.min_images)
    print(json.dumps({k: v for k, v in seen.items() if k != "metric_names"} | {"metrics": seen["metric_names"]}))
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if not problems:
        print(f"OK: {seen['metric_rows']} metric rows, {seen['images_decoded']}/{seen['images']} images rendered")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
