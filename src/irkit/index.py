"""Exact top-k search over L2-normalised embeddings (FAISS inner product), deterministic ties.

FAISS's flat index gives exact inner products but does not promise an order among equal
scores. irkit's protocols require ties broken by gallery order (docs/metrics.md, "Generic"), so
every query's candidate list is re-sorted by (-score, gallery index); where ties could
straddle the k-th place, that query is re-ranked exactly over its full row.
"""

from __future__ import annotations

from typing import Optional, Sequence

import faiss
import numpy as np

_EXCLUDED_SCORE = -np.inf


def _as_float32_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, D], got shape {x.shape}")
    return x


def _stable_topk_row(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores of one row, best first, ties by lower index."""
    order = np.argsort(-scores, kind="stable")
    return order[:k]


def search(
    query_embeddings: np.ndarray,
    gallery_embeddings: np.ndarray,
    k: int,
    exclude: Optional[Sequence[int] | np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product.

    Args:
        query_embeddings: [Q, D] float (L2-normalised for cosine search).
        gallery_embeddings: [G, D] float.
        k: number of results per query (clipped to the number of rankable items).
        exclude: optional [Q] gallery index to drop from each query's ranking (e.g. the CIRR
            reference image); -1 excludes nothing.

    Returns:
        (scores [Q, k] float32, indices [Q, k] int64), best first; equal scores ordered by
        gallery index.
    """
    queries = _as_float32_matrix(query_embeddings, "query_embeddings")
    gallery = _as_float32_matrix(gallery_embeddings, "gallery_embeddings")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"embedding widths differ: queries {queries.shape[1]}, gallery {gallery.shape[1]}"
        )
    num_queries, num_gallery = queries.shape[0], gallery.shape[0]
    exclude_idx = (
        np.full(num_queries, -1, dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    )
    if exclude_idx.shape != (num_queries,):
        raise ValueError(f"exclude must have one entry per query ({num_queries}), got {exclude_idx.shape}")
    has_exclusion = bool((exclude_idx >= 0).any())
    k = int(min(k, num_gallery - (1 if has_exclusion else 0)))
    if k <= 0 or num_queries == 0:
        return np.zeros((num_queries, max(k, 0)), np.float32), np.zeros((num_queries, max(k, 0)), np.int64)

    # Fetch a margin beyond k: room for the excluded item and for detecting boundary ties.
    fetch = min(num_gallery, k + 2)
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    raw_scores, raw_indices = index.search(queries, fetch)

    out_scores = np.empty((num_queries, k), np.float32)
    out_indices = np.empty((num_queries, k), np.int64)
    for q in range(num_queries):
        cand_idx = raw_indices[q]
        cand_scores = raw_scores[q].copy()
        cand_scores[cand_idx == exclude_idx[q]] = _EXCLUDED_SCORE
        # Re-sort candidates by (-score, gallery index).
        order = np.lexsort((cand_idx, -cand_scores))
        cand_idx, cand_scores = cand_idx[order], cand_scores[order]
        kth_score = cand_scores[k - 1]
        boundary_tie = fetch == num_gallery or cand_scores[-1] >= kth_score
        if boundary_tie and fetch < num_gallery:
            # Items tied with the k-th score may lie beyond what FAISS returned: rank the full row.
            row = gallery @ queries[q]
            if exclude_idx[q] >= 0:
                row[exclude_idx[q]] = _EXCLUDED_SCORE
            top = _stable_topk_row(row, k)
            out_indices[q], out_scores[q] = top, row[top]
        else:
            out_indices[q], out_scores[q] = cand_idx[:k], cand_scores[:k]
    return out_scores, out_indices


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
