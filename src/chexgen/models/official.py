"""Official ChexGen checkpoints -> chexgen's :class:`~chexgen.models.dit.ChexGenDiT`.

The official release (era-ai-biomed/ChexGen, a PixArt-alpha DiT-XL/2) stores a
torch pickle with ``state_dict`` and ``state_dict_ema``. Its parameter names
differ from diffusers' :class:`~diffusers.PixArtTransformer2DModel`, which
chexgen wraps as ``ChexGenDiT.backbone``; this module is the one place that
knows both vocabularies:

=====================================  ==============================================
official key                           chexgen key
=====================================  ==============================================
``x_embedder.proj``                    ``backbone.pos_embed.proj``
``t_embedder.mlp.0`` / ``.2``          ``backbone.adaln_single.emb.timestep_embedder.linear_1`` / ``_2``
``t_block.1``                          ``backbone.adaln_single.linear``
``y_embedder.y_proj.fc1`` / ``fc2``    ``backbone.caption_projection.linear_1`` / ``_2``
``y_embedder.y_embedding``             ``null_caption``
``blocks.N.shift_scale_gate_table``    ``backbone.transformer_blocks.N.scale_shift_table``
``blocks.N.attn.qkv``                  ``...attn1.to_q`` / ``to_k`` / ``to_v`` (rows split in 3)
``blocks.N.attn.proj``                 ``...attn1.to_out.0``
``blocks.N.cross_attn.q_linear``       ``...attn2.to_q``
``blocks.N.cross_attn.kv_linear``      ``...attn2.to_k`` / ``to_v`` (K rows first, then V)
``blocks.N.cross_attn.proj``           ``...attn2.to_out.0``
``blocks.N.mlp.fc1`` / ``fc2``         ``...ff.net.0.proj`` / ``ff.net.2``
``final_layer.shift_scale_table``      ``backbone.scale_shift_table``
``final_layer.linear``                 ``backbone.proj_out``
``pos_embed``                          not a parameter: checked against the recomputed buffer
=====================================  ==============================================

PixArt-alpha's own names (``scale_shift_table`` for both tables) are accepted too.
The two tables keep their row order: both codes read the block table as
shift/scale/gate (attention) then shift/scale/gate (MLP), and the final table as
shift then scale.

Every official tensor must be used and every chexgen parameter filled;
otherwise :class:`~chexgen.errors.ChexgenError` lists the missing and unexpected
keys. Nothing is loaded silently.

Memory: the checkpoint is memory-mapped when the file format allows, the model
is built on the meta device and the mapped tensors are *assigned* to it, so a
paper-size model never exists twice in CPU memory; only the split ``qkv`` /
``kv`` pieces (about 30% of the block weights) are copied. Measured peak: 1.34x
the weight bytes, against 2.31x for load + ``load_state_dict``
(``benchmarks/official_convert_memory.py``).

Control checkpoints (``ControlT2IDiT``) hold the base model under
``base_model.*`` and 13 control blocks under ``controlnet.{i}.*``;
:func:`split_control_checkpoint` separates them and
:func:`map_official_control_state_dict` renames the control part (see there).
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, MutableMapping

import torch

from chexgen.errors import ChexgenError

__all__ = [
    "OfficialArchitecture",
    "MappedCheckpoint",
    "POS_EMBED_SCALE_BY_RESOLUTION",
    "OFFICIAL_CONTROL_BLOCKS",
    "read_official_checkpoint",
    "select_state_dict",
    "strip_prefix",
    "split_control_checkpoint",
    "infer_architecture",
    "map_official_state_dict",
    "map_official_block",
    "map_official_control_state_dict",
    "official_pos_embed",
    "check_pos_embed",
    "build_empty_transformer",
    "load_official_transformer",
    "check_keys",
    "assign_weights",
    "official_state_dict_keys",
    "DEFAULT_CONTROL_LAYOUT",
    "infer_pos_embed_scale",
]

logger = logging.getLogger(__name__)

#: Official pos-embed interpolation scale ("lewei scale") per image resolution.
POS_EMBED_SCALE_BY_RESOLUTION: dict[int, float] = {256: 1.0, 512: 2.0}
#: Number of trainable copies of base blocks in the official ControlNet (ControlT2IDiT).
OFFICIAL_CONTROL_BLOCKS = 13
#: Head count of the official DiT-XL/2 (head dim 72); not recoverable from the weights.
OFFICIAL_HEAD_DIM = 72
VAE_DOWNSAMPLE = 8

Tensor = torch.Tensor
StateDict = MutableMapping[str, Tensor]


# =========================================================================== reading
def read_official_checkpoint(path: str | Path, mmap: bool = True) -> dict[str, Any]:
    """Load an official ``.pth`` safely: tensors and plain containers only.

    Uses ``torch.load(weights_only=True)``; a checkpoint that needs arbitrary
    Python objects to unpickle (code could run while loading it) is refused with
    a :class:`ChexgenError` instead of being loaded. ``mmap`` keeps the tensors
    on disk until they are used (zip-format checkpoints only; older formats are
    read into memory).
    """
    path = Path(path)
    if not path.is_file():
        raise ChexgenError(f"{path}: checkpoint file not found")
    use_mmap = mmap and zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        detail = next((line for line in first if "Unsupported" in line or "global" in line.lower()), first[0] if first else "")
        detail = detail.split(" Please use")[0]  # torch's advice to allowlist the class: not offered here
        raise ChexgenError(
            f"{path}: refused to load: the file contains Python objects other than tensors and plain "
            f"containers, which could execute code when unpickled (torch.load weights_only=True said: "
            f"{detail.strip()}). Re-save only the state dicts, e.g. "
            f"torch.save({{'state_dict_ema': ckpt['state_dict_ema']}}, 'clean.pth') in a trusted environment."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ChexgenError(f"{path}: not a readable torch checkpoint ({err.__class__.__name__}: {err})") from err
    if not isinstance(obj, Mapping):
        raise ChexgenError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return dict(obj)


def select_state_dict(checkpoint: Mapping[str, Any], use_ema: bool = True,
                      source: str = "<checkpoint>") -> dict[str, Tensor]:
    """The EMA weights (``state_dict_ema``, what official sampling uses) or ``state_dict``.

    A bare state dict (every value a tensor) is accepted as is. Asking for EMA
    weights that are not there is an error, never a silent fallback.
    """
    wanted = "state_dict_ema" if use_ema else "state_dict"
    if wanted in checkpoint:
        sd = checkpoint[wanted]
    elif checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        logger.info("%s: a bare state dict (no %r entry); using it as is", source, wanted)
        sd = checkpoint
    else:
        have = sorted(str(k) for k in checkpoint)
        hint = " (use --use-non-ema for 'state_dict')" if use_ema and "state_dict" in checkpoint else ""
        if not use_ema and "state_dict_ema" in checkpoint:
            hint = " (drop --use-non-ema to use 'state_dict_ema')"
        raise ChexgenError(f"{source}: no {wanted!r} in the checkpoint; it holds {have}{hint}")
    if not isinstance(sd, Mapping):
        raise ChexgenError(f"{source}: {wanted!r} is a {type(sd).__name__}, expected a dict of tensors")
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        raise ChexgenError(f"{source}: {wanted!r} has non-tensor entries: {bad[:10]}")
    return dict(sd)


def strip_prefix(sd: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Drop ``prefix`` (DistributedDataParallel's ``module.``) from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def split_control_checkpoint(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``ControlT2IDiT`` weights -> (base DiT weights, ``controlnet.*`` weights without the prefix).

    Raises when the checkpoint has no ``base_model.*`` / ``controlnet.*`` keys or
    holds keys outside them.
    """
    base = {k[len("base_model."):]: v for k, v in sd.items() if k.startswith("base_model.")}
    control = {k[len("controlnet."):]: v for k, v in sd.items() if k.startswith("controlnet.")}
    other = sorted(k for k in sd if not k.startswith(("base_model.", "controlnet.")))
    if not base or not control:
        raise ChexgenError(
            "not an official control checkpoint: expected 'base_model.*' and 'controlnet.*' keys, found "
            f"{len(base)} base and {len(control)} control keys (convert without --control for a plain model)"
        )
    if other:
        raise ChexgenError(f"control checkpoint: unexpected keys outside base_model./controlnet.: {other[:20]}")
    return base, control


