"""Trained fusion, Combiner and two-stage re-ranking rows of the CIR table (docs/methods.md §D-G).

:func:`fusion_rows` trains heads on *frozen, cached* CLIP features of the training triplets
of FashionIQ and CIRR (one head per training benchmark) and scores them on the validation
splits through the library's protocols:

========================  =================================================================
stage folder              what it holds
========================  =================================================================
``fusion``                MagicLens-style fusion without the vision projector
``fusion-projector``      MagicLens-style fusion with the trained vision projector (irkit
                          structure: a residual per MLP block)
``fusion-projector-published``  the same with the published ResidualMLP structure (one
                          residual around the 4 MLPs), only with budget ``published_projector``
``combiner``              CLIP4Cir Combiner
``stage1``                the stage-I choice and its top-K file of every val split
``reranker``              the stage-II cross-encoder (trained per benchmark), in-batch
                          negatives only (the published recipe)
``rerank-k<K>``           stage I + II at candidate-set size K: re-ranked top-K file, metrics
``stage1-train``          stage-I top-N file of every *training* split (hard-negative pools,
                          score-fusion weight choice)
``reranker-hn``           the cross-encoder trained with stage-I hard negatives as well
``rerank-hn-k<K>``        stage I + II (hard-negative re-ranker) at K
``rerank[-hn]-fused-k<K>``  the same with score fusion: stage-II + w x stage-I score
========================  =================================================================

The hard-negative variant (``hard_negatives`` > 0) is irkit's, not the published trainer's:
per training query it adds ``hard_negatives`` images drawn from that query's stage-I
top-``hard_negative_pool`` on the training split (the target left out) to the in-batch
candidates, so the re-ranker learns to order the confusable candidates it meets at test time.
Score fusion is irkit's too: the published stage II sorts by its own score; the fused rows
sort by ``stage2 + w * stage1`` with w chosen per training benchmark on its *training* split
(stage I and II re-ranking the training queries, the benchmark's selection metric), never
on the validation numbers the table reports.

Each training stage has one run folder per training benchmark (``<stage>/<benchmark>/``,
``checkpoints/best.pt`` chosen on that benchmark's val split by its selection metric) and a
``result.json``; a stage whose ``result.json`` exists is skipped, an interrupted training is
resumed from its ``latest.pt``. CIRCO has no training split: it is scored with the
CIRR-trained heads.

Re-ranking at K re-sorts exactly each query's stage-I top-K; scored rankings are the
re-ranked top-K followed by stage-I ranks K+1.. (the published evaluation: candidates
outside the top-K keep their order), so K may be smaller than the protocol's depth (50).
Metrics in rows are fractions in [0, 1] (the library reports percentages).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from irkit.errors import InputError
from irkit.experiments.setup import BenchContext, CIRBenchSetup, cached_stage, table_metrics, table_row
from irkit.io import read_json

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
TOPK_FILE = "topk_val.json"
TRAIN_TOPK_FILE = "topk_train.json"
RERANKED_FILE = "reranked_val.json"

#: Benchmarks whose training triplets train a head.
TRAIN_DATASETS = ("fashioniq", "cirr")
#: Validation benchmark -> the benchmark whose training split trained the head scoring it.
TRAINED_ON = {"fashioniq": "fashioniq", "cirr": "cirr", "circo": "cirr"}
#: The head stages, in table order: stage -> (registered method, method options, table label).
HEADS: dict[str, tuple[str, dict[str, Any], str]] = {
    "fusion": ("magiclens", {}, "MagicLens-style fusion, no projector"),
    "fusion-projector": ("magiclens", {"projector": True}, "MagicLens-style fusion + trained vision projector"),
    "combiner": ("combiner", {}, "CLIP4Cir Combiner"),
}
#: Head stages added by a budget switch (not stage-I candidates): stage -> as in HEADS.
OPTIONAL_HEADS: dict[str, tuple[str, dict[str, Any], str]] = {
    "fusion-projector-published": ("magiclens", {"projector": True},
                                   "MagicLens-style fusion + trained vision projector, published structure"),
}
#: Which projector each fusion head stage uses (docs/methods.md §E), for the rows' notes.
PROJECTOR_STYLE = {"fusion-projector": "irkit", "fusion-projector-published": "published"}
PROJECTOR_NOTES = {
    "fusion": "no vision projector",
    "fusion-projector": "vision projector: irkit structure (a residual per MLP block, exact GELU, identity start), "
                        "trained with the head",
    "fusion-projector-published": "vision projector: the published ResidualMLP structure (one residual around the "
                                  "4 MLPs, tanh GELU, dropout 0.5, flax init, identity start on the last layer), "
                                  "trained with the head",
}


@dataclass
class FusionBudget:
    """Steps and sizes of the fusion rows; any field can be overridden by ``setup.budgets[name]``.

    ``stage1``: a head stage name (``fusion``, ``fusion-projector``, ``combiner``) or None to
    take, per training benchmark, the head with the best validation selection metric.
    ``rerank_ks``: the two candidate-set sizes of stage II. ``reranker_val_k``: K used while
    validating the re-ranker (default: the smallest K >= 50, the depth the library's
    validation scores re-ranked lists to).
    """

    fusion_steps: int = 1000
    combiner_steps: int = 1000
    reranker_steps: int = 500
    head_batch_size: int = 64
    reranker_batch_size: int = 32
    fusion_lr: float = 1e-4
    combiner_lr: float = 1e-4
    reranker_lr: float = 1e-4
    head_weight_decay: float = 0.01
    validate_every: int = 200
    reranker_validate_every: int = 250
    rerank_ks: tuple[int, ...] = (20, 50)
    reranker_val_k: Optional[int] = None
    stage1: Optional[str] = None
    include_shared_concept: bool = False
    fusion_depth: int = 4
    fusion_heads: int = 8
    reranker_depth: int = 2
    reranker_heads: int = 8
    hard_negatives: int = 16
    hard_negative_pool: int = 50
    published_projector: bool = False  # add the fusion-projector-published row


#: Defaults per ``setup.scale``: ``tiny`` runs in seconds (tests); ``full`` (the field defaults)
#: took 28 min wall on the demo data with one torch thread on a shared 2-core machine.
DEFAULT_BUDGETS: dict[str, dict[str, Any]] = {
    "tiny": dict(fusion_steps=6, combiner_steps=6, reranker_steps=4, head_batch_size=8, reranker_batch_size=8,
                 fusion_lr=1e-3, combiner_lr=1e-3, reranker_lr=1e-3, validate_every=3,
                 reranker_validate_every=4, rerank_ks=(5, 50), fusion_depth=1, fusion_heads=4,
                 reranker_depth=1, reranker_heads=4, hard_negatives=3, hard_negative_pool=6),
    "small": dict(fusion_steps=300, combiner_steps=300, reranker_steps=200, validate_every=100,
                  reranker_validate_every=100),
    "full": {},
}


def resolve_budget(setup: CIRBenchSetup) -> FusionBudget:
    """The budget for ``setup.scale`` with ``setup.budgets`` overrides (keys named as the
    :class:`FusionBudget` fields; other keys belong to other stages and are ignored)."""
    if setup.scale not in DEFAULT_BUDGETS:
        raise InputError(f"unknown scale {setup.scale!r}; expected one of {sorted(DEFAULT_BUDGETS)}", field="scale")
    values = dict(DEFAULT_BUDGETS[setup.scale])
    names = {f.name for f in fields(FusionBudget)}
    values.update({k: v for k, v in setup.budgets.items() if k in names})
    budget = FusionBudget(**values)
    budget.rerank_ks = tuple(int(k) for k in budget.rerank_ks)
    if not budget.rerank_ks or min(budget.rerank_ks) <= 0:
        raise InputError(f"rerank_ks is {budget.rerank_ks}; expected positive candidate-set sizes",
                         field="rerank_ks")
    if budget.hard_negatives < 0 or budget.hard_negative_pool <= 0:
        raise InputError(f"hard_negatives {budget.hard_negatives} / hard_negative_pool {budget.hard_negative_pool}; "
                         "expected >= 0 negatives (0: no hard-negative rows) from a positive pool",
                         field="hard_negatives")
    if budget.stage1 is not None and budget.stage1 not in HEADS:
        raise InputError(f"stage1 is {budget.stage1!r}; expected one of {sorted(HEADS)} or None", field="stage1")
    return budget


# --------------------------------------------------------------------------- helpers


def _stage(setup: CIRBenchSetup, name: str, compute: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """``<out_dir>/<name>/result.json``: read when present, else ``compute(stage dir)`` with its
    ``stage`` name and wall time ``wall_s`` added (:func:`~irkit.experiments.setup.cached_stage`)."""

    def timed(directory: Path) -> dict[str, Any]:
        start = time.perf_counter()
        result = compute(directory)
        result["stage"] = name
        result["wall_s"] = round(time.perf_counter() - start, 2)
        return result

    return cached_stage(setup, name, RESULT_FILE, timed, log)[0]


def _relative(setup: CIRBenchSetup, path: Path) -> str:
    return str(Path(path).resolve().relative_to(Path(setup.out_dir).resolve()))


def _absolute(setup: CIRBenchSetup, relative: str) -> Path:
    return Path(setup.out_dir) / relative


def _selection_value(result: Mapping[str, Any], dataset: str) -> float:
    from irkit.benchmarks import get_benchmark
    from irkit.cir.evaluate import flatten_metrics

    return flatten_metrics(result)[get_benchmark(dataset).selection_metric]


def _prune_epoch_checkpoints(run_path: Path) -> None:
    """Drop ``epoch_<n>.pt`` of a finished run (``best.pt`` and ``latest.pt`` are kept):
    a head trains for ~100 short epochs and every epoch end writes a checkpoint."""
    for path in (run_path / "checkpoints").glob("epoch_*.pt"):
        path.unlink()


class _Bench(BenchContext):
    """The loaded backbone, context and splits shared by the stages of one call."""

    def __init__(self, setup: CIRBenchSetup, budget: FusionBudget) -> None:
        from irkit.cir.evaluate import load_cir_splits

        super().__init__(setup)  # reads include_shared_concept from setup.budgets, as resolve_budget does
        self.budget = budget
        self.train_splits = {d: load_cir_splits(d, self.roots[d], "train") for d in TRAIN_DATASETS}

    def evaluate_heads(self, make_method: Callable[[str], Any]) -> dict[str, Any]:
        """``{val benchmark: evaluate_method result}`` with ``make_method(training benchmark)``."""
        methods = {d: make_method(d) for d in TRAIN_DATASETS}
        return self.evaluate(lambda d: methods[TRAINED_ON[d]])

    def head_method(self, stage: str, checkpoint: str) -> Any:
        """The registered method of head ``stage`` from its checkpoint (relative to ``out_dir``)."""
        from irkit.cir.registry import create_method

        name, options, _ = {**HEADS, **OPTIONAL_HEADS}[stage]
        return create_method(name, checkpoint=_absolute(self.setup, checkpoint),
                             include_shared_concept=self.budget.include_shared_concept, **options)


def _train_runs(bench: _Bench, stage_dir: Path, kind: str, params: Mapping[str, Any],
                trainer: Callable[[str, Any], Any]) -> dict[str, Any]:
    """Train one head per training benchmark in ``stage_dir/<benchmark>`` (resumed from its
    ``latest.pt`` when interrupted). ``trainer(benchmark, run)`` -> the loop's result."""
    from irkit.cir.training import open_run

    checkpoints, training = {}, {}
    for dataset in TRAIN_DATASETS:
        start = time.perf_counter()
        run = open_run(stage_dir, dataset, {"kind": kind, "dataset": dataset, **params}, resume="latest")
        try:
            result = trainer(dataset, run)
        finally:
            run.close()
        if result.best_checkpoint is None:
            raise RuntimeError(f"{kind} training on {dataset} kept no best checkpoint (no validation ran)")
        _prune_epoch_checkpoints(run.path)
        checkpoints[dataset] = _relative(bench.setup, result.best_checkpoint)
        training[dataset] = {"steps": result.step, "best_step": result.best_step, "best_value": result.best_value,
                             "wall_s": round(time.perf_counter() - start, 2)}
    return {"checkpoints": checkpoints, "training": training}


