"""Embedding an image list into a collection with several processes (``torchrun``).

Each of the W ranks embeds the contiguous shard :func:`irkit.distributed.shard_bounds` gives
it (of the file list in its given order: sorted for a folder) and writes
``img_emb/img_emb_<rank>.npy`` + ``metadata/metadata_<rank>.parquet``; the collection reader
concatenates shards in numeric order, so the merged collection has the one-process row order.

Staging and resume (``<folder>.partial/``, on a filesystem every rank sees)::

    <folder>.partial/irkit_shard_plan.json        what the run embeds (files, model, W, dtype)
    <folder>.partial/img_emb/img_emb_<r>.npy      written atomically (temp file + rename)
    <folder>.partial/metadata/metadata_<r>.parquet
    <folder>.partial/shards_done/shard_<r>.json   written last: rows + sha256 of both files

After a barrier rank 0 checks every shard's marker, writes ``irkit_collection.json``, removes
the plan and markers and renames the folder to ``<folder>``. Re-running the same command after
a kill keeps every shard whose marker matches the plan and its files, and embeds the others.
A partial folder from another command (other files, model, dtype or process count) is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from irkit import distributed
from irkit.collection import (
    DTYPES,
    IMAGE_DIR,
    INFO_FILE,
    METADATA_DIR,
    check_output_folder,
    collection_info,
    image_metadata,
)
from irkit.errors import InputError
from irkit.io import atomic_path, atomic_write_json, file_sha256, read_json, stable_hash, swap_into_place

PLAN_FILE = "irkit_shard_plan.json"
DONE_DIR = "shards_done"
PLAN_FORMAT = 1


def partial_folder(folder: os.PathLike | str) -> Path:
    """The staging folder of a sharded run writing ``folder``: ``<folder>.partial``."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".partial")


def shard_plan(loaded: Any, paths: list[Path], dtype: str, root: Optional[os.PathLike | str],
               shards: int, reader: Any = None) -> dict[str, Any]:
    """Everything the shards depend on: file fingerprints (path, size, content hash), model
    identity and image reader, dtype, metadata root and the number of shards."""
    from irkit.embeddings import file_fingerprints

    return json.loads(json.dumps({
        "format": PLAN_FORMAT, "shards": shards, "count": len(paths),
        "files_sha256": stable_hash(file_fingerprints(paths)),
        "root": str(Path(root).resolve()) if root is not None else None,
        "dtype": dtype, "model": collection_info(loaded, reader), "image_size": loaded.image_size,
    }))


def _marker_path(partial: Path, shard: int) -> Path:
    return partial / DONE_DIR / f"shard_{shard}.json"


def _shard_files(partial: Path, shard: int) -> tuple[Path, Path]:
    return (partial / IMAGE_DIR / f"img_emb_{shard}.npy", partial / METADATA_DIR / f"metadata_{shard}.parquet")


def shard_is_done(partial: Path, shard: int, plan: dict[str, Any], rows: int) -> bool:
    """True when shard ``shard``'s marker names this plan and ``rows`` rows and both its files
    still hash to what the marker recorded."""
    marker = _marker_path(partial, shard)
    if not marker.is_file():
        return False
    try:
        record = read_json(marker)
    except InputError:
        return False
    npy_path, parquet_path = _shard_files(partial, shard)
    if not isinstance(record, dict) or record.get("plan_sha256") != stable_hash(plan) or record.get("rows") != rows:
        return False
    if not npy_path.is_file() or not parquet_path.is_file():
        return False
    return (file_sha256(npy_path) == record.get("npy_sha256")
            and file_sha256(parquet_path) == record.get("parquet_sha256"))