# =========================================================================== architecture
@dataclass(frozen=True)
class OfficialArchitecture:
    """Sizes of an official DiT, read off its weights (plus the head count, which weights don't show)."""

    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int
    in_channels: int
    out_channels: int
    caption_channels: int
    max_text_len: int
    sample_size: int  # latent height/width
    interpolation_scale: float

    @property
    def resolution(self) -> int:
        return self.sample_size * VAE_DOWNSAMPLE

    @property
    def grid(self) -> int:
        return self.sample_size // self.patch_size

    def transformer_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of :class:`~chexgen.models.dit.ChexGenDiT` for these weights."""
        if self.out_channels not in (self.in_channels, 2 * self.in_channels):
            raise ChexgenError(
                f"official final layer gives {self.out_channels} channels for {self.in_channels} input channels; "
                "expected the same or twice as many (learned sigma)"
            )
        return dict(
            sample_size=self.sample_size,
            patch_size=self.patch_size,
            in_channels=self.in_channels,
            hidden_size=self.hidden_size,
            depth=self.depth,
            num_heads=self.num_heads,
            caption_channels=self.caption_channels,
            max_text_len=self.max_text_len,
            learn_sigma=self.out_channels == 2 * self.in_channels,
            interpolation_scale=self.interpolation_scale,
            # Official sampling pairs the null caption with the prompt's padding mask.
            null_caption_mask="prompt",
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "resolution": self.resolution}


def _need(sd: Mapping[str, Tensor], key: str, ndim: int) -> Tensor:
    if key not in sd:
        raise ChexgenError(f"official checkpoint has no {key!r}; is this an official ChexGen / PixArt DiT? "
                           f"(first keys: {sorted(sd)[:8]})")
    t = sd[key]
    if t.ndim != ndim:
        raise ChexgenError(f"official key {key!r} has shape {tuple(t.shape)}; expected {ndim} dimensions")
    return t


def infer_architecture(sd: Mapping[str, Tensor], *, resolution: int | None = None,
                       num_heads: int | None = None,
                       interpolation_scale: float | None = None) -> OfficialArchitecture:
    """Read depth, width, patch, channels and token count off official weights.

    The latent size comes from ``pos_embed`` (N = (size / patch)^2) or, without
    it, from ``resolution``; if both are given they must agree. The pos-embed
    scale follows the resolution (1.0 at 256 px, 2.0 at 512 px) unless
    ``interpolation_scale`` is given; at other resolutions it is read off the saved
    ``pos_embed`` (:func:`infer_pos_embed_scale`). ``num_heads`` defaults to width / 72,
    the official head size.
    """
    xw = _need(sd, "x_embedder.proj.weight", 4)
    hidden, in_ch, patch = int(xw.shape[0]), int(xw.shape[1]), int(xw.shape[2])
    depth = len({int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
    if depth == 0:
        raise ChexgenError("official checkpoint has no 'blocks.N.*' keys")
    lin = _need(sd, "final_layer.linear.weight", 2)
    out_ch = int(lin.shape[0]) // (patch * patch)
    null = _need(sd, "y_embedder.y_embedding", 2)
    max_len, cap = int(null.shape[0]), int(null.shape[1])

    sample_from_res = None
    if resolution is not None:
        if resolution % (VAE_DOWNSAMPLE * patch):
            raise ChexgenError(f"--resolution {resolution} is not a multiple of {VAE_DOWNSAMPLE * patch}")
        sample_from_res = resolution // VAE_DOWNSAMPLE
    sample_from_pe = None
    if "pos_embed" in sd:
        n = int(sd["pos_embed"].shape[-2])
        g = math.isqrt(n)
        if g * g != n:
            raise ChexgenError(f"official pos_embed has {n} positions, not a square grid")
        sample_from_pe = g * patch
    if sample_from_pe is not None and sample_from_res is not None and sample_from_pe != sample_from_res:
        raise ChexgenError(
            f"--resolution {resolution} does not match the checkpoint: its pos_embed is for "
            f"{sample_from_pe * VAE_DOWNSAMPLE} px ({sample_from_pe}x{sample_from_pe} latents)"
        )
    sample = sample_from_pe if sample_from_pe is not None else sample_from_res
    if sample is None:
        raise ChexgenError("the checkpoint has no pos_embed; pass --resolution (256 or 512 for the official models)")
    res = sample * VAE_DOWNSAMPLE
    if interpolation_scale is None:
        if res in POS_EMBED_SCALE_BY_RESOLUTION:
            interpolation_scale = POS_EMBED_SCALE_BY_RESOLUTION[res]
        elif "pos_embed" in sd:
            interpolation_scale = infer_pos_embed_scale(sd["pos_embed"])
            if interpolation_scale is None:
                raise ChexgenError(
                    f"no official pos-embed scale for {res} px (known: {sorted(POS_EMBED_SCALE_BY_RESOLUTION)}) "
                    "and the checkpoint's saved pos_embed is not a sin-cos table of any scale; "
                    "pass --pos-embed-scale")
            logger.info("pos-embed scale %s at %d px, read off the checkpoint's saved pos_embed",
                        interpolation_scale, res)
        else:
            raise ChexgenError(
                f"no official pos-embed scale for {res} px (known: {sorted(POS_EMBED_SCALE_BY_RESOLUTION)}) and "
                "no saved pos_embed to read it from; pass --pos-embed-scale")
    if not (math.isfinite(interpolation_scale) and interpolation_scale > 0):
        raise ChexgenError(f"--pos-embed-scale must be a positive number, got {interpolation_scale}")
    if num_heads is None:
        if hidden % OFFICIAL_HEAD_DIM:
            raise ChexgenError(f"width {hidden} is not a multiple of the official head size 72; pass --num-heads")
        num_heads = hidden // OFFICIAL_HEAD_DIM
    if hidden % num_heads:
        raise ChexgenError(f"width {hidden} is not divisible by num_heads {num_heads}")
    return OfficialArchitecture(depth=depth, hidden_size=hidden, num_heads=num_heads, patch_size=patch,
                                in_channels=in_ch, out_channels=out_ch, caption_channels=cap,
                                max_text_len=max_len, sample_size=sample,
                                interpolation_scale=float(interpolation_scale))


# =========================================================================== key mapping
# (official suffix, chexgen suffix(es)); several targets = the official rows split evenly in that order.
_BLOCK_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("shift_scale_gate_table", ("scale_shift_table",)),
    ("scale_shift_table", ("scale_shift_table",)),  # PixArt-alpha's name
    ("attn.qkv", ("attn1.to_q", "attn1.to_k", "attn1.to_v")),
    ("attn.proj", ("attn1.to_out.0",)),
    ("cross_attn.q_linear", ("attn2.to_q",)),
    ("cross_attn.kv_linear", ("attn2.to_k", "attn2.to_v")),
    ("cross_attn.proj", ("attn2.to_out.0",)),
    ("mlp.fc1", ("ff.net.0.proj",)),
    ("mlp.fc2", ("ff.net.2",)),
]
_TOP_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("x_embedder.proj", ("backbone.pos_embed.proj",)),
    ("t_embedder.mlp.0", ("backbone.adaln_single.emb.timestep_embedder.linear_1",)),
    ("t_embedder.mlp.2", ("backbone.adaln_single.emb.timestep_embedder.linear_2",)),
    ("t_block.1", ("backbone.adaln_single.linear",)),
    ("y_embedder.y_proj.fc1", ("backbone.caption_projection.linear_1",)),
    ("y_embedder.y_proj.fc2", ("backbone.caption_projection.linear_2",)),
    ("y_embedder.y_embedding", ("null_caption",)),
    ("final_layer.shift_scale_table", ("backbone.scale_shift_table",)),
    ("final_layer.scale_shift_table", ("backbone.scale_shift_table",)),
    ("final_layer.linear", ("backbone.proj_out",)),
]
_PARAM_SUFFIXES = ("weight", "bias")


def _map_one(key: str, rules: list[tuple[str, tuple[str, ...]]], dst_prefix: str = "") -> tuple[str, ...] | None:
    """Target key(s) for an official key under ``rules``, or None when no rule matches."""
    for src, dsts in rules:
        if key == src:  # a bare tensor (tables, null caption)
            return tuple(dst_prefix + d for d in dsts)
        for suffix in _PARAM_SUFFIXES:
            if key == f"{src}.{suffix}":
                return tuple(f"{dst_prefix}{d}.{suffix}" for d in dsts)
    return None


def _emit(out: dict[str, Tensor], source: Tensor, targets: tuple[str, ...], key: str) -> None:
    taken = [t for t in targets if t in out]
    if taken:  # e.g. both PixArt's and ChexGen's name for the same table: never let one win silently
        raise ChexgenError(f"official key {key!r} maps to {taken}, which another key already filled")
    if len(targets) == 1:
        out[targets[0]] = source
        return
    if source.shape[0] % len(targets):
        raise ChexgenError(f"official key {key!r} with shape {tuple(source.shape)} cannot be split "
                           f"into {len(targets)} equal parts")
    # Copies of the row blocks, so that the fused original can be freed and no two saved
    # tensors share storage (safetensors refuses that).
    for target, piece in zip(targets, source.chunk(len(targets), dim=0)):
        out[target] = piece.clone()


def map_official_block(block_sd: StateDict, dst_prefix: str, *, consume: bool = True,
                       unexpected: list[str] | None = None, src_prefix: str = "") -> dict[str, Tensor]:
    """Rename one official DiT block (keys without the ``blocks.N.`` prefix) to diffusers names.

    Used for base blocks and for the control copies. Keys that match no rule are
    appended to ``unexpected`` (with ``src_prefix`` for the message). With
    ``consume`` the used entries are removed from ``block_sd`` as they are mapped.
    """
    out: dict[str, Tensor] = {}
    for key in list(block_sd):
        targets = _map_one(key, _BLOCK_RULES, dst_prefix)
        if targets is None:
            if unexpected is not None:
                unexpected.append(src_prefix + key)
            continue
        tensor = block_sd.pop(key) if consume else block_sd[key]
        _emit(out, tensor, targets, src_prefix + key)
    return out


@dataclass
class MappedCheckpoint:
    """Official weights renamed for ChexGenDiT, plus the saved pos-embed for checking."""

    state_dict: dict[str, Tensor]
    pos_embed: Tensor | None
    unexpected: list[str]


def _group_blocks(sd: StateDict, prefix: str = "blocks.") -> dict[int, dict[str, Tensor]]:
    groups: dict[int, dict[str, Tensor]] = {}
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.+)")
    for key in list(sd):
        m = pattern.fullmatch(key)
        if m:
            groups.setdefault(int(m.group(1)), {})[m.group(2)] = sd.pop(key)
    return groups


def map_official_state_dict(sd: Mapping[str, Tensor]) -> MappedCheckpoint:
    """Rename every official DiT key to ChexGenDiT's names (see the module table).

    The input is not modified; tensors are shared with it except the split
    ``qkv`` / ``kv_linear`` pieces. Keys that match no rule are returned in
    ``unexpected`` (the loader turns them into an error).
    """
    work: dict[str, Tensor] = dict(sd)
    pos_embed = work.pop("pos_embed", None)
    unexpected: list[str] = []
    out: dict[str, Tensor] = {}
    for idx, block in sorted(_group_blocks(work).items()):
        out.update(map_official_block(block, f"backbone.transformer_blocks.{idx}.", unexpected=unexpected,
                                      src_prefix=f"blocks.{idx}."))
    for key in list(work):
        targets = _map_one(key, _TOP_RULES)
        if targets is None:
            unexpected.append(key)
            continue
        _emit(out, work.pop(key), targets, key)
    return MappedCheckpoint(state_dict=out, pos_embed=pos_embed, unexpected=sorted(unexpected))


# --------------------------------------------------------------------------- control part
#: Key layout that :func:`map_official_control_state_dict` produces by default: the one of
#: :class:`chexgen.models.controlnet.ChexGenControlNet` (official names, diffusers block names inside).
DEFAULT_CONTROL_LAYOUT = {
    "block": "controlnet.{i}.copied_block.",
    "before_proj": "controlnet.{i}.before_proj.",
    "after_proj": "controlnet.{i}.after_proj.",
}


def map_official_control_state_dict(control_sd: Mapping[str, Tensor], *,
                                     layout: Mapping[str, str] | None = None,
                                     num_blocks: int = OFFICIAL_CONTROL_BLOCKS) -> MappedCheckpoint:
    """Rename the ``controlnet.*`` half of an official control checkpoint (prefix already removed).

    Official keys are ``{i}.copied_block.<block keys>`` (a trainable copy of base
    block ``i``), ``0.before_proj.{weight,bias}`` (zero-initialised projection of
    the condition tokens into the first copy) and ``{i}.after_proj.{weight,bias}``
    (zero-initialised projection of each copy's output, added to the input of base
    block ``i + 1``). ``layout`` gives the adapter's name templates for the three
    parts (``{i}`` is the control block index); block weights get diffusers block
    names, exactly like the base model's. Unknown keys and block indices outside
    ``0..num_blocks-1`` are returned in ``unexpected``.
    """
    names = {**DEFAULT_CONTROL_LAYOUT, **(layout or {})}
    work: dict[str, Tensor] = dict(control_sd)
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    pattern = re.compile(r"(\d+)\.(copied_block|before_proj|after_proj)\.(.+)")
    grouped: dict[int, dict[str, Tensor]] = {}
    for key in list(work):
        m = pattern.fullmatch(key)
        if not m or int(m.group(1)) >= num_blocks:
            unexpected.append(f"controlnet.{key}")
            continue
        i, part, rest = int(m.group(1)), m.group(2), m.group(3)
        tensor = work.pop(key)
        if part == "copied_block":
            grouped.setdefault(i, {})[rest] = tensor
        elif rest in _PARAM_SUFFIXES:
            out[names[part].format(i=i) + rest] = tensor
        else:
            unexpected.append(f"controlnet.{key}")
    for i, block in sorted(grouped.items()):
        out.update(map_official_block(block, names["block"].format(i=i), unexpected=unexpected,
                                      src_prefix=f"controlnet.{i}.copied_block."))
    return MappedCheckpoint(state_dict=out, pos_embed=None, unexpected=sorted(unexpected))


# =========================================================================== pos-embed
def official_pos_embed(hidden_size: int, grid: int, interpolation_scale: float,
                       base_size: int | None = None) -> Tensor:
    """The official fixed 2-D sin-cos table ``[1, grid*grid, hidden]`` (MAE layout), via diffusers."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    table = get_2d_sincos_pos_embed(hidden_size, grid, base_size=base_size or grid,
                                    interpolation_scale=interpolation_scale, output_type="pt")
    return table.float().unsqueeze(0)


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2


