"""Evaluation protocols: embeddings -> rankings -> the metrics each benchmark publishes.

One place decides, per dataset, what is ranked against what (``specs/metrics.md``):

- CIRR: the reference image is removed from each query's ranking; Rs@K ranks
  ``img_set.members`` minus the reference in their order in that ranking.
- FashionIQ and CIRCO: the reference stays in the gallery, as the official code does.
- any other dataset registered with a :class:`CIRSplit` loader: generic R@K and mAP@K over
  ``query.ground_truths`` (or the target), reference kept.

Every result dict carries ``"protocol"`` (which variant produced the numbers) and
``"units"`` (``"percent"`` for the CIR benchmarks, ``"fraction"`` for the traffic challenge).
Ties in similarity are broken by gallery order (:mod:`irkit.index`).
"""

from __future__ import annotations

from typing import Any, Collection, Mapping, Optional, Sequence

import numpy as np

from irkit import index, metrics
from irkit.data.records import CIRSplit, TrafficLabel
from irkit.errors import InputError

PERCENT = "percent"
FRACTION = "fraction"

# Ranking depth each protocol needs (the largest K it reports).
RANKING_DEPTH = {
    "cirr": max(metrics.CIRR_KS),
    "fashioniq": max(metrics.FASHIONIQ_KS),
    "circo": max(metrics.CIRCO_KS),
}
GENERIC_RECALL_KS = (1, 5, 10, 50)
GENERIC_MAP_KS = (5, 10, 25, 50)
CIRR_SUBSET_DEPTH = max(metrics.CIRR_SUBSET_KS)
TRAFFIC_DEPTH = 10


# --------------------------------------------------------------------------- protocol names


def ranking_depth(split: CIRSplit) -> int:
    """How deep rankings must be for the dataset's metrics (the largest K): 50 for all four."""
    return RANKING_DEPTH.get(split.dataset, max(GENERIC_RECALL_KS + GENERIC_MAP_KS))


def removes_reference(split: CIRSplit) -> bool:
    """Whether the dataset's protocol removes the reference image from each ranking (CIRR)."""
    return split.dataset == "cirr"


def protocol_name(split: CIRSplit, shared_concept: Optional[bool] = None) -> str:
    """The ``"protocol"`` string of a result, e.g. ``"cirr-val: reference removed"``.

    ``shared_concept`` (CIRCO only) records whether the caller put ``shared_concept`` into the
    query text; ``None`` records it as unspecified.
    """
    if split.dataset == "cirr":
        return (f"cirr-{split.split}: reference removed; R@K on target_hard; "
                "Rs@K within img_set.members minus reference")
    if split.dataset == "fashioniq":
        return f"fashioniq-{split.split}/{split.category}: reference kept in gallery; R@K on target"
    if split.dataset == "circo":
        concept = "unspecified" if shared_concept is None else str(bool(shared_concept))
        return (f"circo-{split.split}: shared_concept={concept}; reference kept; "
                "AP@K / min(|gt_img_ids|, K); R@K on target_img_id")
    return f"{split.dataset}-{split.split}: generic; reference kept; R@K and AP@K/min(|relevant|, K)"


# --------------------------------------------------------------------------- checks


def _check_embeddings(split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray) -> None:
    q_shape, g_shape = np.shape(query_embeddings), np.shape(gallery_embeddings)
    if len(q_shape) != 2 or q_shape[0] != len(split.queries):
        raise InputError(f"query embeddings have shape {q_shape}; expected [{len(split.queries)}, D] "
                         f"(one row per query of {split.dataset}-{split.split})")
    if len(g_shape) != 2 or g_shape[0] != len(split.gallery):
        raise InputError(f"gallery embeddings have shape {g_shape}; expected [{len(split.gallery)}, D] "
                         f"(one row per gallery image of {split.dataset}-{split.split})")
    if q_shape[1] != g_shape[1]:
        raise InputError(f"query embeddings are {q_shape[1]}-d but gallery embeddings {g_shape[1]}-d; "
                         "expected one shared embedding space")


