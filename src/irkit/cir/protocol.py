"""Embeddings -> rankings -> metrics under each benchmark's protocol (docs/protocols.md).

Generic over benchmarks: every per-benchmark rule (reference removal, subset ranking, depth,
metrics, combining parts) comes from the split's :class:`~irkit.benchmarks.Benchmark`. Ties
in similarity are broken by gallery order (:mod:`irkit.index`). Results carry ``protocol``
and ``units`` (percent).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from irkit.benchmarks import benchmark_of
from irkit.data.records import CIRSplit
from irkit.errors import InputError

Rankings = Mapping[str, Sequence[str]]


def rank_split(split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
               k: int) -> dict[str, list[str]]:
    """Top-``k`` gallery ids per query id under the split's protocol.

    Args:
        split: queries and gallery (``split.gallery`` order breaks ties).
        query_embeddings: [Q, D], one row per ``split.queries`` entry (L2-normalised).
        gallery_embeddings: [G, D], one row per ``split.gallery`` entry (L2-normalised).
        k: ranking depth (clipped to what can be ranked).
    """
    return benchmark_of(split).rank(split, query_embeddings, gallery_embeddings, k)


def evaluate_rankings(split: CIRSplit, rankings: Rankings, *, subset_rankings: Optional[Rankings] = None,
                      shared_concept: Optional[bool] = None, source: Optional[str] = None,
                      subset_source: Optional[str] = None) -> dict[str, Any]:
    """Score rankings ``{query_id: [gallery ids, best first]}`` of an annotated split (percent),
    with ``protocol``, ``units`` and ``num_queries`` (:meth:`Benchmark.score`)."""
    return benchmark_of(split).score(split, rankings, subset_rankings=subset_rankings,
                                     shared_concept=shared_concept, source=source, subset_source=subset_source)


def rank_for_scoring(split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray
                     ) -> tuple[dict[str, list[str]], Optional[dict[str, list[str]]]]:
    """``(rankings, subset rankings or None)`` as deep as the split's metrics need."""
    benchmark = benchmark_of(split)
    benchmark.require_targets(split)
    return benchmark.rank_for_scoring(split, query_embeddings, gallery_embeddings)


def evaluate_embeddings(split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray, *,
                        shared_concept: Optional[bool] = None) -> dict[str, Any]:
    """Rank ``split`` with the embeddings (as deep as the protocol needs) and score it.

    Args:
        query_embeddings: [Q, D] L2-normalised, one row per ``split.queries`` entry.
        gallery_embeddings: [G, D] L2-normalised, one row per ``split.gallery`` entry.
        shared_concept: whether the query text included a shared concept (where the benchmark
            has that option; recorded in the protocol).
    """
    rankings, subsets = rank_for_scoring(split, query_embeddings, gallery_embeddings)
    return evaluate_rankings(split, rankings, subset_rankings=subsets,
                             shared_concept=benchmark_of(split).shared_concept(shared_concept))


def combine_split_results(splits: Sequence[CIRSplit], results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One result for a benchmark split from its parts' results (FashionIQ: categories + average)."""
    if not splits or len({s.dataset for s in splits}) != 1:
        raise InputError(f"cannot combine results of {len(splits)} splits; expected the parts of one benchmark")
    return benchmark_of(splits[0]).combine(splits, results)


def per_query_values(split: CIRSplit, rankings: Rankings, metric: str,
                     subset_rankings: Optional[Rankings] = None) -> np.ndarray:
    """[Q] per-query values (fractions) of ``metric`` (``R@k``, ``mAP@k``) in query order; their
    mean x 100 is the aggregate value (:meth:`Benchmark.per_query`)."""
    return benchmark_of(split).per_query(split, rankings, metric, subset_rankings)


def split_values(splits: Sequence[CIRSplit], rankings_per_split: Sequence[Rankings], metric: str,
                 subset_rankings: Optional[Sequence[Optional[Rankings]]] = None) -> np.ndarray:
    """Per-query values over the parts of one benchmark split, concatenated.

    A benchmark with parts reports the mean of the part means; with equal part sizes (the demo
    data) that is the mean over all queries, so pairing per query stays exact. Unequal sizes are
    refused rather than silently re-weighted.
    """
    if len({len(s.queries) for s in splits}) > 1:
        raise InputError("per-query pairing over splits of different sizes would re-weight the benchmark mean; "
                         "compare the splits one by one", field="splits")
    subsets = list(subset_rankings) if subset_rankings is not None else [None] * len(splits)
    return np.concatenate([per_query_values(s, r, metric, sub) for s, r, sub in zip(splits, rankings_per_split,
                                                                                    subsets)])
