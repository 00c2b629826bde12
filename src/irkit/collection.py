"""Embedding collections in clip-retrieval's layout (docs/formats.md section 6).

```
<folder>/img_emb/img_emb_<i>.npy          [n_i, D] float16/float32, L2-normalised rows
<folder>/text_emb/text_emb_<i>.npy        optional, same rows
<folder>/metadata/metadata_<i>.parquet    n_i rows, same order (image_path, caption, ...)
<folder>/irkit_collection.json            irkit's extra: model, weights id, transform
```

autofaiss / clip-retrieval can index a folder irkit writes, and irkit reads theirs
(any number of shards, concatenated in numeric shard order).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from irkit.errors import InputError
from irkit.finite import require_finite
from irkit.io import make_dirs, make_temp_dir, swap_into_place

IMAGE_DIR, TEXT_DIR, METADATA_DIR = "img_emb", "text_emb", "metadata"
INFO_FILE = "irkit_collection.json"
DTYPES = ("float16", "float32")
# |norm - 1| allowed per row: float16 storage rounds each value to ~3 significant digits.
_NORM_TOLERANCE = {np.dtype("float16"): 1e-2, np.dtype("float32"): 1e-3}


def _check_normalised(embeddings: np.ndarray, source: os.PathLike | str | None, what: str) -> None:
    if embeddings.ndim != 2:
        raise InputError(f"{what} must be a 2-D array [N, D], got shape {embeddings.shape}", path=source)
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise InputError(f"{what} must hold floats, got dtype {embeddings.dtype}", path=source)
    if len(embeddings) == 0:
        return
    require_finite(embeddings, what, "this collection (rebuild it with 'irkit embed images')" if source
                   else "the embedding model", path=source)
    norms = np.linalg.norm(embeddings.astype(np.float32), axis=1)
    tolerance = _NORM_TOLERANCE.get(embeddings.dtype, 1e-3)
    bad = np.flatnonzero(~(np.abs(norms - 1.0) <= tolerance))
    if bad.size:
        raise InputError(
            f"{what} rows must be L2-normalised (norm 1 +- {tolerance}); row {int(bad[0])} has norm "
            f"{float(norms[bad[0]]):.4f} ({bad.size} of {len(norms)} rows are off)", path=source)


def write_embedding_collection(
    folder: os.PathLike | str,
    image_embeddings: np.ndarray,
    metadata: pd.DataFrame,
    text_embeddings: Optional[np.ndarray] = None,
    dtype: str = "float16",
    info: Optional[dict[str, Any]] = None,
    overwrite: bool = False,
) -> Path:
    """Write one shard (``*_0``) of a clip-retrieval collection, atomically.

    ``image_embeddings`` [N, D] and optional ``text_embeddings`` [N, D'] must have
    L2-normalised rows; ``metadata`` has N rows and an ``image_path`` column. ``info`` (JSON)
    goes to ``irkit_collection.json``. The folder is built beside the target and renamed into
    place; an existing non-empty folder is refused unless ``overwrite``.
    """
    folder = Path(folder)
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'", field="dtype")
    image_embeddings = np.asarray(image_embeddings)
    _check_normalised(image_embeddings, None, "image embeddings")
    if not isinstance(metadata, pd.DataFrame) or "image_path" not in metadata.columns:
        raise InputError("metadata must be a DataFrame with an 'image_path' column", field="metadata")
    if len(metadata) != len(image_embeddings):
        raise InputError(f"metadata has {len(metadata)} rows but there are {len(image_embeddings)} "
                         "image embeddings (expected one row per embedding)", field="metadata")
    if text_embeddings is not None:
        text_embeddings = np.asarray(text_embeddings)
        _check_normalised(text_embeddings, None, "text embeddings")
        if len(text_embeddings) != len(image_embeddings):
            raise InputError(f"{len(text_embeddings)} text embeddings for {len(image_embeddings)} images "
                             "(expected the same rows)", field="text_embeddings")
    _check_output_folder(folder, overwrite)

    make_dirs(folder.parent)
    staging = make_temp_dir(folder.parent, prefix=f".{folder.name}.")
    try:
        (staging / IMAGE_DIR).mkdir()
        np.save(staging / IMAGE_DIR / "img_emb_0.npy", image_embeddings.astype(dtype), allow_pickle=False)
        if text_embeddings is not None:
            (staging / TEXT_DIR).mkdir()
            np.save(staging / TEXT_DIR / "text_emb_0.npy", text_embeddings.astype(dtype), allow_pickle=False)
        (staging / METADATA_DIR).mkdir()
        metadata.reset_index(drop=True).to_parquet(staging / METADATA_DIR / "metadata_0.parquet", index=False)
        info_record = {"count": int(len(image_embeddings)), "dim": int(image_embeddings.shape[1]),
                       "dtype": dtype, **(info or {})}
        (staging / INFO_FILE).write_text(json.dumps(info_record, indent=2) + "\n", encoding="utf-8")
        swap_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _check_output_folder(folder: Path, overwrite: bool) -> None:
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not overwrite)):
        raise InputError("output collection folder already exists and is not empty (choose a new "
                         "folder; collections are never overwritten silently)", path=folder)


def _shards(folder: Path, subdir: str, stem: str, suffix: str) -> dict[int, Path]:
    pattern = re.compile(rf"^{stem}_(\d+){re.escape(suffix)}$")
    found = {}
    directory = folder / subdir
    if directory.is_dir():
        for path in directory.iterdir():
            match = pattern.match(path.name)
            if match:
                found[int(match.group(1))] = path
    return found


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"not a readable .npy array ({e})", path=path) from None


def _read_embedding_shards(folder: Path, subdir: str, stem: str, expected_ids: list[int],
                           metadata_counts: dict[int, int]) -> np.ndarray:
    shards = _shards(folder, subdir, stem, ".npy")
    if sorted(shards) != expected_ids:
        raise InputError(f"{subdir}/ has shards {sorted(shards)} but metadata/ has {expected_ids} "
                         "(expected one embedding shard per metadata shard)", path=folder / subdir)
    parts = []
    for shard_id in expected_ids:
        array = _load_npy(shards[shard_id])
        _check_normalised(array, shards[shard_id], f"{subdir} shard {shard_id}")
        if len(array) != metadata_counts[shard_id]:
            raise InputError(f"{len(array)} embeddings but metadata_{shard_id}.parquet has "
                             f"{metadata_counts[shard_id]} rows (expected equal counts)", path=shards[shard_id])
        parts.append(array.astype(np.float32))
    if len({p.shape[1] for p in parts}) > 1:
        raise InputError(f"shards of {subdir}/ have different widths {[p.shape[1] for p in parts]}",
                         path=folder / subdir)
    return np.concatenate(parts, axis=0)


def _read_metadata(folder: Path) -> tuple[pd.DataFrame, list[int], dict[int, int]]:
    if not folder.is_dir():
        raise InputError("embedding collection folder not found (expected img_emb/, metadata/)", path=folder)
    shards = _shards(folder, METADATA_DIR, "metadata", ".parquet")
    if not shards:
        raise InputError("no metadata/metadata_<i>.parquet files (expected clip-retrieval's layout: "
                         "img_emb/img_emb_<i>.npy + metadata/metadata_<i>.parquet)", path=folder)
    frames, counts = [], {}
    for shard_id in sorted(shards):
        try:
            frame = pd.read_parquet(shards[shard_id])
        except Exception as e:  # pyarrow raises several types for broken files
            raise InputError(f"not a readable parquet file ({type(e).__name__}: {e})", path=shards[shard_id]) from None
        counts[shard_id] = len(frame)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), sorted(shards), counts


def read_embedding_collection(folder: os.PathLike | str) -> tuple[np.ndarray, pd.DataFrame]:
    """Read a clip-retrieval collection -> (image embeddings [N, D] float32, metadata with N rows).

    Shards are concatenated in numeric order (``img_emb_2`` before ``img_emb_10``); row counts
    must match the metadata shards and rows must be L2-normalised.
    """
    folder = Path(folder)
    metadata, shard_ids, counts = _read_metadata(folder)
    embeddings = _read_embedding_shards(folder, IMAGE_DIR, "img_emb", shard_ids, counts)
    return embeddings, metadata


def read_text_embeddings(folder: os.PathLike | str) -> Optional[np.ndarray]:
    """The collection's ``text_emb`` rows [N, D] float32, or None if it has none."""
    folder = Path(folder)
    if not _shards(folder, TEXT_DIR, "text_emb", ".npy"):
        return None
    _, shard_ids, counts = _read_metadata(folder)
    return _read_embedding_shards(folder, TEXT_DIR, "text_emb", shard_ids, counts)


def read_collection_info(folder: os.PathLike | str) -> dict[str, Any]:
    """irkit's ``irkit_collection.json`` (model name, weights id, ...) or ``{}`` for foreign folders."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        return {}
    from irkit.io import read_json
    info = read_json(path)
    if not isinstance(info, dict):
        raise InputError("expected a JSON object", path=path)
    return info


def check_collection_model(loaded: Any, folder: os.PathLike | str, dim: int) -> None:
    """:class:`InputError` unless ``loaded`` (an ``irkit.models.LoadedModel``) is the model that
    embedded the collection at ``folder``: same ``model_name`` / ``weights_id`` where
    ``irkit_collection.json`` records them, and embeddings ``dim`` wide."""
    folder = Path(folder)
    info = read_collection_info(folder)
    for key in ("model_name", "weights_id"):
        if key in info and info[key] != getattr(loaded, key):
            raise InputError(
                f"collection was embedded with {key} '{info[key]}' but the query model has "
                f"'{getattr(loaded, key)}' (expected the same model and weights)", path=folder / INFO_FILE)
    if dim != loaded.embed_dim:
        raise InputError(f"collection embeddings are {dim}-d but model '{loaded.model_name}' "
                         f"gives {loaded.embed_dim}-d (expected the model that built the collection)", path=folder)


def open_embedding_shards(folder: os.PathLike | str, kind: str = "image"
                          ) -> tuple[list[np.ndarray], list[Path], pd.DataFrame]:
    """Memory-mapped shards of a collection -> ``(arrays [n_i, D] float16/float32, paths, metadata)``.

    ``kind`` is ``"image"`` (``img_emb``) or ``"text"`` (``text_emb``; empty lists when absent).
    Shard ids, row counts and widths are checked against the metadata and rows must be
    L2-normalised (checked chunk by chunk); nothing is loaded into memory beyond one chunk.
    """
    folder = Path(folder)
    subdir, stem = (IMAGE_DIR, "img_emb") if kind == "image" else (TEXT_DIR, "text_emb")
    metadata, shard_ids, counts = _read_metadata(folder)
    shards = _shards(folder, subdir, stem, ".npy")
    if kind == "text" and not shards:
        return [], [], metadata
    if sorted(shards) != shard_ids:
        raise InputError(f"{subdir}/ has shards {sorted(shards)} but metadata/ has {shard_ids} "
                         "(expected one embedding shard per metadata shard)", path=folder / subdir)
    arrays, paths = [], []
    for shard_id in shard_ids:
        path = shards[shard_id]
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"not a readable .npy array ({e})", path=path) from None
        if array.ndim != 2 or array.dtype not in (np.float16, np.float32):
            raise InputError(f"expected a 2-D float16/float32 array, got {array.dtype} {array.shape}", path=path)
        if len(array) != counts[shard_id]:
            raise InputError(f"{len(array)} embeddings but metadata_{shard_id}.parquet has "
                             f"{counts[shard_id]} rows (expected equal counts)", path=path)
        for start in range(0, len(array), 65536):
            try:
                _check_normalised(np.asarray(array[start:start + 65536]), path, f"{subdir} shard {shard_id}")
            except InputError as e:
                raise InputError(f"{e.detail} (in rows from {start})", path=path) from None
        arrays.append(array)
        paths.append(path)
    if len({a.shape[1] for a in arrays}) > 1:
        raise InputError(f"shards of {subdir}/ have different widths {[a.shape[1] for a in arrays]}",
                         path=folder / subdir)
    return arrays, paths, metadata


def build_collection_index(folder: os.PathLike | str, max_memory: str = "4G", index_key: Optional[str] = None,
                           k: int = 10, recall_target: float = 0.95, num_queries: int = 1000,
                           force: bool = False) -> dict[str, Any]:
    """Build ``<folder>/index/image.index`` + ``image.json`` (see :mod:`irkit.search_index`) -> infos.

    Held-out queries for the recall measurement are the collection's text embeddings when it has
    them, else image rows plus noise.
    """
    from irkit.search_index import INDEX_DIR, build_index

    folder = Path(folder)
    shards, paths, _ = open_embedding_shards(folder, "image")
    text_shards, _, _ = open_embedding_shards(folder, "text")
    if text_shards and text_shards[0].shape[1] != shards[0].shape[1]:
        text_shards = []  # another embedding space: recall is measured with noisy image rows instead
    return build_index(shards, paths, folder, folder / INDEX_DIR, max_memory=max_memory, index_key=index_key,
                       k=k, recall_target=recall_target, num_queries=num_queries,
                       text_shards=text_shards or None, force=force)


@dataclass
class CollectionSearcher:
    """A collection's rows opened for search: ``search(queries [Q, D], k) -> (scores, rows)``."""

    metadata: pd.DataFrame
    dim: int
    engine: Any  # irkit.index.ExactIndex or irkit.search_index.AnnIndex
    description: str  # "exact" or "ann:<index key>,<search setting>"

    def search(self, query_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k'] float32, collection rows [Q, k'] int64), best first, ties by row."""
        return self.engine.search(query_embeddings, k)


_SEARCHERS: dict[tuple[str, bool], tuple[tuple, CollectionSearcher]] = {}


def _file_identity(folder: Path) -> tuple:
    """(name, size, mtime, inode) of every file under the collection's shard and index folders."""
    found = []
    for subdir in (IMAGE_DIR, METADATA_DIR, "index"):
        directory = folder / subdir
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                stat = path.stat()
                found.append((subdir, path.name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(found)


def collection_searcher(folder: os.PathLike | str, exact: bool = False) -> CollectionSearcher:
    """The collection's searcher, opened once per process and reused while its files are unchanged.

    Uses ``<folder>/index`` (ANN) when present unless ``exact``; otherwise exact search over the
    memory-mapped shards. A stale index raises :class:`InputError`.
    """
    from irkit.index import ExactIndex
    from irkit.search_index import INDEX_DIR, load_index

    folder = Path(folder).resolve()
    key = (str(folder), bool(exact))
    identity = _file_identity(folder)
    cached = _SEARCHERS.get(key)
    if cached is not None and cached[0] == identity:
        return cached[1]
    shards, paths, metadata = open_embedding_shards(folder, "image")
    dim = int(shards[0].shape[1]) if shards else 0
    ann = None if exact else load_index(folder / INDEX_DIR, paths, folder)
    if ann is not None:
        searcher = CollectionSearcher(metadata, dim, ann, ann.description)
    else:
        searcher = CollectionSearcher(metadata, dim, ExactIndex(shards), "exact")
    _SEARCHERS[key] = (identity, searcher)
    return searcher


def search_collection(
    loaded: Any,
    folder: os.PathLike | str,
    queries: list[str],
    k: int = 10,
    exact: bool = False,
) -> list[dict[str, Any]]:
    """Text -> image top-k over a collection with ``loaded`` (an ``irkit.models.LoadedModel``).

    Returns one ``{"query", "search", "results": [{"rank", "score", "row", "image_path", ...}]}``
    per query, best first; ``search`` is ``"exact"`` or the ANN index used (``<folder>/index``,
    used when present unless ``exact``). A collection written by irkit with other weights is
    refused, since its embeddings live in another space.
    """
    folder = Path(folder)
    searcher = collection_searcher(folder, exact=exact)
    check_collection_model(loaded, folder, searcher.dim)
    if k <= 0:
        raise InputError(f"k must be positive, got {k}", field="k")
    require_query_texts(queries)
    scores, indices = searcher.search(loaded.encode_texts(queries), k)
    found = sorted({int(i) for i in indices.ravel() if i >= 0})
    records = dict(zip(found, searcher.metadata.iloc[found].to_dict(orient="records")))
    results = []
    for query, row_scores, row_indices in zip(queries, scores, indices):
        hits = [{"rank": rank + 1, "score": round(float(score), 6), "row": int(index),
                 **{str(c): _json_value(v) for c, v in records[int(index)].items()}}
                for rank, (score, index) in enumerate(zip(row_scores, row_indices)) if index >= 0]
        results.append({"query": query, "search": searcher.description, "results": hits})
    return results


def require_query_texts(queries: list[str], source: os.PathLike | str | None = None) -> list[str]:
    """``queries`` unchanged when none is empty or whitespace-only; else one InputError naming the
    1-based query number (an empty query would be answered with arbitrary images)."""
    for number, query in enumerate(queries, start=1):
        if not isinstance(query, str) or not query.strip():
            raise InputError(f"query {number} of {len(queries)} is empty; expected a non-empty query text",
                             path=source, field="query")
    return queries


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def embed_images_to_collection(
    loaded: Any,
    paths: list[Path],
    folder: os.PathLike | str,
    cache_dir: Optional[os.PathLike | str] = None,
    batch_size: int = 64,
    num_workers: int = 2,
    dtype: str = "float16",
    root: Optional[os.PathLike | str] = None,
    reader: Any = None,
) -> Path:
    """Embed ``paths`` with ``loaded`` and write them as a collection at ``folder``.

    Metadata columns: ``image_path`` (absolute) and ``image_name`` (relative to ``root`` when
    given and containing the file, else the file name). One process; under torchrun
    :func:`irkit.sharded_embedding.embed_images_sharded` writes one shard per rank.
    ``reader``: an :class:`irkit.transforms.ImageReader` (default: the user-folder reader, EXIF
    orientation applied); recorded in ``irkit_collection.json``.
    """
    from irkit.embeddings import encode_image_files
    from irkit.transforms import USER_FOLDER_READER

    reader = reader or USER_FOLDER_READER
    _check_output_folder(Path(folder), overwrite=False)  # fail before the (long) encoding
    embeddings = encode_image_files(loaded, paths, batch_size=batch_size, num_workers=num_workers,
                                    cache_dir=cache_dir, reader=reader)
    return write_embedding_collection(folder, embeddings, image_metadata(paths, root), dtype=dtype,
                                      info=collection_info(loaded, reader))


def image_metadata(paths: list[Path], root: Optional[os.PathLike | str] = None) -> pd.DataFrame:
    """Metadata rows of image files: ``image_path`` (absolute) and ``image_name`` (relative to
    ``root`` when given and containing the file, else the file name)."""
    root_path = Path(root).resolve() if root is not None else None
    names = []
    for path in paths:
        absolute = Path(path).resolve()
        if root_path is not None and root_path in absolute.parents:
            names.append(absolute.relative_to(root_path).as_posix())
        else:
            names.append(absolute.name)
    return pd.DataFrame({"image_path": [str(Path(p).resolve()) for p in paths], "image_name": names})


def collection_info(loaded: Any, reader: Any = None) -> dict[str, Any]:
    """The model identity (and the image ``reader``'s settings) a collection records in
    ``irkit_collection.json``."""
    from irkit.transforms import USER_FOLDER_READER

    return {"model_name": loaded.model_name, "weights_id": loaded.weights_id,
            "transform": loaded.transform_config.to_dict(), "precision": loaded.precision,
            "subnormals": loaded.subnormals, "reader": (reader or USER_FOLDER_READER).to_dict()}


def check_output_folder(folder: os.PathLike | str, overwrite: bool = False) -> None:
    """Refuse an existing non-empty (or non-folder) output path unless ``overwrite``."""
    _check_output_folder(Path(folder), overwrite)