def _require_targets(split: CIRSplit) -> None:
    missing = [q.query_id for q in split.queries if q.target is None and not q.ground_truths]
    if missing:
        raise InputError(
            f"{split.dataset}-{split.split} has {len(missing)} queries without a target "
            f"(first: {missing[0]!r}); expected an annotated split (val) to evaluate — "
            "write a submission file for test splits instead")


def _relevant(query: Any) -> tuple[str, ...]:
    return tuple(query.ground_truths) if query.ground_truths else (query.target,)


def _rankable(split: CIRSplit, query: Any, gallery_set: Collection[str]) -> int:
    """How many gallery items a query's ranking can hold under its protocol."""
    if removes_reference(split) and query.reference in gallery_set:
        return len(split.gallery) - 1
    return len(split.gallery)


def check_ranking_list(ranked: Any, query_id: str, source: Optional[str] = None) -> None:
    """Raise :class:`InputError` unless ``ranked`` is a list of unique string ids."""
    if not isinstance(ranked, (list, tuple)):
        raise InputError(f"ranking is a {type(ranked).__name__}; expected a list of image ids",
                         path=source, field=query_id)
    for position, item in enumerate(ranked):
        if not isinstance(item, str):
            raise InputError(f"entry {position} is {item!r} ({type(item).__name__}); expected an image id string",
                             path=source, field=query_id)
    metrics.check_unique(ranked, query_id, source)


def check_rankings(split: CIRSplit, rankings: Mapping[str, Sequence[str]], depth: int,
                   source: Optional[str] = None, exact: bool = False) -> None:
    """Raise :class:`InputError` unless ``rankings`` has exactly the split's query ids, each a
    list of unique gallery ids ``min(depth, rankable)`` long (at least that long unless
    ``exact``). Under CIRR's protocol the reference must not appear."""
    expected = [q.query_id for q in split.queries]
    expected_set = set(expected)
    missing = [q for q in expected if q not in rankings]
    extra = [q for q in rankings if q not in expected_set]
    if missing:
        raise InputError(f"{len(missing)} query id(s) have no ranking (first: {missing[0]!r}); "
                         f"expected every query of {split.dataset}-{split.split}", path=source, field=missing[0])
    if extra:
        raise InputError(f"{len(extra)} ranking(s) for query ids not in {split.dataset}-{split.split} "
                         f"(first: {extra[0]!r})", path=source, field=extra[0])
    gallery_set = set(split.gallery)
    without_reference = removes_reference(split)
    for query in split.queries:
        ranked = rankings[query.query_id]
        check_ranking_list(ranked, query.query_id, source)
        needed = min(depth, _rankable(split, query, gallery_set))
        if len(ranked) < needed or (exact and len(ranked) != needed):
            raise InputError(f"ranking has {len(ranked)} ids; expected {'exactly' if exact else 'at least'} "
                             f"{needed}", path=source, field=query.query_id)
        unknown = [x for x in ranked if x not in gallery_set]
        if unknown:
            raise InputError(f"id {unknown[0]!r} is not in the {split.dataset}-{split.split} gallery",
                             path=source, field=query.query_id)
        if without_reference and query.reference in ranked:
            raise InputError(f"the reference image {query.reference!r} is in the ranking; expected it "
                             f"removed ({split.dataset} protocol)", path=source, field=query.query_id)


def subset_candidates(query: Any) -> list[str]:
    """CIRR subset candidates of a query: ``img_set.members`` minus the reference, in member order."""
    if query.subset is None:
        raise InputError(f"query {query.query_id!r} has no img_set.members; expected a CIRR query",
                         field=query.query_id)
    return [m for m in dict.fromkeys(query.subset) if m != query.reference]


def check_subset_rankings(split: CIRSplit, subset_rankings: Mapping[str, Sequence[str]], depth: int,
                          source: Optional[str] = None, exact: bool = False) -> None:
    """Raise :class:`InputError` unless every CIRR query has a subset ranking of unique
    candidates (members minus reference), ``min(depth, #candidates)`` long (at least that
    long unless ``exact``)."""
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
                             f"img_set.members minus the reference: {candidates}", path=source, field=query.query_id)
        needed = min(depth, len(candidates))
        if len(ranked) < needed or (exact and len(ranked) != needed):
            raise InputError(f"subset ranking has {len(ranked)} names; expected "
                             f"{'exactly' if exact else 'at least'} {needed}", path=source, field=query.query_id)


