"""Creating a blinded reader study: sources, stratified case sampling, items, per-rater orders.

A *case* is one real record with its report. For every case the study shows the
report with the real image (unless ``include_real`` is off) and with one image
from each synthetic model generated from that record (matched by
``extra["source_id"]``, else by prompt, exactly as ``chexgen evaluate`` matches,
see :func:`chexgen.evaluation.matching.match_to_real`). Each (case, source) pair
is an *item* under a random opaque id; every rater reads every item once, in
their own seeded random order.

Cases are sampled stratified by finding: each eligible case is put in the
stratum of its rarest positive finding over :data:`chexgen.data.labels.LABELS`
("No Finding" when none is positive), and the number of cases is split over the
strata in proportion to their size (``allocation="proportional"``, largest
remainder, at least one per stratum when there are enough cases) or as evenly
as the strata allow (``"equal"``).

The study folder::

    STUDY/study.json    settings, tasks and the anchor wording (no answer key)
    STUDY/key.json      the answer key: item -> case, source, model, record (read only by analyse)
    STUDY/images/       blinded PNGs named by opaque id (see reader_study.images)
    STUDY/study.db      the SQLite database (unless an external --db URL was given)

It is built in a temporary sibling folder and renamed into place, so a failure
leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record, read_manifest
from chexgen.errors import ChexgenError
from chexgen.reader_study import storage
from chexgen.reader_study.images import IMAGE_BITS, reencode_image
from chexgen.utils import atomic_write_json, sha256_file

__all__ = [
    "AGREEMENT_SCALE",
    "CONFIDENCE_SCALE",
    "TASKS",
    "STUDY_FORMAT",
    "SyntheticSource",
    "StudySettings",
    "Study",
    "CreatedStudy",
    "parse_synthetic_spec",
    "stratum_of",
    "allocate_cases",
    "rater_order",
    "create_study",
    "load_study",
    "load_key",
    "add_raters",
    "reissue_tokens",
    "export_answers",
]

log = logging.getLogger(__name__)

STUDY_FORMAT = "chexgen-reader-study/1"
TASKS = ("agreement", "realism", "comment")
# The paper's anchors for -2 and +2; the intermediate anchors are chexgen's own wording.
AGREEMENT_SCALE: tuple[tuple[int, str], ...] = (
    (-2, "Complete mismatch: the image shows none of the findings of the report, or contradicts them"),
    (-1, "Mostly mismatched: the main finding is missing or contradicted"),
    (0, "Partial match: some findings agree, others are missing or wrong"),
    (1, "Good match: the main findings are present, with minor discrepancies"),
    (2, "Perfect match with the radiological findings"),
)
CONFIDENCE_SCALE: tuple[tuple[int, str], ...] = ((1, "Guess"), (2, "Fairly sure"), (3, "Certain"))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STUDY_FILE, KEY_FILE, IMAGES_DIR, DB_FILE = "study.json", "key.json", "images", "study.db"


@dataclass
class SyntheticSource:
    """A synthetic manifest and the model name its records are read as (None: from provenance.model)."""

    path: str
    model: str | None = None


@dataclass
class StudySettings:
    """Everything that decides a study's content; a folder made with other settings is refused."""

    real: str
    synthetic: list[SyntheticSource]
    raters: list[str]
    cases: int = 150
    models: list[str] | None = None
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    seed: int = 0
    stratify: bool = True
    allocation: str = "proportional"
    include_real: bool = True
    require_all_models: bool = True
    text: str = "impression"
    image_size: int = 512
    resize: str = "crop"
    name: str | None = None

    def check(self) -> None:
        if self.cases < 1:
            raise ChexgenError(f"--cases must be at least 1, got {self.cases}")
        if not self.synthetic:
            raise ChexgenError("give at least one synthetic manifest (--synthetic)")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ChexgenError(f"unknown task(s) {bad}; expected a comma list of {', '.join(TASKS)}")
        if self.tasks == ["comment"]:
            raise ChexgenError("tasks: give 'agreement' and/or 'realism' (a comment alone is not a study)")
        if "realism" in self.tasks and not self.include_real:
            raise ChexgenError("the realism task (real or synthetic?) needs real images: drop --no-real")
        if self.allocation not in ("proportional", "equal"):
            raise ChexgenError(f"--allocation must be proportional or equal, got {self.allocation!r}")
        if self.text not in ("impression", "report"):
            raise ChexgenError(f"--text must be impression or report, got {self.text!r}")
        if not 64 <= self.image_size <= 4096:
            raise ChexgenError(f"--image-size must be 64..4096 pixels, got {self.image_size}")
        if not self.raters:
            raise ChexgenError("give at least one rater (--raters alice,bob)")
        for r in self.raters:
            if not _NAME.match(r) or r == "lead":
                raise ChexgenError(f"rater name {r!r}: use letters, digits, '_', '.', '-' (up to 64), not 'lead'")
        if len(set(self.raters)) != len(self.raters):
            raise ChexgenError(f"rater names must be unique, got {self.raters}")

    def key(self) -> dict[str, Any]:
        """The settings as compared against an existing study folder (manifests by content, not path)."""
        d = asdict(self)
        d["real"] = {"sha256": _hash(self.real)}
        d["synthetic"] = [{"model": s.model, "sha256": _hash(s.path)} for s in self.synthetic]
        return d


