"""Compute precision: one setting (``auto | fp32 | bf16 | fp16``) resolved once per device.

``bf16`` / ``fp16`` mean autocast around the forward pass with float32 weights (and float32
optimizer state when training); ``pure_bf16`` / ``pure_fp16`` (models only) cast the weights
themselves, as open_clip's ``precision`` does. ``auto`` picks, for the device at hand:

* CUDA: bf16 where the GPU supports it, else fp16 (AMP);
* CPU: bf16 where the CPU has bf16 matrix units (AMX ``amx_bf16``) or ``avx512_bf16``
  instructions, else fp32 -- without them, bf16 matmuls run several times *slower* than fp32
  (measured 65 against 262 GFLOP/s on an AVX-512 CPU without either, ``bench/bench_embed.py``);
* anything else: fp32.

``IRKIT_PRECISION=fp32`` (or bf16 / fp16) in the environment fixes what ``auto`` resolves to.

Subnormal floats (|x| < 1.2e-38 in fp32) are flushed to zero on the CPU (x86 FTZ/DAZ, as
TensorFlow and XLA do by default): a trained model's attention-pool gradients are full of them,
and each costs the CPU a slow micro-code path -- measured 1.4x per training step of the trained
traffic model (``bench/bench_subnormals.py``). The mode is per thread and inherited by threads
started later, so it is set when this module is imported, before torch starts its thread pool
(:func:`configure_cpu_subnormals`). ``IRKIT_FLUSH_DENORMAL=0`` keeps IEEE subnormals.

The resolved name is what caches key on and what runs record (``params``, metrics files), so a
bf16 and an fp32 embedding of the same image never share a cache entry.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ContextManager, Union

import torch

from irkit.errors import InputError

#: The precision settings every compute path accepts (``auto`` resolves to one of the others).
PRECISION_SETTINGS = ("auto", "fp32", "bf16", "fp16")
#: Settings that cast a model's weights instead of autocasting (open_clip's ``pure_*``).
PURE_PRECISIONS = ("pure_bf16", "pure_fp16")
#: Every setting a loaded model accepts.
MODEL_PRECISION_SETTINGS = PRECISION_SETTINGS + PURE_PRECISIONS
#: CPU flags (``/proc/cpuinfo``) of fast bf16 matrix arithmetic.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")

#: Environment variable that fixes what ``auto`` resolves to (e.g. ``fp32`` for bit-exact runs).
PRECISION_ENV = "IRKIT_PRECISION"
#: A training run folder's record of its resolved precision (:meth:`Precision.to_json`).
PRECISION_FILE = "precision.json"

#: Environment variable: ``0`` keeps IEEE subnormal floats on the CPU (default ``1``: flushed to zero).
FLUSH_DENORMAL_ENV = "IRKIT_FLUSH_DENORMAL"
#: How CPU arithmetic of this process treats subnormal floats (:func:`cpu_subnormals`).
SUBNORMALS_FLUSHED, SUBNORMALS_KEPT, SUBNORMALS_PARTIAL = "flushed", "kept", "partial"

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_ENV_TRUE, _ENV_FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is fp32 | bf16 | fp16 | pure_bf16 | pure_fp16."""

    setting: str        # what was asked for (auto | fp32 | ...)
    name: str           # what runs
    device_type: str    # "cpu" | "cuda" | ...
    reason: str         # one line: why ``auto`` chose ``name`` (or "asked for")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None when the forward pass runs in the weights' own dtype."""
        return _AUTOCAST_DTYPES.get(self.name)

    @property
    def weights_dtype(self) -> torch.dtype:
        """dtype of the model weights under this precision."""
        return {"pure_bf16": torch.bfloat16, "pure_fp16": torch.float16}.get(self.name, torch.float32)

    def autocast(self) -> ContextManager[Any]:
        """Context manager for forward passes: ``torch.autocast`` for bf16/fp16, else a no-op."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def open_clip_train_precision(self) -> str:
        """open_clip_train's ``--precision`` for this precision."""
        return {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp", "pure_bf16": "pure_bf16",
                "pure_fp16": "pure_fp16"}[self.name]

    def describe(self) -> str:
        """``precision bf16 (auto: CPU has amx_bf16)``-style one-liner for logs and the console."""
        return f"precision {self.name} ({self.setting}: {self.reason})"

    def to_json(self) -> dict[str, str]:
        record = {"setting": self.setting, "name": self.name, "device": self.device_type, "reason": self.reason}
        if self.device_type == "cpu":
            record["subnormals"] = cpu_subnormals()
        return record


def flush_denormal_wanted() -> bool:
    """Whether ``$IRKIT_FLUSH_DENORMAL`` asks for subnormal floats to be flushed (default yes)."""
    value = os.environ.get(FLUSH_DENORMAL_ENV, "1").strip().lower()
    if value in _ENV_TRUE:
        return True
    if value in _ENV_FALSE:
        return False
    raise InputError(f"{FLUSH_DENORMAL_ENV}={value!r}: expected 1 (flush subnormal floats to zero) or 0 "
                     "(keep them)", field=FLUSH_DENORMAL_ENV)


_subnormals = SUBNORMALS_KEPT


