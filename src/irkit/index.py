"""Exact top-k search over L2-normalised embeddings, deterministic ties, built once per gallery.

irkit's protocols require equal scores broken by gallery order (docs/metrics.md, "Generic"):
the top-k of a query is the k smallest gallery rows under the total order
``(-score, gallery index)``. :class:`ExactIndex` holds a gallery once (a contiguous float32
matrix, or row blocks such as memory-mapped ``.npy`` shards, float16 blocks converted chunk by
chunk) and answers any number of :meth:`ExactIndex.search` calls:

* one query: one pass over the gallery (a BLAS matrix-vector product, memory-bandwidth bound);
* a batch: query blocks x gallery chunks by matrix product (``torch.mm``, compute bound);
* each chunk's top-k under the total order (``torch.topk`` for k+1, exact re-ranking of the rare
  row whose k-th and (k+1)-th scores tie), then a running merge across chunks, so streaming over
  shards gives the same answer as one in-memory pass.

:func:`search` is the one-call form used by evaluation (it wraps a fresh :class:`ExactIndex`).
"""

from __future__ import annotations

import warnings
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

_EXCLUDED_SCORE = -np.inf
DEFAULT_CHUNK_ROWS = 65536  # gallery rows per matrix product in batched / streamed search
DEFAULT_QUERY_BLOCK = 256  # queries per matrix product


def _as_float32_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, D], got shape {x.shape}")
    return x


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A torch view of a (possibly read-only, memory-mapped) float32 array, no copy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only memmap: we never write through it
        return torch.from_numpy(array)


_BLOCK = 64  # scores per block in the two-stage selection of :func:`_topk`


