"""Deterministic demo data: offline stand-ins for the traffic challenge, FashionIQ, CIRR, CIRCO and GeneCIS.

``generate_demo(out, seed, scale)`` writes, under ``out``:

* ``traffic/``, ``fashioniq/``, ``cirr/``, ``circo/``, ``genecis/`` in the exact published layouts
  (``docs/formats.md`` §1-4, §7), so the same loaders read demo and real data. ``traffic/test/``
  additionally holds ``test_ground_truth.txt`` (``text$img1$img2...``, one line per query).
* irkit-only metadata at each dataset root (not part of the published layouts):
  ``irkit_attributes.jsonl`` (one JSON object per image: its generating attributes, full
  description, width/height) and, for the CIR datasets, ``irkit_queries.jsonl`` (per query:
  reference, target and the attribute values the target must have, for analysis/debugging
  and for scoring test splits locally).
* ``captions/<dataset>_<split>.csv``: tab-separated ``filepath``/``title`` (open_clip's CSV
  layout) with a full attribute caption per image, for text-only training (LinCIR) and for
  training the demo model. ``filepath`` is relative to the CSV's own folder
  (``../cirr/train/3/train-123-0-img1.png``); resolve it against ``<out>/captions/``.
  Files: ``traffic_train``, ``traffic_val``, ``fashioniq_train``, ``fashioniq_val``,
  ``cirr_train``, ``cirr_val``, ``circo_gallery`` (the CIRCO eval gallery itself: do not
  train on it for honest CIRCO numbers).
* ``demo_manifest.json``: seed, scale, difficulty knobs, irkit version, datasets, counts, and
  per dataset the size and BLAKE2b-128 digest of every file it wrote (``file_digests``,
  paths relative to ``out``; caption CSVs included).

A dataset already present is kept only when every file matches its digest; a missing,
changed or extra-damaged file makes it be regenerated (:func:`verify_demo` checks an existing
folder with its own manifest's seed/scale/difficulty).

Every file is a function of (seed, scale, difficulty): each image has its own RNG derived
from ``(seed, dataset, split, index)``, so any number of workers gives identical bytes.
Each dataset is written to a hidden temporary folder and renamed into place when complete;
an output folder made with another seed/scale/difficulty is never written into.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import irkit
from irkit.data.demo.circo import generate_circo
from irkit.data.demo.cirr import generate_cirr
from irkit.data.demo.common import CAPTIONS_DIR, DatasetResult, caption_csv_text, csv_path_for
from irkit.data.demo.config import (
    DATASETS,
    GENERATOR_VERSION,
    SCALES,
    DemoDifficulty,
    DemoScale,
    get_scale,
)
from irkit.data.demo.fashioniq import generate_fashioniq
from irkit.data.demo.genecis import generate_genecis
from irkit.data.demo.jobs import JobRunner, default_workers
from irkit.data.demo.traffic import generate_traffic
from irkit.errors import InputError
from irkit.io import atomic_write_json, atomic_write_text, make_temp_dir, read_json

__all__ = ["ALL", "DATASETS", "MANIFEST_NAME", "SCALES", "DemoDifficulty", "DemoScale", "generate_demo",
           "parse_datasets", "verify_demo", "damaged_file"]

log = logging.getLogger(__name__)

ALL: tuple[str, ...] = DATASETS
MANIFEST_NAME = "demo_manifest.json"
_GENERATORS: dict[str, Callable[..., DatasetResult]] = {
    "traffic": generate_traffic, "fashioniq": generate_fashioniq, "cirr": generate_cirr, "circo": generate_circo,
    "genecis": generate_genecis,
}
#: Manifest fields that must match for a folder to be extended (anything that changes bytes).
_IDENTITY_FIELDS = ("seed", "scale", "generator_version", "difficulty")


def parse_datasets(datasets: str | Sequence[str]) -> list[str]:
    """Validate dataset names (a comma-separated string or a sequence); returns them in
    generation order without repeats."""
    names = [d.strip() for d in datasets.split(",")] if isinstance(datasets, str) else [str(d) for d in datasets]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        found = ", ".join(unknown) if unknown else "nothing"
        raise InputError(f"unknown demo dataset(s): {found}; expected a comma-separated subset of "
                         f"{','.join(DATASETS)}", field="datasets")
    return [d for d in DATASETS if d in names]


def _identity(seed: int, scale: DemoScale, difficulty: DemoDifficulty) -> dict[str, Any]:
    return {"seed": seed, "scale": scale.name, "generator_version": GENERATOR_VERSION,
            "difficulty": difficulty.to_json()}


def _existing_manifest(out: Path, identity: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The manifest of a compatible existing demo folder, None for a new/empty folder.

    Raises :class:`InputError` for a non-empty folder that is not an irkit demo folder, or one
    generated with another seed/scale/difficulty/generator version.
    """
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a folder; expected a new or empty folder", path=out)
    if not out.exists() or not any(out.iterdir()):
        return None
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.is_file():
        raise InputError(f"output folder is not empty and has no {MANIFEST_NAME}; expected a new/empty folder "
                         f"or a demo folder made by 'irkit data demo'", path=out)
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict):
        raise InputError("expected a JSON object", path=manifest_path)
    mismatched = [f for f in _IDENTITY_FIELDS if manifest.get(f) != identity[f]]
    if mismatched:
        found = ", ".join(f"{f}={manifest.get(f)!r}" for f in mismatched if f != "difficulty")
        asked = ", ".join(f"{f}={identity[f]!r}" for f in mismatched if f != "difficulty")
        if "difficulty" in mismatched:
            found, asked = (found + ", " if found else "") + "other difficulty knobs", asked or "these knobs"
        raise InputError(f"folder holds demo data made with {found}; asked for {asked}. Refusing to mix them: "
                         f"choose another output folder", path=out)
    return manifest