# --------------------------------------------------------------------------- ranking


def _reference_exclusions(split: CIRSplit) -> Optional[np.ndarray]:
    if not removes_reference(split):
        return None
    position = {image_id: i for i, image_id in enumerate(split.gallery)}
    return np.array([position.get(q.reference, -1) for q in split.queries], dtype=np.int64)


def _search(split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
            k: int) -> np.ndarray:
    """[Q, k'] gallery indices under the split's protocol (reference removed for CIRR)."""
    _check_embeddings(split, query_embeddings, gallery_embeddings)
    if len(set(split.gallery)) != len(split.gallery):
        raise InputError(f"{split.dataset}-{split.split} gallery lists an image twice; expected unique ids")
    _, indices = index.search(query_embeddings, gallery_embeddings, k, exclude=_reference_exclusions(split))
    return indices


def _ids(split: CIRSplit, indices: np.ndarray) -> dict[str, list[str]]:
    gallery = split.gallery
    return {q.query_id: [gallery[i] for i in row] for q, row in zip(split.queries, indices)}


def rank_split(split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
               k: int) -> dict[str, list[str]]:
    """Top-``k`` gallery ids per query id under the dataset's protocol.

    Args:
        split: queries and gallery (``split.gallery`` order breaks ties).
        query_embeddings: [Q, D], one row per ``split.queries`` entry (L2-normalised).
        gallery_embeddings: [G, D], one row per ``split.gallery`` entry (L2-normalised).
        k: ranking depth (clipped to what can be ranked).

    CIRR removes each query's reference from its ranking; FashionIQ, CIRCO and generic
    datasets keep it (as the official evaluation code does).
    """
    return _ids(split, _search(split, query_embeddings, gallery_embeddings, k))