def infer_pos_embed_scale(saved: Tensor) -> float | None:
    """The scale ``s`` whose sin-cos table (positions ``arange(G) / s``) is ``saved``; None if there is none.

    Reads the phase of every frequency at the last grid position, from the lowest
    frequency (unambiguous) up, unwrapping each against the previous estimate; then
    snaps to a round value (eighths, then 3 decimals) when that reproduces the table
    within the tolerance of its dtype, and checks the result against the whole table.
    """
    tol = _tolerance(saved.dtype)
    table = saved.detach().double().reshape(-1, saved.shape[-1])
    n, hidden = table.shape
    grid = math.isqrt(n)
    if grid * grid != n or grid < 2 or hidden % 4:
        return None
    half = hidden // 4  # frequencies per axis; each axis has sin (half) then cos (half)
    last = table[-1]  # position (grid - 1, grid - 1): the same coordinate on both axes
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    x = None
    for k in reversed(range(half)):
        phase = math.atan2(float(last[k]), float(last[half + k]))
        if x is None:
            x = phase / float(omega[k])
        else:
            turns = round((x * float(omega[k]) - phase) / (2 * math.pi))
            x = (phase + 2 * math.pi * turns) / float(omega[k])
    if x is None or x <= 0:
        return None
    estimate = (grid - 1) / x
    for candidate in (round(estimate * 8) / 8, round(estimate, 3), estimate):
        if candidate <= 0:
            continue
        table_c = official_pos_embed(hidden, grid, candidate)[0].double()
        if (table_c - table).abs().max().item() <= tol:
            return float(candidate)
    return None


