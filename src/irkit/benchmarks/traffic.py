"""The traffic text->image challenge (docs/formats.md §1, docs/protocols.md "Traffic"):
``submission.json`` = ``{"results": [{"text", "image_names": [10 names]}]}`` in query order;
official mAP@10 (precision-at-hit sum / (hits + 1e-6)) beside standard mAP@10 (/ min(#relevant,
10)) and R@K; an image is relevant to a query when its label text equals the query text."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Collection, Mapping, Optional, Sequence

import numpy as np

from irkit import metrics
from irkit.benchmarks.checks import check_ranking_list, expect_file_count, read_json_strict, write_json
from irkit.benchmarks.spec import FRACTION, Benchmark, register_benchmark
from irkit.data.records import TrafficLabel
from irkit.errors import InputError
from irkit.io import atomic_path

DEPTH = 10
GROUND_TRUTH_FILE = Path("test") / "test_ground_truth.txt"

PathLike = os.PathLike | str


class Traffic(Benchmark):
    name = "traffic"
    title = "traffic challenge"
    kind = "text-to-image"
    prediction_file_options = ("ground_truth",)
    default_split = "test"
    annotation_marker = "train/train_label.txt"

    def score_prediction_files(self, root, split, paths, **options) -> dict[str, Any]:
        """``paths`` = [submission.json]; option ``ground_truth`` (a ``text$img1$img2...`` file)
        defaults to the split's own (``<root>/test/test_ground_truth.txt``); for train/val the
        label texts are the queries."""
        (path,) = expect_file_count(self.name, paths, 1, "submission.json")
        return score_traffic_file(root, split, path, options.get("ground_truth"))


BENCHMARK = register_benchmark(Traffic())


def validate_traffic_submission(submission: Any, queries: Optional[Sequence[str]] = None,
                                gallery: Optional[Sequence[str] | set] = None,
                                source: Optional[PathLike] = None) -> list[tuple[str, list[str]]]:
    """Check a traffic ``{"results": [{"text", "image_names"}]}`` object; return its (text, names).

    Each entry: exactly ``text`` (a string) and ``image_names`` (10 unique strings, from
    ``gallery`` when given). With ``queries`` the texts must be exactly those, in that order.
    """
    source = None if source is None else str(source)
    if not isinstance(submission, dict) or "results" not in submission:
        raise InputError('expected an object {"results": [{"text": ..., "image_names": [10 names]}, ...]}',
                         path=source)
    extra = [k for k in submission if k != "results"]
    if extra:
        raise InputError(f"unexpected key {extra[0]!r}; expected only \"results\"", path=source, field=extra[0])
    results = submission["results"]
    if not isinstance(results, list):
        raise InputError(f"found a {type(results).__name__}; expected a list of entries", path=source, field="results")
    gallery_set = set(gallery) if gallery is not None else None
    parsed: list[tuple[str, list[str]]] = []
    for i, entry in enumerate(results):
        field = f"results[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"text", "image_names"}:
            found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise InputError(f"found {found}; expected an object with exactly \"text\" and \"image_names\"",
                             path=source, field=field)
        text, names = entry["text"], entry["image_names"]
        if not isinstance(text, str):
            raise InputError(f"found {text!r}; expected the query text", path=source, field=f"{field}.text")
        check_ranking_list(names, f"{field}.image_names", source)
        if len(names) != DEPTH:
            raise InputError(f"{len(names)} image names; expected exactly {DEPTH}",
                             path=source, field=f"{field}.image_names")
        if gallery_set is not None:
            unknown = [n for n in names if n not in gallery_set]
            if unknown:
                raise InputError(f"image {unknown[0]!r} is not in the test gallery",
                                 path=source, field=f"{field}.image_names")
        parsed.append((text, list(names)))
    if queries is not None:
        if len(parsed) != len(queries):
            raise InputError(f"{len(parsed)} results; expected one per query ({len(queries)}), in query order",
                             path=source, field="results")
        for i, ((text, _), query) in enumerate(zip(parsed, queries)):
            if text != query:
                raise InputError(f"text {text!r} differs from query {i + 1} {query!r}; expected the queries "
                                 "exactly as given, in their order", path=source, field=f"results[{i}].text")
    return parsed


def write_traffic_submission(path: PathLike, results: Sequence[tuple[str, Sequence[str]]],
                             queries: Optional[Sequence[str]] = None,
                             gallery: Optional[Sequence[str]] = None) -> None:
    """Write ``submission.json`` = ``{"results": [{"text", "image_names"}]}`` atomically.

    ``results``: ``(query text, 10 image names best first)`` in query order (vehicle queries
    first, as in ``test_text.txt``); checked against ``queries``/``gallery`` when given.
    """
    path = Path(path)
    submission = {"results": [{"text": text, "image_names": list(names)} for text, names in results]}
    validate_traffic_submission(submission, queries=queries, gallery=gallery, source=path)
    with atomic_path(path) as tmp:
        write_json(tmp, submission)


def read_traffic_submission(path: PathLike, queries: Optional[Sequence[str]] = None,
                            gallery: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Read and check a traffic ``submission.json``; returns the object (see
    :func:`validate_traffic_submission`)."""
    path = Path(path)
    submission = read_json_strict(path)
    validate_traffic_submission(submission, queries=queries, gallery=gallery, source=path)
    return submission


