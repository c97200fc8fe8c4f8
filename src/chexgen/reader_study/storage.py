"""The reader study's database: raters, hashed tokens, items, per-rater orders, answers and their history.

SQLAlchemy ORM, so the same code runs on SQLite (the default, a ``study.db``
file inside the study folder) and on PostgreSQL (``postgresql+psycopg://...``)
for a multi-site study. SQLite runs in WAL mode with ``synchronous=FULL``: each
answer is its own transaction, committed (and on disk) before the reply leaves
the server, so a killed server or a power cut loses nothing already answered.

The database holds no answer key: item rows carry only the opaque id, the
blinded image file name and the text shown. Tokens are stored as SHA-256
hashes (they are 256-bit random, so a plain hash is enough; no salt needed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from typing import Any, Iterable, Sequence

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from chexgen.errors import ChexgenError

__all__ = [
    "Base",
    "StudyRow",
    "Rater",
    "Item",
    "Assignment",
    "Answer",
    "AnswerChange",
    "ROLES",
    "ANSWER_FIELDS",
    "make_engine",
    "make_sessionmaker",
    "hash_token",
    "new_token",
    "utcnow",
    "init_database",
    "check_database",
    "clear_database",
    "add_rater",
    "issue_token",
    "find_token",
    "record_answer",
    "AnswerConflict",
    "answers_of",
    "progress",
    "EXPORT_COLUMNS",
    "answer_rows",
    "answers_csv",
    "guard_cell",
]

ROLES = ("rater", "lead")
ANSWER_FIELDS = ("agreement", "realism", "confidence", "comment", "quality_unacceptable")


def utcnow() -> dt.datetime:
    """Timezone-naive UTC now (both SQLite and PostgreSQL store it the same way)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    """The one study this database belongs to."""

    __tablename__ = "study"
    uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    csrf_secret: Mapped[str] = mapped_column(String(64))
    n_items: Mapped[int] = mapped_column(Integer)


class Rater(Base):
    """A rater or the study lead; ``token_hash`` is the SHA-256 of the current invite token."""

    __tablename__ = "rater"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(8), default="rater")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    token_expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Item(Base):
    """One thing to read: an opaque id, the blinded image's file name under ``images/`` and the report shown."""

    __tablename__ = "item"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    image: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text, default="")


