"""The reader study web app (FastAPI, server-rendered Jinja2 pages, a little plain JavaScript).

Raters log in with their invite token (the link carries it after ``#``, so it never
reaches a server log), read their items in their own order and answer; every
answer is one database transaction, committed before the reply. The state lives
on the server: reopening the link on any device resumes at the first unanswered
item. The study lead logs in with the lead token and sees progress per rater
and the answers export (no answer key: that is joined only by ``analyse``).

Security: tokens are compared by SHA-256 hash; the session cookie is HttpOnly and
SameSite=Strict; answer posts need a per-session CSRF token (an HMAC of the
session with the study's secret) in ``X-CSRF-Token`` and a same-origin
``Origin`` when the browser sends one; images are looked up by opaque id in the
database and confined to the study's ``images/`` folder; pages carry a strict
Content-Security-Policy (no inline script).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import ipaddress
import re
import socket
import threading
from hashlib import sha256
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from chexgen.errors import ChexgenError
from chexgen.reader_study import storage
from chexgen.reader_study.storage import Answer, Assignment, Item, Rater
from chexgen.reader_study.study import Study

__all__ = ["create_app", "serve_study", "is_loopback", "COOKIE", "AnswerIn"]

COOKIE = "chexgen_reader"
_HERE = Path(__file__).parent
_ITEM_ID = re.compile(r"^[0-9a-f]{16}$")
_CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class AnswerIn(BaseModel):
    """One answer as the browser posts it."""

    item: str = Field(max_length=32)
    agreement: int | None = Field(default=None, ge=-2, le=2)
    realism: str | None = Field(default=None, pattern="^(real|synthetic)$")
    confidence: int | None = Field(default=None, ge=1, le=3)
    comment: str | None = Field(default=None, max_length=4000)
    quality_unacceptable: bool = False
    revise: bool = False
    elapsed_ms: int | None = Field(default=None, ge=0, le=86_400_000)


def create_app(study: Study, db_url: str | None = None) -> FastAPI:
    """The app serving ``study`` from its database (``db_url``, default the study's SQLite file)."""
    engine = storage.make_engine(study.db_url(db_url))
    row = storage.check_database(engine, study.uid)
    secret = row.csrf_secret.encode()
    Sessions = storage.make_sessionmaker(engine)
    # SQLite has one writer at a time; queueing answer transactions on a lock in this process is
    # much faster under load than SQLite's busy-wait back-off, and makes check-then-insert atomic.
    write_lock = threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
    tasks = study.tasks
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    app = FastAPI(title="chexgen reader study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if "cache-control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        return response

    def csrf_of(rater: Rater) -> str:
        return hmac.new(secret, rater.token_hash.encode(), sha256).hexdigest()

    def who(request: Request, s: Session) -> tuple[Rater | None, bool]:
        return storage.find_token(s, request.cookies.get(COOKIE, ""))

    def api_user(request: Request, s: Session, role: str = "rater") -> Rater:
        rater, expired = who(request, s)
        if rater is None:
            raise HTTPException(401, "not logged in: open your invite link")
        if expired:
            raise HTTPException(401, f"your invite expired on {rater.token_expires_at:%Y-%m-%d %H:%M} UTC; "
                                     "ask the study lead for a new link")
        if rater.role != role:
            raise HTTPException(403, f"this page is for the {role}, not for {rater.role}s")
        return rater

    def check_post(request: Request, rater: Rater, token: str | None) -> None:
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("host", ""):
            raise HTTPException(403, "cross-origin request refused")
        if not token or not hmac.compare_digest(token, csrf_of(rater)):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page")

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"study_name": study.name, **ctx}, status_code=status)

    def counts(s: Session, rater: Rater) -> tuple[int, int]:
        total = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.rater_id == rater.id))
        done = s.scalar(select(func.count()).select_from(Answer).where(Answer.rater_id == rater.id))
        return int(done or 0), int(total or 0)

    # ------------------------------------------------------------------ login
    @app.get("/", include_in_schema=False)
    def home(request: Request):
        with Sessions() as s:
            rater, expired = who(request, s)
            if rater is None or expired:
                return RedirectResponse("/login", 303)
            return RedirectResponse("/lead" if rater.role == "lead" else "/read", 303)

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request):
        return page(request, "login.html", message=None)

    @app.post("/login")
    def login(request: Request, token: str = Form(default="", max_length=200)):
        with Sessions() as s:
            rater, expired = storage.find_token(s, token.strip())
            if rater is None:
                return page(request, "login.html", 401, message="This token is not valid for this study. "
                            "Check the link, or ask the study lead for a new one.")
            if expired:
                return page(request, "login.html", 401, message=f"This invite expired on "
                            f"{rater.token_expires_at:%Y-%m-%d %H:%M} UTC. Ask the study lead for a new link.")
            response = RedirectResponse("/lead" if rater.role == "lead" else "/read", 303)
            max_age = int((rater.token_expires_at - storage.utcnow()).total_seconds())
            response.set_cookie(COOKIE, token.strip(), max_age=max_age, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https", path="/")
            return response

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form(default="")):
        with Sessions() as s:
            rater, _ = who(request, s)
            if rater is not None:
                check_post(request, rater, csrf)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ reading
    @app.get("/read", response_class=HTMLResponse)
    def read_page(request: Request):
        with Sessions() as s:
            rater, expired = who(request, s)
            if rater is None or expired:
                return RedirectResponse("/login", 303)
            if rater.role == "lead":
                return RedirectResponse("/lead", 303)
            done, total = counts(s, rater)
            return page(request, "read.html", rater=rater.name, csrf=csrf_of(rater), done=done, total=total,
                        tasks=tasks, scale=study.meta["agreement_scale"], confidence=study.meta["confidence_scale"])

    @app.get("/pause", response_class=HTMLResponse)
    def pause_page(request: Request):
        with Sessions() as s:
            rater, expired = who(request, s)
            if rater is None or expired:
                return RedirectResponse("/login", 303)
            done, total = counts(s, rater)
            return page(request, "pause.html", rater=rater.name, csrf=csrf_of(rater), done=done, total=total)

    @app.get("/api/state")
    def state(request: Request):
        with Sessions() as s:
            rater = api_user(request, s)
            done, total = counts(s, rater)
            return {"answered": done, "total": total, "current": done if done < total else None, "tasks": tasks}

    @app.get("/api/item/{position}")
    def item(request: Request, position: int):
        with Sessions() as s:
            rater = api_user(request, s)
            done, total = counts(s, rater)
            if not 0 <= position < total:
                raise HTTPException(404, f"item numbers run from 1 to {total}")
            if position > done:
                raise HTTPException(409, f"answer item {done + 1} first")
            it = s.execute(select(Item).join(Assignment, Assignment.item_id == Item.id)
                           .where(Assignment.rater_id == rater.id, Assignment.position == position)).scalar_one()
            a = s.scalar(select(Answer).where(Answer.rater_id == rater.id, Answer.item_id == it.id))
            answer = None if a is None else {k: getattr(a, k) for k in storage.ANSWER_FIELDS} | {"revision": a.revision}
            return {"position": position, "answered": done, "total": total, "item": it.id,
                    "image": f"/img/{it.id}", "text": it.text, "answer": answer}

    @app.post("/api/answer")
    def answer(request: Request, body: AnswerIn):
        values = body.model_dump(include=set(storage.ANSWER_FIELDS))
        values["comment"] = (values["comment"] or "").strip() or None if "comment" in tasks else None
        missing = []
        if not body.quality_unacceptable:
            if "agreement" in tasks and body.agreement is None:
                missing.append("agreement (-2..+2)")
            if "realism" in tasks and (body.realism is None or body.confidence is None):
                missing.append("real or synthetic, with a confidence")
        if missing:
            raise HTTPException(422, "please give " + " and ".join(missing))
        if "agreement" not in tasks:
            values["agreement"] = None
        if "realism" not in tasks:
            values["realism"] = values["confidence"] = None
        with write_lock, Sessions.begin() as s:  # one transaction per answer, committed before the reply
            rater = api_user(request, s)
            check_post(request, rater, request.headers.get("x-csrf-token"))
            try:
                storage.record_answer(s, rater, body.item, values, revise=body.revise, elapsed_ms=body.elapsed_ms)
            except storage.AnswerConflict as err:
                raise HTTPException(err.status, str(err)) from None
            rater.last_seen_at = storage.utcnow()
            s.flush()
            done, total = counts(s, rater)
        return {"saved": True, "answered": done, "total": total, "next": done if done < total else None}

    @app.get("/img/{item_id}")
    def image(request: Request, item_id: str):
        if not _ITEM_ID.match(item_id):
            raise HTTPException(404, "no such image")
        with Sessions() as s:
            rater = api_user(request, s)
            name = s.scalar(select(Item.image).join(Assignment, Assignment.item_id == Item.id)
                            .where(Assignment.rater_id == rater.id, Item.id == item_id))
        if name is None:
            raise HTTPException(404, "no such image")
        try:
            data = study.image_path(name).read_bytes()
        except (ChexgenError, OSError):
            raise HTTPException(404, "no such image") from None
        return Response(data, media_type="image/png", headers={
            "Cache-Control": "private, no-store", "Content-Disposition": 'inline; filename="image.png"'})

    # ------------------------------------------------------------------ study lead
    @app.get("/lead", response_class=HTMLResponse)
    def lead_page(request: Request):
        with Sessions() as s:
            rater, expired = who(request, s)
            if rater is None or expired:
                return RedirectResponse("/login", 303)
            if rater.role != "lead":
                return page(request, "message.html", 403, title="Study lead only",
                            message="This page is for the study lead.")
            rows = storage.progress(s)
            return page(request, "lead.html", rows=rows, csrf=csrf_of(rater), n_items=row.n_items,
                        now=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))

    @app.get("/api/lead/progress")
    def lead_progress(request: Request):
        with Sessions() as s:
            api_user(request, s, role="lead")
            return JSONResponse([{**r, "last_answer": _iso(r["last_answer"]), "token_expires": _iso(r["token_expires"])}
                                 for r in storage.progress(s)])

    @app.get("/lead/export.csv")
    def lead_export(request: Request):
        with Sessions() as s:
            api_user(request, s, role="lead")
            text = storage.answers_csv(storage.answer_rows(s))
        return Response(text, media_type="text/csv", headers={
            "Content-Disposition": 'attachment; filename="answers.csv"'})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    @app.get("/healthz", include_in_schema=False)
    def health():
        return {"ok": True}

    return app


