"""CIRR (docs/formats.md §3, docs/protocols.md "CIRR"): the reference is removed from each
ranking; R@{1,5,10,50} on ``target_hard``; subset recall Rs@{1,2,3} within ``img_set.members``
minus the reference, in their order in the full ranking; two test-server files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from irkit import metrics
from irkit.benchmarks.checks import (
    check_fixed_depth,
    check_ranking_list,
    expect_file_count,
    expect_object,
    read_json_strict,
    truncate,
    write_json,
)
from irkit.benchmarks.spec import Benchmark, Rankings, register_benchmark
from irkit.data.records import CIRQuery, CIRSplit
from irkit.errors import InputError
from irkit.io import atomic_path

VERSION = "rc2"
FILE_METRICS = ("recall", "recall_subset")
DEPTH = 50
SUBSET_DEPTH = max(metrics.CIRR_SUBSET_KS)


def subset_candidates(query: CIRQuery) -> list[str]:
    """CIRR subset candidates of a query: ``img_set.members`` minus the reference, in member order."""
    if query.subset is None:
        raise InputError(f"query {query.query_id!r} has no img_set.members; expected a CIRR query",
                         field=query.query_id)
    return [m for m in dict.fromkeys(query.subset) if m != query.reference]


def cirr_submission_paths(out_dir: os.PathLike | str, split_name: str = "test1") -> tuple[Path, Path]:
    """The file names of the CIRR examples: ``<split>_pred_ranks_recall.json`` and
    ``<split>_pred_ranks_recall_subset.json`` inside ``out_dir``."""
    out_dir = Path(out_dir)
    return (out_dir / f"{split_name}_pred_ranks_recall.json",
            out_dir / f"{split_name}_pred_ranks_recall_subset.json")


class CIRR(Benchmark):
    name = "cirr"
    title = "CIRR"
    default_split = "val"
    test_split = "test1"
    annotation_marker = "cirr/captions"
    removes_reference = True
    has_subset_ranking = True
    selection_metric = metrics.CIRR_HEADLINE
    default_rerank_k = 50
    demo_caption_file = "cirr_train.csv"
    recall_ks = metrics.CIRR_KS
    map_ks = ()

    def subset_candidates(self, query: CIRQuery) -> Optional[list[str]]:
        return None if query.subset is None else subset_candidates(query)

    def protocol_name(self, split: CIRSplit, shared_concept: Optional[bool] = None) -> str:
        return (f"cirr-{split.split}: reference removed; R@K on target_hard; "
                "Rs@K within img_set.members minus reference")

    # ------------------------------------------------------------------ subset rankings

    def check_subset_rankings(self, split: CIRSplit, subset_rankings: Rankings, depth: int,
                              source: Optional[str] = None, exact: bool = False) -> None:
        """Raise :class:`InputError` unless every query has a subset ranking of unique candidates
        (members minus reference), ``min(depth, #candidates)`` long (at least that long unless
        ``exact``)."""
        expected = {q.query_id for q in split.queries}
        missing = [q.query_id for q in split.queries if q.query_id not in subset_rankings]
        extra = [q for q in subset_rankings if q not in expected]
        if missing or extra:
            key = missing[0] if missing else extra[0]
            what = "has no subset ranking" if missing else f"is not a query of {split.dataset}-{split.split}"
            raise InputError(f"query id {key!r} {what}; expected exactly the split's {len(expected)} query ids",
                             path=source, field=key)
        for query in split.queries:
            ranked = subset_rankings[query.query_id]
            check_ranking_list(ranked, query.query_id, source)
            candidates = subset_candidates(query)
            outside = [x for x in ranked if x not in candidates]
            if outside:
                detail = " (the reference is never ranked)" if outside[0] == query.reference else ""
                raise InputError(f"{outside[0]!r} is not a subset candidate{detail}; expected names from "
                                 f"img_set.members minus the reference: {candidates}", path=source,
                                 field=query.query_id)
            needed = min(depth, len(candidates))
            if len(ranked) < needed or (exact and len(ranked) != needed):
                raise InputError(f"subset ranking has {len(ranked)} names; expected "
                                 f"{'exactly' if exact else 'at least'} {needed}", path=source, field=query.query_id)

    def subset_rankings(self, split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
                        top_indices: np.ndarray, subset_k: int) -> dict[str, list[str]]:
        """Subset rankings: ``img_set.members`` minus the reference, in their global order.

        The global order (reference removed) is read off ``top_indices`` [Q, k] for the
        candidates it contains; candidates beyond depth k follow, ordered as the full ranking
        orders them: by descending score, ties by gallery index. Removing the reference does
        not change the relative order of the others, so this equals the order within the full
        ranking without computing it.
        """
        position_of = {image_id: i for i, image_id in enumerate(split.gallery)}
        queries = np.asarray(query_embeddings, dtype=np.float32)
        gallery = np.asarray(gallery_embeddings, dtype=np.float32)
        subsets: dict[str, list[str]] = {}
        for row, query in enumerate(split.queries):
            candidates = subset_candidates(query)
            missing = [m for m in candidates if m not in position_of]
            if missing:
                raise InputError(f"query {query.query_id!r}: subset member {missing[0]!r} is not in the gallery",
                                 field=query.query_id)
            candidate_idx = {position_of[m] for m in candidates}
            seen = [int(i) for i in top_indices[row] if int(i) in candidate_idx]
            rest = np.array(sorted(candidate_idx.difference(seen)), dtype=np.int64)
            if rest.size:
                scores = gallery[rest] @ queries[row]
                rest = rest[np.lexsort((rest, -scores))]
            ordered = seen + rest.tolist()
            subsets[query.query_id] = [split.gallery[i] for i in ordered[:subset_k]]
        return subsets

    def rank_with_subsets(self, split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
                          k: int = DEPTH, subset_k: int = SUBSET_DEPTH
                          ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """``(rankings, subset_rankings)``: the top-``k`` gallery ids with the reference removed,
        and the top-``subset_k`` of ``img_set.members`` minus the reference in their order within
        that same ranking (candidates beyond the top k follow by score, ties by gallery order)."""
        _, top = self.search(split, query_embeddings, gallery_embeddings, k)
        rankings = {q.query_id: [split.gallery[i] for i in row] for q, row in zip(split.queries, top)}
        return rankings, self.subset_rankings(split, query_embeddings, gallery_embeddings, top, subset_k)

    def rank_for_scoring(self, split, query_embeddings, gallery_embeddings):
        return self.rank_with_subsets(split, query_embeddings, gallery_embeddings, k=self.ranking_depth(split),
                                      subset_k=len(split.gallery))

    def rank_for_submission(self, split, query_embeddings, gallery_embeddings):
        return self.rank_with_subsets(split, query_embeddings, gallery_embeddings, DEPTH, SUBSET_DEPTH)

    # ------------------------------------------------------------------ scoring

    def check_for_scoring(self, split, rankings, subset_rankings, source, subset_source) -> None:
        # A ranking may include the reference (it is removed before scoring): check what remains.
        refs = {q.query_id: q.reference for q in split.queries}
        trimmed = {q: [x for x in ranked if x != refs.get(q)] if isinstance(ranked, (list, tuple)) else ranked
                   for q, ranked in rankings.items()}
        self.check_rankings(split, trimmed, self.ranking_depth(split), source)
        if subset_rankings is not None:
            self.check_subset_rankings(split, subset_rankings, SUBSET_DEPTH, subset_source)

    def metric_values(self, split, rankings, subset_rankings) -> dict[str, float]:
        return metrics.cirr_metrics(
            rankings,
            targets={q.query_id: q.target for q in split.queries},
            references={q.query_id: q.reference for q in split.queries},
            members={q.query_id: tuple(q.subset or ()) for q in split.queries},
            subset_rankings=subset_rankings,
        )

    def submission_paths(self, out_dir, split_name) -> list[Path]:
        return list(cirr_submission_paths(out_dir, split_name))

    def write_submission(self, out_dir, splits, rankings, subset_rankings) -> list[Path]:
        if len(splits) != 1:
            raise InputError(f"cirr submissions are written for one split, got {len(splits)}")
        recall_path, subset_path = self.submission_paths(out_dir, splits[0].split)
        write_cirr_submission(recall_path, subset_path, splits[0], rankings[0], subset_rankings[0])
        return [recall_path, subset_path]

    def score_prediction_files(self, root, split, paths, **options) -> dict[str, Any]:
        """``paths`` = [recall file, recall_subset file]."""
        recall_path, subset_path = expect_file_count(self.name, paths, 2, "the recall and recall_subset files")
        cir_split = self.load(root, split)
        rankings = read_cirr_submission(recall_path, "recall", cir_split)
        subsets = read_cirr_submission(subset_path, "recall_subset", cir_split)
        return self.score(cir_split, rankings, subset_rankings=subsets, source=str(recall_path),
                          subset_source=str(subset_path))


BENCHMARK = register_benchmark(CIRR())


def _check_file(split: CIRSplit, lists: Mapping[str, Any], file_metric: str, source: Path) -> None:
    """Checks of one test-server file's lists against ``split`` (exact lengths)."""
    if file_metric == "recall":
        BENCHMARK.check_rankings(split, lists, DEPTH, str(source), exact=True)
    else:
        BENCHMARK.check_subset_rankings(split, lists, SUBSET_DEPTH, str(source), exact=True)


