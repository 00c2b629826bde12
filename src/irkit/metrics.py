"""Retrieval metrics on ranked id lists, exactly as ``docs/metrics.md`` defines them.

Everything here is a pure function of rankings (best first) and relevance. Ranked lists
must hold unique ids: a repeated prediction would count a hit twice, so it is an
:class:`~irkit.errors.InputError` (naming the query when one is given).

Units: per-query functions return fractions in [0, 1]; the benchmark functions
(:func:`fashioniq_metrics`, :func:`cirr_metrics`, :func:`circo_metrics`) return percentages
(100x), as those benchmarks publish them; :func:`traffic_metrics` returns fractions, as the
traffic challenge and open_clip's trainer report them. Every returned number is keyed by
the name of what it is (``official_mAP@10``, ``standard_mAP@10``, ``Rs@1``, ...).
"""

from __future__ import annotations

import math
from typing import Collection, Hashable, Iterable, Literal, Mapping, Optional, Sequence

import numpy as np

from irkit.errors import InputError

APNormalisation = Literal["standard", "official"]

# The traffic challenge's official scorer adds this to the number of hits it divides by.
OFFICIAL_AP_EPSILON = 1e-6

FASHIONIQ_KS = (10, 50)
CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
CIRCO_KS = (5, 10, 25, 50)
TRAFFIC_RECALL_KS = (1, 5, 10)
CIRR_HEADLINE = "(R@5+Rs@1)/2"


# --------------------------------------------------------------------------- checks


def check_unique(ranked: Sequence[Hashable], query_id: Optional[str] = None, source: Optional[str] = None) -> None:
    """Raise :class:`InputError` (naming ``source`` and the query) if ``ranked`` repeats an id."""
    if len(set(ranked)) == len(ranked):
        return
    seen: set = set()
    for position, item in enumerate(ranked, start=1):
        if item in seen:
            raise InputError(
                f"prediction {item!r} appears more than once (again at rank {position}); "
                "expected unique predictions per query", path=source, field=query_id,
            )
        seen.add(item)


def _as_set(relevant: Collection[Hashable]) -> Collection[Hashable]:
    return relevant if isinstance(relevant, (set, frozenset)) else set(relevant)


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _check_same_queries(rankings: Mapping[str, object], relevant: Mapping[str, object]) -> None:
    missing = [q for q in relevant if q not in rankings]
    extra = [q for q in rankings if q not in relevant]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} query id(s) without a ranking (first: {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} ranking(s) for unknown query id(s) (first: {extra[0]!r})")
        raise InputError("; ".join(parts) + "; expected one ranking per query")


# --------------------------------------------------------------------------- per query


def hit_flags(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> list[bool]:
    """l_i for i = 1..min(k, len(ranked)): whether the i-th prediction is relevant."""
    _check_k(k)
    return [item in relevant for item in ranked[:k]]


def average_precision_at_k(
    ranked: Sequence[Hashable],
    relevant: Collection[Hashable],
    k: int,
    normalisation: APNormalisation = "standard",
    query_id: Optional[str] = None,
) -> float:
    """AP@k of one ranking, as a fraction.

    With l_i = [i-th prediction relevant] and P_i = (sum_{j<=i} l_j) / i, the numerator is
    sum_{i<=k} P_i * l_i (precision at every hit in the top k). The denominator:

    - ``"standard"``: min(|relevant|, k) (standard AP@k; CIRCO's AP@K);
    - ``"official"``: (number of hits in the top k) + 1e-6 (the traffic challenge's
      official scorer); a query with no hit scores 0.
    """
    check_unique(ranked, query_id)
    relevant = _as_set(relevant)
    flags = hit_flags(ranked, relevant, k)
    hits = 0
    precision_sum = 0.0
    for i, is_hit in enumerate(flags, start=1):
        if is_hit:
            hits += 1
            precision_sum += hits / i
    if normalisation == "official":
        return precision_sum / (hits + OFFICIAL_AP_EPSILON) if hits else 0.0
    if normalisation == "standard":
        denominator = min(len(relevant), k)
        if denominator == 0:
            raise InputError(f"no relevant items; expected at least one for AP@{k}", field=query_id)
        return precision_sum / denominator
    raise ValueError(f"normalisation must be 'standard' or 'official', got {normalisation!r}")


def official_ap_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int = 10,
                     query_id: Optional[str] = None) -> float:
    """Traffic challenge official AP@k: sum of precision-at-hit / (hits in top k + 1e-6)."""
    return average_precision_at_k(ranked, relevant, k, "official", query_id)


def standard_ap_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int = 10,
                     query_id: Optional[str] = None) -> float:
    """Standard AP@k: sum of precision-at-hit / min(#relevant, k)."""
    return average_precision_at_k(ranked, relevant, k, "standard", query_id)