def _hash(path: str) -> str | None:
    return sha256_file(path) if Path(path).is_file() else None


def parse_synthetic_spec(spec: str) -> SyntheticSource:
    """``NAME=PATH`` or ``PATH`` (model names then come from each record's provenance.model)."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        if not _NAME.match(name) or name == "real":
            raise ChexgenError(f"--synthetic {spec!r}: model name {name!r} must be letters/digits/_.- and not 'real'")
        return SyntheticSource(path=path, model=name)
    return SyntheticSource(path=spec)


# ---------------------------------------------------------------------------- sampling
def stratum_of(record: Record, counts: dict[str, int]) -> str:
    """The rarest positive finding of ``record`` (by ``counts`` in the pool); "No Finding" when none."""
    positives = [n for n in record.positive_labels() if n != "No Finding"]
    if not positives:
        return "No Finding"
    return min(positives, key=lambda n: (counts.get(n, 0), LABELS.index(n)))


def allocate_cases(sizes: dict[str, int], n: int, mode: str = "proportional") -> dict[str, int]:
    """Split ``n`` cases over strata of the given sizes (see the module docstring)."""
    total = sum(sizes.values())
    if n > total:
        raise ChexgenError(f"asked for {n} cases but only {total} real records are eligible "
                           "(an image, a report and a matching synthetic image for the models)")
    names = sorted(sizes, key=lambda k: (LABELS.index(k) if k in LABELS else len(LABELS), k))
    alloc = {k: 0 for k in names}
    if mode == "equal":
        left = n
        while left:
            for k in names:
                if left and alloc[k] < sizes[k]:
                    alloc[k] += 1
                    left -= 1
        return alloc
    quota = {k: n * sizes[k] / total for k in names}
    for k in names:
        alloc[k] = int(np.floor(quota[k]))
    rest = n - sum(alloc.values())
    for k in sorted(names, key=lambda k: (-(quota[k] - alloc[k]), names.index(k)))[:rest]:
        alloc[k] += 1
    if n >= len(names):  # every finding at least once, taken from the largest allocations
        for k in names:
            if alloc[k] == 0 and sizes[k] > 0:
                donor = max(names, key=lambda d: (alloc[d], -names.index(d)))
                alloc[donor] -= 1
                alloc[k] = 1
    return alloc


def rater_order(seed: int, rater_index: int, n: int) -> list[int]:
    """The seeded random reading order (a permutation of range(n)) of the ``rater_index``-th rater."""
    return [int(i) for i in np.random.default_rng([seed, 7919, rater_index]).permutation(n)]


# ---------------------------------------------------------------------------- study objects
@dataclass
class Study:
    """An existing study folder (public part: no answer key)."""

    root: Path
    meta: dict[str, Any]

    @property
    def uid(self) -> str:
        return self.meta["uid"]

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def tasks(self) -> list[str]:
        return list(self.meta["settings"]["tasks"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image"]["size"])

    @property
    def seed(self) -> int:
        return int(self.meta["settings"]["seed"])

    def db_url(self, override: str | None = None) -> str:
        """The database URL: ``override``, else the study's own SQLite file."""
        if override:
            return override
        if self.meta.get("database") != "sqlite":
            raise ChexgenError(f"{self.root}: this study's answers live in an external database; pass --db URL "
                               "(or set CHEXGEN_READER_DB)")
        return f"sqlite:///{self.root / DB_FILE}"

    def image_path(self, name: str) -> Path:
        """The blinded image ``name`` under images/, refusing anything that resolves outside it."""
        base = (self.root / IMAGES_DIR).resolve()
        p = (base / name).resolve()
        if p.parent != base or not re.fullmatch(r"[0-9a-f]{16,32}\.png", p.name):
            raise ChexgenError(f"image name {name!r} is outside the study's images folder")
        return p


