"""Two-stage candidate re-ranking (docs/methods.md §G).

Stage I: any registered irkit method ranks the gallery; its top-K candidates per query
(ranked ids and scores, :mod:`irkit.cir.topk`) come from a top-K file or are computed here, one
part per split. Where the benchmark's protocol removes the reference, stage I already removes it;
where queries rank their own candidates (GeneCIS), the candidates are positions mapped to images
by the benchmark spec.

Stage II: the cross-encoder (:class:`~irkit.models.reranker.CrossEncoderReranker`) scores
each (reference, text, candidate) jointly with the candidate's cached patch tokens and
fully re-sorts every query's top-K (ties keep the stage-I order). The re-ranked list holds
exactly the stage-I candidates: never one outside the top-K, never fewer. Cost: one
stage-I pass plus K cross-encoder passes per query. For CIRR's subset protocol (Rs@K) the
five ``img_set`` candidates are ordered by their stage-II scores too.

Training (:func:`train_reranker`): for a batch of B triplets score every (query_i,
target_j) pair and apply cross-entropy against the diagonal. ``create_method("rerank",
checkpoint=..., stage1=<method name or top-K file>, k=...)`` is a *ranking* method
(:meth:`RerankMethod.rank_split`): ``irkit cir eval`` / ``cir submit`` score it through the
same protocols as every other method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from irkit import distributed
from irkit.benchmarks import benchmark_of
from irkit.cir.context import CIRContext
from irkit.cir.features import image_tokens_for, in_batch_contrastive_loss
from irkit.cir.registry import (
    CIRMethod,
    RankingMethod,
    create_method,
    method_options,
    register_method,
)
from irkit.cir.topk import (
    TopK,
    default_k,
    find_part,
    is_topk_path,
    load_topk_file,
    stage1_topk,
)
from irkit.cir.training import TrainingConfig, Validator, train_on_triplets
from irkit.data.records import CIRSplit
from irkit.errors import InputError
from irkit.methods.heads import TrainedHeadMethod
from irkit.models.reranker import CrossEncoderReranker, RerankerConfig
from irkit.runs import RunFolder
from irkit.train.loop import TrainResult

KIND = "reranker"


# --------------------------------------------------------------------------- stage II


def resort_candidates(candidates: Sequence[str], scores: Sequence[float],
                      last_on_ties: Optional[str] = None) -> tuple[list[str], list[float]]:
    """``candidates`` sorted by descending ``scores``; equal scores keep the given order, except
    that ``last_on_ties`` (a benchmark whose ties count against the target: its target) goes
    after every candidate it ties with.

    The result is a permutation of ``candidates``: nothing added, nothing dropped.
    """
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    values = np.asarray(scores, dtype=np.float64)
    demoted = np.array([c == last_on_ties for c in candidates], dtype=np.int64)
    order = np.lexsort((np.arange(len(values)), demoted, -values))
    return [candidates[i] for i in order], [float(values[i]) for i in order]


@dataclass
class RerankResult:
    """Stage II output of one split: the re-sorted top-K and (CIRR) subset rankings."""

    topk: TopK
    subset_rankings: Optional[dict[str, list[str]]] = None


def _score_pairs(model: CrossEncoderReranker, features: Any, tokens: torch.Tensor, token_row: Mapping[str, int],
                 candidates: Sequence[str], per_query: Sequence[Sequence[str]], chunk_size: int) -> np.ndarray:
    """Cross-encoder scores of every (query q, candidate c in ``per_query[q]``) pair, flat in
    that order. Candidates are processed ``chunk_size`` at a time: their memory (the
    query-independent side) once, then every pair that ranks them."""
    image_row = {image_id: i for i, image_id in enumerate(features.image_ids)}
    slot = {c: i for i, c in enumerate(candidates)}
    pair_query = np.array([q for q, pool in enumerate(per_query) for _ in pool], dtype=np.int64)
    pair_slot = np.array([slot[c] for pool in per_query for c in pool], dtype=np.int64)
    scores = np.zeros(len(pair_query), np.float32)
    by_slot = np.argsort(pair_slot, kind="stable")
    reference, text = features.reference, features.text
    model.eval()
    with torch.no_grad():
        for start in range(0, len(candidates), chunk_size):
            chunk = candidates[start:start + chunk_size]
            embeddings = features.images[[image_row[c] for c in chunk]]
            memory = model.candidate_memory(embeddings, tokens[[token_row[c] for c in chunk]].float())
            lo, hi = np.searchsorted(pair_slot[by_slot], [start, start + len(chunk)])
            for pairs_start in range(lo, hi, chunk_size):
                pairs = by_slot[pairs_start:min(hi, pairs_start + chunk_size)]
                q = torch.from_numpy(pair_query[pairs])
                rows = torch.from_numpy(pair_slot[pairs] - start)
                scores[pairs] = model.score_pairs(reference[q], text[q], embeddings, memory, rows).numpy()
    return scores


@dataclass
class CandidateScores:
    """Stage-II scores of one split's candidate pools (:func:`score_candidates`).

    Per query: ``pools[q]`` = its first ``num_top[q]`` stage-I candidates, then (CIRR) the
    other ``img_set`` members; ``stage2[q]`` their cross-encoder scores; ``stage1[q]`` the
    stage-I scores of the top part.
    """

    k: int
    pools: list[list[str]]
    num_top: list[int]
    stage1: list[list[float]]
    stage2: list[np.ndarray]
    with_subsets: bool


def score_candidates(model: CrossEncoderReranker, ctx: CIRContext, split: CIRSplit, stage1: TopK,
                     features: Any, k: Optional[int] = None, chunk_size: int = 512) -> CandidateScores:
    """Stage-II scores of each query's first ``k`` stage-I candidates (and, for CIRR, of its
    ``img_set`` members); see :func:`rerank_split` for the arguments."""
    stage1.check_split(split)
    k = stage1.k if k is None else int(k)
    if not 0 < k <= stage1.k:
        raise InputError(f"k={k} candidates requested; expected 1..{stage1.k} (the stage-I top-K size)", field="k")
    benchmark = benchmark_of(split)
    subsets = [benchmark.subset_candidates(q) for q in split.queries]
    with_subsets = benchmark.has_subset_ranking and all(s is not None for s in subsets)
    per_query: list[list[str]] = []  # per query: its top-k candidates, then (CIRR) other subset members
    num_top: list[int] = []
    for candidates, subset in zip(stage1.ids, subsets):
        pool = list(candidates[:k])
        num_top.append(len(pool))
        if with_subsets:
            pool += [m for m in subset if m not in pool]
        per_query.append(pool)
    image_pools = [[benchmark.candidate_image(query, c) for c in pool] for query, pool in zip(split.queries, per_query)]
    image_row = {image_id: i for i, image_id in enumerate(features.image_ids)}
    needed = sorted({c for pool in image_pools for c in pool}, key=image_row.__getitem__)
    tokens, token_row = image_tokens_for(ctx, split, features.image_ids, needed)
    flat = _score_pairs(model, features, tokens, token_row, needed, image_pools, chunk_size)
    bounds = np.cumsum([0] + [len(pool) for pool in per_query])
    return CandidateScores(k, per_query, num_top, [list(scores[:top]) for scores, top in zip(stage1.scores, num_top)],
                           [flat[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])], with_subsets)


def resort_scored(split: CIRSplit, stage1: TopK, scored: CandidateScores, stage1_weight: float = 0.0) -> "RerankResult":
    """Re-sort every query's top-k by ``stage2 + stage1_weight * stage1`` (stable).

    ``stage1_weight`` = 0 is the published stage II (its score alone). With a weight > 0 the
    CIRR subset ranking puts the members inside the top-k first (by the fused score) and
    those stage I left outside it after them (by the stage-II score: they have no stage-I
    score here, and stage I ranked them below every top-k candidate).
    """
    if stage1_weight < 0:
        raise InputError(f"stage1 weight is {stage1_weight}; expected >= 0", field="stage1_weight")
    benchmark = benchmark_of(split)
    ranked_ids, ranked_scores, subsets = [], [], {}
    for query, pool, top, first, second in zip(split.queries, scored.pools, scored.num_top, scored.stage1,
                                               scored.stage2):
        fused = second[:top] + stage1_weight * np.asarray(first, dtype=np.float64)
        target = next((c for c in pool[:top] if benchmark.ties_against_target and benchmark.is_target(query, c)), None)
        ids, values = resort_candidates(pool[:top], fused, last_on_ties=target)
        ranked_ids.append(ids)
        ranked_scores.append(values)
        if scored.with_subsets:
            members = benchmark.subset_candidates(query)
            position = {c: i for i, c in enumerate(pool)}
            if stage1_weight:
                inside = [m for m in members if position[m] < top]
                outside = [m for m in members if position[m] >= top]
                subsets[query.query_id] = (resort_candidates(inside, [fused[position[m]] for m in inside])[0]
                                           + resort_candidates(outside, [second[position[m]] for m in outside])[0])
            else:
                subsets[query.query_id] = resort_candidates(members, [second[position[m]] for m in members])[0]
    reranked = TopK(split.dataset, split.split, split.category, scored.k, list(stage1.query_ids), ranked_ids,
                    ranked_scores, stage=f"rerank({stage1.stage})")
    return RerankResult(reranked, subsets if scored.with_subsets else None)


def rerank_split(model: CrossEncoderReranker, ctx: CIRContext, split: CIRSplit, stage1: TopK,
                 features: Any, k: Optional[int] = None, chunk_size: int = 512,
                 stage1_weight: float = 0.0) -> RerankResult:
    """Stage II: re-sort each query's first ``k`` stage-I candidates by the cross-encoder.

    Args:
        model: the trained cross-encoder (eval mode is set here).
        split: the split ``stage1`` was computed on.
        stage1: its top-K part (checked against ``split``).
        features: :class:`~irkit.cir.features.CIRFeatures` of ``split`` with the gallery.
        k: candidates to re-rank per query (default ``stage1.k``; at most ``stage1.k``).
        chunk_size: candidates whose memory is computed together, and pairs per forward pass.
        stage1_weight: 0 (published) re-sorts by the stage-II score alone; w > 0 by
            ``stage2 + w * stage1`` (score fusion, :func:`resort_scored`).

    Returns:
        :class:`RerankResult` whose lists hold exactly each query's first ``k`` stage-I
        candidates, re-sorted (stable: equal scores keep the stage-I order).
    """
    scored = score_candidates(model, ctx, split, stage1, features, k, chunk_size)
    return resort_scored(split, stage1, scored, stage1_weight)


# --------------------------------------------------------------------------- the method


Stage1 = Union[str, Path, CIRMethod, Sequence[TopK]]


class Stage1Source:
    """Where stage-I candidates come from: a top-K file, in-memory top-K parts, a method
    instance, or a registered method name (built with ``checkpoint`` / ``options``)."""

    def __init__(self, stage1: Stage1, checkpoint: Optional[Path | str] = None,
                 options: Optional[Mapping[str, Any]] = None, include_shared_concept: bool = False,
                 k: Optional[int] = None) -> None:
        self.k = k
        self.path: Optional[Path] = None
        self.parts: Optional[list[TopK]] = None
        self.method: Optional[CIRMethod] = None
        self._computed: dict[tuple[Any, ...], TopK] = {}
        if isinstance(stage1, CIRMethod):
            self.method = stage1
        elif isinstance(stage1, (str, Path)) and is_topk_path(stage1):
            self.path = Path(stage1)
            self.parts = load_topk_file(stage1)
        elif isinstance(stage1, (str, Path)):
            name = str(stage1)
            if name == "rerank":
                raise InputError("stage I cannot be 'rerank' itself; give a retrieval method or a top-K file",
                                 field="stage1")
            self.method = create_method(name, **method_options(name, checkpoint, include_shared_concept,
                                                               dict(options or {})))
        else:
            self.parts = list(stage1)

    @property
    def description(self) -> str:
        if self.path is not None:
            return str(self.path)
        return self.method.name if self.method is not None else "top-K parts"

    def topk(self, ctx: CIRContext, split: CIRSplit) -> TopK:
        """The stage-I top-K of ``split`` (read from the file / parts, or computed now)."""
        if self.parts is not None:
            return find_part(self.parts, split, self.path)
        key = (split.dataset, split.split, split.category, str(split.root))
        if key not in self._computed:
            self._computed[key] = stage1_topk(self.method, ctx, split, self.k or default_k(split.dataset))
        return self._computed[key]


def stage1_parts(stage1: Stage1, ctx: CIRContext, splits: Sequence[CIRSplit], k: Optional[int] = None,
                 checkpoint: Optional[Path | str] = None, include_shared_concept: bool = False) -> list[TopK]:
    """Stage-I top-K parts of ``splits`` from any :class:`Stage1Source` description."""
    source = Stage1Source(stage1, checkpoint, include_shared_concept=include_shared_concept, k=k)
    return [source.topk(ctx, split) for split in splits]


@register_method("rerank")
class RerankMethod(TrainedHeadMethod, RankingMethod):
    """Stage I (a method name, a top-K file, or top-K parts) then the stage-II cross-encoder.

    A ranking method: it has no query embeddings; :meth:`rank_split` gives the rankings
    (exactly ``k`` per query) and, for CIRR, the subset rankings.
    """

    kind = KIND
    train_command = "train-reranker"

    def __init__(self, checkpoint: Optional[Path | str] = None, model: Optional[CrossEncoderReranker] = None,
                 stage1: Stage1 = "image-text-sum", stage1_checkpoint: Optional[Path | str] = None,
                 stage1_options: Optional[Mapping[str, Any]] = None, k: Optional[int] = None,
                 include_shared_concept: bool = False, batch_size: int = 512, stage1_weight: float = 0.0,
                 stage1_tail: bool = False) -> None:
        super().__init__(checkpoint, model, include_shared_concept, batch_size)
        self.k = k
        self.stage1_tail = bool(stage1_tail)
        # with the tail, stage I computed here keeps the benchmark's default depth (>= the protocol's)
        self.stage1 = Stage1Source(stage1, stage1_checkpoint, stage1_options, include_shared_concept,
                                   None if stage1_tail else k)
        self.stage1_weight = float(stage1_weight)
        self._scores: dict[tuple[Any, ...], CandidateScores] = {}

    @classmethod
    def build_model(cls, model_config: Mapping[str, Any]) -> CrossEncoderReranker:
        return CrossEncoderReranker(RerankerConfig.from_dict(model_config))

    def rerank(self, ctx: CIRContext, split: CIRSplit) -> RerankResult:
        """Stage I then stage II on ``split``, re-sorted with ``self.stage1_weight`` (the
        stage-II scores are computed once per split and method instance)."""
        key = (split.dataset, split.split, split.category, str(split.root))
        stage1 = self.stage1.topk(ctx, split)
        if key not in self._scores:
            self._scores[key] = score_candidates(self._model, ctx, split, stage1, self.features(ctx, split),
                                                 k=self.k or stage1.k, chunk_size=self.batch_size)
        return resort_scored(split, stage1, self._scores[key], self.stage1_weight)

    def rank_split(self, ctx: CIRContext,
                   split: CIRSplit) -> tuple[dict[str, list[str]], Optional[dict[str, list[str]]]]:
        """``(rankings, subset_rankings or None)``, scored by the benchmark's protocol."""
        depth = benchmark_of(split).ranking_depth(split)
        stage1 = self.stage1.topk(ctx, split)
        k = self.k or stage1.k
        if k < depth and any(len(ids) > k for ids in stage1.ids) and not self.stage1_tail:
            raise InputError(f"re-ranking keeps K={k} candidates per query, but the {split.dataset} protocol scores "
                             f"rankings down to rank {depth}; re-rank K >= {depth} candidates to evaluate "
                             f"(published K: 50 CIRR, 100 FashionIQ), or append the stage-I candidates after "
                             f"rank K (stage1_tail=True, --stage1-tail)", field="k")
        if self.stage1_tail and stage1.k < depth:
            raise InputError(f"the stage-I candidates end at rank {stage1.k}, but the {split.dataset} protocol scores "
                             f"rankings down to rank {depth}; --stage1-tail needs a stage-I top-{depth} "
                             "(write it with `irkit cir stage1 --k`)", field="stage1")
        result = self.rerank(ctx, split)
        if self.stage1_tail:
            return rankings_with_tail(result.topk, stage1), result.subset_rankings
        return result.topk.rankings(), result.subset_rankings