def traffic_ground_truth_from_labels(labels: Sequence[TrafficLabel]) -> dict[str, list[str]]:
    """``{label text: [images with that text]}`` (query order = first appearance).

    The challenge's relevance rule: an image is relevant to a query when the query text
    equals the image's label text.
    """
    truth: dict[str, list[str]] = {}
    for label in labels:
        truth.setdefault(label.text, []).append(label.image)
    return truth


def evaluate_traffic_submission(submission: Mapping[str, Any], ground_truth: Mapping[str, Collection[str]], *,
                                queries: Optional[Sequence[str]] = None, gallery: Optional[Collection[str]] = None,
                                source: Optional[str] = None, split_name: str = "test") -> dict[str, Any]:
    """Score a traffic ``submission.json`` object against ``{text: [relevant images]}``.

    The submission must list the queries (``queries``, else the ground truth's texts) in
    order, each with 10 unique image names (from ``gallery`` when given). Returns fractions:
    ``official_mAP@10`` (precision-at-hit sum / (hits + 1e-6), the challenge's scorer),
    ``standard_mAP@10`` (/ min(#relevant, 10)), ``R@1``, ``R@5``, ``R@10``.
    """
    query_texts = list(queries) if queries is not None else list(ground_truth)
    without_truth = [t for t in query_texts if t not in ground_truth]
    if without_truth:
        raise InputError(f"query {without_truth[0]!r} has no ground truth; expected ground truth for every query")
    results = validate_traffic_submission(submission, queries=query_texts, gallery=gallery, source=source)
    # Queries are keyed by position: a text may repeat in test_text.txt.
    rankings = {str(i): names for i, (_, names) in enumerate(results)}
    relevant = {str(i): set(ground_truth[text]) for i, (text, _) in enumerate(results)}
    result: dict[str, Any] = {
        "protocol": (f"traffic-{split_name}: official mAP@10 = sum of precision@hit / (hits in top 10 + 1e-6); "
                     "standard mAP@10 = same sum / min(#relevant, 10); R@K = any relevant in top K"),
        "units": FRACTION,
    }
    result.update(metrics.traffic_metrics(rankings, relevant, DEPTH))
    result["num_queries"] = len(results)
    return result


def traffic_rank_statistics(scores: np.ndarray, relevant: Sequence[Collection[int]]) -> dict[str, Any]:
    """Mean / median rank of the first relevant image per text query, from full scores.

    Args:
        scores: [Q, G] text->image similarities.
        relevant: per query, the gallery indices of its relevant images.
    """
    ranks = metrics.first_relevant_ranks_from_scores(scores, relevant)
    result: dict[str, Any] = {
        "protocol": ("text->image rank of the first relevant image (ties by gallery order); "
                     "open_clip: mean_rank = mean + 1, median_rank = floor(median) + 1 of 0-based ranks"),
        "units": "rank",
    }
    result.update(metrics.rank_statistics(ranks))
    result["num_queries"] = int(len(ranks))
    return result


def score_traffic_file(root: PathLike, split: str, path: Path, ground_truth_path: Optional[PathLike]
                           ) -> dict[str, Any]:
    """Score a ``submission.json`` of ``split`` against its ground truth (see
    :meth:`Traffic.score_prediction_files`)."""
    from irkit.data.traffic import read_traffic_ground_truth

    traffic_split = BENCHMARK.load(root, split)
    if split == "test":
        queries, gallery = traffic_split.queries, traffic_split.gallery
        if ground_truth_path is not None:
            truth = read_traffic_ground_truth(ground_truth_path, gallery=gallery, queries=queries)
        elif traffic_split.ground_truth is not None:
            truth = traffic_split.ground_truth
        else:
            raise InputError("no ground truth for the test queries; expected this file or --ground-truth",
                             path=Path(root) / GROUND_TRUTH_FILE)
    else:
        truth = traffic_ground_truth_from_labels(traffic_split.labels)
        if ground_truth_path is not None:
            truth = read_traffic_ground_truth(ground_truth_path)
        queries = list(truth)
        gallery = [label.image for label in traffic_split.labels]
    submission = read_traffic_submission(path, queries=queries, gallery=gallery)
    return evaluate_traffic_submission(submission, truth, queries=queries, source=str(path),
                                                 split_name=split)
