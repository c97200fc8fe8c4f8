"""``chexgen audit-release``: check a synthetic set before it is shared, and keep only what passes.

Checks (each pass / fail, re-identification also *missing*):

(a) **identifiers**: no identifying value of a training (real) record (record
    / patient / study ids, image file stems, ids, accession numbers, dates and
    names under ``extra``; :mod:`chexgen.release.identifiers`) in the
    synthetic manifest, its provenance, PNG text chunks or DICOM headers;
    ``extra.source_id`` must be a salted hash (``sh1:...``); the salt file
    (``salt_file``) must not lie inside the synthetic set's folder. With
    ``salt_source_ids`` raw source ids are replaced by salted hashes in what is
    checked and released, so the working manifest can keep the real ids that
    evaluation and reader studies match on.
(b) **memorisation**: the nearest training image of every synthetic one by
    feature and by SSIM (:func:`chexgen.evaluation.memorisation.compute_memorisation`);
    flagged near copies fail and are shown side by side with their training
    neighbour in the report.
(c) **re-identification**: with a scorer (``reid``: a callable ``(synthetic
    [B,1,H,W], training [B,1,H,W]) -> [B]`` same-patient probabilities; ``--reid-model``
    loads CheXGenBench's Siamese ResNet-50 weights through
    :mod:`chexgen.evaluation.reid`, or a TorchScript scorer) each synthetic image is scored against its
    ``shortlist`` nearest training images and fails at ``reid_threshold``;
    without one the check is reported *missing* (a failure only with
    ``require_reid``).
(d) **marking**: every image carries the watermark (with the payload its
    provenance records, when it records one) and the synthetic marking (the
    manifest's ``synthetic`` flag; PNG text chunk or DICOM ConversionType SYN
    and chexgen's private block; JPEG has no metadata to carry one).

Images that are missing or unreadable get one message each and fail (e). The
report (``OUT/report.html`` + ``OUT/metrics.json``) shows training images
next to flagged synthetic ones: it is for the data owner, never part of the
release. ``OUT/release/`` holds only the records that passed every check,
their images and a ``manifest.jsonl``; it is rebuilt on every run.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from chexgen.data.imageio import fit_square, load_gray
from chexgen.data.manifest import Record, read_manifest, write_manifest
from chexgen.errors import ChexgenError
from chexgen.release.files import read_image_file
from chexgen.release.identifiers import (
    dicom_texts,
    find_identifiers,
    identifier_index,
    is_salted_id,
    load_salt,
    record_texts,
    salted_id,
)
from chexgen.release.watermark import detect_watermark

__all__ = ["AuditConfig", "AuditResult", "ReidScorer", "audit_release", "build_audit_extractor", "load_reid_model",
           "run_audit_from_options", "CHECKS"]

ReidScorer = Callable[..., object]
CHECKS = ("identifiers", "memorisation", "reidentification", "marking", "images")


@dataclass
class AuditConfig:
    """Thresholds and sizes of the audit (defaults as ``chexgen evaluate``'s memorisation check)."""

    ssim_threshold: float = 0.95
    feature_ratio: float = 0.1
    analysis_size: int = 128  # px of the gray copies used for SSIM and the figures
    max_train: int | None = None
    batch_size: int = 16
    reid_threshold: float = 0.5
    require_reid: bool = False
    shortlist: int = 8
    progress: bool = False


@dataclass
class AuditResult:
    """Per-check status, per-record failures, what was released, and where the report is."""

    checks: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)  # record id -> reasons
    released: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    report_html: str | None = None
    metrics_json: str | None = None
    release_dir: str | None = None

    @property
    def passed(self) -> bool:
        return all(c["status"] == "pass" or (c["status"] == "missing" and not c.get("required"))
                   for c in self.checks.values())

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


@dataclass
class _Loaded:
    rec: Record
    image: np.ndarray  # (H, W) float in [0, 1]