def rankings_with_tail(reranked: TopK, stage1: TopK) -> dict[str, list[str]]:
    """Scored rankings of a re-ranked part: its top-K, then the stage-I candidates after rank K
    in their stage-I order (``reranked`` holds exactly the stage-I top-K, re-sorted)."""
    return {query_id: list(ids) + list(before[reranked.k:])
            for query_id, ids, before in zip(reranked.query_ids, reranked.ids, stage1.ids)}


#: Stage-I weights :func:`choose_stage1_weight` tries (0: stage II alone, the published rule).
STAGE1_WEIGHTS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


def choose_stage1_weight(score: Any, weights: Sequence[float] = STAGE1_WEIGHTS) -> tuple[float, dict[float, float]]:
    """The weight w of ``weights`` whose re-ranking scores best, ``(w, {w: value})``.

    ``score(w)`` -> the selection value (higher is better) of re-sorting by
    ``stage2 + w * stage1``; call it on the *training* split so that validation numbers stay
    untouched by the choice. Ties go to the smaller weight (closer to the published stage II).
    """
    if not weights:
        raise InputError("no stage-I weights to choose from", field="stage1_weight")
    values = {float(w): float(score(float(w))) for w in weights}
    best = max(values, key=lambda w: (values[w], -w))
    return best, values