# --------------------------------------------------------------------------- stages


def _head_stage(bench: _Bench, stage: str) -> dict[str, Any]:
    from irkit.cir.training import TrainingConfig
    from irkit.workflows.cir import head_model_config, train_head

    budget, dim = bench.budget, bench.loaded.embed_dim
    method_name = {**HEADS, **OPTIONAL_HEADS}[stage][0]
    if stage == "combiner":
        model_config: Any = head_model_config("combiner", dim)
        steps, lr, weight_decay = budget.combiner_steps, budget.combiner_lr, 0.0  # Adam, as published
    else:
        model_config = head_model_config("magiclens", dim, depth=budget.fusion_depth, num_heads=budget.fusion_heads,
                                         projector=stage in PROJECTOR_STYLE, projector_style=PROJECTOR_STYLE.get(stage))
        steps, lr, weight_decay = budget.fusion_steps, budget.fusion_lr, budget.head_weight_decay
    config = TrainingConfig(steps=steps, batch_size=budget.head_batch_size, learning_rate=lr,
                                weight_decay=weight_decay, validate_every=budget.validate_every,
                                seed=bench.setup.seed, precision=bench.setup.precision)

    def trainer(dataset: str, run: Any) -> Any:
        return train_head(method_name, bench.ctx, bench.train_splits[dataset], run, config, model_config,
                          val_splits=bench.val_splits[dataset], resume="latest")

    def compute(stage_dir: Path) -> dict[str, Any]:
        trained = _train_runs(bench, stage_dir, method_name, {**config.to_params(), **model_config.to_dict()},
                              trainer)
        results = bench.evaluate_heads(lambda d: bench.head_method(stage, trained["checkpoints"][d]))
        return {"method": method_name, "model_config": model_config.to_dict(), "config": config.to_params(),
                **trained, "results": results, "metrics": table_metrics(results)}

    return _stage(bench.setup, stage, compute)