def _fail(result: AuditResult, check: str, rid: str, reason: str) -> None:
    result.failures.setdefault(rid, []).append(f"[{check}] {reason}")
    result.checks[check]["n_failed"] = result.checks[check].get("n_failed", 0) + 1


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _check_record(rec: Record, root: Path, index, result: AuditResult) -> np.ndarray | None:
    rid = rec.id
    if not rec.synthetic:
        _fail(result, "marking", rid, "the manifest does not mark the record synthetic")
    leaks = find_identifiers(record_texts(rec), index)
    src = (rec.extra or {}).get("source_id")
    if src is not None and not is_salted_id(src):
        leaks.append(f"record {rid!r} extra.source_id {src!r} is not a salted hash (sh1:...)")
    if rec.image is None:
        _fail(result, "images", rid, "no image path")
        result.skipped.append((rid, f"record {rid!r}: no image path"))
        return None
    path = rec.resolve(rec.image, root)
    try:
        img = read_image_file(path)
        gray = load_gray(path)
    except ChexgenError as e:
        _fail(result, "images", rid, str(e))
        result.skipped.append((rid, str(e)))
        for leak in leaks:
            _fail(result, "identifiers", rid, leak)
        return None
    texts = [(f"{path.name} PNG text {k}", v) for k, v in img.text.items()]
    if img.dicom is not None:
        texts += dicom_texts(img.dicom, f"{path.name} DICOM")
    leaks += find_identifiers(texts, index)
    for leak in dict.fromkeys(leaks):
        _fail(result, "identifiers", rid, leak)
    if img.kind in ("png", "dicom") and not img.synthetic_marked:
        _fail(result, "marking", rid, f"{path.name}: no synthetic marking in the {img.kind.upper()} metadata")
    wm = detect_watermark(img.pixels)
    expected = ((rec.provenance or {}).get("watermark") or {}) if isinstance((rec.provenance or {}).get(
        "watermark"), dict) else {}
    if not wm.found:
        _fail(result, "marking", rid, f"{path.name}: no watermark found (score {wm.score:.2f})")
    elif expected.get("payload") and expected["payload"] != wm.payload:
        _fail(result, "marking", rid, f"{path.name}: watermark payload {wm.payload} differs from the provenance's "
                                      f"{expected['payload']}")
    return gray


def _load_train(records: list[Record], root: Path, warnings: list[str]) -> list[_Loaded]:
    out = []
    for rec in records:
        path = rec.resolve(rec.image, root) if rec.image else None
        if path is None:
            warnings.append(f"training record {rec.id!r}: no image path (left out of the memorisation check)")
            continue
        try:
            out.append(_Loaded(rec, load_gray(path)))
        except ChexgenError as e:
            warnings.append(f"training record {rec.id!r}: {e} (left out of the memorisation check)")
    return out


def _features(extractor, images: list[np.ndarray], cfg: AuditConfig, desc: str) -> np.ndarray:
    from chexgen.evaluation.features import extract_features

    return extract_features(extractor, [fit_square(a, extractor.input_size, "crop") for a in images],
                            batch_size=cfg.batch_size, progress=cfg.progress, desc=desc).features