def check_pos_embed(saved: Tensor, computed: Tensor, resolution: int | None = None) -> None:
    """Check the checkpoint's saved pos-embed against the one chexgen recomputes.

    On mismatch, the error names the scale the saved table was built with when it
    is one of the usual ones, since a wrong scale is the likely cause.
    """
    saved = saved.detach().float().reshape(-1, saved.shape[-1])
    computed = computed.detach().float().reshape(-1, computed.shape[-1])
    if saved.shape != computed.shape:
        raise ChexgenError(f"official pos_embed has shape {tuple(saved.shape)}, chexgen computes "
                           f"{tuple(computed.shape)}")
    tol = _tolerance(saved.dtype)
    err = (saved - computed).abs().max().item()
    if err <= tol:
        return
    match = infer_pos_embed_scale(saved)
    where = f" at {resolution} px" if resolution else ""
    if match is not None:
        raise ChexgenError(f"official pos_embed differs from the recomputed one{where} (max abs diff {err:.3g}); "
                           f"the saved table matches scale {match}: pass --pos-embed-scale {match} if the "
                           "checkpoint was trained with it")
    raise ChexgenError(f"official pos_embed differs from the recomputed one{where} (max abs diff {err:.3g}) and "
                       "is not a sin-cos table of any scale; is this an official ChexGen / PixArt checkpoint?")


