"""Numeric precision as one setting: ``auto | fp32 | bf16 | fp16`` -> a ``torch.dtype`` for a device.

Every part of chexgen that runs a network (``generate``, ``demo``, ``evaluate``'s feature
extraction, the pipelines' Python API, ``train --mixed-precision``) resolves its precision here,
with :func:`resolve_precision`:

- ``fp32`` / ``bf16`` / ``fp16``: that dtype, on any device (a warning when the device has no
  fast path for it: bf16 on a CPU without AVX512-BF16 / AMX-BF16 is emulated and slow, fp16 on a CPU
  without AVX512-FP16 / AMX-FP16 likewise);
- ``auto``: bf16 on a GPU that supports it (``torch.cuda.is_bf16_supported()``) and on a CPU with
  AMX-BF16 or AVX512-BF16 instructions; fp32 everywhere else, with a one-line note saying why.

CPU support is read from the ``flags`` line of ``/proc/cpuinfo`` (``amx_bf16``, ``avx512_bf16``),
else from torch's own cpuinfo probe. The environment variable ``CHEXGEN_CPU_BF16`` overrides the
detection: ``0`` makes ``auto`` pick fp32 on the CPU (tests, or to compare against fp32), ``1``
makes it pick bf16.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from chexgen.errors import ChexgenError

__all__ = [
    "PRECISIONS",
    "PRECISION_HELP",
    "ENV_CPU_BF16",
    "CpuFeatures",
    "cpu_features",
    "cpu_bf16_fast",
    "resolve_precision",
    "precision_name",
    "normalise_precision",
]

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "float": "fp32", "no": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
ENV_CPU_BF16 = "CHEXGEN_CPU_BF16"
PRECISION_HELP = ("Numeric precision: auto (bf16 on a GPU that supports it and on a CPU with AMX-BF16 or "
                  "AVX512-BF16, else fp32; CHEXGEN_CPU_BF16=0 turns the CPU's bf16 off), fp32, bf16 or fp16.")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's reduced-precision matrix instructions, and where that was read."""

    amx_bf16: bool = False
    avx512_bf16: bool = False
    avx512_fp16: bool = False
    amx_fp16: bool = False
    source: str = "unknown"  # "/proc/cpuinfo", "torch", or "unknown"

    @property
    def bf16(self) -> bool:
        """A native bf16 path (AMX tiles or AVX512 bf16 dot products)."""
        return self.amx_bf16 or self.avx512_bf16

    @property
    def fp16(self) -> bool:
        return self.amx_fp16 or self.avx512_fp16


def _parse_cpuinfo_flags(text: str) -> set[str] | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


@functools.lru_cache(maxsize=None)
def _detect(cpuinfo: str) -> CpuFeatures:
    try:
        flags = _parse_cpuinfo_flags(Path(cpuinfo).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        flags = None
    if flags is not None:
        return CpuFeatures(amx_bf16="amx_bf16" in flags, avx512_bf16="avx512_bf16" in flags,
                           avx512_fp16="avx512_fp16" in flags, amx_fp16="amx_fp16" in flags, source=cpuinfo)
    # No /proc/cpuinfo (macOS, Windows): torch's cpuinfo probe (private helpers, absent in old versions).
    probe = getattr(torch, "cpu", None)
    try:
        avx = bool(probe._is_avx512_bf16_supported())
        amx = bool(probe._is_amx_tile_supported())
        amx16 = bool(getattr(probe, "_is_amx_fp16_supported", lambda: False)())
    except (AttributeError, RuntimeError):
        return CpuFeatures()
    return CpuFeatures(amx_bf16=amx, avx512_bf16=avx, amx_fp16=amx16, source="torch")


def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> CpuFeatures:
    """What this CPU offers for reduced precision (cached per ``cpuinfo`` path)."""
    return _detect(cpuinfo)


def cpu_bf16_fast(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether ``auto`` picks bf16 on this CPU: the detection, unless ``CHEXGEN_CPU_BF16`` says otherwise."""
    forced = os.environ.get(ENV_CPU_BF16, "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced:
        raise ChexgenError(f"{ENV_CPU_BF16}={forced!r}: expected 0 or 1")
    return cpu_features(cpuinfo).bf16


_NOTED: set[str] = set()


def _note_once(message: str, warn: bool = False) -> None:
    if message not in _NOTED:
        _NOTED.add(message)
        (log.warning if warn else log.info)(message)


def _normalise(name: "str | torch.dtype | None") -> str:
    if name is None:
        return "auto"
    if isinstance(name, torch.dtype):
        for key, dt in _DTYPES.items():
            if dt == name:
                return key
        raise ChexgenError(f"precision {name} is not supported; expected one of {', '.join(PRECISIONS)}")
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise ChexgenError(f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")
    return key


def resolve_precision(name: "str | torch.dtype | None" = "auto",
                      device: "str | torch.device | None" = None) -> torch.dtype:
    """The compute dtype for precision ``name`` on ``device`` (default: the CPU); see the module doc."""
    key = _normalise(name)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if key == "auto":
            if gpu_bf16:
                return torch.bfloat16
            _note_once("precision auto: this GPU has no bf16 support; computing in fp32")
            return torch.float32
        if key == "bf16" and not gpu_bf16:
            _note_once("precision bf16: this GPU does not support bf16 natively (slow or failing)", warn=True)
        return _DTYPES[key]
    if dev.type != "cpu":  # mps, xpu, ...: honour explicit choices, keep auto conservative
        return torch.float32 if key == "auto" else _DTYPES[key]
    feats = cpu_features()
    if key == "auto":
        if cpu_bf16_fast():
            return torch.bfloat16
        forced = os.environ.get(ENV_CPU_BF16, "").strip()
        why = f"{ENV_CPU_BF16}={forced}" if forced else "this CPU has neither AMX-BF16 nor AVX512-BF16"
        _note_once(f"precision auto: {why}; computing in fp32")
        return torch.float32
    if key == "bf16" and not feats.bf16:
        _note_once("precision bf16: this CPU has neither AMX-BF16 nor AVX512-BF16; bf16 is emulated (slow)", warn=True)
    if key == "fp16" and not feats.fp16:
        _note_once("precision fp16: this CPU has neither AMX-FP16 nor AVX512-FP16; fp16 is emulated (slow)", warn=True)
    return _DTYPES[key]


def normalise_precision(name: "str | torch.dtype | None") -> str:
    """``auto`` / ``fp32`` / ``bf16`` / ``fp16`` for a name or alias (``float16``, ``bfloat16``, ...); else an error."""
    return _normalise(name)


def precision_name(dtype: torch.dtype) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` for a dtype (what provenance and reports record)."""
    return _normalise(dtype)
