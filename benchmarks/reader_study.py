#!/usr/bin/env python
"""Reader-study server under load: concurrent simulated raters on localhost answering as fast as they can.

    python benchmarks/reader_study.py                      # 20 raters x 200 items, SQLite (WAL, FULL sync)
    python benchmarks/reader_study.py --raters 5 --items 50 --images

Each simulated rater logs in with its invite token and, for every item in its own
order, fetches the item (as the reading page does; ``--images`` also downloads the
image) and posts the answer: one database transaction per answer. Prints answers/s
over the whole run, p50 / p95 / max latency of the answer posts, and checks that the
database holds exactly the answers sent (count and every value). The server runs
as ``chexgen reader-study serve`` in a subprocess bound to 127.0.0.1; the clients
use the same loopback address (anything else is refused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _reader_data import free_port, make_manifests, start_server, stop_server  # noqa: E402


async def _rater(base: str, token: str, n_items: int, fetch_images: bool, sent: dict, lat: list, get_lat: list):
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=60, follow_redirects=True) as c:
        r = await c.post("/login", data={"token": token})
        csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', r.text).group(1)
        for pos in range(n_items):
            t = time.perf_counter()
            item = (await c.get(f"/api/item/{pos}")).json()
            if fetch_images:
                await c.get(item["image"])
            get_lat.append(time.perf_counter() - t)
            body = {"item": item["item"], "agreement": pos % 5 - 2, "realism": ("real", "synthetic")[pos % 2],
                    "confidence": pos % 3 + 1, "elapsed_ms": pos}
            t = time.perf_counter()
            r = await c.post("/api/answer", json=body, headers={"X-CSRF-Token": csrf})
            lat.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise RuntimeError(f"answer {pos} refused: {r.status_code} {r.text}")
            sent[item["item"]] = (body["agreement"], body["realism"], body["confidence"])


async def _run_all(base, tokens, n_items, fetch_images):
    sent = {name: {} for name in tokens}
    lat: list[float] = []
    get_lat: list[float] = []
    t = time.perf_counter()
    await asyncio.gather(*(_rater(base, tok, n_items, fetch_images, sent[name], lat, get_lat)
                           for name, tok in tokens.items()))
    return sent, lat, get_lat, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raters", type=int, default=20, help="Concurrent simulated raters.")
    ap.add_argument("--items", type=int, default=200, help="Items per rater (even: half real, half synthetic).")
    ap.add_argument("--images", action="store_true", help="Also download each image before answering.")
    ap.add_argument("--image-size", type=int, default=256, help="Served image side in pixels.")
    ap.add_argument("--host", default="127.0.0.1", help="Loopback address to bind and use.")
    ap.add_argument("--keep", action="store_true", help="Keep the temporary study folder.")
    args = ap.parse_args()

    from chexgen.reader_study import storage
    from chexgen.reader_study.app import is_loopback
    from chexgen.reader_study.study import StudySettings, SyntheticSource, create_study

    if not is_loopback(args.host):
        raise SystemExit(f"--host {args.host} is not a loopback address; this benchmark runs on localhost only")
    work = Path(tempfile.mkdtemp(prefix="chexgen-reader-bench-"))
    try:
        cases = args.items // 2
        real, syn = make_manifests(work / "data", n_real=cases, models=("alpha",))
        raters = [f"r{i:02d}" for i in range(1, args.raters + 1)]
        t = time.perf_counter()
        made = create_study(StudySettings(real=str(real), synthetic=[SyntheticSource(str(syn[0]), "alpha")],
                                          raters=raters, cases=cases, image_size=args.image_size),
                            work / "study", progress=False)
        create_s = time.perf_counter() - t
        tokens = {n: made.tokens[n] for n in raters}
        n_items = made.study.meta["n_items"]
        port = free_port()
        proc = start_server(made.study.root, port, work / "server.log")
        try:
            sent, lat, get_lat, wall = asyncio.run(_run_all(f"http://{args.host}:{port}", tokens, n_items,
                                                            args.images))
        finally:
            stop_server(proc)
        with storage.make_sessionmaker(storage.make_engine(made.study.db_url()))() as s:
            rows = storage.answer_rows(s)
        stored = {}
        for r in rows:
            stored.setdefault(r["rater"], {})[r["item"]] = (r["agreement"], r["realism"], r["confidence"])
        expected = args.raters * n_items
        exact = len(rows) == expected and stored == sent
        lat_ms = np.array(lat) * 1000
        out = {
            "raters": args.raters, "items_per_rater": n_items, "answers_sent": sum(len(v) for v in sent.values()),
            "answers_in_db": len(rows), "db_matches_sent_exactly": bool(exact),
            "wall_s": round(wall, 2), "answers_per_s": round(len(lat) / wall, 1),
            "answer_post_ms": {"p50": round(float(np.percentile(lat_ms, 50)), 1),
                               "p95": round(float(np.percentile(lat_ms, 95)), 1),
                               "max": round(float(lat_ms.max()), 1)},
            "item_get_ms_p50": round(float(np.percentile(np.array(get_lat) * 1000, 50)), 1),
            "images_fetched": bool(args.images), "study_create_s": round(create_s, 2),
            "database": "sqlite (WAL, synchronous=FULL)",
        }
        print(json.dumps(out, indent=2))
        if not exact:
            raise SystemExit("database does not hold exactly the answers sent")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