def _protocol_depth() -> int:
    from irkit.benchmarks import get_benchmark
    from irkit.experiments.setup import BENCHMARKS

    return max(get_benchmark(d).ranking_depth() for d in BENCHMARKS)


def _stage1_depth(budget: FusionBudget) -> int:
    """Stage-I candidates kept per query: the largest K, at least the protocols' depth (50)."""
    return max(max(budget.rerank_ks), _protocol_depth())


def _default_val_k(budget: FusionBudget) -> int:
    """The smallest K of ``rerank_ks`` the validation protocols can score (K >= the ranking
    depth, 50: the library scores re-ranked lists on their own), else that depth."""
    depth = _protocol_depth()
    return min([k for k in budget.rerank_ks if k >= depth] or [depth])


def _head_topk(bench: _Bench, heads: Mapping[str, Mapping[str, Any]], head: str, trained_on: str,
               splits: Sequence[Any], depth: int) -> list[Any]:
    """Top-``depth`` parts of ``splits`` ranked by head stage ``head`` trained on ``trained_on``."""
    from irkit.cir.topk import stage1_topk

    method = bench.head_method(head, heads[head]["checkpoints"][trained_on])
    return [stage1_topk(method, bench.ctx, split, depth) for split in splits]


def _stage1_stage(bench: _Bench, heads: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Choose stage I per training benchmark and write the top-K file of every val split."""
    from irkit.cir.topk import save_topk_file

    def compute(stage_dir: Path) -> dict[str, Any]:
        choice, selection = {}, {}
        for dataset in TRAIN_DATASETS:
            values = {stage: _selection_value(r["results"][dataset], dataset) for stage, r in heads.items()}
            selection[dataset] = values
            choice[dataset] = bench.budget.stage1 or max(values, key=values.get)  # first wins a tie
        depth = _stage1_depth(bench.budget)
        parts = [part for dataset, splits in bench.val_splits.items() for part in
                 _head_topk(bench, heads, choice[TRAINED_ON[dataset]], TRAINED_ON[dataset], splits, depth)]
        topk_path = save_topk_file(stage_dir / TOPK_FILE, parts)
        results = {d: heads[choice[TRAINED_ON[d]]]["results"][d] for d in bench.val_splits}
        return {"choice": choice, "selection": selection, "forced": bench.budget.stage1, "k": depth,
                "topk_file": _relative(bench.setup, topk_path),
                "checkpoints": {d: heads[choice[d]]["checkpoints"][d] for d in TRAIN_DATASETS},
                "results": results, "metrics": table_metrics(results)}

    return _stage(bench.setup, "stage1", compute)


def _stage1_train_stage(bench: _Bench, heads: Mapping[str, Mapping[str, Any]],
                        stage1: Mapping[str, Any]) -> dict[str, Any]:
    """The chosen stage-I head's top-N of every training split, N = the larger of
    ``hard_negative_pool`` and the val stage-I depth: hard-negative pools (its first
    ``hard_negative_pool``) and the training-split choice of the score-fusion weight."""
    from irkit.cir.topk import save_topk_file

    depth = max(bench.budget.hard_negative_pool, _stage1_depth(bench.budget))

    def compute(stage_dir: Path) -> dict[str, Any]:
        parts = [part for dataset in TRAIN_DATASETS for part in
                 _head_topk(bench, heads, stage1["choice"][dataset], dataset, bench.train_splits[dataset], depth)]
        path = save_topk_file(stage_dir / TRAIN_TOPK_FILE, parts)
        return {"choice": stage1["choice"], "k": depth,
                "topk_file": _relative(bench.setup, path)}

    return _stage(bench.setup, "stage1-train", compute)


def _stage_parts(bench: _Bench, stage_result: Mapping[str, Any], splits: Sequence[Any]) -> list[Any]:
    """The top-K parts of ``splits`` in the file a stage-I stage (``stage1`` / ``stage1-train``) wrote."""
    from irkit.cir.topk import load_topk_parts

    return load_topk_parts(_absolute(bench.setup, stage_result["topk_file"]), splits)


def _reranker_stage(bench: _Bench, stage1: Mapping[str, Any],
                    stage1_train: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Train the cross-encoder per benchmark: in-batch negatives (stage ``reranker``), or with
    hard negatives from ``stage1_train`` as well (stage ``reranker-hn``)."""
    from irkit.cir.training import TrainingConfig
    from irkit.workflows.cir import head_model_config, train_head

    budget, dim = bench.budget, bench.loaded.embed_dim
    model_config = head_model_config("reranker", dim, depth=budget.reranker_depth, num_heads=budget.reranker_heads)
    config = TrainingConfig(steps=budget.reranker_steps, batch_size=budget.reranker_batch_size,
                                learning_rate=budget.reranker_lr, weight_decay=budget.head_weight_decay,
                                validate_every=budget.reranker_validate_every, seed=bench.setup.seed,
                                precision=bench.setup.precision)
    val_k = budget.reranker_val_k or _default_val_k(budget)
    negatives = {"hard_negatives": budget.hard_negatives if stage1_train else 0,
                 "hard_negative_pool": budget.hard_negative_pool if stage1_train else None}

    def trainer(dataset: str, run: Any) -> Any:
        train, val = bench.train_splits[dataset], bench.val_splits[dataset]
        return train_head("reranker", bench.ctx, train, run, config, model_config,
                          val_splits=val, val_stage1=_stage_parts(bench, stage1, val), k=val_k, resume="latest",
                          train_stage1=_stage_parts(bench, stage1_train, train) if stage1_train else (),
                          hard_negatives=negatives["hard_negatives"], negative_pool=negatives["hard_negative_pool"])

    def compute(stage_dir: Path) -> dict[str, Any]:
        trained = _train_runs(bench, stage_dir, "reranker",
                              {**config.to_params(), **model_config.to_dict(), "val_k": val_k, **negatives}, trainer)
        return {"model_config": model_config.to_dict(), "config": config.to_params(), "val_k": val_k, **negatives,
                **trained}

    return _stage(bench.setup, "reranker-hn" if stage1_train else "reranker", compute)


def rank_change_counts(split: Any, stage1: Any, reranked: Any) -> dict[str, int]:
    """How stage II moved each query's target inside the top-K (:func:`target_rank_changes`
    on the stage-I list cut to the re-ranked K)."""
    from irkit.methods.rerank import target_rank_changes

    stage1_top = replace(stage1, k=reranked.k, ids=[ids[:reranked.k] for ids in stage1.ids],
                         scores=[scores[:reranked.k] for scores in stage1.scores])
    counts = {"queries": 0, "target_in_topk": 0, "up": 0, "down": 0, "unchanged": 0, "top1_before": 0,
              "top1_after": 0}
    for _, before, after in target_rank_changes(split, stage1_top, reranked):
        counts["queries"] += 1
        if before is None:
            continue
        counts["target_in_topk"] += 1
        counts["up" if after < before else "down" if after > before else "unchanged"] += 1
        counts["top1_before"] += before == 1
        counts["top1_after"] += after == 1
    return counts


def _score_reranked(bench: _Bench, dataset: str, splits: Sequence[Any], parts: Sequence[Any],
                    method: Any) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """``(results, re-ranked parts, rank changes)`` of re-ranking ``parts`` of ``splits`` with
    ``method``, scored as the table scores (re-ranked top-K, then stage-I ranks K+1..)."""
    from irkit.cir.protocol import combine_split_results, evaluate_rankings
    from irkit.methods.rerank import rankings_with_tail

    split_results, reranked_parts, changes = [], [], {}
    for split, part in zip(splits, parts):
        reranked = method.rerank(bench.ctx, split)
        reranked_parts.append(reranked.topk)
        split_results.append(evaluate_rankings(
            split, rankings_with_tail(reranked.topk, part), subset_rankings=reranked.subset_rankings,
            shared_concept=bench.shared_concept(dataset)))
        changes["/".join(filter(None, (dataset, split.category)))] = rank_change_counts(split, part, reranked.topk)
    return combine_split_results(splits, split_results), reranked_parts, changes


def _rerank_stage(bench: _Bench, stage1: Mapping[str, Any], reranker: Mapping[str, Any], k: int, name: str,
                  stage1_train: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Stage I + II at ``k`` on every val split. Without ``stage1_train`` the stage-II score
    alone re-sorts (published); with it, ``stage2 + w * stage1`` where w is chosen per training
    benchmark on its *training* split (:func:`irkit.methods.rerank.choose_stage1_weight`, by
    the benchmark's selection metric), so the val numbers play no part in the choice."""
    from irkit.cir.registry import create_method
    from irkit.cir.topk import save_topk_file
    from irkit.methods.rerank import choose_stage1_weight

    def reranker_method(dataset: str, parts: Sequence[Any], weight: float) -> Any:
        return create_method("rerank", checkpoint=_absolute(bench.setup, reranker["checkpoints"][dataset]),
                             stage1=list(parts), k=k, include_shared_concept=bench.budget.include_shared_concept,
                             stage1_weight=weight)

    def choose(dataset: str) -> tuple[float, dict[float, float]]:
        parts = _stage_parts(bench, stage1_train, bench.train_splits[dataset])
        method = reranker_method(dataset, parts, 0.0)

        def score(weight: float) -> float:
            method.stage1_weight = weight  # the stage-II scores are computed once, re-sorted per weight
            results, _, _ = _score_reranked(bench, dataset, bench.train_splits[dataset], parts, method)
            return _selection_value(results, dataset)

        return choose_stage1_weight(score)

    def compute(stage_dir: Path) -> dict[str, Any]:
        weights, weight_scores = {d: 0.0 for d in TRAIN_DATASETS}, {}
        if stage1_train is not None:
            for dataset in TRAIN_DATASETS:
                weights[dataset], weight_scores[dataset] = choose(dataset)
        results, reranked_parts, changes = {}, [], {}
        for dataset, splits in bench.val_splits.items():
            parts = _stage_parts(bench, stage1, bench.val_splits[dataset])
            method = reranker_method(TRAINED_ON[dataset], parts, weights[TRAINED_ON[dataset]])
            results[dataset], dataset_parts, dataset_changes = _score_reranked(bench, dataset, splits, parts, method)
            reranked_parts += dataset_parts
            changes.update(dataset_changes)
        reranked_path = save_topk_file(stage_dir / RERANKED_FILE, reranked_parts)
        return {"k": k, "reranked_file": _relative(bench.setup, reranked_path), "stage1_choice": stage1["choice"],
                "reranker_checkpoints": reranker["checkpoints"], "stage1_weights": weights,
                "stage1_weight_scores_on_train": {d: {str(w): v for w, v in scores.items()}
                                                  for d, scores in weight_scores.items()},
                "rank_changes": changes, "results": results, "metrics": table_metrics(results)}

    return _stage(bench.setup, name, compute)


# --------------------------------------------------------------------------- rows


def fusion_rows(setup: CIRBenchSetup) -> list[dict[str, Any]]:
    """Rows of the CIR table for the trained heads and two-stage re-ranking.

    Trains (frozen backbone ``setup.model`` / ``setup.pretrained`` / ``setup.clip_checkpoint``,
    cached features) on the FashionIQ and CIRR training triplets, one head per benchmark, and
    scores FashionIQ val (category averages), CIRR val and CIRCO val (CIRR-trained heads).
    Rows, in order: fusion without projector, fusion with the trained projector (irkit
    structure), Combiner, [fusion with the trained published-structure projector, when budget
    ``published_projector``; not a stage-I candidate], stage I alone, then per re-ranker (in-batch; with ``hard_negatives`` > 0 also the
    hard-negative one) stage I + II at each ``rerank_ks`` K sorted by the stage-II score
    alone, then at each K with score fusion (weight chosen on the training split). Stages
    are resumable (module doc).
    Returns :func:`irkit.experiments.setup.table_row` dicts (metrics as fractions).
    """
    budget = resolve_budget(setup)
    bench = _Bench(setup, budget)
    heads = {stage: _head_stage(bench, stage) for stage in HEADS}
    optional = {stage: _head_stage(bench, stage) for stage in OPTIONAL_HEADS if budget.published_projector}
    stage1 = _stage1_stage(bench, heads)
    ks = sorted(set(budget.rerank_ks))
    stage1_train = _stage1_train_stage(bench, heads, stage1)
    rerankers = {"": _reranker_stage(bench, stage1)}
    if budget.hard_negatives:
        rerankers["-hn"] = _reranker_stage(bench, stage1, stage1_train)
    reranked = {}
    for variant, reranker in rerankers.items():
        for fused in (False, True):
            for k in ks:
                name = f"rerank{variant}{'-fused' if fused else ''}-k{k}"
                reranked[(variant, fused, k)] = _rerank_stage(bench, stage1, reranker, k, name,
                                                              stage1_train if fused else None)

    backbone = setup.model + (f" ({Path(setup.clip_checkpoint).name})" if setup.clip_checkpoint else
                              f" ({setup.pretrained})" if setup.pretrained else " (random init)")
    circo_text = "with" if budget.include_shared_concept else "without"
    common = (f"frozen {backbone}; one head per train split (FashionIQ, CIRR); CIRCO val scored with the "
              f"CIRR-trained head (CIRCO has no train split), query text {circo_text} shared_concept; "
              "best.pt chosen on val by the selection metric")
    rows = []
    for stage, (_, _, label) in [*HEADS.items(), *((s, v) for s, v in OPTIONAL_HEADS.items() if s in optional)]:
        result = {**heads, **optional}[stage]
        projector = f"{PROJECTOR_NOTES[stage]}; " if stage in PROJECTOR_NOTES else ""
        rows.append(table_row(label, "fusion", result["metrics"],
                              f"{result['config']['steps']} steps, lr {result['config']['learning_rate']:g}; "
                              + projector + common))
    choice = stage1["choice"]
    stage1_label = "Stage I alone (" + ("; ".join(f"{d}: {choice[d]}" for d in TRAIN_DATASETS)) + ")"
    rows.append(table_row(stage1_label, "re-ranking", stage1["metrics"],
                          ("forced by budget" if stage1["forced"] else "best val selection metric per benchmark")
                          + f" = the rows above; top-{stage1['k']} file stage1/{TOPK_FILE}"))
    for (variant, fused, k), result in reranked.items():
        reranker = rerankers[variant]
        tail = "; ranks > K keep the stage-I order" if k < _stage1_depth(budget) else ""
        negatives = (f"in-batch + {reranker['hard_negatives']} hard negatives per query from the stage-I "
                     f"top-{reranker['hard_negative_pool']} of the train split (irkit option)" if variant
                     else "in-batch negatives (published recipe)")
        if fused:
            weights = result["stage1_weights"]
            sort_rule = ("sorted by stage-II + w x stage-I score, w chosen on the train split by the selection "
                         "metric (" + ", ".join(f"{d}: {weights[d]:g}" for d in TRAIN_DATASETS) + "; irkit option)")
        else:
            sort_rule = "sorted by the stage-II score alone (published)"
        label = ("Stage I + II re-ranking" + (" (hard negatives)" if variant else "")
                 + (" + score fusion" if fused else "") + f", K={k}")
        rows.append(table_row(label, "re-ranking", result["metrics"],
                              f"cross-encoder over candidate patch tokens, {reranker['config']['steps']} steps, "
                              f"{negatives}, re-sorts the stage-I top-{k}{tail}, {sort_rule}; " + common))
    return rows


def stage_results(setup: CIRBenchSetup) -> dict[str, dict[str, Any]]:
    """The ``result.json`` of every finished stage under ``setup.out_dir`` (for reports)."""
    out = {}
    for path in sorted(Path(setup.out_dir).glob(f"*/{RESULT_FILE}")):
        out[path.parent.name] = read_json(path)
    return out


__all__: Sequence[str] = ("FusionBudget", "DEFAULT_BUDGETS", "resolve_budget", "fusion_rows",
                          "rank_change_counts", "stage_results")