def write_cirr_submission(recall_path: os.PathLike | str, subset_path: os.PathLike | str, split: CIRSplit,
                          rankings: Rankings, subset_rankings: Rankings) -> None:
    """Write both CIRR test-server files atomically (neither is written if either is invalid).

    ``rankings``: ``{pairid: names}`` with the reference removed, at least 50 deep (cut to 50);
    ``subset_rankings``: ``{pairid: names}`` of members minus reference (cut to 3). Keys must be
    exactly the split's pairids.
    """
    if split.dataset != BENCHMARK.name:
        raise InputError(f"CIRR submission files need a CIRR split, got {split.dataset!r}")
    recall_path, subset_path = Path(recall_path), Path(subset_path)
    contents = {}
    for path, file_metric, lists, depth in ((recall_path, "recall", rankings, DEPTH),
                                            (subset_path, "recall_subset", subset_rankings, SUBSET_DEPTH)):
        lists = truncate(lists, depth)
        _check_file(split, lists, file_metric, path)
        contents[path] = {"version": VERSION, "metric": file_metric,
                          **{q.query_id: lists[q.query_id] for q in split.queries}}
    with atomic_path(recall_path) as recall_tmp, atomic_path(subset_path) as subset_tmp:
        write_json(recall_tmp, contents[recall_path])
        write_json(subset_tmp, contents[subset_path])