@dataclass
class CreatedStudy:
    """The result of :func:`create_study`: the study, and the invite tokens (shown once; empty if it existed)."""

    study: Study
    tokens: dict[str, str]
    existed: bool = False


def load_study(root: str | os.PathLike) -> Study:
    """Open the study folder ``root`` (made by ``chexgen reader-study create``); a folder without one is an error."""
    root = Path(root)
    f = root / STUDY_FILE
    if not f.is_file():
        raise ChexgenError(f"{root}: not a reader study folder (no {STUDY_FILE}); make one with "
                           "`chexgen reader-study create`")
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ChexgenError(f"{f}: unreadable ({err})") from None
    if meta.get("format") != STUDY_FORMAT:
        raise ChexgenError(f"{f}: format {meta.get('format')!r}, expected {STUDY_FORMAT!r}")
    return Study(root=root, meta=meta)


def load_key(study: Study) -> dict[str, Any]:
    """The answer key (items -> case, source, model, record, findings). Only analysis reads it."""
    f = study.root / KEY_FILE
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ChexgenError(f"{f}: cannot read the answer key ({err})") from None


# ---------------------------------------------------------------------------- creation
def _load_synthetic(settings: StudySettings, real: list[Record]) -> dict[str, dict[str, list[tuple[Record, str]]]]:
    """model -> real id -> [(synthetic record, its manifest folder)]."""
    from chexgen.evaluation.matching import match_to_real

    out: dict[str, dict[str, list[tuple[Record, str]]]] = {}
    for src in settings.synthetic:
        records = read_manifest(src.path)
        idx = match_to_real(real, records)
        matched = [(r, i) for r, i in zip(records, idx) if i is not None]
        if not matched:
            raise ChexgenError(f"{src.path}: none of its {len(records)} records matches a record of {settings.real} "
                               "(by extra.source_id or prompt); was it generated from this real manifest?")
        missing = [r.id for r, i in zip(records, idx) if i is None]
        if missing:
            log.warning("%s: %d of %d records have no source in %s (first: %s); they are left out",
                        src.path, len(missing), len(records), settings.real, missing[0])
        root = str(Path(src.path).parent)
        for r, i in matched:
            model = src.model or (r.provenance or {}).get("model") or Path(src.path).stem
            model = re.sub(r"[^A-Za-z0-9_.-]", "_", str(model))[:64]
            out.setdefault(model, {}).setdefault(real[i].id, []).append((r, root))
    if settings.models:
        unknown = [m for m in settings.models if m not in out]
        if unknown:
            raise ChexgenError(f"--models {unknown} not found; the synthetic manifests hold {sorted(out)}")
        out = {m: out[m] for m in settings.models}
    return out


def _text_of(r: Record, which: str) -> str | None:
    first, second = (r.impression, r.report) if which == "impression" else (r.report, r.impression)
    return (first or second or "").strip() or None