def _memorisation(syn: list[_Loaded], train: list[_Loaded], extractor, cfg: AuditConfig, result: AuditResult,
                  figures: list) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    import torch

    from chexgen.evaluation.memorisation import compute_memorisation
    from chexgen.evaluation.plots import grid_png
    from chexgen.evaluation.report import Figure

    sf = _features(extractor, [s.image for s in syn], cfg, "synthetic features")
    tf = _features(extractor, [t.image for t in train], cfg, "training features")
    size = cfg.analysis_size
    si = np.stack([fit_square(s.image, size, "crop") for s in syn])[:, None]
    ti = np.stack([fit_square(t.image, size, "crop") for t in train])[:, None]
    mem = compute_memorisation(sf, tf, torch.from_numpy(si), torch.from_numpy(ti), shortlist=cfg.shortlist,
                               ssim_threshold=cfg.ssim_threshold, feature_ratio=cfg.feature_ratio)
    closest = []
    for i in mem.closest_pairs(n=len(syn)):
        s, j_ssim, j_feat = syn[i], mem.ssim_nn[i], mem.feature_nn[i]
        closest.append({"synthetic_id": s.rec.id, "ssim_train_id": train[j_ssim].rec.id, "ssim": mem.ssim[i],
                        "feature_train_id": train[j_feat].rec.id, "feature_distance": mem.feature_distance[i],
                        "flagged": mem.flagged[i]})
        if mem.flagged[i]:
            _fail(result, "memorisation", s.rec.id,
                  f"near copy of training image {train[j_ssim].rec.id!r} (SSIM {mem.ssim[i]:.3f}; nearest by "
                  f"feature {train[j_feat].rec.id!r} at distance {mem.feature_distance[i]:.4f})")
    flagged = [i for i in range(len(syn)) if mem.flagged[i]][:12]
    shown = flagged or mem.closest_pairs(n=min(4, len(syn)))
    rows = [[si[i, 0], ti[mem.ssim_nn[i], 0]] for i in shown]
    title = "Flagged near copies: synthetic (left) and its nearest training image (right)" if flagged else \
        "Closest pairs (none flagged): synthetic (left) and its nearest training image (right)"
    caption = "; ".join(f"row {r + 1}: {syn[i].rec.id} vs {train[mem.ssim_nn[i]].rec.id}, SSIM {mem.ssim[i]:.3f}"
                        for r, i in enumerate(shown))
    figures.append(Figure(title, grid_png(rows, tile=min(size, 192)), caption, section="Memorisation"))
    summary = {"n_synthetic": len(syn), "n_train": len(train), "n_flagged": int(sum(mem.flagged)),
               "thresholds": mem.thresholds, "closest": closest[:50],
               "train_median_nn_distance": mem.train_median_nn_distance}
    return summary, sf, tf, ti


def _reid(syn: list[_Loaded], train: list[_Loaded], sf, tf, ti, reid: ReidScorer, cfg: AuditConfig,
          result: AuditResult) -> dict:
    import torch

    from chexgen.evaluation.memorisation import nearest_by_feature

    idx, _ = nearest_by_feature(sf, tf, k=cfg.shortlist)
    scores = []
    size = cfg.analysis_size
    for n, s in enumerate(syn):
        a = torch.from_numpy(np.repeat(fit_square(s.image, size, "crop")[None, None], idx.shape[1], 0))
        b = torch.from_numpy(ti[idx[n]])
        with torch.no_grad():
            out = torch.as_tensor(reid(a, b)).float().flatten()
        j = int(out.argmax())
        scores.append(float(out[j]))
        if scores[-1] >= cfg.reid_threshold:
            _fail(result, "reidentification", s.rec.id, f"re-identification score {scores[-1]:.3f} against "
                                                       f"training image {train[int(idx[n, j])].rec.id!r}")
    arr = np.asarray(scores)
    return {"mean": float(arr.mean()), "max": float(arr.max()), "n_above": int((arr >= cfg.reid_threshold).sum()),
            "threshold": cfg.reid_threshold}


def _write_release(out: Path, root: Path, records: list[Record]) -> Path:
    final = out / "release"
    tmp = Path(tempfile.mkdtemp(prefix=".release.", dir=out))
    try:
        kept = []
        for rec in records:
            src = rec.resolve(rec.image, root)
            rel = Path(rec.image)
            if rel.is_absolute() or ".." in rel.parts:
                rel = Path("images") / f"{rec.id}{src.suffix}"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
            kept.append(dataclasses.replace(rec, image=rel.as_posix()))
        write_manifest(tmp / "manifest.jsonl", kept)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _salt_source_ids(records: list[Record], salt: bytes) -> list[Record]:
    out = []
    for rec in records:
        src = (rec.extra or {}).get("source_id")
        if src is not None and not is_salted_id(src):
            rec = dataclasses.replace(rec, extra={**rec.extra, "source_id": salted_id(str(src), salt)})
        out.append(rec)
    return out


