"""Shared test set-up: small thread counts (2-core machines) and locations of shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("IRKIT_NUM_THREADS", "1")
# "auto" precision resolves to fp32 in the suite (tests compare against fp32 computations on
# every machine, AMX or not); tests/test_precision.py exercises bf16 and the auto rule itself.
os.environ.setdefault("IRKIT_PRECISION", "fp32")

try:
    import torch

    import irkit.precision  # noqa: F401  # flushes subnormal floats before torch's threads start, as irkit does

    torch.set_num_threads(int(os.environ["IRKIT_NUM_THREADS"]))
except ImportError:  # pragma: no cover - torch is a hard requirement
    pass

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO_ROOT.parent / "shared" / "benchmarks"


@pytest.fixture(scope="session")
def real_benchmarks() -> Path:
    """The real published CIRR / FashionIQ / CIRCO annotation files (no images), when present."""
    if not SHARED_BENCHMARKS.is_dir():
        pytest.skip(f"real benchmark annotations not found at {SHARED_BENCHMARKS}")
    return SHARED_BENCHMARKS