def _write_captions(out: Path, dataset: str, result: DatasetResult) -> list[str]:
    """Write ``<out>/captions/<stem>.csv`` files of one dataset; returns the CSV names."""
    written = []
    for stem, rows in result.captions.items():
        text = caption_csv_text((csv_path_for(path, dataset), title) for path, title in rows)
        atomic_write_text(out / CAPTIONS_DIR / f"{stem}.csv", text)
        written.append(f"{stem}.csv")
    return written


def _file_digest(path: Path) -> str:
    """``"<size>:<BLAKE2b-128 hex>"`` of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return f"{path.stat().st_size}:{digest.hexdigest()}"


def _dataset_digests(out: Path, dataset: str, csv_names: Sequence[str]) -> dict[str, str]:
    """``{path relative to out: digest}`` of every file of ``<out>/<dataset>/`` and its caption CSVs."""
    files = sorted(p for p in (out / dataset).rglob("*") if p.is_file())
    files += [out / CAPTIONS_DIR / name for name in csv_names]
    return {p.relative_to(out).as_posix(): _file_digest(p) for p in files}


def damaged_file(out: os.PathLike | str, manifest: dict[str, Any], dataset: str) -> Optional[str]:
    """Why ``dataset`` of the demo folder ``out`` cannot be trusted (``"<file>: missing"``,
    ``"<file>: changed"``, ``"no file digests ..."``), or None when every file matches the
    manifest's digests."""
    out = Path(out)
    digests = (manifest.get("file_digests") or {}).get(dataset)
    if not isinstance(digests, dict) or not digests:
        return "no file digests in the manifest (made by an older irkit), so it cannot be verified"
    for relative, expected in digests.items():
        path = out / relative
        if not path.is_file():
            return f"{relative}: missing"
        size = str(path.stat().st_size)
        if not str(expected).startswith(size + ":") or _file_digest(path) != expected:
            return f"{relative}: changed (size or content differs from the manifest)"
    return None


def _set_aside(out: Path, dataset: str, manifest: dict[str, Any], manifest_path: Path) -> Optional[Path]:
    """Drop ``dataset`` from the manifest and move its damaged folder aside (deleted once the
    regenerated one is in place); returns the moved folder."""
    manifest["datasets"] = [d for d in manifest["datasets"] if d != dataset]
    manifest.get("counts", {}).pop(dataset, None)
    manifest.get("file_digests", {}).pop(dataset, None)
    atomic_write_json(manifest_path, manifest, indent=2)
    final = out / dataset
    if not final.exists():
        return None
    aside = make_temp_dir(out, prefix=f".{dataset}.damaged-", suffix="")
    os.replace(final, aside / dataset)
    return aside