class Assignment(Base):
    """Item ``item_id`` is the ``position``-th (0-based) item in rater ``rater_id``'s own random order."""

    __tablename__ = "assignment"
    __table_args__ = (UniqueConstraint("rater_id", "position"), UniqueConstraint("rater_id", "item_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("rater.id"), index=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("item.id"))
    position: Mapped[int] = mapped_column(Integer)


class Answer(Base):
    """A rater's current answer to one item; at most one per (rater, item), enforced by the database."""

    __tablename__ = "answer"
    __table_args__ = (UniqueConstraint("rater_id", "item_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("rater.id"), index=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("item.id"))
    position: Mapped[int] = mapped_column(Integer)
    agreement: Mapped[int | None] = mapped_column(Integer, nullable=True)
    realism: Mapped[str | None] = mapped_column(String(10), nullable=True)
    confidence: Mapped[int | None] = mapped_column(Integer, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    quality_unacceptable: Mapped[bool] = mapped_column(Boolean, default=False)
    elapsed_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    answered_at: Mapped[dt.datetime] = mapped_column(DateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime)
    revision: Mapped[int] = mapped_column(Integer, default=0)


class AnswerChange(Base):
    """One logged re-answer: the values before and after (JSON), when and by whom."""

    __tablename__ = "answer_change"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    answer_id: Mapped[int] = mapped_column(ForeignKey("answer.id"), index=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("rater.id"))
    item_id: Mapped[str] = mapped_column(ForeignKey("item.id"))
    changed_at: Mapped[dt.datetime] = mapped_column(DateTime)
    old: Mapped[str] = mapped_column(Text)
    new: Mapped[str] = mapped_column(Text)


# ---------------------------------------------------------------------------- engine
def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed answer survives a power cut, not only a killed process.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or a PostgreSQL URL); SQLite gets WAL and FULL sync."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except Exception as err:  # bad URL, missing driver
        raise ChexgenError(f"database URL {_masked(url)}: {err}") from None
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _masked(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"


# ---------------------------------------------------------------------------- tokens
def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh 256-bit URL-safe random token."""
    return secrets.token_urlsafe(32)


# ---------------------------------------------------------------------------- set-up
def init_database(engine: Engine, uid: str, name: str, items: Sequence[dict[str, str]]) -> None:
    """Create the tables and the study's rows; refuse a database that already holds another study."""
    try:
        Base.metadata.create_all(engine)
    except Exception as err:
        raise ChexgenError(f"database {_masked(str(engine.url))}: cannot create tables ({err})") from None
    with make_sessionmaker(engine).begin() as s:
        existing = s.scalars(select(StudyRow)).all()
        if existing:
            raise ChexgenError(f"database {_masked(str(engine.url))} already holds study {existing[0].name!r} "
                               f"({existing[0].uid}); use an empty database for a new study")
        s.add(StudyRow(uid=uid, name=name, created_at=utcnow(), csrf_secret=secrets.token_hex(32),
                       n_items=len(items)))
        s.add_all(Item(id=it["id"], image=it["image"], text=it["text"]) for it in items)


def clear_database(engine: Engine) -> None:
    """Delete every row of the study's tables (undoes a failed creation in an external database)."""
    with make_sessionmaker(engine).begin() as s:
        for table in reversed(Base.metadata.sorted_tables):
            s.execute(table.delete())


def check_database(engine: Engine, uid: str) -> StudyRow:
    """The study row, after checking that this database holds the study ``uid``."""
    try:
        with make_sessionmaker(engine)() as s:
            rows = s.scalars(select(StudyRow)).all()
    except Exception as err:
        raise ChexgenError(f"database {_masked(str(engine.url))}: cannot read the study ({err})") from None
    if len(rows) != 1 or rows[0].uid != uid:
        found = rows[0].uid if rows else "nothing"
        raise ChexgenError(f"database {_masked(str(engine.url))} holds {found}, not study {uid}; "
                           "pass the --db URL the study was created with")
    return rows[0]


def add_rater(s: Session, name: str, role: str, order: Iterable[str], days: float) -> str:
    """Add a rater (or the lead) with their item order; returns their invite token (shown once)."""
    if role not in ROLES:
        raise ChexgenError(f"rater role must be one of {ROLES}, got {role!r}")
    if s.scalar(select(Rater).where(Rater.name == name)) is not None:
        raise ChexgenError(f"rater {name!r} already exists in this study")
    token = new_token()
    now = utcnow()
    rater = Rater(name=name, role=role, token_hash=hash_token(token),
                  token_expires_at=now + dt.timedelta(days=days), created_at=now)
    s.add(rater)
    s.flush()
    s.add_all(Assignment(rater_id=rater.id, item_id=item_id, position=i) for i, item_id in enumerate(order))
    return token


def issue_token(s: Session, name: str, days: float) -> str:
    """Replace rater ``name``'s token with a fresh one valid for ``days``; the old one stops working."""
    rater = s.scalar(select(Rater).where(Rater.name == name))
    if rater is None:
        names = ", ".join(s.scalars(select(Rater.name).order_by(Rater.id)))
        raise ChexgenError(f"no rater {name!r} in this study (raters: {names})")
    token = new_token()
    rater.token_hash = hash_token(token)
    rater.token_expires_at = utcnow() + dt.timedelta(days=days)
    return token


def find_token(s: Session, token: str) -> tuple[Rater | None, bool]:
    """(rater, expired) for a presented token; (None, False) when no rater has it."""
    if not token or len(token) > 200:
        return None, False
    rater = s.scalar(select(Rater).where(Rater.token_hash == hash_token(token)))
    if rater is None:
        return None, False
    return rater, rater.token_expires_at <= utcnow()


# ---------------------------------------------------------------------------- answers
class AnswerConflict(Exception):
    """An answer that breaks the rules: already answered, out of order, or no such item for this rater."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def _values(a: Answer) -> dict[str, Any]:
    return {k: getattr(a, k) for k in ANSWER_FIELDS}


def record_answer(s: Session, rater: Rater, item_id: str, values: dict[str, Any], revise: bool = False,
                  elapsed_ms: int | None = None) -> Answer:
    """Store one answer in the open transaction of ``s``.

    A first answer must be for the rater's current item (the first unanswered one in their
    order). ``revise=True`` changes an existing answer and logs the old and new values in
    ``answer_change``; without it a second answer to the same item is refused.
    """
    pos = s.scalar(select(Assignment.position).where(Assignment.rater_id == rater.id,
                                                    Assignment.item_id == item_id))
    if pos is None:
        raise AnswerConflict("no such item in your list", status=404)
    existing = s.scalar(select(Answer).where(Answer.rater_id == rater.id, Answer.item_id == item_id))
    now = utcnow()
    if existing is not None:
        if not revise:
            raise AnswerConflict("this item is already answered; change it explicitly (revise) to re-answer")
        old = _values(existing)
        if old == {k: values.get(k) for k in ANSWER_FIELDS}:
            return existing
        for k in ANSWER_FIELDS:
            setattr(existing, k, values.get(k))
        existing.updated_at = now
        existing.revision += 1
        s.add(AnswerChange(answer_id=existing.id, rater_id=rater.id, item_id=item_id, changed_at=now,
                           old=json.dumps(old), new=json.dumps(_values(existing))))
        return existing
    if revise:
        raise AnswerConflict("nothing to revise: this item has no answer yet")
    done = s.scalar(select(func.count()).select_from(Answer).where(Answer.rater_id == rater.id))
    if pos != done:
        raise AnswerConflict(f"answer the items in order: your current item is number {done + 1}")
    answer = Answer(rater_id=rater.id, item_id=item_id, position=pos, answered_at=now, updated_at=now,
                    revision=0, elapsed_ms=elapsed_ms, **{k: values.get(k) for k in ANSWER_FIELDS})
    s.add(answer)
    try:
        s.flush()
    except IntegrityError:  # the same item answered at the same moment from another device
        raise AnswerConflict("this item is already answered") from None
    return answer


def answers_of(s: Session, rater_id: int) -> list[Answer]:
    return list(s.scalars(select(Answer).where(Answer.rater_id == rater_id).order_by(Answer.position)))


def progress(s: Session) -> list[dict[str, Any]]:
    """Per rater (not the lead): name, answered, total, last answer time, token expiry."""
    out = []
    for r in s.scalars(select(Rater).where(Rater.role == "rater").order_by(Rater.id)):
        total = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.rater_id == r.id))
        done = s.scalar(select(func.count()).select_from(Answer).where(Answer.rater_id == r.id))
        last = s.scalar(select(func.max(Answer.updated_at)).where(Answer.rater_id == r.id))
        changes = s.scalar(select(func.count()).select_from(AnswerChange).where(AnswerChange.rater_id == r.id))
        out.append({"rater": r.name, "answered": int(done or 0), "total": int(total or 0), "last_answer": last,
                    "changes": int(changes or 0), "token_expires": r.token_expires_at})
    return out


# ---------------------------------------------------------------------------- export
EXPORT_COLUMNS = ("rater", "position", "item", "agreement", "realism", "confidence", "quality_unacceptable",
                  "comment", "elapsed_ms", "answered_at", "updated_at", "revision")


def answer_rows(s: Session) -> list[dict[str, Any]]:
    """Every current answer (no answer key), ordered by rater and position."""
    q = (select(Rater.name, Answer).join(Rater, Rater.id == Answer.rater_id)
         .order_by(Rater.id, Answer.position))
    out = []
    for name, a in s.execute(q):
        out.append({"rater": name, "position": a.position + 1, "item": a.item_id, "agreement": a.agreement,
                    "realism": a.realism, "confidence": a.confidence,
                    "quality_unacceptable": bool(a.quality_unacceptable), "comment": a.comment,
                    "elapsed_ms": a.elapsed_ms, "answered_at": a.answered_at.isoformat(timespec="seconds"),
                    "updated_at": a.updated_at.isoformat(timespec="seconds"), "revision": a.revision})
    return out


def guard_cell(v: Any) -> Any:
    """A CSV cell value that a spreadsheet will not run as a formula."""
    # Spreadsheet formula injection: a free-text cell starting with = + - @ is opened as text.
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def answers_csv(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`answer_rows` as CSV text (free-text cells guarded against formula injection)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (guard_cell(v) if k in ("rater", "comment") else v) for k, v in r.items()})
    return buf.getvalue()