def _subset_rankings(split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
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


def rank_cirr(split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
              k: int = 50, subset_k: int = CIRR_SUBSET_DEPTH) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """CIRR rankings for scoring or a test-server submission.

    Returns ``(rankings, subset_rankings)``: the top-``k`` gallery ids with the reference
    removed, and the top-``subset_k`` of ``img_set.members`` minus the reference in their
    order within that same ranking (candidates inside the top k keep exactly the order
    shown there; those beyond follow by score, ties by gallery order).
    """
    if split.dataset != "cirr":
        raise InputError(f"rank_cirr needs a CIRR split, got {split.dataset!r}")
    top = _search(split, query_embeddings, gallery_embeddings, k)
    return _ids(split, top), _subset_rankings(split, query_embeddings, gallery_embeddings, top, subset_k)


# --------------------------------------------------------------------------- scoring


def evaluate_rankings(split: CIRSplit, rankings: Mapping[str, Sequence[str]], *,
                      subset_rankings: Optional[Mapping[str, Sequence[str]]] = None,
                      shared_concept: Optional[bool] = None, source: Optional[str] = None,
                      subset_source: Optional[str] = None) -> dict[str, Any]:
    """Score rankings ``{query_id: [gallery ids, best first]}`` of an annotated split.

    - CIRR: ``R@{1,5,10,50}``, ``Rs@{1,2,3}``, ``(R@5+Rs@1)/2``; the reference is removed from
      each ranking; subset ranks come from ``subset_rankings`` when given, else from
      ``rankings`` (which must then hold every subset candidate).
    - FashionIQ (one category): ``R@10``, ``R@50``, plus ``category``.
    - CIRCO: ``mAP@{5,10,25,50}`` and ``R@{5,10,25,50}``; ``shared_concept`` names the variant.
    - other datasets: ``R@{1,5,10,50}`` and ``mAP@{5,10,25,50}`` on ``ground_truths``.

    Values are percentages; the dict also holds ``protocol``, ``units``, ``num_queries``.
    ``source`` / ``subset_source`` name the files the rankings came from, for errors.
    Rankings must cover every query with unique gallery ids, deep enough for the largest K.
    """
    _require_targets(split)
    depth = ranking_depth(split)
    if removes_reference(split):
        # A ranking may include the reference (it is removed before scoring): check what remains.
        refs = {q.query_id: q.reference for q in split.queries}
        trimmed = {q: [x for x in ranked if x != refs.get(q)] if isinstance(ranked, (list, tuple)) else ranked
                   for q, ranked in rankings.items()}
        check_rankings(split, trimmed, depth, source)
    else:
        check_rankings(split, rankings, depth, source)
    if subset_rankings is not None:
        if split.dataset != "cirr":
            raise InputError(f"subset rankings are a CIRR protocol; got dataset {split.dataset!r}")
        check_subset_rankings(split, subset_rankings, CIRR_SUBSET_DEPTH, subset_source)
    result: dict[str, Any] = {"protocol": protocol_name(split, shared_concept), "units": PERCENT}
    if split.dataset == "cirr":
        result.update(metrics.cirr_metrics(
            rankings,
            targets={q.query_id: q.target for q in split.queries},
            references={q.query_id: q.reference for q in split.queries},
            members={q.query_id: tuple(q.subset or ()) for q in split.queries},
            subset_rankings=subset_rankings,
        ))
    elif split.dataset == "fashioniq":
        result["category"] = split.category
        result.update(metrics.fashioniq_metrics(rankings, {q.query_id: q.target for q in split.queries}))
    elif split.dataset == "circo":
        result.update(metrics.circo_metrics(
            rankings,
            ground_truths={q.query_id: _relevant(q) for q in split.queries},
            targets={q.query_id: q.target for q in split.queries},
        ))
    else:
        relevant = {q.query_id: set(_relevant(q)) for q in split.queries}
        result.update(metrics.recall_metrics(rankings, relevant, GENERIC_RECALL_KS))
        result.update(metrics.map_metrics(rankings, relevant, GENERIC_MAP_KS))
    result["num_queries"] = len(split.queries)
    return result


def evaluate_embeddings(split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray, *,
                        shared_concept: Optional[bool] = None) -> dict[str, Any]:
    """Rank ``split`` with the embeddings (as deep as the protocol needs) and score it.

    Args:
        query_embeddings: [Q, D] L2-normalised, one row per ``split.queries`` entry.
        gallery_embeddings: [G, D] L2-normalised, one row per ``split.gallery`` entry.
        shared_concept: CIRCO only: whether the query text included ``shared_concept``.

    For CIRR the subset ranking follows the same ordering (reference removed), see :func:`rank_cirr`.
    Returns :func:`evaluate_rankings`'s dict.
    """
    _require_targets(split)
    if split.dataset == "cirr":
        rankings, subsets = rank_cirr(split, query_embeddings, gallery_embeddings,
                                      k=RANKING_DEPTH["cirr"], subset_k=len(split.gallery))
        return evaluate_rankings(split, rankings, subset_rankings=subsets)
    rankings = rank_split(split, query_embeddings, gallery_embeddings, ranking_depth(split))
    return evaluate_rankings(split, rankings, shared_concept=shared_concept)


def combine_fashioniq(per_category: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Merge per-category FashionIQ results into ``{category: {...}, "average": {...}}``.

    ``average`` holds the mean over categories of R@10 and of R@50 (the headline) and
    ``mean(R@10,R@50)``. All three categories (dress, shirt, toptee) are expected.
    """
    expected = {"dress", "shirt", "toptee"}
    if set(per_category) != expected:
        raise InputError(f"FashionIQ results for categories {sorted(per_category)}; "
                         f"expected exactly {sorted(expected)}")
    result: dict[str, Any] = {
        "protocol": "fashioniq: mean over dress, shirt, toptee of per-category R@K; reference kept in gallery",
        "units": PERCENT,
    }
    for category in sorted(per_category):
        result[category] = dict(per_category[category])
    result["average"] = metrics.fashioniq_average(
        {c: {k: v for k, v in r.items() if k.startswith("R@")} for c, r in per_category.items()})
    result["num_queries"] = int(sum(r.get("num_queries", 0) for r in per_category.values()))
    return result


# --------------------------------------------------------------------------- traffic


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
    from irkit.eval.submissions import validate_traffic_submission

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
    result.update(metrics.traffic_metrics(rankings, relevant, TRAFFIC_DEPTH))
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