def read_cirr_submission(path: os.PathLike | str, file_metric: str,
                         split: Optional[CIRSplit] = None) -> dict[str, list[str]]:
    """Read one CIRR submission file (``file_metric`` = ``"recall"`` or ``"recall_subset"``).

    Checks ``version == "rc2"`` and the metric; with ``split``, the pairids (exactly the
    split's), list lengths (50 / 3 on real galleries), gallery membership, the reference's
    absence and (subset) membership in ``img_set.members``. Returns ``{pairid: names}``.
    """
    if file_metric not in FILE_METRICS:
        raise ValueError(f"metric must be one of {FILE_METRICS}, got {file_metric!r}")
    path = Path(path)
    data = expect_object(read_json_strict(path), path,
                         f'an object {{"version": "rc2", "metric": "{file_metric}", "<pairid>": [names]}}')
    for key, expected in (("version", VERSION), ("metric", file_metric)):
        if key not in data:
            raise InputError(f"missing key; expected \"{key}\": \"{expected}\"", path=path, field=key)
        if data[key] != expected:
            raise InputError(f"found {data[key]!r}; expected {expected!r}", path=path, field=key)
    lists = {k: v for k, v in data.items() if k not in ("version", "metric")}
    if split is None:
        check_fixed_depth(lists, DEPTH if file_metric == "recall" else SUBSET_DEPTH, path)
    else:
        _check_file(split, lists, file_metric, path)
    return {k: list(v) for k, v in lists.items()}