# =========================================================================== loading
def build_empty_transformer(arch: OfficialArchitecture):
    """A ChexGenDiT for ``arch`` whose parameters live on the meta device (no memory).

    Buffers (the pos-embed table) are real, so they can be checked and used.
    """
    from accelerate import init_empty_weights

    from chexgen.models.dit import ChexGenDiT

    with init_empty_weights(include_buffers=False):
        model = ChexGenDiT(**arch.transformer_kwargs())
    return model


def _truncate(keys: list[str], n: int = 20) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def check_keys(mapped: Mapping[str, Tensor], expected: Mapping[str, Tensor], unexpected: list[str],
               what: str = "official checkpoint") -> None:
    """Raise one :class:`ChexgenError` listing missing keys, unexpected keys and shape mismatches."""
    missing = sorted(set(expected) - set(mapped))
    extra = sorted(set(unexpected) | (set(mapped) - set(expected)))
    shapes = sorted(f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(mapped) & set(expected) if tuple(mapped[k].shape) != tuple(expected[k].shape))
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (model parameters nothing maps to): {_truncate(missing)}")
        if extra:
            parts.append(f"{len(extra)} unexpected (checkpoint keys nothing uses): {_truncate(extra)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {_truncate(shapes)}")
        raise ChexgenError(f"{what} does not fit the model: " + "; ".join(parts))


