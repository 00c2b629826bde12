"""Shared helpers of the demo generator: seeded RNGs, id/name makers, sidecar and CSV writers."""

from __future__ import annotations

import csv
import io
import json
import string
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

#: Name of the irkit-only per-image attribute sidecar written at each dataset root.
ATTRIBUTES_FILE = "irkit_attributes.jsonl"
#: Name of the irkit-only per-query sidecar (the attribute constraints behind each query).
QUERIES_FILE = "irkit_queries.jsonl"
#: Folder (under the output root) of the ``filepath``/``title`` caption CSVs.
CAPTIONS_DIR = "captions"


def _code(part: int | str) -> int:
    """A stable non-negative integer for a seed component (CRC-32 of strings)."""
    if isinstance(part, (int, np.integer)):
        if part < 0:
            raise ValueError(f"seed components must be non-negative, got {part}")
        return int(part)
    return zlib.crc32(str(part).encode("utf-8"))


def derive_rng(seed: int, *parts: int | str) -> np.random.Generator:
    """A NumPy generator determined only by ``(seed, *parts)``.

    Used with ``(seed, dataset, split, index)`` per rendered image and ``(seed, dataset,
    "plan")`` for annotations, so results never depend on worker count or job order.
    """
    return np.random.default_rng([_code(seed)] + [_code(p) for p in parts])


def weighted_choice(rng: np.random.Generator, options: dict[str, float] | Sequence[str]) -> str:
    """One key of ``options`` drawn by its weight (uniform for a plain sequence)."""
    if isinstance(options, dict):
        keys = list(options)
        weights = np.asarray([options[k] for k in keys], dtype=float)
        return keys[int(rng.choice(len(keys), p=weights / weights.sum()))]
    return options[int(rng.integers(len(options)))]


def unique_names(rng: np.random.Generator, count: int, make: Callable[[np.random.Generator], str],
                 taken: set[str]) -> list[str]:
    """``count`` new names from ``make(rng)`` not in ``taken`` (which is updated)."""
    names = []
    while len(names) < count:
        name = make(rng)
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def random_letters(rng: np.random.Generator, length: int = 10) -> str:
    """Lower-case letters, like the traffic challenge's file names (``pmitevanhx``)."""
    letters = string.ascii_lowercase
    return "".join(letters[i] for i in rng.integers(0, 26, size=length))


def random_asin(rng: np.random.Generator) -> str:
    """An Amazon-ASIN-like id: ``B`` + 9 upper-case letters/digits (``B00AKLK08G``)."""
    alphabet = string.ascii_uppercase + string.digits
    return "B" + "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=9))


def json_text(obj: Any, indent: int | None = None) -> str:
    """JSON as the published files write it (UTF-8, no ASCII escaping), newline-terminated."""
    return json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    """Write JSON into a (temporary, not yet published) dataset folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_text(obj, indent), encoding="utf-8")


def write_lines(path: Path, lines: Iterable[str]) -> None:
    """Write text lines (``\\n``-terminated) into a dataset folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line (keys in insertion order)."""
    write_lines(path, (json.dumps(row, ensure_ascii=False) for row in rows))


def caption_csv_text(rows: Iterable[tuple[str, str]]) -> str:
    """Tab-separated ``filepath``/``title`` CSV text (open_clip's CSV layout)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(["filepath", "title"])
    for filepath, title in rows:
        writer.writerow([filepath, title])
    return buffer.getvalue()


def csv_path_for(dataset_relative: str, dataset: str) -> str:
    """Path of an image as written in a caption CSV: relative to ``<out>/captions/``."""
    return f"../{dataset}/{dataset_relative}"


@dataclass
class DatasetResult:
    """What one dataset generator produced.

    ``counts``: per split, e.g. ``{"val": {"images": 3000, "queries": 1500}}``.
    ``captions``: CSV stem -> ``(path relative to the dataset root, title)`` rows, written by
    :func:`irkit.data.demo.generate_demo` to ``<out>/captions/<stem>.csv``.
    """

    counts: dict[str, dict[str, int]]
    captions: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
