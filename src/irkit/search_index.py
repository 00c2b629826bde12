"""Approximate (FAISS) indexes over embedding shards: sizing, build, recall at build time, staleness.

Layout (clip-retrieval's ``clip-retrieval index`` / autofaiss: ``image.index`` + its infos JSON)::

    <collection>/index/image.index   faiss.write_index of the image index (ids = collection rows)
    <collection>/index/image.json    autofaiss's infos keys (index_key, index_param, "size in bytes",
                                     "nb vectors", "vectors dimension", avg_search_speed_ms) + irkit's:
                                     recall (k, value, target, queries, tuning), build, shards

The index key follows autofaiss's sizing rules with ``faiss.index_factory`` (autofaiss itself
pins fsspec==2021.11.0 and does not import beside current pyarrow; see docs/formats.md §6):

* fewer than 1,000 rows: ``Flat`` (exact);
* otherwise ``IVF{nlist},Flat`` with nlist the power of two nearest 4*sqrt(N) (an HNSW32 coarse
  quantizer, ``IVF{nlist}_HNSW32,Flat``, once nlist >= 1024), when the vectors fit the budget;
* else ``IVF{nlist}_HNSW32,PQ{m}x8`` with the largest m whose codes (m + 8 id bytes per row) fit;
* nothing fits: an :class:`InputError` saying how much memory the smallest choice needs.

The IVF quantizer is trained on a sample of rows, then the index is filled chunk by chunk from
the (memory-mapped) shards, so the build holds the sample, one chunk and the index itself.
``nprobe`` (``efSearch`` for HNSW) is tuned at build time: the smallest value whose recall@k
against exact search, on held-out queries, reaches the target.
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import faiss
import numpy as np

from irkit.errors import InputError
from irkit.embeddings import num_threads
from irkit.index import ExactIndex
from irkit.io import atomic_write_json, make_temp_dir, read_json, swap_into_place

INDEX_DIR, INDEX_FILE, INFOS_FILE = "index", "image.index", "image.json"
FORMAT_VERSION = 1
FLAT_THRESHOLD = 1000
ADD_CHUNK_ROWS = 65536
_ID_BYTES = 8  # faiss inverted lists store an int64 id per vector
_PQ_SIZES = (256, 128, 64, 48, 32, 24, 16, 8, 4)
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.IGNORECASE)


def parse_memory(text: str, field: str = "max-memory") -> int:
    """``'4G'``, ``'512M'``, ``'1.5G'``, ``'2000000'`` -> bytes (powers of 1024)."""
    match = _MEMORY.match(str(text))
    if not match:
        raise InputError(f"'{text}' is not a memory size (expected e.g. 4G, 512M or a byte count)", field=field)
    value = float(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_")
    if value < 1:
        raise InputError(f"'{text}' is not a positive memory size", field=field)
    return int(value)


def nlist_for(num_rows: int) -> int:
    """IVF list count: the power of two nearest 4*sqrt(N), kept <= N/39 (faiss's k-means minimum)."""
    nearest = 2 ** round(math.log2(max(4 * math.sqrt(num_rows), 1)))
    trainable = 2 ** int(math.log2(max(num_rows // 39, 1)))
    return int(max(1, min(nearest, trainable)))


def estimated_index_bytes(index_key: str, num_rows: int, dim: int) -> int:
    """Approximate resident size of ``index_key`` holding ``num_rows`` D-dim vectors (autofaiss's model)."""
    vectors = 4 * num_rows * dim
    hnsw = re.fullmatch(r"HNSW(\d+)(?:,Flat)?", index_key)
    if index_key == "Flat":
        return vectors
    if hnsw:
        return vectors + num_rows * int(hnsw.group(1)) * 2 * 4
    ivf = re.search(r"IVF(\d+)(?:_HNSW(\d+))?", index_key)
    if ivf:
        nlist = int(ivf.group(1))
        centroids = nlist * dim * 4 + (nlist * int(ivf.group(2)) * 2 * 4 if ivf.group(2) else 0)
        pq = re.search(r"PQ(\d+)(?:x(\d+))?", index_key)
        if pq:
            code_bytes = math.ceil(int(pq.group(1)) * int(pq.group(2) or 8) / 8)
            return num_rows * (code_bytes + _ID_BYTES) + centroids
        return vectors + num_rows * _ID_BYTES + centroids
    return vectors  # unknown family: assume it stores the vectors


def choose_index_key(num_rows: int, dim: int, max_memory_bytes: int) -> str:
    """The index key for N x D vectors under a memory budget (rules in the module docstring)."""
    candidates = []
    if num_rows < FLAT_THRESHOLD:
        candidates.append("Flat")
    else:
        nlist = nlist_for(num_rows)
        coarse = f"IVF{nlist}_HNSW32" if nlist >= 1024 else f"IVF{nlist}"
        candidates.append(f"{coarse},Flat")
        candidates += [f"IVF{nlist}_HNSW32,PQ{m}x8" for m in _PQ_SIZES if m < dim and dim % m == 0]
    for key in candidates:
        if estimated_index_bytes(key, num_rows, dim) <= max_memory_bytes:
            return key
    smallest = min(estimated_index_bytes(key, num_rows, dim) for key in candidates)
    raise InputError(f"{max_memory_bytes} bytes is too small for an index of {num_rows} x {dim} vectors "
                     f"(the smallest choice, {candidates[-1]}, needs about {smallest} bytes)", field="max-memory")


def _search_param_values(index_key: str, nlist: int) -> list[str]:
    """Search settings to try, cheapest first."""
    if "IVF" in index_key:
        values, probe = [], 1
        while True:
            probe = min(probe, nlist)
            values.append(f"nprobe={probe}" + (f",quantizer_efSearch={max(2 * probe, 16)}"
                                              if "_HNSW" in index_key else ""))
            if probe == nlist:
                return values
            probe *= 2
    if "HNSW" in index_key:
        return [f"efSearch={ef}" for ef in (16, 32, 64, 128, 256, 512, 1024, 2048)]
    return [""]


def shard_fingerprint(path: Path, root: Path, blocks: int = 64, block_bytes: int = 4096) -> dict[str, Any]:
    """``{"file", "bytes", "sampled_sha256"}`` of one shard: its size and a hash of its first 4 KiB
    (the .npy header), its last 4 KiB and ``blocks`` 4 KiB blocks spread evenly between them."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        offsets = sorted({0, max(size - block_bytes, 0)} | {size * i // blocks for i in range(blocks)})
        for offset in offsets:
            f.seek(offset)
            digest.update(f.read(block_bytes))
    return {"file": path.relative_to(root).as_posix(), "bytes": size, "sampled_sha256": digest.hexdigest()}


def sample_rows(shards: Sequence[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Float32 copy of the given global row numbers (sorted, unique) of the concatenated shards."""
    out, offset = [], 0
    for shard in shards:
        inside = rows[(rows >= offset) & (rows < offset + len(shard))] - offset
        if inside.size:
            out.append(np.asarray(shard[inside], dtype=np.float32))
        offset += len(shard)
    dim = shards[0].shape[1] if shards else 0
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def held_out_queries(shards: Sequence[np.ndarray], count: int, seed: int = 0,
                     text_shards: Optional[Sequence[np.ndarray]] = None) -> tuple[np.ndarray, str]:
    """``(queries [Q, D] float32 L2-normalised, source)`` for measuring recall.

    Sampled text embeddings when the collection has them, else sampled image rows plus Gaussian
    noise of norm ~0.5 (cosine ~0.9 to their row), re-normalised.
    """
    rng = np.random.default_rng(seed)
    use_text = text_shards is not None and sum(len(s) for s in text_shards) > 0
    source = text_shards if use_text else shards
    total = sum(len(s) for s in source)
    rows = np.sort(rng.choice(total, size=min(count, total), replace=False))
    queries = sample_rows(source, rows)
    if not use_text:
        queries = queries + rng.normal(0.0, 0.5 / math.sqrt(queries.shape[1]), queries.shape).astype(np.float32)
    queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    return queries, ("text_emb rows" if use_text else "img_emb rows + gaussian noise (norm 0.5)")


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_q ∩ truth_q| / k for [Q, k] index arrays (-1 = no result)."""
    k = truth.shape[1]
    hits = [len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits) / k) if len(hits) else 1.0


@dataclass
class AnnIndex:
    """A loaded FAISS index with its search setting; :meth:`search` orders ties by row."""

    index: faiss.Index
    index_key: str
    index_param: str
    infos: dict[str, Any]

    def search(self, query_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k'] float32, rows [Q, k'] int64), best first, k' = min(k, ntotal)."""
        queries = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        k = min(int(k), int(self.index.ntotal))
        scores, rows = self.index.search(queries, k)
        scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
        order = np.lexsort((rows, -scores), axis=1)  # equal scores by collection row
        return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)

    @property
    def description(self) -> str:
        return f"ann:{self.index_key}" + (f",{self.index_param}" if self.index_param else "")


def _set_param(index: faiss.Index, param: str) -> None:
    if param:
        faiss.ParameterSpace().set_index_parameters(index, param)


def _new_index(index_key: str, dim: int) -> faiss.Index:
    try:
        return faiss.index_factory(dim, index_key, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1].split(": ")[-1]
        raise InputError(f"faiss cannot build index key '{index_key}' ({reason}); expected e.g. Flat, HNSW32, "
                         "IVF1024,Flat or IVF4096_HNSW32,PQ64x8", field="index-key") from None


def build_index(
    shards: Sequence[np.ndarray],
    shard_paths: Sequence[Path],
    collection_root: Path,
    out_dir: Path,
    max_memory: str = "4G",
    index_key: Optional[str] = None,
    k: int = 10,
    recall_target: float = 0.95,
    num_queries: int = 1000,
    text_shards: Optional[Sequence[np.ndarray]] = None,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Build, tune and save an ANN index over ``shards`` (row blocks [n_i, D], e.g. memory-mapped).

    Writes ``out_dir/image.index`` and ``out_dir/image.json`` (swapped in as one folder) and
    returns the infos. ``shard_paths`` (relative to ``collection_root``) are fingerprinted so a
    later load detects a changed collection.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise InputError("an index already exists (pass --force to rebuild it)", path=out_dir)
    if not 0 < recall_target <= 1:
        raise InputError(f"recall target must be in (0, 1], got {recall_target}", field="recall")
    budget = parse_memory(max_memory)
    num_rows = int(sum(len(s) for s in shards))
    if num_rows == 0:
        raise InputError("the collection has no rows to index", path=collection_root)
    dim = int(shards[0].shape[1])
    faiss.omp_set_num_threads(num_threads())
    started = time.perf_counter()
    chosen_by = "--index-key" if index_key else "sizing rule"
    if index_key is None:
        index_key = choose_index_key(num_rows, dim, budget)
    index = _new_index(index_key, dim)
    estimate = estimated_index_bytes(index_key, num_rows, dim)
    if estimate > budget:
        raise InputError(f"index key '{index_key}' needs about {estimate} bytes for {num_rows} x {dim} vectors "
                         f"but --max-memory is {budget} bytes", field="max-memory")
    rng = np.random.default_rng(seed)
    nlist_match = re.search(r"IVF(\d+)", index_key)
    nlist = int(nlist_match.group(1)) if nlist_match else 0
    train_rows = 0
    if not index.is_trained:
        wanted = max(40 * nlist, 256 * 40 if "PQ" in index_key else 0, 1)
        rows = np.sort(rng.choice(num_rows, size=min(num_rows, wanted), replace=False))
        sample = sample_rows(shards, rows)
        train_rows = len(sample)
        index.train(sample)
        del sample
    trained = time.perf_counter()
    for shard in shards:  # fill chunk by chunk: only one float32 chunk is resident at a time
        for start in range(0, len(shard), ADD_CHUNK_ROWS):
            index.add(np.ascontiguousarray(shard[start:start + ADD_CHUNK_ROWS], dtype=np.float32))
    build_seconds = time.perf_counter() - started

    queries, query_source = held_out_queries(shards, num_queries, seed=seed + 1, text_shards=text_shards)
    k_eval = min(k, num_rows)
    _, truth = ExactIndex(list(shards)).search(queries, k_eval)
    tuning, chosen = [], None
    for param in _search_param_values(index_key, nlist):
        _set_param(index, param)
        tic = time.perf_counter()
        _, found = index.search(queries, k_eval)
        elapsed = time.perf_counter() - tic
        recall = recall_at_k(found, truth)
        tuning.append({"index_param": param, "recall": round(recall, 4),
                       "ms_per_query": round(1000 * elapsed / max(len(queries), 1), 4)})
        chosen = tuning[-1]
        if recall >= recall_target:
            break
    _set_param(index, chosen["index_param"])

    infos = {
        "index_key": index_key, "index_param": chosen["index_param"],
        "size in bytes": 0, "nb vectors": int(index.ntotal),
        "vectors dimension": dim, "avg_search_speed_ms": chosen["ms_per_query"],
        "irkit_index_format": FORMAT_VERSION,
        "recall": {"k": k_eval, "value": chosen["recall"], "target": recall_target,
                   "reached": chosen["recall"] >= recall_target, "queries": int(len(queries)),
                   "query_source": query_source, "tuning": tuning},
        "build": {"seconds": round(build_seconds, 3), "chosen_by": chosen_by, "max_memory_bytes": budget,
                  "estimated_bytes": estimate, "train_rows": train_rows,
                  "train_seconds": round(trained - started, 3), "add_seconds": round(started + build_seconds - trained, 3)},
        "shards": [shard_fingerprint(Path(p), collection_root) for p in shard_paths],
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temp_dir(out_dir.parent, prefix=f".{out_dir.name}.")  # umask permissions, not 0700
    try:
        faiss.write_index(index, str(staging / INDEX_FILE))
        infos["size in bytes"] = (staging / INDEX_FILE).stat().st_size
        atomic_write_json(staging / INFOS_FILE, infos, indent=2)
        swap_into_place(staging, out_dir)  # an existing index is replaced only after success
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return infos


def load_index(index_dir: Path, shard_paths: Sequence[Path], collection_root: Path) -> Optional[AnnIndex]:
    """The ANN index saved in ``index_dir``, or None when there is none.

    Raises :class:`InputError` when it was built for other shards than ``shard_paths`` (stale).
    """
    index_dir = Path(index_dir)
    index_path, infos_path = index_dir / INDEX_FILE, index_dir / INFOS_FILE
    if not index_path.is_file():
        return None
    if not infos_path.is_file():
        raise InputError(f"{INDEX_FILE} has no {INFOS_FILE} beside it (rebuild with irkit index build --force, "
                         "or search with --exact)", path=index_dir)
    infos = read_json(infos_path)
    if not isinstance(infos, dict) or not isinstance(infos.get("shards"), list) or "index_key" not in infos:
        raise InputError("expected irkit's index infos (index_key, index_param, shards); rebuild with "
                         "irkit index build --force", path=infos_path)
    recorded = {s.get("file"): s for s in infos["shards"] if isinstance(s, dict)}
    current = {s["file"]: s for s in (shard_fingerprint(Path(p), collection_root) for p in shard_paths)}
    if set(recorded) != set(current):
        raise InputError(f"stale index: built for shards {sorted(recorded)} but the collection has "
                         f"{sorted(current)} (rebuild with irkit index build --force, or search with --exact)",
                         path=infos_path)
    for name, now in current.items():
        if now != recorded[name]:
            raise InputError(f"stale index: {name} changed since the index was built ({recorded[name].get('bytes')} "
                             f"-> {now['bytes']} bytes or different content; rebuild with irkit index build --force, "
                             "or search with --exact)", path=infos_path)
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as e:
        raise InputError(f"not a readable faiss index ({str(e).strip().splitlines()[-1]})", path=index_path) from None
    faiss.omp_set_num_threads(num_threads())
    param = str(infos.get("index_param") or "")
    _set_param(index, param)
    return AnnIndex(index=index, index_key=str(infos["index_key"]), index_param=param, infos=infos)