def recall_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int,
                query_id: Optional[str] = None) -> float:
    """1.0 if any relevant item is in the top k of ``ranked``, else 0.0."""
    check_unique(ranked, query_id)
    return 1.0 if any(hit_flags(ranked, _as_set(relevant), k)) else 0.0


def first_relevant_rank(ranked: Sequence[Hashable], relevant: Collection[Hashable],
                        query_id: Optional[str] = None) -> int:
    """1-based rank of the first relevant item in a *full* ranking.

    Raises :class:`InputError` if no relevant item is in ``ranked`` (the ranking was
    truncated, or the query has nothing relevant in the gallery).
    """
    check_unique(ranked, query_id)
    for position, item in enumerate(ranked, start=1):
        if item in relevant:
            return position
    raise InputError(
        f"no relevant item among the {len(ranked)} ranked ids; "
        "expected a full ranking of the gallery containing a relevant item", field=query_id,
    )


def subset_ranking(ranked: Sequence[Hashable], members: Collection[Hashable],
                   reference: Optional[Hashable] = None, query_id: Optional[str] = None) -> list:
    """CIRR subset ranking: ``members`` minus ``reference``, in their order in ``ranked``.

    ``ranked`` must contain every such candidate (a full ranking), otherwise the subset
    order is undefined and :class:`InputError` is raised.
    """
    check_unique(ranked, query_id)
    candidates = {m for m in members if m != reference}
    ordered = [item for item in ranked if item in candidates]
    if len(ordered) != len(candidates):
        missing = sorted(str(m) for m in candidates.difference(ordered))
        raise InputError(
            f"subset candidates {missing} are not in the ranking of {len(ranked)} ids; "
            "expected a full ranking (or a separate subset ranking)", field=query_id,
        )
    return ordered


# --------------------------------------------------------------------------- ranks from scores