def assign_weights(model: torch.nn.Module, weights: Mapping[str, Tensor], unexpected: list[str],
                   what: str = "official checkpoint") -> None:
    """Check the keys, then load ``weights`` into ``model`` by assignment (no copies, meta-safe)."""
    expected = model.state_dict()
    check_keys(weights, expected, unexpected, what)
    model.load_state_dict(dict(weights), strict=True, assign=True)


def load_official_transformer(checkpoint: str | Path | Mapping[str, Tensor], *, use_ema: bool = True,
                              resolution: int | None = None, num_heads: int | None = None,
                              interpolation_scale: float | None = None,
                              control: bool = False,
                              dtype: torch.dtype | None = None,
                              ) -> tuple[Any, OfficialArchitecture, dict[str, Tensor] | None]:
    """Official checkpoint (path, raw checkpoint dict or state dict) -> (ChexGenDiT, architecture, control).

    ``control`` expects a ControlT2IDiT checkpoint: the base model is loaded and
    the renamed control weights (:func:`map_official_control_state_dict`) are
    returned as the third value, ready for the control adapter. ``dtype`` casts
    floating weights (e.g. ``torch.bfloat16``) as they are assigned.
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "<state dict>"
    raw = read_official_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    sd = strip_prefix(select_state_dict(raw, use_ema=use_ema, source=source))
    del raw
    control_weights: dict[str, Tensor] | None = None
    if control:
        sd, control_sd = split_control_checkpoint(sd)
        mapped_control = map_official_control_state_dict(control_sd)
        if mapped_control.unexpected:
            raise ChexgenError(f"{source}: control keys nothing uses: {_truncate(mapped_control.unexpected)}")
        control_weights = mapped_control.state_dict
    elif any(k.startswith(("base_model.", "controlnet.")) for k in sd):
        raise ChexgenError(f"{source}: this is a control (ControlNet) checkpoint; convert it with --control")
    arch = infer_architecture(sd, resolution=resolution, num_heads=num_heads,
                              interpolation_scale=interpolation_scale)
    mapped = map_official_state_dict(sd)
    del sd
    weights = mapped.state_dict
    if dtype is not None:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
        if control_weights is not None:
            control_weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in control_weights.items()}
    model = build_empty_transformer(arch)
    assign_weights(model, weights, mapped.unexpected, what=source)
    if mapped.pos_embed is not None:
        check_pos_embed(mapped.pos_embed, model.backbone.pos_embed.pos_embed, arch.resolution)
    else:
        logger.warning("%s: no saved pos_embed; using the recomputed table at scale %s",
                       source, arch.interpolation_scale)
    model.eval()
    return model, arch, control_weights


def official_state_dict_keys(depth: int, control_blocks: int = 0) -> list[str]:
    """Every key an official checkpoint of this depth holds (documentation and tests)."""
    keys = ["pos_embed", "y_embedder.y_embedding", "t_block.1.weight", "t_block.1.bias",
            "final_layer.shift_scale_table"]
    for name in ("x_embedder.proj", "t_embedder.mlp.0", "t_embedder.mlp.2", "y_embedder.y_proj.fc1",
                 "y_embedder.y_proj.fc2", "final_layer.linear"):
        keys += [f"{name}.weight", f"{name}.bias"]
    for n in range(depth):
        keys.append(f"blocks.{n}.shift_scale_gate_table")
        for name in ("attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear",
                     "cross_attn.proj", "mlp.fc1", "mlp.fc2"):
            keys += [f"blocks.{n}.{name}.weight", f"blocks.{n}.{name}.bias"]
    if control_blocks:
        base = ["base_model." + k for k in keys]
        ctrl = ["controlnet.0.before_proj.weight", "controlnet.0.before_proj.bias"]
        for i in range(control_blocks):
            ctrl += [f"controlnet.{i}.after_proj.weight", f"controlnet.{i}.after_proj.bias"]
            ctrl += [f"controlnet.{i}.copied_block.{k.split('.', 2)[2]}" for k in keys
                     if k.startswith("blocks.0.")]
        return base + ctrl
    return keys