def audit_release(
    synthetic_manifest: str | os.PathLike,
    train_manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    extractor,
    cfg: AuditConfig | None = None,
    reid: ReidScorer | None = None,
    salt_file: str | os.PathLike | None = None,
    salt_source_ids: bool = False,
) -> AuditResult:
    """Run every check (see the module doc), write the report and ``OUT/release/``; return the result.

    ``salt_source_ids`` (needs ``salt_file``): replace raw ``extra.source_id`` values by salted hashes in
    what is checked and released, instead of failing on them.
    """
    from chexgen import __version__
    from chexgen.evaluation.report import write_report

    cfg = cfg or AuditConfig()
    syn_path, train_path, out = Path(synthetic_manifest), Path(train_manifest), Path(out_dir)
    for p, what in ((syn_path, "synthetic"), (train_path, "--train")):
        if not p.is_file():
            raise ChexgenError(f"{what} manifest {p}: not found")
    if out.resolve() == syn_path.parent.resolve():
        raise ChexgenError(f"--out {out}: choose a folder other than the synthetic set's own")
    syn_records = read_manifest(syn_path)
    train_records = read_manifest(train_path)[: cfg.max_train]
    if not syn_records:
        raise ChexgenError(f"{syn_path}: no records")
    if salt_source_ids:
        if salt_file is None:
            raise ChexgenError("--salt-source-ids needs --salt-file (the salt stays with the data owner)")
        # The working manifest keeps the real source ids (evaluation and reader studies match on them);
        # what is released carries them only as salted hashes, the salt staying with the data owner.
        syn_records = _salt_source_ids(syn_records, load_salt(salt_file, create=True))
    result = AuditResult(checks={c: {"status": "pass", "n_failed": 0} for c in CHECKS})
    warnings: list[str] = []
    if salt_file is not None and _inside(Path(salt_file), syn_path.parent):
        _fail(result, "identifiers", "(salt)", f"salt file {salt_file} lies inside the synthetic set's folder "
                                               f"{syn_path.parent}; keep it out of anything that is shared")
    index = identifier_index(train_records, name=str(train_path))
    loaded: list[_Loaded] = []
    from tqdm.auto import tqdm

    for rec in tqdm(syn_records, desc="audit", unit="img", disable=not cfg.progress):
        gray = _check_record(rec, syn_path.parent, index, result)
        if gray is not None:
            loaded.append(_Loaded(rec, gray))
    train = _load_train(train_records, train_path.parent, warnings)
    figures: list = []
    results: dict = {"created": datetime.datetime.now().isoformat(timespec="seconds"), "chexgen_version": __version__,
                     "inputs": {"synthetic_manifest": str(syn_path), "train_manifest": str(train_path),
                                "n_synthetic": len(syn_records), "n_train": len(train_records),
                                "features": extractor.describe() if hasattr(extractor, "describe") else str(extractor),
                                "identifier_values_indexed": len(index), "salt_file_given": salt_file is not None}}
    if loaded and train:
        results["memorisation"], sf, tf, ti = _memorisation(loaded, train, extractor, cfg, result, figures)
        if reid is not None:
            results["reidentification"] = _reid(loaded, train, sf, tf, ti, reid, cfg, result)
    else:
        result.checks["memorisation"]["status"] = "fail"
        result.checks["memorisation"]["detail"] = "no readable synthetic or training images to compare"
    if reid is None:
        result.checks["reidentification"] = {
            "status": "missing", "required": cfg.require_reid, "n_failed": 0,
            "detail": "no re-identification model given (reid / --reid-model: CheXGenBench's Siamese ResNet-50 "
                      "weights or a TorchScript scorer)"}
    for name, c in result.checks.items():
        if c.get("n_failed"):
            c["status"] = "fail"
    passed = [r for r in syn_records if r.id not in result.failures and any(x.rec.id == r.id for x in loaded)]
    if result.failures.get("(salt)"):
        passed = []
    out.mkdir(parents=True, exist_ok=True)
    result.release_dir = str(_write_release(out, syn_path.parent, passed))
    result.released = [r.id for r in passed]
    descriptions = {
        "identifiers": "no real record's ids, accession numbers, dates or names in the manifest, PNG text or "
                       "DICOM headers; source ids only as salted hashes",
        "memorisation": "no synthetic image is a near copy of a training image (feature and SSIM)",
        "reidentification": "patient re-identification score below threshold",
        "marking": "every image carries the watermark and the synthetic marking",
        "images": "every image of the manifest exists and is readable",
    }
    results["tables"] = [
        {"title": "Checks", "id": "checks", "columns": ["check", "status", "records failing", "what it checks"],
         "rows": [[k, c["status"].upper(), c.get("n_failed", 0), c.get("detail") or descriptions[k]]
                  for k, c in result.checks.items()],
         "note": f"{'PASS' if result.passed else 'FAIL'}: {len(passed)} of {len(syn_records)} records released "
                 f"to {result.release_dir}. This report shows training images: do not share it."},
        {"title": "Records that failed", "id": "failures", "columns": ["record", "reason"],
         "rows": [[rid, reason] for rid, reasons in result.failures.items() for reason in reasons]},
    ]
    results["metrics"] = {"released_fraction": {"value": len(passed) / len(syn_records),
                                                "description": "records that passed every check"}}
    results["checks"] = result.checks
    results["failures"] = result.failures
    results["warnings"] = warnings
    json_path, html_path = write_report(out, results, figures, title="chexgen release audit")
    result.metrics_json, result.report_html = str(json_path), str(html_path)
    return result