def first_relevant_ranks_from_scores(
    scores: np.ndarray, relevant: Sequence[Collection[int]]
) -> np.ndarray:
    """1-based rank of the best-ranked relevant gallery item per query, from full scores.

    Args:
        scores: [Q, G] similarities (higher is better).
        relevant: Q collections of gallery indices relevant to each query (non-empty).

    Ties are broken by gallery order (a stable descending sort), as everywhere in irkit:
    item j ranks ahead of item r when s_j > s_r, or s_j == s_r and j < r.

    Returns:
        [Q] int64 ranks (1 = best).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise InputError(f"scores must be a 2-D array [Q, G], got shape {scores.shape}")
    num_queries, num_gallery = scores.shape
    if len(relevant) != num_queries:
        raise InputError(f"relevant has {len(relevant)} entries; expected one per query ({num_queries})")
    ranks = np.empty(num_queries, dtype=np.int64)
    positions = np.arange(num_gallery)
    for q in range(num_queries):
        rel = np.asarray(sorted(set(int(i) for i in relevant[q])), dtype=np.int64)
        if rel.size == 0:
            raise InputError(f"query {q}: no relevant gallery item; expected at least one")
        if rel[0] < 0 or rel[-1] >= num_gallery:
            raise InputError(f"query {q}: relevant index out of range [0, {num_gallery})")
        row = scores[q]
        # The best relevant item: highest score, lowest index among equal scores.
        best = rel[np.argmax(row[rel])]  # argmax returns the first (lowest index) maximum
        best_score = row[best]
        ahead = np.count_nonzero(row > best_score) + np.count_nonzero((row == best_score) & (positions < best))
        ranks[q] = ahead + 1
    return ranks


def rank_statistics(ranks: Iterable[float]) -> dict[str, float]:
    """Mean and median of 1-based ranks, computed as open_clip's trainer does.

    open_clip: ``mean_rank = mean(r0) + 1`` and ``median_rank = floor(median(r0)) + 1`` with
    r0 the 0-based ranks; so the median of an even count is floored.
    """
    ranks0 = np.asarray(list(ranks), dtype=np.float64) - 1.0
    if ranks0.size == 0:
        raise InputError("no ranks given; expected at least one query")
    if (ranks0 < 0).any():
        raise InputError("ranks must be 1-based (>= 1)")
    return {
        "mean_rank": float(ranks0.mean() + 1.0),
        "median_rank": float(math.floor(float(np.median(ranks0))) + 1.0),
    }


# --------------------------------------------------------------------------- over queries


def mean_average_precision_at_k(
    rankings: Mapping[str, Sequence[Hashable]],
    relevant: Mapping[str, Collection[Hashable]],
    k: int,
    normalisation: APNormalisation = "standard",
) -> float:
    """Mean AP@k (fraction) over the queries of ``relevant`` (generic: any query -> set)."""
    _check_same_queries(rankings, relevant)
    if not relevant:
        raise InputError("no queries given; expected at least one")
    return float(np.mean([
        average_precision_at_k(rankings[q], relevant[q], k, normalisation, q) for q in relevant
    ]))


def mean_recall_at_k(
    rankings: Mapping[str, Sequence[Hashable]],
    relevant: Mapping[str, Collection[Hashable]],
    k: int,
) -> float:
    """Fraction of queries with any relevant item in the top k (generic)."""
    _check_same_queries(rankings, relevant)
    if not relevant:
        raise InputError("no queries given; expected at least one")
    return float(np.mean([recall_at_k(rankings[q], relevant[q], k, q) for q in relevant]))


def _percent(x: float) -> float:
    return 100.0 * x


def _singletons(targets: Mapping[str, Hashable]) -> dict[str, set]:
    return {q: {t} for q, t in targets.items()}


def recall_metrics(
    rankings: Mapping[str, Sequence[Hashable]],
    relevant: Mapping[str, Collection[Hashable]],
    ks: Sequence[int],
    prefix: str = "R",
    scale: float = 100.0,
) -> dict[str, float]:
    """``{f"{prefix}@{k}": scale * mean_recall_at_k}`` for every k."""
    return {f"{prefix}@{k}": scale * mean_recall_at_k(rankings, relevant, k) for k in ks}


def map_metrics(
    rankings: Mapping[str, Sequence[Hashable]],
    relevant: Mapping[str, Collection[Hashable]],
    ks: Sequence[int],
    normalisation: APNormalisation = "standard",
    prefix: str = "mAP",
    scale: float = 100.0,
) -> dict[str, float]:
    """``{f"{prefix}@{k}": scale * mean AP@k}`` for every k."""
    return {f"{prefix}@{k}": scale * mean_average_precision_at_k(rankings, relevant, k, normalisation)
            for k in ks}


# --------------------------------------------------------------------------- benchmarks


def fashioniq_metrics(rankings: Mapping[str, Sequence[str]], targets: Mapping[str, str]) -> dict[str, float]:
    """FashionIQ R@10 and R@50 (percent) for one category; the reference stays in the ranking."""
    return recall_metrics(rankings, _singletons(targets), FASHIONIQ_KS)


def fashioniq_average(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over categories of R@10 and of R@50, plus the mean of those two averages."""
    if not per_category:
        raise InputError("no FashionIQ categories given; expected dress, shirt and toptee")
    average = {
        f"R@{k}": float(np.mean([values[f"R@{k}"] for values in per_category.values()]))
        for k in FASHIONIQ_KS
    }
    average["mean(R@10,R@50)"] = (average["R@10"] + average["R@50"]) / 2.0
    return average


def cirr_metrics(
    rankings: Mapping[str, Sequence[str]],
    targets: Mapping[str, str],
    references: Mapping[str, str],
    members: Mapping[str, Collection[str]],
    subset_rankings: Optional[Mapping[str, Sequence[str]]] = None,
) -> dict[str, float]:
    """CIRR R@{1,5,10,50}, Rs@{1,2,3} and (R@5+Rs@1)/2, in percent.

    The reference image is removed from each ranking before R@K. Rs@K ranks the subset
    ``members`` minus the reference: from ``subset_rankings`` when given (checked to hold
    only such candidates), else derived from ``rankings`` (which must then contain all of
    them, i.e. be full rankings), in their global order.
    """
    _check_same_queries(rankings, targets)
    without_reference = {
        q: [x for x in rankings[q] if x != references[q]] for q in targets
    }
    relevant = _singletons(targets)
    result = recall_metrics(without_reference, relevant, CIRR_KS)
    if subset_rankings is None:
        subsets = {q: subset_ranking(without_reference[q], members[q], references[q], q) for q in targets}
    else:
        _check_same_queries(subset_rankings, targets)
        subsets = {}
        for q in targets:
            candidates = set(members[q]) - {references[q]}
            outside = [x for x in subset_rankings[q] if x not in candidates]
            if outside:
                raise InputError(
                    f"subset prediction {outside[0]!r} is not one of the candidates "
                    f"{sorted(candidates)} (img_set.members minus the reference)", field=q,
                )
            subsets[q] = list(subset_rankings[q])
    result.update(recall_metrics(subsets, relevant, CIRR_SUBSET_KS, prefix="Rs"))
    result[CIRR_HEADLINE] = (result["R@5"] + result["Rs@1"]) / 2.0
    return result