def verify_demo(out: os.PathLike | str, datasets: str | Sequence[str] = ALL, workers: Optional[int] = None,
                progress: bool = False) -> list[str]:
    """Check the demo datasets present in ``out`` against ``demo_manifest.json`` and regenerate
    damaged ones with the manifest's own seed, scale and difficulty. Returns the regenerated
    names; a folder without a manifest, or datasets it does not list, are left alone."""
    out = Path(out)
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.is_file():
        return []
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("datasets"), list):
        raise InputError("expected a JSON object with a 'datasets' list", path=manifest_path)
    present = [d for d in parse_datasets(datasets) if d in manifest["datasets"]]
    if not present:
        return []
    try:
        difficulty = DemoDifficulty.from_json(manifest.get("difficulty") or {})
        seed, scale = manifest["seed"], manifest["scale"]
    except (KeyError, TypeError) as e:
        raise InputError(f"manifest lacks its identity ({e}); expected seed, scale and difficulty",
                         path=manifest_path) from None
    summary = generate_demo(out, seed=seed, scale=scale, datasets=present, workers=workers,
                            difficulty=difficulty, progress=progress)
    return list(summary["generated"])


def generate_demo(out: os.PathLike | str, seed: int = 0, scale: str = "tiny", datasets: str | Sequence[str] = ALL,
                  workers: Optional[int] = None, difficulty: Optional[DemoDifficulty] = None,
                  progress: bool = True) -> dict[str, Any]:
    """Write the demo datasets under ``out``; returns a summary.

    ``scale``: ``tiny`` (seconds, unit tests), ``small`` (a few hundred images per dataset) or
    ``full`` (>= 3,000 gallery images per dataset). ``workers``: rendering processes (default:
    the CPUs available, at most 2). Datasets already present in a compatible ``out`` are kept
    (reported under ``skipped``) when every file matches the manifest's digests; a damaged one
    (missing or changed file) is regenerated, with a warning naming the file. Summary keys:
    ``out``, ``seed``, ``scale``, ``generated``, ``skipped``, ``counts`` (dataset -> split ->
    numbers), ``seconds`` (dataset -> wall time).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}", field="seed")
    scale_spec = get_scale(scale)
    names = parse_datasets(datasets)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}", field="workers")
    difficulty = difficulty or DemoDifficulty()
    out = Path(out)
    identity = _identity(seed, scale_spec, difficulty)
    manifest = _existing_manifest(out, identity)
    if manifest is None:
        manifest = {"generator": "irkit demo data (synthetic stand-ins for traffic, FashionIQ, CIRR, CIRCO)",
                    "irkit_version": irkit.__version__, **identity, "datasets": [], "counts": {}}
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_NAME
    atomic_write_json(manifest_path, manifest, indent=2)  # claims the folder before any dataset is written

    summary: dict[str, Any] = {"out": str(out), "seed": seed, "scale": scale_spec.name, "generated": [],
                               "skipped": [], "counts": {}, "seconds": {}}
    damaged_aside: list[Path] = []
    with JobRunner(difficulty, workers, progress) as runner:
        for dataset in names:
            if dataset in manifest["datasets"]:
                reason = damaged_file(out, manifest, dataset)
                if reason is None:
                    summary["skipped"].append(dataset)
                    summary["counts"][dataset] = manifest["counts"].get(dataset, {})
                    continue
                log.warning("demo dataset %s in %s is damaged (%s); regenerating it", dataset, out, reason)
                aside = _set_aside(out, dataset, manifest, manifest_path)
                if aside is not None:
                    damaged_aside.append(aside)
            final = out / dataset
            if final.exists():
                raise InputError(f"'{dataset}/' exists but {MANIFEST_NAME} does not list it (an interrupted run?); "
                                 f"expected it absent: remove it and run again", path=final)
            started = time.perf_counter()
            staging = make_temp_dir(out, prefix=f".{dataset}.partial-", suffix="")
            try:
                result = _GENERATORS[dataset](staging, seed, scale_spec, difficulty, runner)
                os.replace(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            csv_names = _write_captions(out, dataset, result)
            manifest["datasets"] = [d for d in DATASETS if d in manifest["datasets"] or d == dataset]
            manifest["counts"][dataset] = result.counts
            manifest.setdefault("caption_csvs", {})[dataset] = csv_names
            manifest["counts"] = {d: manifest["counts"][d] for d in DATASETS if d in manifest["counts"]}
            manifest["caption_csvs"] = {d: manifest["caption_csvs"][d] for d in DATASETS if d in manifest["caption_csvs"]}
            digests = manifest.setdefault("file_digests", {})
            digests[dataset] = _dataset_digests(out, dataset, csv_names)
            manifest["file_digests"] = {d: digests[d] for d in DATASETS if d in digests}
            atomic_write_json(manifest_path, manifest, indent=2)
            summary["generated"].append(dataset)
            summary["counts"][dataset] = result.counts
            summary["seconds"][dataset] = round(time.perf_counter() - started, 2)
    for aside in damaged_aside:
        shutil.rmtree(aside, ignore_errors=True)
    return summary