def configure_cpu_subnormals() -> str:
    """Flush subnormal floats to zero on the CPU unless ``$IRKIT_FLUSH_DENORMAL`` is ``0``;
    returns :func:`cpu_subnormals`.

    The x86 FTZ/DAZ mode belongs to a thread and is inherited by the threads it starts later:
    call this before torch's first parallel operation starts its intra-op pool (importing this
    module does). A probe spread over the pool then tells whether every thread flushes; where
    the pool started earlier, the mode is ``partial`` and one warning says what to change. Where
    the CPU cannot flush, it stays ``kept``.
    """
    global _subnormals
    wanted = flush_denormal_wanted()
    applied = torch.set_flush_denormal(wanted)
    if not (wanted and applied):
        _subnormals = SUBNORMALS_KEPT
        return _subnormals
    subnormal = torch.full((1 << 17,), 1 << 20, dtype=torch.int32).view(torch.float32)  # 1.5e-39 from its bit pattern (no FP conversion)
    probe = subnormal * 1.0  # large enough to run on every intra-op thread
    _subnormals = SUBNORMALS_PARTIAL if bool(probe.any()) else SUBNORMALS_FLUSHED
    if _subnormals == SUBNORMALS_PARTIAL:
        logging.getLogger("irkit").warning(
            "torch started its worker threads before irkit.precision was imported: subnormal floats are "
            "flushed on the main thread only (slower training); import irkit.precision before any torch work")
    return _subnormals


def cpu_subnormals() -> str:
    """``flushed`` | ``kept`` | ``partial`` (main thread only): how this process's CPU arithmetic treats subnormal floats (part of
    every cache key and training record, next to the precision name)."""
    return _subnormals


def subnormals_on(device: Union[str, torch.device] = "cpu") -> str:
    """:func:`cpu_subnormals` for a CPU device; ``device`` for an accelerator (its own rules)."""
    return cpu_subnormals() if _device_type(device) == "cpu" else "device"


@lru_cache(maxsize=1)
def cpu_bf16_flags(cpuinfo: Union[str, Path] = "/proc/cpuinfo") -> tuple[str, ...]:
    """Which of :data:`CPU_BF16_FLAGS` this CPU reports (empty where ``cpuinfo`` is unreadable)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)
    return ()


def _device_type(device: Union[str, torch.device]) -> str:
    return torch.device(device).type if not isinstance(device, torch.device) else device.type


def resolve_precision(setting: str = "auto", device: Union[str, torch.device] = "cpu",
                      allow_pure: bool = False) -> Precision:
    """The :class:`Precision` that ``setting`` means on ``device``.

    ``allow_pure``: also accept ``pure_bf16`` / ``pure_fp16`` (weights cast; models only).
    An unknown setting raises InputError listing the accepted ones.
    """
    accepted = MODEL_PRECISION_SETTINGS if allow_pure else PRECISION_SETTINGS
    if isinstance(setting, Precision):
        return setting
    if setting not in accepted:
        raise InputError(f"unknown precision '{setting}' (expected one of: {', '.join(accepted)})",
                         field="precision")
    device_type = _device_type(device)
    if setting == "auto" and os.environ.get(PRECISION_ENV):
        chosen = os.environ[PRECISION_ENV]
        if chosen not in accepted or chosen == "auto":
            raise InputError(f"{PRECISION_ENV}={chosen!r} is not a precision (expected one of: "
                             f"{', '.join(a for a in accepted if a != 'auto')})", field=PRECISION_ENV)
        return Precision("auto", chosen, device_type, f"{PRECISION_ENV} is set")
    if setting != "auto":
        return Precision(setting, setting, device_type, "asked for")
    if device_type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return Precision("auto", "bf16", device_type, "the GPU supports bf16")
        return Precision("auto", "fp16", device_type, "the GPU has no bf16: fp16 AMP")
    if device_type == "cpu":
        flags = cpu_bf16_flags()
        if flags:
            return Precision("auto", "bf16", device_type, f"the CPU has {' and '.join(flags)}")
        return Precision("auto", "fp32", device_type,
                         "the CPU has neither amx_bf16 nor avx512_bf16, where bf16 is slower than fp32")
    return Precision("auto", "fp32", device_type, f"no reduced precision chosen for device type {device_type}")


def resolve_training_precision(setting: Union[str, Precision] = "auto",
                               device: Union[str, torch.device] = "cpu") -> Precision:
    """The precision a trainer runs its forward passes (and loss) in, with float32 weights and
    optimizer state: :func:`resolve_precision`, where ``pure_bf16`` / ``pure_fp16`` (a backbone
    loaded with cast weights) mean autocast of that dtype for the float32 parameters trained."""
    resolved = resolve_precision(setting, device, allow_pure=True)
    if resolved.name in PURE_PRECISIONS:
        return Precision(resolved.setting, resolved.name[len("pure_"):], resolved.device_type,
                         f"{resolved.reason}; the trained weights stay float32 under autocast")
    return resolved


def autocast_for(precision: Union[str, Precision], device: Union[str, torch.device] = "cpu") -> ContextManager[Any]:
    """``resolve_precision(precision, device).autocast()`` (a no-op context for fp32)."""
    return resolve_precision(precision, device, allow_pure=True).autocast()


configure_cpu_subnormals()  # at import: before torch's intra-op threads exist (they inherit the mode)