def _topk(scores: torch.Tensor, fetch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``fetch`` largest values of each row of ``scores`` [B, M] and their columns (ties: any).

    Two stages for long rows: split the first G*64 columns into G groups of 64 (group j holds
    columns j, j + G, j + 2G, ...: an element-wise max over 64 contiguous slices of G, faster
    than reducing runs of 64); the ``fetch`` groups with the largest maxima hold the ``fetch``
    largest values (a group left out has ``fetch`` groups, so ``fetch`` values, at least as large
    as its maximum), so ``torch.topk`` runs on those groups (plus the ragged tail) only.
    """
    rows, width = scores.shape
    blocks = width // _BLOCK
    if blocks < 8 * fetch:
        return torch.topk(scores, fetch, dim=1)
    block_max = scores[:, :blocks * _BLOCK].reshape(rows, _BLOCK, blocks).amax(dim=1)  # [B, G]
    best_blocks = torch.topk(block_max, fetch, dim=1).indices  # [B, fetch]
    columns = (best_blocks[:, :, None] + blocks * torch.arange(_BLOCK)).reshape(rows, -1)
    if width > blocks * _BLOCK:
        columns = torch.cat([columns, torch.arange(blocks * _BLOCK, width).expand(rows, -1)], dim=1)
    values, picked = torch.topk(torch.gather(scores, 1, columns), fetch, dim=1)
    return values, torch.gather(columns, 1, picked)


def topk_total_order(scores: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of each row of ``scores`` [B, M] under ``(-score, index)``.

    Returns ``(scores [B, k'], indices [B, k'] int64)`` with ``k' = min(k, M)``, best first,
    indices shifted by ``offset`` (the chunk's first gallery row).
    """
    num_rows, width = scores.shape
    k = min(k, width)
    if k <= 0:
        return np.zeros((num_rows, 0), np.float32), np.zeros((num_rows, 0), np.int64)
    fetch = min(k + 1, width)
    values_t, positions_t = _topk(_tensor(np.ascontiguousarray(scores, dtype=np.float32)), fetch)
    values, positions = values_t.numpy(), positions_t.numpy().astype(np.int64)
    # The k best form a set of their own unless the k-th and (k+1)-th scores tie.
    boundary_tie = np.zeros(num_rows, bool) if fetch == k else values[:, k - 1] <= values[:, k]
    values, positions = values[:, :k].copy(), positions[:, :k].copy()
    for row in np.flatnonzero(boundary_tie):
        full = scores[row]
        candidates = np.flatnonzero(full >= values[row, k - 1])  # every item tied with the k-th
        order = np.lexsort((candidates, -full[candidates]))[:k]
        positions[row], values[row] = candidates[order], full[candidates[order]]
    order = np.lexsort((positions, -values), axis=1)  # within the k: ties by gallery index
    return np.take_along_axis(values, order, 1), np.take_along_axis(positions, order, 1) + offset


def merge_topk(scores_a: np.ndarray, indices_a: np.ndarray, scores_b: np.ndarray, indices_b: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of two candidate lists per row ([B, ka] and [B, kb]) under ``(-score, index)``."""
    scores = np.concatenate([scores_a, scores_b], axis=1)
    indices = np.concatenate([indices_a, indices_b], axis=1)
    order = np.lexsort((indices, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


class ExactIndex:
    """Exact inner-product search over a fixed gallery (build once, search many times).

    Args:
        gallery: [N, D] array (copied once to contiguous float32 unless it already is), or a
            sequence of [n_i, D] row blocks (float32 or float16, e.g. ``np.load(mmap_mode='r')``
            shards) searched in order as one gallery of ``sum(n_i)`` rows without loading them.
        chunk_rows: gallery rows per matrix product (bounds the [queries, chunk] score buffer and
            the float32 copy of a float16 chunk).
    """

    def __init__(self, gallery: np.ndarray | Sequence[np.ndarray], chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        if isinstance(gallery, np.ndarray):
            blocks = [_as_float32_matrix(gallery, "gallery_embeddings")]
        else:
            blocks = [np.asarray(b) for b in gallery]
            for i, block in enumerate(blocks):
                if block.ndim != 2 or block.dtype not in (np.float16, np.float32):
                    raise ValueError(f"gallery block {i} must be a 2-D float16/float32 array, got "
                                     f"{block.dtype} {block.shape}")
        if len({b.shape[1] for b in blocks}) > 1:
            raise ValueError(f"gallery blocks have different widths {[b.shape[1] for b in blocks]}")
        if chunk_rows <= 0:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        self.blocks = blocks
        self.chunk_rows = int(chunk_rows)
        self.ntotal = int(sum(len(b) for b in blocks))
        self.dim = int(blocks[0].shape[1]) if blocks else 0

    def _chunks(self, whole_float32_blocks: bool) -> Iterator[tuple[int, np.ndarray]]:
        """``(first gallery row, float32 [m, D] chunk)`` in gallery order."""
        offset = 0
        for block in self.blocks:
            if whole_float32_blocks and block.dtype == np.float32 and block.flags.c_contiguous:
                yield offset, block
            else:
                for start in range(0, len(block), self.chunk_rows):
                    yield offset + start, np.ascontiguousarray(block[start:start + self.chunk_rows], np.float32)
            offset += len(block)

    def search(self, query_embeddings: np.ndarray, k: int,
               exclude: Optional[Sequence[int] | np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product.

        Args:
            query_embeddings: [Q, D] float (L2-normalised for cosine search).
            k: results per query (clipped to the number of rankable items).
            exclude: optional [Q] gallery index to drop from each query's ranking (e.g. the CIRR
                reference image); -1 excludes nothing.

        Returns:
            (scores [Q, k] float32, indices [Q, k] int64), best first; equal scores ordered by
            gallery index.
        """
        queries = _as_float32_matrix(query_embeddings, "query_embeddings")
        if queries.shape[1] != self.dim:
            raise ValueError(f"embedding widths differ: queries {queries.shape[1]}, gallery {self.dim}")
        num_queries = queries.shape[0]
        exclude_idx = (np.full(num_queries, -1, dtype=np.int64) if exclude is None
                       else np.asarray(exclude, dtype=np.int64))
        if exclude_idx.shape != (num_queries,):
            raise ValueError(f"exclude must have one entry per query ({num_queries}), got {exclude_idx.shape}")
        has_exclusion = bool((exclude_idx >= 0).any())
        k = int(min(k, self.ntotal - (1 if has_exclusion else 0)))
        if k <= 0 or num_queries == 0:
            width = max(k, 0)
            return np.zeros((num_queries, width), np.float32), np.zeros((num_queries, width), np.int64)

        out_scores = np.empty((num_queries, k), np.float32)
        out_indices = np.empty((num_queries, k), np.int64)
        single = num_queries == 1
        for q0 in range(0, num_queries, DEFAULT_QUERY_BLOCK):
            block_queries = queries[q0:q0 + DEFAULT_QUERY_BLOCK]
            block_exclude = exclude_idx[q0:q0 + DEFAULT_QUERY_BLOCK]
            best_scores = np.zeros((len(block_queries), 0), np.float32)
            best_indices = np.zeros((len(block_queries), 0), np.int64)
            for offset, chunk in self._chunks(whole_float32_blocks=single):
                if single:  # one pass over the gallery: BLAS matrix-vector product
                    scores = (chunk @ block_queries[0])[None, :]
                else:
                    scores = (_tensor(block_queries) @ _tensor(chunk).T).numpy()
                inside = np.flatnonzero((block_exclude >= offset) & (block_exclude < offset + len(chunk)))
                scores[inside, block_exclude[inside] - offset] = _EXCLUDED_SCORE
                chunk_scores, chunk_indices = topk_total_order(scores, k, offset)
                best_scores, best_indices = merge_topk(best_scores, best_indices, chunk_scores, chunk_indices, k)
            out_scores[q0:q0 + len(block_queries)] = best_scores
            out_indices[q0:q0 + len(block_queries)] = best_indices
        return out_scores, out_indices


def search(
    query_embeddings: np.ndarray,
    gallery_embeddings: np.ndarray,
    k: int,
    exclude: Optional[Sequence[int] | np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product over ``gallery_embeddings`` [G, D] (see :meth:`ExactIndex.search`).

    Builds a throw-away :class:`ExactIndex`; callers searching one gallery repeatedly should
    keep an :class:`ExactIndex` instead.
    """
    queries = _as_float32_matrix(query_embeddings, "query_embeddings")
    gallery = _as_float32_matrix(gallery_embeddings, "gallery_embeddings")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"embedding widths differ: queries {queries.shape[1]}, gallery {gallery.shape[1]}"
        )
    return ExactIndex(gallery).search(queries, k, exclude=exclude)


def rank_ids(
    query_embeddings: np.ndarray,
    gallery_embeddings: np.ndarray,
    gallery_ids: Sequence[str],
    k: int,
    exclude_ids: Optional[Sequence[Optional[str]]] = None,
) -> list[list[str]]:
    """Top-k gallery ids per query (see :func:`search`); ``exclude_ids[q]`` is removed if present."""
    position = {image_id: i for i, image_id in enumerate(gallery_ids)}
    exclude = None
    if exclude_ids is not None:
        exclude = np.array([position.get(x, -1) if x is not None else -1 for x in exclude_ids], np.int64)
    _, indices = search(query_embeddings, gallery_embeddings, k, exclude=exclude)
    return [[gallery_ids[i] for i in row] for row in indices]