def _iso(v: dt.datetime | None) -> str | None:
    return None if v is None else v.isoformat(timespec="seconds")


def is_loopback(host: str) -> bool:
    """True when ``host`` (a name or address) resolves only to loopback addresses."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def serve_study(study: Study, host: str = "127.0.0.1", port: int = 8000, db_url: str | None = None,
                ssl_certfile: str | None = None, ssl_keyfile: str | None = None, access_log: bool = False) -> int:
    """Run the app with uvicorn until interrupted; says where it listens and who can reach it."""
    import uvicorn

    app = create_app(study, db_url)
    scheme = "https" if ssl_certfile else "http"
    shown = f"[{host}]" if ":" in host else host
    print(f"Reader study {study.name!r}: {scheme}://{shown}:{port}/  (lead view: /lead)")
    if is_loopback(host):
        print(f"Bound to {host} only: reachable from this machine, not from the network "
              "(pass --host 0.0.0.0 to open it, behind TLS).", flush=True)
    else:
        print(f"Bound to {host}: reachable from the network."
              + ("" if ssl_certfile else " WARNING: plain HTTP; tokens and answers travel unencrypted "
                 "(use --ssl-certfile/--ssl-keyfile or a TLS proxy)."), flush=True)
    uvicorn.run(app, host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                access_log=access_log, log_level="info")
    return 0
