"""Feature cache: manifest -> sharded safetensors of VAE latent moments and text-token embeddings.

Why cache: encoding dominates the cost of a training step for small DiTs (the
VAE encoder alone is several times the tiny DiT) and for large ones (T5-XXL is
4.7B parameters). Every image and caption is encoded once here instead of once
per epoch.

What is stored per record (all float16):

* ``latent_mean`` and ``latent_std`` (scaled by the VAE's scaling factor): the
  moments of the VAE posterior, not one sample. The trainer draws
  ``mean + std * noise`` afresh each time a record is seen, which is exactly what
  encoding on the fly would give; a single cached sample would freeze one draw
  for the whole run. ``--no-std`` halves the latent storage when training will
  use the mean only.
* text: only the valid tokens of the caption (``[length, dim]``), packed
  back-to-back with offsets, so 120 x 4096 padding is never stored for a
  30-token impression. The trainer pads per batch and rebuilds the mask.
* optional condition latents (``cond.<name>``, e.g. a pneumothorax mask or
  rendered boxes encoded by the same VAE) with a per-record presence flag, for
  ControlNet training.

Layout of a cache folder::

    index.json                      format, spec (what produced it), shard list, counts
    part000-00000.safetensors ...   shards of <= shard_size records (ids in the metadata)
    part000.json                    progress of writer 0 (shards written, done flag)
    rejects.jsonl                   every skipped record (file, line, id, reason; merged)
    rejects-part000.jsonl           the same, per writer, appended as they happen
    rejects-manifest.jsonl          records the manifest reader already left out (bad line, duplicate id)

Why safetensors shards and not WebDataset tars or one npz per record: shards are
memory-mappable (random access without reading the file), carry no pickle, hold
thousands of records per file (a million-record cache is ~1k files, not a
million), and need no extra dependency.

Work splits across processes by record position (``position % num_shards ==
shard_index``); each writer owns its part files, so writers never touch each
other's files. Shards are written atomically, so an interrupted job resumes
by skipping the ids already in its finished shards or its rejects list. The
last writer to finish merges the parts into ``index.json``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from chexgen.data.imageio import fit_square, load_gray
from chexgen.data.manifest import Record
from chexgen.data.rejects import Reject, RejectLog, read_rejects
from chexgen.errors import ChexgenError
from chexgen.utils import atomic_path, atomic_write_json

__all__ = [
    "CACHE_FORMAT",
    "CacheSpec",
    "PrepareSummary",
    "ConditionRenderer",
    "caption_for",
    "prepare_cache",
    "finalize_cache",
    "read_index",
    "CachedFeatures",
    "collate_features",
    "RecordImages",
    "iter_ids",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = "chexgen-cache/1"
MANIFEST_REJECTS = "rejects-manifest.jsonl"

# A renderer draws one condition (masks, boxes, ...) of a record as a gray ``size`` x ``size``
# image in [0, 1], aligned with the image under the same square-fit ``policy``; None when the
# record has none. Called as ``render(record, manifest_root, size, policy)``; the signature of
# :func:`chexgen.data.conditions.record_condition`.
ConditionRenderer = Callable[[Record, "Path | None", int, str], "np.ndarray | None"]


@dataclass
class CacheSpec:
    """What produced a cache; a resumed or extended job must match it exactly."""

    resolution: int
    resize_policy: str = "crop"
    text_field: str = "auto"
    prompt_cleaning: str = "basic"
    store_std: bool = True
    vae: dict[str, Any] = field(default_factory=dict)  # VAESpec.to_dict() or a folder reference
    vae_scaling_factor: float = 1.0
    text_encoder: dict[str, Any] = field(default_factory=dict)  # TextEncoderSpec.to_dict()
    latent_shape: list[int] = field(default_factory=list)  # [C, h, w]
    embed_dim: int = 0
    max_length: int = 0
    conditions: list[str] = field(default_factory=list)
    # how the conditions were drawn (RecordConditionRenderer.to_dict(): mask kinds, masks/boxes style);
    # empty = all masks and boxes (the only behaviour before this field existed)
    condition_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrepareSummary:
    written: int = 0  # records encoded in this call
    skipped_done: int = 0  # already cached by an earlier (interrupted) call
    rejected: int = 0  # newly rejected in this call
    rejected_total: int = 0  # everything this writer has rejected, earlier calls and the manifest included
    shards: int = 0  # shard files written in this call
    index_written: bool = False
    rejects_file: Path | None = None


# --------------------------------------------------------------------------- captions
def caption_for(record: Record, text_field: str = "auto") -> str | None:
    """The training caption of a record: its impression, its report, or (auto) the first present."""
    if text_field == "impression":
        text = record.impression
    elif text_field == "report":
        text = record.report
    elif text_field == "auto":
        text = record.impression or record.report
    else:
        raise ChexgenError(f"unknown text field {text_field!r}; expected impression, report or auto")
    text = (text or "").strip()
    return text or None


# --------------------------------------------------------------------------- image loading
class RecordImages(Dataset):
    """Loads and square-fits the images (and rendered conditions) of records; errors become reasons.

    A bad file must never stop a million-record job and must never be skipped
    silently: any failure while reading one record is returned as ``error`` (type
    and message) and the caller writes it to the rejects list.
    """

    def __init__(
        self,
        records: Sequence[Record],
        root: str | os.PathLike | None,
        resolution: int,
        resize_policy: str = "crop",
        conditions: dict[str, ConditionRenderer] | None = None,
    ) -> None:
        self.records = list(records)
        self.root = Path(root) if root is not None else None
        self.resolution = resolution
        self.resize_policy = resize_policy
        self.conditions = dict(conditions or {})

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        item: dict[str, Any] = {"index": i, "image": None, "error": None, "conds": {}}
        try:
            path = rec.resolve(rec.image, self.root)
            if path is None:
                raise ChexgenError("record has no image path")
            raw = load_gray(path)
            img = fit_square(raw, self.resolution, self.resize_policy)
            if not np.isfinite(img).all():
                raise ChexgenError(f"{path}: image has non-finite pixels")
            item["image"] = torch.from_numpy(np.ascontiguousarray(img))[None]
            for name, render in self.conditions.items():
                drawn = render(rec, self.root, self.resolution, self.resize_policy)
                if drawn is not None:
                    cond = np.asarray(drawn, dtype=np.float32)
                    if cond.shape != (self.resolution, self.resolution):
                        raise ChexgenError(f"condition {name!r} rendered as {cond.shape}, expected square {self.resolution}")
                    item["conds"][name] = torch.from_numpy(np.ascontiguousarray(cond))[None]
        except Exception as e:  # noqa: BLE001 - reported per record in the rejects list, never silent
            item["image"] = None
            item["error"] = f"{type(e).__name__}: {e}"
        return item


def _collate_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


# --------------------------------------------------------------------------- writer side
def _part_name(shard_index: int) -> str:
    return f"part{shard_index:03d}"


def _spec_dict(spec: CacheSpec) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(spec)))


def _check_spec(existing: dict[str, Any], spec: CacheSpec, where: Path) -> None:
    current = _spec_dict(spec)
    # a field added after a cache was written counts as its default there
    defaults = {"condition_options": {}}
    existing = {**defaults, **existing}
    diff = sorted(k for k in set(existing) | set(current) if existing.get(k) != current.get(k))
    if diff:
        details = "; ".join(f"{k}: cached {existing.get(k)!r} vs now {current.get(k)!r}" for k in diff[:4])
        raise ChexgenError(
            f"{where}: this cache was prepared with different settings ({details}); "
            f"use a new output folder or pass the same options"
        )


def _load_part(out_dir: Path, shard_index: int) -> dict[str, Any] | None:
    p = out_dir / f"{_part_name(shard_index)}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _read_rejected_ids(path: Path) -> set[str]:
    ids: set[str] = set()
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    ids.add(json.loads(line)["id"])
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by a crash; that record is simply retried
    return ids


def _write_shard(path: Path, rows: list[dict[str, Any]], conditions: Sequence[str], store_std: bool) -> None:
    lengths = [int(r["text"].shape[0]) for r in rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tensors: dict[str, torch.Tensor] = {
        "latent_mean": torch.stack([r["mean"] for r in rows]).to(torch.float16).contiguous(),
        "text_tokens": torch.cat([r["text"] for r in rows]).to(torch.float16).contiguous(),
        "text_offsets": torch.from_numpy(offsets),
    }
    if store_std:
        tensors["latent_std"] = torch.stack([r["std"] for r in rows]).to(torch.float16).contiguous()
    shape = tuple(rows[0]["mean"].shape)
    for name in conditions:
        present = torch.tensor([name in r["conds"] for r in rows], dtype=torch.uint8)
        stack = torch.stack([r["conds"].get(name, torch.zeros(shape)) for r in rows])
        tensors[f"cond.{name}"] = stack.to(torch.float16).contiguous()
        tensors[f"cond_present.{name}"] = present
    meta = {"format": CACHE_FORMAT, "ids": json.dumps([r["id"] for r in rows])}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


@torch.no_grad()
def prepare_cache(
    records: Sequence[Record],
    out_dir: str | os.PathLike,
    vae,
    text_encoder,
    spec: CacheSpec,
    manifest_root: str | os.PathLike | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    shard_size: int = 1024,
    batch_size: int = 16,
    num_workers: int = 0,
    conditions: dict[str, ConditionRenderer] | None = None,
    progress: bool = True,
    manifest_file: str | os.PathLike | None = None,
    record_lines: dict[str, int] | None = None,
    manifest_rejects: Sequence[Reject] = (),
) -> PrepareSummary:
    """Encode this writer's share of ``records`` into ``out_dir`` (resumable; see module docstring).

    ``vae`` is a :class:`~chexgen.models.vae.RadiographVAE`, ``text_encoder`` a
    :class:`~chexgen.models.text_encoder.TextEncoder`. Returns what this call did.
    ``manifest_file`` and ``record_lines`` (id -> line) name where a rejected record
    came from; ``manifest_rejects`` (what the manifest reader left out) are listed in
    ``rejects.jsonl`` too.
    """
    from chexgen.models.text_encoder import clean_prompt

    if not 0 <= shard_index < num_shards:
        raise ChexgenError(f"shard index {shard_index} is outside 0..{num_shards - 1}")
    if sorted(spec.conditions) != sorted((conditions or {}).keys()):
        raise ChexgenError(f"spec.conditions {spec.conditions} do not match the renderers {sorted(conditions or {})}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    part = _part_name(shard_index)
    summary = PrepareSummary()

    # Resume: what this writer already finished.
    state = _load_part(out, shard_index)
    if state is not None:
        _check_spec(state["spec"], spec, out)
        if state["num_shards"] != num_shards:
            raise ChexgenError(
                f"{out}: writer {shard_index} was started with --num-shards {state['num_shards']}, now {num_shards}"
            )
    else:
        state = {"format": CACHE_FORMAT, "spec": _spec_dict(spec), "num_shards": num_shards,
                 "shard_index": shard_index, "shards": [], "done": False}
    done_ids: set[str] = set()
    for sh in state["shards"]:  # ids live in the shard headers (cheap to read; no tensor data)
        with safe_open(str(out / sh["file"]), framework="pt") as h:
            done_ids.update(json.loads(h.metadata()["ids"]))
    rejects_path = out / f"rejects-{part}.jsonl"
    rejected_ids = _read_rejected_ids(rejects_path)
    RejectLog(manifest_rejects).write(out / MANIFEST_REJECTS)  # same content from every writer: idempotent
    where = str(manifest_file) if manifest_file is not None else "<records>"
    lines = record_lines or {}

    mine = [r for pos, r in enumerate(records) if pos % num_shards == shard_index]
    todo = [r for r in mine if r.id not in done_ids and r.id not in rejected_ids]
    summary.skipped_done = len(mine) - len(todo)
    captions = {r.id: caption_for(r, spec.text_field) for r in todo}
    no_text = [r for r in todo if captions[r.id] is None]
    todo = [r for r in todo if captions[r.id] is not None]
    if summary.skipped_done:
        log.info("%s: resuming writer %d: %d records already done or rejected", out, shard_index, summary.skipped_done)

    loader = DataLoader(
        RecordImages(todo, manifest_root, spec.resolution, spec.resize_policy, conditions),
        batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate_items,
    )
    buffer: list[dict[str, Any]] = []
    next_seq = 1 + max((int(sh["file"].rsplit("-", 1)[1].split(".")[0]) for sh in state["shards"]), default=-1)

    def flush(final: bool = False) -> None:
        nonlocal next_seq, buffer
        while len(buffer) >= shard_size or (final and buffer):
            rows, buffer = buffer[:shard_size], buffer[shard_size:]
            name = f"{part}-{next_seq:05d}.safetensors"
            _write_shard(out / name, rows, spec.conditions, spec.store_std)
            state["shards"].append({"file": name, "count": len(rows)})
            atomic_write_json(out / f"{part}.json", state, indent=None)
            summary.shards += 1
            next_seq += 1

    bar = tqdm(total=len(todo), desc=f"prepare {part}", unit="img", disable=not progress, dynamic_ncols=True)
    with open(rejects_path, "a", encoding="utf-8") as rejects:
        if rejects.tell() and not rejects_path.read_bytes().endswith(b"\n"):
            rejects.write("\n")  # a line cut by a kill: end it, so the next entry starts on its own line

        def reject(rec: Record, reason: str) -> None:
            entry = Reject(source=None, file=where, line=lines.get(rec.id), reason=f"image {rec.image}: {reason}",
                           id=rec.id)
            rejects.write(json.dumps(entry.to_dict(), ensure_ascii=False) + "\n")
            rejects.flush()
            summary.rejected += 1
            log.warning("skipped %s (%s): %s", rec.id, rec.image, reason)

        for rec in no_text:
            reject(rec, f"no caption text (text field {spec.text_field!r})")

        for items in loader:
            good = []
            for it in items:
                rec = todo[it["index"]]
                if it["error"] is not None:
                    reject(rec, it["error"])
                else:
                    good.append((rec, it, clean_prompt(captions[rec.id], spec.prompt_cleaning)))
            bar.update(len(items) - len(good))
            if not good:
                continue
            images = torch.stack([it["image"] for _, it, _ in good])
            mean, std = vae.encode_moments(images)
            cond_latents: dict[str, dict[int, torch.Tensor]] = {}
            for name in spec.conditions:
                idx = [k for k, (_, it, _) in enumerate(good) if name in it["conds"]]
                if idx:
                    c_mean, _ = vae.encode_moments(torch.stack([good[k][1]["conds"][name] for k in idx]))
                    cond_latents[name] = {k: c_mean[j].float().cpu() for j, k in enumerate(idx)}
            emb = text_encoder.encode([caption for _, _, caption in good])
            for k, (rec, it, _) in enumerate(good):
                valid = emb.mask[k].bool().cpu()
                buffer.append({
                    "id": rec.id,
                    "mean": mean[k].float().cpu(),
                    "std": std[k].float().cpu(),
                    "text": emb.embeddings[k].float().cpu()[valid],
                    "conds": {name: lat[k] for name, lat in cond_latents.items() if k in lat},
                })
                summary.written += 1
            bar.update(len(good))
            flush()
        flush(final=True)
    bar.close()
    state["done"] = True
    atomic_write_json(out / f"{part}.json", state, indent=None)
    summary.rejects_file = rejects_path
    summary.rejected_total = len(_read_rejected_ids(rejects_path)) + len(manifest_rejects)
    summary.index_written = finalize_cache(out, require_complete=False)
    return summary


def finalize_cache(out_dir: str | os.PathLike, require_complete: bool = True) -> bool:
    """Merge finished writers into ``index.json`` and ``rejects.jsonl``; False if some writer is unfinished."""
    out = Path(out_dir)
    parts = sorted(out.glob("part[0-9][0-9][0-9].json"))
    if not parts:
        raise ChexgenError(f"{out}: no prepared parts found (run `chexgen prepare` first)")
    states = [json.loads(p.read_text()) for p in parts]
    n = states[0]["num_shards"]
    present = {s["shard_index"] for s in states if s["num_shards"] == n}
    unfinished = sorted(set(range(n)) - {s["shard_index"] for s in states if s.get("done")})
    if unfinished or len(present) != n:
        if require_complete:
            raise ChexgenError(f"{out}: writers {unfinished} of {n} have not finished; run them (same --num-shards)")
        return False
    spec = states[0]["spec"]
    for s in states[1:]:
        if s["spec"] != spec:
            raise ChexgenError(f"{out}: writer {s['shard_index']} used different settings than writer 0")
    shards = [{"file": sh["file"], "count": sh["count"]} for s in states for sh in s["shards"]]
    # lines cut by a crash are dropped here; those records were retried by the resumed writer
    log_all = RejectLog(read_rejects(out / MANIFEST_REJECTS))
    for s in states:
        log_all.extend(read_rejects(out / f"rejects-{_part_name(s['shard_index'])}.jsonl"))
    log_all.write(out / "rejects.jsonl")
    rejected = log_all.entries
    index = {
        "format": CACHE_FORMAT,
        "spec": spec,
        "num_records": sum(sh["count"] for sh in shards),
        "num_rejects": len(rejected),
        "shards": shards,
    }
    atomic_write_json(out / "index.json", index)
    return True


# --------------------------------------------------------------------------- reader side
def read_index(cache_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(cache_dir) / "index.json"
    if not path.is_file():
        hint = " (writers still running or unfinished?)" if any(Path(cache_dir).glob("part*.json")) else ""
        raise ChexgenError(f"{path}: no cache index{hint}; run `chexgen prepare` to create it")
    index = json.loads(path.read_text())
    if index.get("format") != CACHE_FORMAT:
        raise ChexgenError(f"{path}: unsupported cache format {index.get('format')!r}; expected {CACHE_FORMAT}")
    return index


class CachedFeatures(Dataset):
    """Random access to a prepared cache; items are dicts of float16 tensors.

    ``preload`` keeps every shard in RAM (fastest; default when the cache is smaller
    than ``preload_limit_gb``); otherwise shards are memory-mapped and rows read on
    demand, which works for caches far larger than memory.
    """

    def __init__(self, cache_dir: str | os.PathLike, preload: bool | None = None, preload_limit_gb: float = 4.0,
                 load_std: bool = True) -> None:
        self.dir = Path(cache_dir)
        self.index = read_index(self.dir)
        self.spec = CacheSpec(**self.index["spec"])
        self.files = [self.dir / sh["file"] for sh in self.index["shards"]]
        counts = [sh["count"] for sh in self.index["shards"]]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.load_std = load_std and self.spec.store_std
        if preload is None:
            size = sum(f.stat().st_size for f in self.files)
            preload = size <= preload_limit_gb * 2**30
        self.preload = preload
        self._tables: list[dict[str, torch.Tensor]] | None = None
        self._handles: dict[int, Any] = {}
        self.ids: list[str] = []
        for f in self.files:
            with safe_open(str(f), framework="pt") as h:
                self.ids.extend(json.loads(h.metadata()["ids"]))
        if preload:
            self._tables = [self._read_all(f) for f in self.files]

    @staticmethod
    def _read_all(path: Path) -> dict[str, torch.Tensor]:
        with safe_open(str(path), framework="pt") as h:
            return {k: h.get_tensor(k) for k in h.keys()}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def latent_abs_max(self) -> float:
        """Largest |cached latent mean| over the whole cache (one shard in memory at a time)."""
        best = 0.0
        for s in range(len(self.files)):
            means = self._get(s, "latent_mean", slice(None))
            if means.numel():
                best = max(best, float(means.float().abs().max()))
        return best

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = int(np.searchsorted(self.starts, i, side="right") - 1)
        return s, i - int(self.starts[s])

    def _get(self, s: int, key: str, row: int | slice) -> torch.Tensor:
        if self._tables is not None:
            return self._tables[s][key][row]
        h = self._handles.get(s)
        if h is None:  # opened lazily per worker process; safetensors memory-maps the file
            h = self._handles[s] = safe_open(str(self.files[s]), framework="pt")
        if isinstance(row, slice):
            return h.get_slice(key)[row]
        return h.get_slice(key)[row : row + 1][0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s, r = self._locate(i)
        off = self._get(s, "text_offsets", slice(r, r + 2))
        item = {
            "latent_mean": self._get(s, "latent_mean", r),
            "text": self._get(s, "text_tokens", slice(int(off[0]), int(off[1]))),
        }
        if self.load_std:
            item["latent_std"] = self._get(s, "latent_std", r)
        for name in self.spec.conditions:
            item[f"cond.{name}"] = self._get(s, f"cond.{name}", r)
            item[f"cond_present.{name}"] = self._get(s, f"cond_present.{name}", r)
        return item

    def __getstate__(self) -> dict[str, Any]:  # file handles do not cross process boundaries
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state


def collate_features(items: list[dict[str, torch.Tensor]], pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Stack cached items; pad text tokens to the longest in the batch (or ``pad_to``) with a mask."""
    lengths = [it["text"].shape[0] for it in items]
    length = max(max(lengths), pad_to or 0)
    dim = items[0]["text"].shape[1]
    text = torch.zeros(len(items), length, dim, dtype=items[0]["text"].dtype)
    mask = torch.zeros(len(items), length, dtype=torch.long)
    for k, it in enumerate(items):
        text[k, : lengths[k]] = it["text"]
        mask[k, : lengths[k]] = 1
    batch = {"text": text, "text_mask": mask}
    for key in items[0]:
        if key != "text":
            batch[key] = torch.stack([it[key] for it in items])
    return batch


def iter_ids(cache_dir: str | os.PathLike) -> Iterable[str]:
    """Record ids of a cache in dataset order (without loading tensors)."""
    for sh in read_index(cache_dir)["shards"]:
        with safe_open(str(Path(cache_dir) / sh["file"]), framework="pt") as h:
            yield from json.loads(h.metadata()["ids"])