def write_shard(partial: Path, shard: int, embeddings: np.ndarray, metadata: Any, dtype: str,
                plan: dict[str, Any]) -> None:
    """Write shard ``shard`` ([n, D] rows + n metadata rows) atomically, then its done marker."""
    npy_path, parquet_path = _shard_files(partial, shard)
    with atomic_path(npy_path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, embeddings.astype(dtype), allow_pickle=False)
    with atomic_path(parquet_path) as tmp:
        metadata.reset_index(drop=True).to_parquet(tmp, index=False)
    atomic_write_json(_marker_path(partial, shard), {
        "plan_sha256": stable_hash(plan), "rows": int(len(embeddings)),
        "npy_sha256": file_sha256(npy_path), "parquet_sha256": file_sha256(parquet_path)})


def _prepare(folder: Path, partial: Path, plan: dict[str, Any]) -> None:
    check_output_folder(folder)
    plan_path = partial / PLAN_FILE
    if plan_path.is_file():
        found = read_json(plan_path)
        if found != plan:
            differing = sorted(k for k in set(plan) | set(found if isinstance(found, dict) else {})
                               if not isinstance(found, dict) or found.get(k) != plan.get(k))
            raise InputError(f"unfinished sharded embedding of another command (differs in {', '.join(differing)}); "
                             "re-run the command that started it (same files, model, dtype and process count) "
                             "or delete this folder", path=partial)
    for sub in (IMAGE_DIR, METADATA_DIR, DONE_DIR):
        (partial / sub).mkdir(parents=True, exist_ok=True)
    if not plan_path.is_file():
        atomic_write_json(plan_path, plan, indent=2)


def _finish(folder: Path, partial: Path, plan: dict[str, Any], dim: int, info: dict[str, Any]) -> Path:
    shards, count = plan["shards"], plan["count"]
    for shard in range(shards):
        start, stop = distributed.shard_bounds(count, shard, shards)
        if not shard_is_done(partial, shard, plan, stop - start):
            raise InputError(f"shard {shard} is missing or damaged after every rank finished; re-run the "
                             "same command to embed it again", path=partial)
    record = {"count": count, "dim": dim, "dtype": plan["dtype"], **info, "shards": shards}
    atomic_write_json(partial / INFO_FILE, record, indent=2)
    (partial / PLAN_FILE).unlink()
    shutil.rmtree(partial / DONE_DIR)
    check_output_folder(folder)
    swap_into_place(partial, folder)
    return folder


def embed_images_sharded(loaded: Any, paths: list[Path], folder: os.PathLike | str,
                         cache_dir: Optional[os.PathLike | str] = None, batch_size: int = 64,
                         num_workers: int = 2, dtype: str = "float16",
                         root: Optional[os.PathLike | str] = None, reader: Any = None) -> Path:
    """Embed ``paths`` into the collection ``folder``, one shard per rank (module docstring);
    ``reader`` as in :func:`irkit.collection.embed_images_to_collection`.

    Call on every rank of a process group (:func:`irkit.distributed.init_process_group`).
    Returns ``folder`` on every rank once rank 0 has put the finished collection in place.
    """
    from irkit.embeddings import encode_image_files

    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'", field="dtype")
    folder, paths = Path(folder), [Path(p) for p in paths]
    partial = partial_folder(folder)
    shard, shards = distributed.rank(), distributed.world_size()
    plan = shard_plan(loaded, paths, dtype, root, shards, reader)
    distributed.run_on_main(lambda: _prepare(folder, partial, plan))
    start, stop = distributed.shard_bounds(len(paths), shard, shards)
    if not shard_is_done(partial, shard, plan, stop - start):
        embeddings = encode_image_files(loaded, paths[start:stop], batch_size=batch_size, num_workers=num_workers,
                                        cache_dir=cache_dir, desc=f"images (shard {shard}/{shards})", reader=reader)
        write_shard(partial, shard, embeddings, image_metadata(paths[start:stop], root), dtype, plan)
    distributed.barrier()
    return distributed.run_on_main(lambda: _finish(folder, partial, plan, int(loaded.embed_dim),
                                                   collection_info(loaded, reader)))
