"""Shared set-up of the fusion / re-ranking tests: tiny demo CIR data and an irkit-tiny context."""

from __future__ import annotations

from pathlib import Path

from irkit.cir.context import CIRContext
from irkit.data.demo import generate_demo
from irkit.models import create_model


def make_demo(root: Path) -> Path:
    """Tiny-scale demo CIRR and FashionIQ under ``root`` (CIRR: 6 train / 10 val queries)."""
    generate_demo(root, seed=0, scale="tiny", datasets=("cirr", "fashioniq"), workers=1, progress=False)
    return root


def tiny_context(cache_dir: Path) -> CIRContext:
    """An untrained (seeded) irkit-tiny backbone with an embedding cache; no worker processes."""
    return CIRContext(create_model("irkit-tiny", seed=0, random_init=True), cache_dir=cache_dir, batch_size=32,
                      num_workers=0)