def _plan(settings: StudySettings) -> tuple[list[dict], list[dict], list[str]]:
    """(cases, items with source paths, models) for the settings, before any file is written."""
    real = read_manifest(settings.real)
    real_root = str(Path(settings.real).parent)
    synthetic = _load_synthetic(settings, real)
    models = sorted(synthetic)
    need_text = "agreement" in settings.tasks
    pool = []
    for r in real:
        if r.image is None or (need_text and _text_of(r, settings.text) is None):
            continue
        have = [m for m in models if r.id in synthetic[m]]
        if (settings.require_all_models and len(have) < len(models)) or not have:
            continue
        pool.append((r, have))
    if not pool:
        raise ChexgenError(f"{settings.real}: no record is eligible (an image, a {settings.text} text when the "
                           f"agreement task is on, and a synthetic image from {'every' if settings.require_all_models else 'a'}"
                           f" model among {models})")
    counts = {n: sum(1 for r, _ in pool if r.labels.get(n) == 1) for n in LABELS}
    strata: dict[str, list[int]] = {}
    for i, (r, _) in enumerate(pool):
        strata.setdefault(stratum_of(r, counts) if settings.stratify else "all", []).append(i)
    rng = np.random.default_rng(settings.seed)
    alloc = allocate_cases({k: len(v) for k, v in strata.items()}, settings.cases, settings.allocation)
    chosen: list[tuple[int, str]] = []
    for k in sorted(strata):
        picks = rng.choice(len(strata[k]), size=alloc[k], replace=False) if alloc[k] else []
        chosen += [(strata[k][int(j)], k) for j in sorted(picks)]
    cases, items = [], []
    for c, (i, stratum) in enumerate(sorted(chosen)):
        r, have = pool[i]
        case_id = f"case-{c + 1:04d}"
        text = _text_of(r, settings.text) or ""
        cases.append({"case": case_id, "real_id": r.id, "stratum": stratum, "findings": r.positive_labels(),
                      "labels": r.labels, "text": text})
        sources: list[tuple[str, str | None, Record, str]] = []
        if settings.include_real:
            sources.append(("real", None, r, real_root))
        for m in have:  # one of the model's images for this case (several seeds may exist)
            options = synthetic[m][r.id]
            s, root = options[int(rng.integers(len(options)))]
            sources.append((m, m, s, root))
        for source, model, rec, root in sources:
            if rec.image is None:
                raise ChexgenError(f"synthetic record {rec.id!r} (model {model}) has no image path")
            items.append({"case": case_id, "source": source, "model": model, "record_id": rec.id,
                          "synthetic": source != "real", "stratum": stratum, "findings": r.positive_labels(),
                          "text": text, "_path": str(rec.resolve(rec.image, root))})
    return cases, items, models


def _settings_match(root: Path, settings: StudySettings) -> bool:
    study = load_study(root)
    old, new = study.meta.get("settings_key"), json.loads(json.dumps(settings.key()))
    if old == new:
        return True
    diff = sorted(k for k in set(old or {}) | set(new) if (old or {}).get(k) != new.get(k))
    raise ChexgenError(f"{root} already holds a reader study made with other settings ({', '.join(diff)}); "
                       "use a new study folder")


