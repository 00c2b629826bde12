"""Two-stage candidate re-ranking (methods.md §G).

Stage I: any registered irkit method ranks the gallery; its top-K candidates per query
(ranked ids and scores) go into a **top-K file** (:func:`save_topk_file` /
:func:`load_topk_file`, JSON, written atomically)::

    {"format": "irkit-topk", "version": 1, "stage": "stage1:image-text-sum",
     "parts": [{"dataset": "cirr", "split": "val", "category": null, "k": 50,
                "queries": [{"query_id": "7", "ids": [...], "scores": [...]}, ...]}]}

One part per split (FashionIQ: one per category). Under CIRR's protocol stage I already
removes the reference.

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

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from irkit.data.records import CIRSplit
from irkit.errors import InputError
from irkit.io import atomic_write_json, read_json
from irkit.methods.base import CIRContext, CIRMethod, register_method
from irkit.models.reranker import CrossEncoderReranker, RerankerConfig
from irkit.runs import RunFolder
from irkit.train.features import image_tokens_for, in_batch_contrastive_loss
from irkit.train.heads import HeadTrainingConfig, TrainedHeadMethod, train_on_triplets
from irkit.train.loop import TrainResult

KIND = "reranker"
TOPK_FORMAT = "irkit-topk"
TOPK_VERSION = 1
#: Published candidate-set sizes (methods.md §G); CIRCO / other datasets: 50 (mAP@50 needs 50).
DEFAULT_K = {"cirr": 50, "fashioniq": 100, "circo": 50}
FALLBACK_K = 50


def default_k(dataset: str) -> int:
    """K of the published re-ranker for ``dataset`` (50 CIRR, 100 FashionIQ), else 50."""
    return DEFAULT_K.get(dataset, FALLBACK_K)


# --------------------------------------------------------------------------- top-K files


@dataclass
class TopK:
    """Ranked candidates of every query of one split: ``ids[q]`` best first, ``scores[q]`` aligned."""

    dataset: str
    split: str
    category: Optional[str]
    k: int
    query_ids: list[str]
    ids: list[list[str]]
    scores: list[list[float]]
    stage: str = "stage1"

    def key(self) -> tuple[str, str, Optional[str]]:
        return self.dataset, self.split, self.category

    def rankings(self) -> dict[str, list[str]]:
        """``{query_id: ids}``."""
        return dict(zip(self.query_ids, self.ids))

    def check_split(self, split: CIRSplit, source: Optional[Path | str] = None) -> None:
        """Raise :class:`InputError` unless this part lists exactly ``split``'s queries and
        only ids of its gallery."""
        if self.key() != (split.dataset, split.split, split.category):
            raise InputError(f"top-K part is for {self.key()}; expected {(split.dataset, split.split, split.category)}",
                             path=source)
        expected = [q.query_id for q in split.queries]
        if self.query_ids != expected:
            missing = sorted(set(expected) - set(self.query_ids))
            extra = sorted(set(self.query_ids) - set(expected))
            detail = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {extra[:3]}" if extra else "")
            raise InputError(f"top-K queries do not match {split.dataset}-{split.split} "
                             f"({detail or 'different order'});"
                             " expected one entry per query in split order", path=source, field="queries")
        gallery = set(split.gallery)
        for query_id, ids in zip(self.query_ids, self.ids):
            outside = [i for i in ids if i not in gallery]
            if outside:
                raise InputError(f"candidate {outside[0]!r} is not in the {split.dataset}-{split.split} gallery",
                                 path=source, field=query_id)


def save_topk_file(path: Path | str, parts: Sequence[TopK]) -> Path:
    """Write top-K parts as one JSON file, atomically (no partial file on failure)."""
    if not parts:
        raise InputError("no top-K parts to save", path=path)
    stages = sorted({p.stage for p in parts})
    data = {
        "format": TOPK_FORMAT, "version": TOPK_VERSION, "stage": stages[0] if len(stages) == 1 else stages,
        "parts": [{
            "dataset": p.dataset, "split": p.split, "category": p.category, "k": p.k, "stage": p.stage,
            "queries": [{"query_id": q, "ids": list(ids), "scores": [float(s) for s in scores]}
                        for q, ids, scores in zip(p.query_ids, p.ids, p.scores)],
        } for p in parts],
    }
    for i, raw in enumerate(data["parts"]):  # the checks load_topk_file applies, before writing
        _parse_part(raw, i, Path(path), data["stage"] if isinstance(data["stage"], str) else "stage1")
    atomic_write_json(path, data)
    return Path(path)


def _expect(condition: bool, message: str, path: Path, field_name: str) -> None:
    if not condition:
        raise InputError(message, path=path, field=field_name)


def _parse_part(raw: Any, index: int, path: Path, default_stage: str) -> TopK:
    where = f"parts[{index}]"
    _expect(isinstance(raw, dict), f"found {type(raw).__name__}; expected an object", path, where)
    for key in ("dataset", "split", "k", "queries"):
        _expect(key in raw, f"missing '{key}'; expected dataset, split, category, k, queries", path, where)
    _expect(isinstance(raw["dataset"], str) and isinstance(raw["split"], str),
            "dataset and split must be strings", path, where)
    category = raw.get("category")
    _expect(category is None or isinstance(category, str), "category must be a string or null", path,
            f"{where}.category")
    k = raw["k"]
    _expect(isinstance(k, int) and not isinstance(k, bool) and k > 0, f"k is {k!r}; expected a positive integer",
            path, f"{where}.k")
    _expect(isinstance(raw["queries"], list), "queries must be a list", path, f"{where}.queries")
    query_ids, ids, scores = [], [], []
    for j, entry in enumerate(raw["queries"]):
        q_where = f"{where}.queries[{j}]"
        _expect(isinstance(entry, dict) and {"query_id", "ids", "scores"} <= set(entry),
                "expected an object with query_id, ids, scores", path, q_where)
        _expect(isinstance(entry["query_id"], str), "query_id must be a string", path, f"{q_where}.query_id")
        ranked, values = entry["ids"], entry["scores"]
        _expect(isinstance(ranked, list) and all(isinstance(x, str) for x in ranked),
                "ids must be a list of image id strings", path, f"{q_where}.ids")
        _expect(len(set(ranked)) == len(ranked), "ids repeat an image; expected unique candidates", path,
                f"{q_where}.ids")
        _expect(len(ranked) <= k, f"{len(ranked)} ids; expected at most k={k}", path, f"{q_where}.ids")
        _expect(isinstance(values, list) and len(values) == len(ranked)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values),
                "scores must be finite numbers, one per id", path, f"{q_where}.scores")
        query_ids.append(entry["query_id"])
        ids.append(ranked)
        scores.append([float(v) for v in values])
    _expect(len(set(query_ids)) == len(query_ids), "a query_id appears twice", path, f"{where}.queries")
    return TopK(raw["dataset"], raw["split"], category, k, query_ids, ids, scores,
                stage=str(raw.get("stage", default_stage)))


def load_topk_file(path: Path | str) -> list[TopK]:
    """Read a top-K file; malformed content raises :class:`InputError` naming the field."""
    path = Path(path)
    data = read_json(path)
    _expect(isinstance(data, dict) and data.get("format") == TOPK_FORMAT,
            f"not an irkit top-K file; expected an object with \"format\": \"{TOPK_FORMAT}\"", path, "format")
    _expect(data.get("version") == TOPK_VERSION, f"version {data.get('version')!r}; expected {TOPK_VERSION}",
            path, "version")
    _expect(isinstance(data.get("parts"), list) and data["parts"], "expected a non-empty 'parts' list", path, "parts")
    stage = data.get("stage") if isinstance(data.get("stage"), str) else "stage1"
    parts = [_parse_part(raw, i, path, stage) for i, raw in enumerate(data["parts"])]
    keys = [p.key() for p in parts]
    _expect(len(set(keys)) == len(keys), "two parts for the same dataset/split/category", path, "parts")
    return parts


def find_part(parts: Sequence[TopK], split: CIRSplit, source: Optional[Path | str] = None) -> TopK:
    """The part of ``parts`` for ``split`` (checked against it)."""
    for part in parts:
        if part.key() == (split.dataset, split.split, split.category):
            part.check_split(split, source)
            return part
    raise InputError(f"no top-K part for {split.dataset}-{split.split}"
                     + (f"/{split.category}" if split.category else "")
                     + f"; the file has {[p.key() for p in parts]}", path=source)


def load_topk_parts(path: Path | str, splits: Sequence[CIRSplit]) -> list[TopK]:
    """The parts of ``splits``, in order, from the top-K file ``path`` (each checked)."""
    parts = load_topk_file(path)
    return [find_part(parts, split, path) for split in splits]


# --------------------------------------------------------------------------- stage I


def _reference_exclusions(split: CIRSplit) -> Optional[np.ndarray]:
    from irkit.eval.protocols import removes_reference

    if not removes_reference(split):
        return None
    position = {image_id: i for i, image_id in enumerate(split.gallery)}
    return np.array([position.get(q.reference, -1) for q in split.queries], dtype=np.int64)


def stage1_topk(method: CIRMethod, ctx: CIRContext, split: CIRSplit, k: int) -> TopK:
    """Stage I: rank ``split`` with ``method``'s embeddings and keep each query's top ``k``
    (the reference removed where the protocol removes it; ties by gallery order)."""
    from irkit import index

    if k <= 0:
        raise InputError(f"k is {k}; expected a positive number of candidates", field="k")
    scores, indices = index.search(method.query_embeddings(ctx, split), method.gallery_embeddings(ctx, split), k,
                                   exclude=_reference_exclusions(split))
    return TopK(split.dataset, split.split, split.category, int(k), [q.query_id for q in split.queries],
                [[split.gallery[i] for i in row] for row in indices], [[float(s) for s in row] for row in scores],
                stage=f"stage1:{method.name}")


# --------------------------------------------------------------------------- stage II


def resort_candidates(candidates: Sequence[str], scores: Sequence[float]) -> tuple[list[str], list[float]]:
    """``candidates`` sorted by descending ``scores``; equal scores keep the given order.

    The result is a permutation of ``candidates``: nothing added, nothing dropped.
    """
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    values = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(values)), -values))
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
    with_subsets = split.dataset == "cirr" and all(q.subset for q in split.queries)
    per_query: list[list[str]] = []  # per query: its top-k candidates, then (CIRR) other subset members
    num_top: list[int] = []
    for query, candidates in zip(split.queries, stage1.ids):
        pool = list(candidates[:k])
        num_top.append(len(pool))
        if with_subsets:
            pool += [m for m in dict.fromkeys(query.subset) if m != query.reference and m not in pool]
        per_query.append(pool)
    image_row = {image_id: i for i, image_id in enumerate(features.image_ids)}
    needed = sorted({c for pool in per_query for c in pool}, key=image_row.__getitem__)
    tokens, token_row = image_tokens_for(ctx, split, features.image_ids, needed)
    flat = _score_pairs(model, features, tokens, token_row, needed, per_query, chunk_size)
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
    ranked_ids, ranked_scores, subsets = [], [], {}
    for query, pool, top, first, second in zip(split.queries, scored.pools, scored.num_top, scored.stage1,
                                               scored.stage2):
        fused = second[:top] + stage1_weight * np.asarray(first, dtype=np.float64)
        ids, values = resort_candidates(pool[:top], fused)
        ranked_ids.append(ids)
        ranked_scores.append(values)
        if scored.with_subsets:
            members = [m for m in dict.fromkeys(query.subset) if m != query.reference]
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
        features: :class:`~irkit.train.features.CIRFeatures` of ``split`` with the gallery.
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


def is_topk_path(stage1: Union[str, Path]) -> bool:
    """Whether a stage-I description names a top-K file (``*.json`` or an existing file)."""
    return str(stage1).endswith(".json") or Path(stage1).is_file()


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
            from irkit.methods.base import create_method
            from irkit.methods.textual_inversion import method_options

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
class RerankMethod(TrainedHeadMethod):
    """Stage I (a method name, a top-K file, or top-K parts) then the stage-II cross-encoder.

    A ranking method: it has no query embeddings; :meth:`rank_split` gives the rankings
    (exactly ``k`` per query) and, for CIRR, the subset rankings.
    """

    kind = KIND
    train_command = "train-reranker"

    def __init__(self, checkpoint: Optional[Path | str] = None, model: Optional[CrossEncoderReranker] = None,
                 stage1: Stage1 = "image-text-sum", stage1_checkpoint: Optional[Path | str] = None,
                 stage1_options: Optional[Mapping[str, Any]] = None, k: Optional[int] = None,
                 include_shared_concept: bool = False, batch_size: int = 512, stage1_weight: float = 0.0) -> None:
        super().__init__(checkpoint, model, include_shared_concept, batch_size)
        self.k = k
        self.stage1 = Stage1Source(stage1, stage1_checkpoint, stage1_options, include_shared_concept, k)
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
        """``(rankings, subset_rankings or None)`` for :func:`irkit.eval.protocols.evaluate_rankings`."""
        from irkit.eval.protocols import GENERIC_MAP_KS, RANKING_DEPTH

        depth = RANKING_DEPTH.get(split.dataset, max(GENERIC_MAP_KS))
        stage1 = self.stage1.topk(ctx, split)
        k = self.k or stage1.k
        if k < depth and any(len(ids) > k for ids in stage1.ids):
            raise InputError(f"re-ranking keeps K={k} candidates per query, but the {split.dataset} protocol scores "
                             f"rankings down to rank {depth}; re-rank K >= {depth} candidates to evaluate "
                             f"(published K: 50 CIRR, 100 FashionIQ)", field="k")
        result = self.rerank(ctx, split)
        return result.topk.rankings(), result.subset_rankings

    def query_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        raise InputError("'rerank' re-sorts candidate lists and has no query embeddings; score it through "
                         "rank_split (irkit.methods.textual_inversion.evaluate_method does)", field="method")


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


class RerankValidator:
    """``model -> metrics`` of re-ranking fixed stage-I top-K parts of the validation split(s)."""

    def __init__(self, ctx: CIRContext, splits: Sequence[CIRSplit], stage1_parts: Sequence[TopK],
                 include_shared_concept: bool = False, metric: Optional[str] = None, k: Optional[int] = None) -> None:
        from irkit.methods.textual_inversion import SELECTION_METRIC

        if not splits:
            raise InputError("no validation split given")
        self.ctx, self.splits, self.parts, self.k = ctx, list(splits), list(stage1_parts), k
        self.include_shared_concept = include_shared_concept
        self.metric = metric or SELECTION_METRIC.get(self.splits[0].dataset, "R@1")

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        from irkit.methods.textual_inversion import evaluate_method, flatten_metrics

        method = RerankMethod(model=model, stage1=self.parts, k=self.k,
                              include_shared_concept=self.include_shared_concept)
        metrics = flatten_metrics(evaluate_method(method, self.ctx, self.splits, self.include_shared_concept))
        if self.metric not in metrics:
            raise InputError(f"validation metric {self.metric!r} is not among {sorted(metrics)}", field="val-metric")
        return metrics


def reranker_loss(model: CrossEncoderReranker, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """CE over in-batch candidates: score all B x B (query_i, target_j) pairs, diagonal = positives.

    With hard negatives in the batch (``negative`` [B, N, D], ``negative_tokens``,
    ``negative_mask``) each query's row also holds its own N stage-I negatives.
    """
    reference, text = batch["reference"], batch["text"]
    logits = model.score_matrix(reference, text, batch["target"], batch["target_tokens"])
    extra = None
    if "negative" in batch:
        size, count, dim = batch["negative"].shape
        negatives = batch["negative"].reshape(size * count, dim)
        tokens = batch["negative_tokens"].flatten(0, 1)
        memory = model.candidate_memory(negatives, tokens)
        extra = model.score_pairs(reference.repeat_interleave(count, dim=0), text.repeat_interleave(count, dim=0),
                                  negatives, memory, torch.arange(size * count)).view(size, count)
        extra = extra.masked_fill(~batch["negative_mask"], float("-inf"))
    return in_batch_contrastive_loss(logits, batch["target_index"], extra)


def train_reranker(ctx: CIRContext, train_splits: Sequence[CIRSplit], run: RunFolder, config: HeadTrainingConfig,
                   model_config: Optional[RerankerConfig] = None, val_splits: Sequence[CIRSplit] = (),
                   val_stage1: Sequence[TopK] = (), metric: Optional[str] = None, k: Optional[int] = None,
                   resume: Optional[str] = None, train_stage1: Sequence[TopK] = (), hard_negatives: int = 0,
                   negative_pool: Optional[int] = None) -> TrainResult:
    """Train the stage-II cross-encoder on training triplets (targets' patch tokens cached).

    Validation re-ranks ``val_stage1`` (top-K parts of ``val_splits``, e.g. from
    :func:`stage1_topk`) and keeps ``best.pt`` by the benchmark's selection metric.

    Negatives: the published recipe (methods.md §G) is CE over the in-batch targets only.
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
        validator = RerankValidator(ctx, val_splits, val_stage1, config.include_shared_concept, metric, k)
    return train_on_triplets(ctx, train_splits, run, config, lambda: CrossEncoderReranker(model_config),
                             reranker_loss, KIND, model_config.to_dict(), validator=validator, resume=resume,
                             with_tokens=True, negatives=train_stage1 if hard_negatives else (),
                             negative_pool=negative_pool, num_negatives=hard_negatives)


# --------------------------------------------------------------------------- analysis


def target_rank_changes(split: CIRSplit, before: TopK, after: TopK) -> list[tuple[str, Optional[int], Optional[int]]]:
    """Per query ``(query_id, target rank in stage I, target rank after re-ranking)``, 1-based;
    ``None`` where the target is not in that list (then it is in neither: stage II only re-sorts)."""
    changes = []
    for query, ids_before, ids_after in zip(split.queries, before.ids, after.ids):
        rank_before = ids_before.index(query.target) + 1 if query.target in ids_before else None
        rank_after = ids_after.index(query.target) + 1 if query.target in ids_after else None
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
