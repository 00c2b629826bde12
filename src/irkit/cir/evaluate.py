"""Running any registered method on a benchmark: splits, metrics, per-query values, submissions.

* :func:`load_cir_splits`: a benchmark split as its parts (FashionIQ: three categories).
* :func:`evaluate_method`: the aggregate metrics of a method (percent, with ``protocol``);
  :func:`run_method` also keeps the rankings, from which :meth:`MethodRun.per_query` gives the
  per-query values (:func:`irkit.cir.protocol.split_values`).
* :func:`write_method_submission`: the benchmark's test-server file(s).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from irkit.benchmarks import benchmark_of, get_benchmark
from irkit.cir import protocol
from irkit.cir.context import CIRContext
from irkit.cir.registry import CIRMethod, EmbeddingMethod, RankingMethod
from irkit.data.records import CIRSplit
from irkit.errors import InputError

Rankings = dict[str, list[str]]


def load_cir_splits(dataset: str, root: os.PathLike | str, split: str, **loader_options: Any) -> list[CIRSplit]:
    """The :class:`CIRSplit` parts of a benchmark split (FashionIQ: one per category, unless
    ``category`` is given; others: one)."""
    return get_benchmark(dataset).load_parts(root, split, **loader_options)


@dataclass
class MethodRun:
    """One method on the parts of one benchmark split: rankings per part and the combined metrics."""

    splits: list[CIRSplit]
    rankings: list[Rankings]
    subset_rankings: list[Optional[Rankings]]
    metrics: dict[str, Any]

    def per_query(self, metric: str) -> np.ndarray:
        """[Q] per-query values (fractions) of ``metric`` over every part, concatenated (parts of
        equal size only: :func:`irkit.cir.protocol.split_values`)."""
        return protocol.split_values(self.splits, self.rankings, metric, self.subset_rankings)


def run_method(method: CIRMethod, ctx: CIRContext, splits: Sequence[CIRSplit],
               include_shared_concept: Optional[bool] = None) -> MethodRun:
    """Rank annotated split(s) with any registered method and score them (plus ``"method"``)."""
    rankings, subsets, results = [], [], []
    for split in splits:
        benchmark = benchmark_of(split)
        shared = benchmark.shared_concept(include_shared_concept)
        if isinstance(method, RankingMethod):
            ranked, subset = method.rank_split(ctx, split)
        elif isinstance(method, EmbeddingMethod):
            ranked, subset = protocol.rank_for_scoring(split, ctx.query_embeddings(method, split),
                                                       method.gallery_embeddings(ctx, split))
        else:
            raise TypeError(f"{type(method).__name__} is neither an EmbeddingMethod nor a RankingMethod")
        results.append(protocol.evaluate_rankings(split, ranked, subset_rankings=subset, shared_concept=shared))
        rankings.append(ranked)
        subsets.append(subset)
    combined = protocol.combine_split_results(splits, results)
    combined["method"] = method.name
    return MethodRun(list(splits), rankings, subsets, combined)


def evaluate_method(method: CIRMethod, ctx: CIRContext, splits: Sequence[CIRSplit],
                    include_shared_concept: Optional[bool] = None) -> dict[str, Any]:
    """Metrics (percent) of any registered method on annotated split(s), plus ``"method"``."""
    return run_method(method, ctx, splits, include_shared_concept).metrics


def flatten_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Numeric entries of an :func:`evaluate_method` result as ``{name: float}``.

    Results with parts: the ``average`` entries at top level plus ``<part>/<metric>``.
    """
    flat: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, Mapping):
            prefix = "" if key == "average" else f"{key}/"
            flat.update({f"{prefix}{k}": float(v) for k, v in value.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = float(value)
    return flat


def submission_rankings(method: CIRMethod, ctx: CIRContext, split: CIRSplit
                        ) -> tuple[Rankings, Optional[Rankings]]:
    """Rankings (and subset rankings) of ``split`` by ``method``, as deep as the test server needs."""
    if isinstance(method, RankingMethod):
        return method.rank_split(ctx, split)
    return benchmark_of(split).rank_for_submission(split, ctx.query_embeddings(method, split),
                                                   method.gallery_embeddings(ctx, split))


def check_submission_paths(splits: Sequence[CIRSplit], out_dir: os.PathLike | str, overwrite: bool = False) -> None:
    """Refuse (one :class:`InputError` line) when a submission file of ``splits`` already exists in
    ``out_dir``, unless ``overwrite``: submission files are never replaced silently."""
    if not splits:
        raise InputError("no split to write a submission for")
    existing = [p for p in benchmark_of(splits[0]).submission_paths(out_dir, splits[0].split) if p.exists()]
    if existing and not overwrite:
        raise InputError(f"submission file exists ({', '.join(p.name for p in existing)}); expected a new file: "
                         "choose another --out, or pass --overwrite to replace it", path=existing[0])


def write_method_submission(method: CIRMethod, ctx: CIRContext, splits: Sequence[CIRSplit],
                            out_dir: os.PathLike | str, overwrite: bool = False) -> list[Path]:
    """Rank test split(s) with ``method`` and write the benchmark's test-server file(s) into
    ``out_dir`` (atomically); returns their paths. Existing submission files are refused before
    any ranking unless ``overwrite``."""
    check_submission_paths(splits, out_dir, overwrite)
    ranked = [submission_rankings(method, ctx, split) for split in splits]
    return benchmark_of(splits[0]).write_submission(out_dir, list(splits), [r for r, _ in ranked],
                                                    [s for _, s in ranked])


def write_submission_from_embeddings(split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
                                     out_dir: os.PathLike | str) -> list[Path]:
    """Rank one split with embeddings ([Q, D], [G, D]) and write its test-server file(s)."""
    benchmark = benchmark_of(split)
    rankings, subsets = benchmark.rank_for_submission(split, query_embeddings, gallery_embeddings)
    return benchmark.write_submission(out_dir, [split], [rankings], [subsets])


def score_prediction_files(dataset: str, root: os.PathLike | str, split: str,
                           prediction_paths: Sequence[os.PathLike | str], **options: Any) -> dict[str, Any]:
    """Load ``split`` of ``dataset``, read the prediction file(s) and score them
    (:meth:`Benchmark.score_prediction_files` says which files each benchmark takes)."""
    return get_benchmark(dataset).score_prediction_files(root, split, prediction_paths, **options)