def create_study(settings: StudySettings, out: str | os.PathLike, db_url: str | None = None,
                 token_days: float = 90.0, progress: bool = True) -> CreatedStudy:
    """Create the study folder ``out`` (and its database); returns invite tokens for raters and the lead.

    An existing folder with the same settings is returned as it is (no new tokens: use
    :func:`reissue_tokens`); one with other settings is refused. Nothing is left behind on error.
    """
    settings.check()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / STUDY_FILE).is_file():
            raise ChexgenError(f"{out} exists and is not a reader study folder; use a new or empty folder")
        _settings_match(out, settings)
        return CreatedStudy(study=load_study(out), tokens={}, existed=True)
    for p in [settings.real] + [s.path for s in settings.synthetic]:
        if not Path(p).is_file():
            raise ChexgenError(f"{p}: manifest not found")
    cases, items, models = _plan(settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.creating-", dir=out.parent))
    engine = None
    try:
        (tmp / IMAGES_DIR).mkdir()
        used: set[str] = set()
        for it in tqdm(items, desc="blinding images", unit="img", disable=not progress):
            it["id"] = _fresh_id(used)
            it["image"] = f"{it['id']}.png"
            try:
                reencode_image(it["_path"], tmp / IMAGES_DIR / it["image"], settings.image_size, settings.resize)
            except ChexgenError as err:
                raise ChexgenError(f"record {it['record_id']!r} ({'real' if it['source'] == 'real' else it['model']}): "
                                   f"{err}") from None
        uid = secrets.token_hex(8)
        name = settings.name or out.name
        public = sorted(({"id": it["id"], "image": it["image"], "text": it["text"]} for it in items),
                        key=lambda d: d["id"])
        url = db_url or f"sqlite:///{tmp / DB_FILE}"
        engine = storage.make_engine(url)
        storage.init_database(engine, uid, name, public)
        ids = [d["id"] for d in public]
        tokens = {}
        with storage.make_sessionmaker(engine).begin() as s:
            for k, rater in enumerate(settings.raters):
                tokens[rater] = storage.add_rater(s, rater, "rater", [ids[j] for j in rater_order(settings.seed, k, len(ids))],
                                                  token_days)
            tokens["lead"] = storage.add_rater(s, "lead", "lead", [], token_days)
        meta = {
            "format": STUDY_FORMAT, "uid": uid, "name": name,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "database": "external" if db_url else "sqlite",
            "settings": json.loads(json.dumps(asdict(settings))), "settings_key": json.loads(json.dumps(settings.key())),
            "models": models, "n_cases": len(cases), "n_items": len(items),
            "image": {"format": "png", "bits": IMAGE_BITS, "size": settings.image_size, "resize": settings.resize},
            "agreement_scale": [list(a) for a in AGREEMENT_SCALE],
            "confidence_scale": [list(c) for c in CONFIDENCE_SCALE],
            "strata": {c["stratum"]: sum(1 for x in cases if x["stratum"] == c["stratum"]) for c in cases},
        }
        key = {"uid": uid, "cases": cases, "items": [{k: v for k, v in it.items() if k != "_path"} for it in items]}
        atomic_write_json(tmp / KEY_FILE, key)
        atomic_write_json(tmp / STUDY_FILE, meta)
        engine.dispose()
        engine = None
        if out.exists():
            out.rmdir()  # an empty folder the user made beforehand
        os.replace(tmp, out)
    except BaseException:
        if engine is not None and db_url:
            storage.clear_database(engine)
        if engine is not None:
            engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CreatedStudy(study=load_study(out), tokens=tokens)


def _fresh_id(used: set[str]) -> str:
    while True:
        x = secrets.token_hex(8)
        if x not in used:
            used.add(x)
            return x


# ---------------------------------------------------------------------------- raters and tokens
def add_raters(study: Study, names: Sequence[str], db_url: str | None = None, token_days: float = 90.0) -> dict[str, str]:
    """Add raters to an existing study (each with their own seeded order); returns their tokens."""
    from sqlalchemy import func, select

    for n in names:
        if not _NAME.match(n) or n == "lead":
            raise ChexgenError(f"rater name {n!r}: use letters, digits, '_', '.', '-' (up to 64), not 'lead'")
    engine = storage.make_engine(study.db_url(db_url))
    try:
        storage.check_database(engine, study.uid)
        tokens = {}
        with storage.make_sessionmaker(engine).begin() as s:
            ids = sorted(s.scalars(select(storage.Item.id)))
            k = int(s.scalar(select(func.count()).select_from(storage.Rater).where(storage.Rater.role == "rater")))
            for j, n in enumerate(names):
                order = rater_order(study.seed, k + j, len(ids))
                tokens[n] = storage.add_rater(s, n, "rater", [ids[i] for i in order], token_days)
        return tokens
    finally:
        engine.dispose()


def reissue_tokens(study: Study, names: Sequence[str] | None, db_url: str | None = None,
                   token_days: float = 90.0) -> dict[str, str]:
    """New tokens for the named raters (``None``: everyone, the lead included); old tokens stop working."""
    from sqlalchemy import select

    engine = storage.make_engine(study.db_url(db_url))
    try:
        storage.check_database(engine, study.uid)
        with storage.make_sessionmaker(engine).begin() as s:
            names = list(names) if names else list(s.scalars(select(storage.Rater.name).order_by(storage.Rater.id)))
            return {n: storage.issue_token(s, n, token_days) for n in names}
    finally:
        engine.dispose()


def export_answers(study: Study, out: str | os.PathLike, db_url: str | None = None) -> int:
    """Write every current answer (no answer key) to the CSV ``out`` atomically; returns the count."""
    from chexgen.utils import atomic_write_text

    engine = storage.make_engine(study.db_url(db_url))
    try:
        storage.check_database(engine, study.uid)
        with storage.make_sessionmaker(engine)() as s:
            rows = storage.answer_rows(s)
    finally:
        engine.dispose()
    atomic_write_text(out, storage.answers_csv(rows))
    return len(rows)