def rerank_validator(ctx: CIRContext, splits: Sequence[CIRSplit], stage1_parts: Sequence[TopK],
                     include_shared_concept: bool = False, metric: Optional[str] = None,
                     k: Optional[int] = None) -> Validator:
    """``model -> metrics`` of re-ranking fixed stage-I top-K parts of the validation split(s)."""
    parts = list(stage1_parts)
    return Validator(ctx, splits, lambda model: RerankMethod(model=model, stage1=parts, k=k,
                                                             include_shared_concept=include_shared_concept),
                     include_shared_concept=include_shared_concept, metric=metric)


def reranker_loss(model: CrossEncoderReranker, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """CE over in-batch candidates: score all B x B (query_i, target_j) pairs, diagonal = positives.

    With hard negatives in the batch (``negative`` [B, N, D], ``negative_tokens``,
    ``negative_mask``) each query's row also holds its own N stage-I negatives.
    """
    rows = distributed.local_rows(len(batch["target_index"]))  # this rank's queries (all in one process)
    reference, text = batch["reference"][rows], batch["text"][rows]
    logits = model.score_matrix(reference, text, batch["target"], batch["target_tokens"])
    extra = None
    if "negative" in batch:
        size, count, dim = batch["negative"][rows].shape
        negatives = batch["negative"][rows].reshape(size * count, dim)
        tokens = batch["negative_tokens"][rows].flatten(0, 1)
        memory = model.candidate_memory(negatives, tokens)
        extra = model.score_pairs(reference.repeat_interleave(count, dim=0), text.repeat_interleave(count, dim=0),
                                  negatives, memory, torch.arange(size * count)).view(size, count)
        extra = extra.masked_fill(~batch["negative_mask"][rows], float("-inf"))
    return in_batch_contrastive_loss(logits, batch["target_index"], extra, rows=rows)


def train_reranker(ctx: CIRContext, train_splits: Sequence[CIRSplit], run: RunFolder, config: TrainingConfig,
                   model_config: Optional[RerankerConfig] = None, val_splits: Sequence[CIRSplit] = (),
                   val_stage1: Sequence[TopK] = (), metric: Optional[str] = None, k: Optional[int] = None,
                   resume: Optional[str] = None, train_stage1: Sequence[TopK] = (), hard_negatives: int = 0,
                   negative_pool: Optional[int] = None) -> TrainResult:
    """Train the stage-II cross-encoder on training triplets (targets' patch tokens cached).

    Validation re-ranks ``val_stage1`` (top-K parts of ``val_splits``, e.g. from
    :func:`stage1_topk`) and keeps ``best.pt`` by the benchmark's selection metric.

    Negatives: the published recipe (docs/methods.md §G) is CE over the in-batch targets only.
    ``hard_negatives`` = N > 0 (an irkit option, not in the published trainer) adds, per
    query, N candidates drawn from its stage-I top-``negative_pool`` of ``train_stage1``
    (one top-K part per training split, e.g. :func:`stage1_topk` on the training split):
    the confusable images the re-ranker has to order at test time.
    """
    if hard_negatives and not train_stage1:
        raise InputError("hard negatives need the stage-I top-K of the training split(s)", field="train_stage1")
    for part, split in zip(train_stage1, train_splits):
        part.check_split(split)
    model_config = model_config or RerankerConfig(embed_dim=ctx.loaded.embed_dim, token_dim=ctx.loaded.embed_dim)
    if model_config.embed_dim != ctx.loaded.embed_dim:
        raise InputError(f"re-ranker embed_dim {model_config.embed_dim} differs from the backbone's "
                         f"{ctx.loaded.embed_dim}", field="embed_dim")
    validator = None
    if val_splits:
        if not val_stage1:
            raise InputError("re-ranker validation needs the stage-I top-K of the validation split(s)",
                             field="val_stage1")
        validator = rerank_validator(ctx, val_splits, val_stage1, config.include_shared_concept, metric, k)
    return train_on_triplets(ctx, train_splits, run, config, lambda: CrossEncoderReranker(model_config),
                             reranker_loss, KIND, model_config.to_dict(), validator=validator, resume=resume,
                             with_tokens=True, negatives=train_stage1 if hard_negatives else (),
                             negative_pool=negative_pool, num_negatives=hard_negatives)


# --------------------------------------------------------------------------- analysis


def target_rank_changes(split: CIRSplit, before: TopK, after: TopK) -> list[tuple[str, Optional[int], Optional[int]]]:
    """Per query ``(query_id, target rank in stage I, target rank after re-ranking)``, 1-based;
    ``None`` where the target is not in that list (then it is in neither: stage II only re-sorts)."""
    benchmark = benchmark_of(split)
    changes = []
    for query, ids_before, ids_after in zip(split.queries, before.ids, after.ids):
        rank_before = next((i + 1 for i, c in enumerate(ids_before) if benchmark.is_target(query, c)), None)
        rank_after = next((i + 1 for i, c in enumerate(ids_after) if benchmark.is_target(query, c)), None)
        changes.append((query.query_id, rank_before, rank_after))
    return changes


def rank_change_figure(changes: Sequence[tuple[str, Optional[int], Optional[int]]], k: int, title: str = ""):
    """Scatter of target rank before vs after re-ranking and a histogram of the change
    (positive = moved up); targets outside the top-K are counted in the title. Returns the Figure."""
    import matplotlib.pyplot as plt

    inside = [(b, a) for _, b, a in changes if b is not None and a is not None]
    figure, (scatter, histogram) = plt.subplots(1, 2, figsize=(10, 4))
    if inside:
        before, after = np.array(inside).T
        jitter = np.random.default_rng(0).uniform(-0.15, 0.15, size=(2, len(before)))
        scatter.scatter(before + jitter[0], after + jitter[1], s=14, alpha=0.6)
        gain = before - after
        bins = np.arange(gain.min() - 0.5, gain.max() + 1.5)
        histogram.hist(gain, bins=bins, color="#1f77b4")
        histogram.axvline(0, color="grey", lw=1)
        up, down = int((gain > 0).sum()), int((gain < 0).sum())
        histogram.set_title(f"moved up {up}, down {down}, unchanged {len(gain) - up - down}", fontsize=9)
    limit = max([1] + [max(b, a) for b, a in inside])  # the deepest rank shown
    scatter.plot([1, limit], [1, limit], color="grey", lw=1, ls="--")
    scatter.set_xlabel("target rank, stage I")
    scatter.set_ylabel("target rank, after re-ranking")
    scatter.set_xlim(0.5, limit + 0.5)
    scatter.set_ylim(limit + 0.5, 0.5)
    histogram.set_xlabel("rank gained by re-ranking (before - after)")
    histogram.set_ylabel("queries")
    outside = len(changes) - len(inside)
    figure.suptitle((title + " - " if title else "") + f"{len(inside)} targets inside the top-{k}, {outside} outside")
    figure.tight_layout()
    return figure