def build_audit_extractor(features: str = "xrv", weights: str | None = None, random_init: bool = False,
                          image_size: int = 224, device: str = "cpu"):
    """A feature extractor by kind (``xrv`` / ``clip`` / ``inception``) or a classifier path.

    A path is a chexgen classifier folder (``config.json`` + ``model.safetensors``, as
    :func:`chexgen.downstream.classifier.save_classifier` writes) or a TorchScript file.
    """
    import torch

    from chexgen.evaluation.features import EXTRACTOR_KINDS, ClassifierExtractor, build_extractor

    if features in EXTRACTOR_KINDS:
        return build_extractor(features, weights, device=device, random_init=random_init)
    path = Path(features)
    if path.is_dir() and (path / "config.json").is_file():
        from chexgen.downstream.classifier import load_classifier

        model = load_classifier(path)
    elif path.is_file():
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as e:
            raise ChexgenError(f"--features {path}: not a TorchScript file ({e})") from None
    else:
        raise ChexgenError(f"--features {features!r}: expected one of {EXTRACTOR_KINDS}, a classifier folder or a "
                           "TorchScript file")
    size = int(getattr(model, "input_size", image_size))
    names = getattr(model, "class_names", None)
    return ClassifierExtractor(model, input_size=size, name=f"classifier:{path.name}", class_names=names,
                               device=device)


def load_reid_model(path: str | os.PathLike) -> ReidScorer:
    """A re-identification scorer ``f(a, b) -> [B]`` same-patient probabilities (module doc, check (c)).

    ``path`` is either the Siamese ResNet-50 weights CheXGenBench scores privacy with
    (``ResNet-50_epoch11_data_handling_RPN.pth``, a plain state dict; see
    :mod:`chexgen.evaluation.reid`) or a TorchScript file of any model with that call signature.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise ChexgenError(f"--reid-model {p}: not found")
    try:
        model = torch.jit.load(str(p), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        jit_error = str(e).splitlines()[0] if str(e) else type(e).__name__
    else:
        model.eval()
        return model
    from chexgen.evaluation.reid import load_reid_network

    try:
        net = load_reid_network(p)
    except ChexgenError as e:
        raise ChexgenError(f"--reid-model {p}: neither TorchScript ({jit_error}) nor CheXGenBench re-identification "
                           f"weights ({e})") from None

    def score(a, b):
        """Same-patient probability of gray batches ``a`` and ``b`` ([B, 1, H, W] in [0, 1])."""
        return net.score_embeddings(net.embed(net.preprocess(a)), net.embed(net.preprocess(b)))

    return score


def run_audit_from_options(synthetic_manifest, train_manifest, out_dir, cfg: AuditConfig, features: str = "xrv",
                           weights: str | None = None, random_init: bool = False, image_size: int = 224,
                           device: str = "cpu", reid_model: str | None = None,
                           salt_file: str | None = None, salt_source_ids: bool = False) -> AuditResult:
    """:func:`audit_release` with the extractor and re-identification model named by command-line options."""
    for p, what in ((synthetic_manifest, "synthetic"), (train_manifest, "--train")):
        if not Path(p).is_file():
            raise ChexgenError(f"{what} manifest {p}: not found")
    reid = load_reid_model(reid_model) if reid_model else None
    extractor = build_audit_extractor(features, weights, random_init, image_size, device)
    return audit_release(synthetic_manifest, train_manifest, out_dir, extractor, cfg, reid=reid, salt_file=salt_file,
                         salt_source_ids=salt_source_ids)