def circo_metrics(
    rankings: Mapping[str, Sequence[str]],
    ground_truths: Mapping[str, Collection[str]],
    targets: Mapping[str, str],
) -> dict[str, float]:
    """CIRCO mAP@{5,10,25,50} (AP@K divided by min(|gt_img_ids|, K)) and R@{5,10,25,50} on
    ``target_img_id`` only, in percent. The reference is not removed."""
    result = map_metrics(rankings, ground_truths, CIRCO_KS, "standard")
    result.update(recall_metrics(rankings, _singletons(targets), CIRCO_KS))
    return result


def traffic_metrics(
    rankings: Mapping[str, Sequence[str]], relevant: Mapping[str, Collection[str]], k: int = 10
) -> dict[str, float]:
    """Traffic challenge metrics as fractions: official mAP@k (divided by hits + 1e-6),
    standard mAP@k (divided by min(#relevant, k)) and R@{1,5,10}."""
    result = map_metrics(rankings, relevant, (k,), "official", prefix="official_mAP", scale=1.0)
    result.update(map_metrics(rankings, relevant, (k,), "standard", prefix="standard_mAP", scale=1.0))
    result.update(recall_metrics(rankings, relevant, TRAFFIC_RECALL_KS, scale=1.0))
    return result


# --------------------------------------------------------------------------- GeneCIS

GENECIS_KS = (1, 2, 3)
#: GeneCIS rankings are lists of candidate positions (strings): "0" = the target, "1".."n" = gallery order.
GENECIS_TARGET = "0"
GENECIS_TIE_RULE = ("ties count against the target: a candidate scoring equal to the target ranks ahead of it "
                    "(a gallery copy of the target is a separate candidate, so it ties and ranks ahead)")


def genecis_order(scores: Sequence[float]) -> list[int]:
    """Candidate positions best first from one template's scores [n+1] (position 0 = the target):
    by score descending, a tie with the target ranked ahead of it, other ties by position."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise InputError(f"candidate scores of shape {values.shape}; expected a non-empty vector of finite numbers")
    positions = np.arange(values.size)
    return [int(p) for p in np.lexsort((positions, positions == 0, -values))]


def genecis_recall(rankings: Mapping[str, Sequence[str]], ks: Sequence[int] = GENECIS_KS) -> dict[str, float]:
    """GeneCIS R@k (percent): share of templates whose target (position ``"0"``) is in the top k of
    its ranking of candidate positions."""
    return recall_metrics(rankings, {q: {GENECIS_TARGET} for q in rankings}, ks)


# --------------------------------------------------------------------------- printed units

#: The one unit every ``irkit`` command prints metrics in (files keep their documented units).
PRINTED_UNITS = "fraction"


def as_fractions(result: Mapping, units: Optional[str] = None) -> dict:
    """A copy of a metrics result with every metric in fractions in [0, 1].

    In a block whose ``units`` is ``"percent"`` (given or inherited from an enclosing block,
    e.g. a FashionIQ category's ``average``), numbers under metric names (keys with ``@``:
    ``R@10``, ``Rs@1``, ``mAP@10``, ``(R@5+Rs@1)/2``, ``mean(R@10,R@50)``) are divided by 100
    and ``units`` becomes ``"fraction"``. Counts (``num_queries``), ranks and blocks already
    in fractions are kept as they are. ``units``: the units of ``result`` if it names none.
    """
    units = result.get("units", units)
    converted: dict = {}
    for key, value in result.items():
        if isinstance(value, Mapping):
            converted[key] = as_fractions(value, units)
        elif (units == "percent" and "@" in str(key) and isinstance(value, (int, float))
              and not isinstance(value, bool)):
            converted[key] = value / 100.0
        else:
            converted[key] = value
    if converted.get("units") == "percent":
        converted["units"] = PRINTED_UNITS
    return converted
