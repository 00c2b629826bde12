"""One wiring per CIR workflow, called by the CLI (``irkit cir ...``), the CIR table driver
(:mod:`irkit.experiments`) and the notebooks alike:

* :func:`train_phi` — SEARLE (distillation from OTI tokens) or LinCIR (text only) phi;
* :func:`head_model_config` + :func:`train_head` — the fusion head (with or without the vision
  projector), the Combiner, the stage-II re-ranker;
* :func:`write_stage1_file` — a stage-I top-K file of any registered method;
* :func:`rerank` — stage II over stage-I candidates, scored and/or written.

The trainers take an opened run folder (:func:`irkit.cir.training.open_run`) and return the
loop's :class:`~irkit.train.loop.TrainResult`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from irkit.cir.context import CIRContext
from irkit.cir.evaluate import evaluate_method
from irkit.cir.registry import EmbeddingMethod
from irkit.cir.topk import TopK, default_k, save_topk_file, stage1_topk
from irkit.cir.training import TrainingConfig
from irkit.data.records import CIRSplit
from irkit.errors import InputError
from irkit.runs import RunFolder
from irkit.train.loop import TrainResult

#: Trainable heads: ``kind`` -> the registered method that evaluates it.
HEAD_METHODS = {"magiclens": "magiclens", "combiner": "combiner", "reranker": "rerank"}
#: Phi trainers by method.
PHI_METHODS = ("searle", "lincir")


def train_phi(method: str, loaded: Any, run: RunFolder, config: TrainingConfig, *, oti: Any = None,
              captions: Optional[Sequence[str]] = None, phrase_bank: Any = None, validator: Any = None,
              resume: Optional[str] = None, temperature: float = 0.25, lambda_reg: float = 0.75,
              top_k_concepts: int = 150, masking: str = "spans") -> TrainResult:
    """Train phi of ``method``: ``searle`` distils OTI tokens (``oti``: an
    :class:`~irkit.methods.searle.OTITokens`, with the phrase regulariser of ``phrase_bank``
    over each image's ``top_k_concepts`` nearest concepts, published 150); ``masking`` picks
    LinCIR's keyword masking (``spans``, irkit, or ``published``);
    ``lincir`` learns from ``captions`` alone. ``validator`` keeps ``best.pt``."""
    if method == "searle":
        from irkit.methods.searle import train_phi_searle

        if oti is None:
            raise InputError("searle phi training needs OTI tokens (--oti, an OTI folder from `irkit cir oti`)",
                             field="oti")
        return train_phi_searle(loaded, oti, run, config, phrase_bank, validator, resume, temperature=temperature,
                                lambda_reg=lambda_reg, top_k_concepts=top_k_concepts)
    if method == "lincir":
        from irkit.methods.lincir import train_phi_lincir

        if captions is None:
            raise InputError("lincir phi training needs captions (--captions, a .txt or caption CSV)",
                             field="captions")
        return train_phi_lincir(loaded, captions, run, config, validator, resume, masking=masking)
    raise InputError(f"phi is trained for {', '.join(PHI_METHODS)}; got method {method!r}", field="method")


def head_model_config(kind: str, embed_dim: int, **options: Any) -> Any:
    """The model config of head ``kind`` at backbone width ``embed_dim``.

    ``magiclens``: ``depth``, ``num_heads``, ``projector``, ``projector_trainable``,
    ``projector_zero_init``, ``projector_style`` (``irkit`` or ``published``); ``combiner``: ``projection_dim``, ``hidden_dim``, ``published``;
    ``reranker``: ``depth``, ``num_heads``. Options left as None take the config's defaults.
    """
    given = {k: v for k, v in options.items() if v is not None}
    if kind == "magiclens":
        from irkit.models.fusion import FusionConfig

        return FusionConfig(embed_dim=embed_dim, **given)
    if kind == "combiner":
        from irkit.models.combiner import CombinerConfig

        return CombinerConfig.scaled(embed_dim, given.get("projection_dim"), given.get("hidden_dim"),
                                     published=bool(given.get("published", False)))
    if kind == "reranker":
        from irkit.models.reranker import RerankerConfig

        return RerankerConfig(embed_dim=embed_dim, token_dim=embed_dim, **given)
    raise InputError(f"unknown head {kind!r}; expected one of {', '.join(HEAD_METHODS)}", field="kind")


def train_head(kind: str, ctx: CIRContext, train_splits: Sequence[CIRSplit], run: RunFolder, config: TrainingConfig,
               model_config: Any, val_splits: Sequence[CIRSplit] = (), metric: Optional[str] = None,
               resume: Optional[str] = None, val_stage1: Sequence[TopK] = (), k: Optional[int] = None,
               train_stage1: Sequence[TopK] = (), hard_negatives: int = 0,
               negative_pool: Optional[int] = None) -> TrainResult:
    """Train head ``kind`` on ``train_splits`` (validated on ``val_splits``; the re-ranker on
    fixed stage-I candidates ``val_stage1``, with optional hard negatives from ``train_stage1``)."""
    if kind == "magiclens":
        from irkit.methods.fusion import train_fusion

        return train_fusion(ctx, train_splits, run, config, model_config, val_splits, metric, resume)
    if kind == "combiner":
        from irkit.methods.combiner import train_combiner

        return train_combiner(ctx, train_splits, run, config, model_config, val_splits, metric, resume)
    if kind == "reranker":
        from irkit.methods.rerank import train_reranker

        return train_reranker(ctx, train_splits, run, config, model_config, val_splits, val_stage1, metric, k,
                              resume, train_stage1=train_stage1, hard_negatives=hard_negatives,
                              negative_pool=negative_pool)
    raise InputError(f"unknown head {kind!r}; expected one of {', '.join(HEAD_METHODS)}", field="kind")


def write_stage1_file(method: EmbeddingMethod, ctx: CIRContext, splits: Sequence[CIRSplit], out: os.PathLike | str,
                      k: Optional[int] = None) -> list[TopK]:
    """Stage I: each split's top-``k`` candidates by ``method`` (default: the benchmark's re-ranking
    depth), saved as one top-K file ``out`` (atomic); returns the parts."""
    parts = [stage1_topk(method, ctx, split, k or default_k(split.dataset)) for split in splits]
    save_topk_file(out, parts)
    return parts


def rerank(ctx: CIRContext, splits: Sequence[CIRSplit], reranker: os.PathLike | str, stage1: Any,
           k: Optional[int] = None, include_shared_concept: bool = False, stage1_weight: float = 0.0,
           stage1_tail: bool = False, out: Optional[os.PathLike | str] = None, evaluate: bool = True,
           stage1_checkpoint: Optional[os.PathLike | str] = None,
           stage1_options: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Stage II with checkpoint ``reranker`` over ``stage1`` (a top-K file, a method name or a
    method): the metrics (annotated splits, unless ``evaluate`` is False) and/or the re-ranked
    top-K file ``out``. ``stage1_tail`` scores a re-ranked top-K shorter than the protocol's depth
    with the stage-I candidates after rank K appended in their stage-I order (irkit option)."""
    from irkit.cir.registry import create_method

    method = create_method("rerank", checkpoint=reranker, stage1=stage1, k=k, stage1_checkpoint=stage1_checkpoint,
                           stage1_options=stage1_options, include_shared_concept=include_shared_concept,
                           stage1_weight=stage1_weight, stage1_tail=stage1_tail)
    output: dict[str, Any] = {"method": "rerank", "stage1": str(stage1) if isinstance(stage1, (str, Path)) else
                              getattr(stage1, "name", "top-K parts")}
    annotated = all(q.target is not None for split in splits for q in split.queries)
    if annotated and evaluate:  # scored first: a failure writes nothing
        output["metrics"] = evaluate_method(method, ctx, splits, include_shared_concept)
    if out is not None:
        save_topk_file(out, [method.rerank(ctx, split).topk for split in splits])
        output["out"] = str(out)
    return output


def describe_result(run: RunFolder, result: TrainResult) -> dict[str, Any]:
    """The one JSON line a training command prints."""
    return {"run_dir": str(run.path), "best_checkpoint": str(result.best_checkpoint or ""),
            "best_value": result.best_value, "best_step": result.best_step,
            "latest_checkpoint": str(result.latest_checkpoint or ""), "steps": result.step,
            "precision": result.precision}

