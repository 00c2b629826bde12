"""``irkit cir`` sub-commands for trained fusion and two-stage re-ranking (methods.md §D-G).

    irkit cir train-fusion   --dataset cirr --root R --val-dataset cirr --val-root R [--projector]
    irkit cir train-combiner --dataset fashioniq --root R --val-dataset fashioniq --val-root R
    irkit cir stage1         --dataset cirr --root R --split val --method magiclens --method-checkpoint best.pt \
                             --k 50 --out topk.json
    irkit cir train-reranker --dataset cirr --root R --val-dataset cirr --val-root R --val-stage1 topk.json
    irkit cir rerank         --dataset cirr --root R --split val --reranker best.pt --stage1 topk.json \
                             [--out reranked.json]

Training commands write a run folder (``log/<name>/``: out.log, params.txt, checkpoints/
{epoch_<n>,latest,best}.pt, results.jsonl, tensorboard/) and continue one with
``--name N --resume latest``; they print one JSON line. ``cir eval`` / ``cir submit`` with
``--method magiclens|combiner --method-checkpoint best.pt`` score a trained head like any other
method; ``cir rerank`` scores the two-stage system through the same protocols.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from irkit.cli.cir_options import (
    add_context_arguments,
    add_data_arguments,
    add_method_arguments,
    build_method,
    cir_context,
    load_splits,
)


def _add_training_arguments(parser: argparse.ArgumentParser, lr: float, wd: float, batch_size: int) -> None:
    add_data_arguments(parser, default_split="train")
    add_data_arguments(parser, prefix="val-", required=False)
    add_context_arguments(parser)
    parser.add_argument("--val-metric", default=None,
                        help="metric selecting best.pt (default: (R@5+Rs@1)/2 CIRR, R@10 FashionIQ, mAP@10 CIRCO)")
    parser.add_argument("--include-shared-concept", action="store_true",
                        help="CIRCO query template 'find {shared_concept} but {caption}'")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--train-batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--wd", type=float, default=wd, help="AdamW weight decay (0 = Adam)")
    parser.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    parser.add_argument("--validate-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", type=Path, default=Path("log"))
    parser.add_argument("--name", default=None, help="run name (default: date-model-lr-batch-kind)")
    parser.add_argument("--resume", default=None, help="'latest' (with --name) or a checkpoint path")


def register(cir_subparsers: argparse._SubParsersAction) -> None:
    """Add train-fusion, train-combiner, stage1, train-reranker and rerank to ``irkit cir``."""
    fusion = cir_subparsers.add_parser(
        "train-fusion", help="train a MagicLens-style fusion head (optionally with the vision projector)")
    _add_training_arguments(fusion, lr=1e-4, wd=0.01, batch_size=64)
    fusion.add_argument("--depth", type=int, default=4, help="transformer layers (MagicLens: 4)")
    fusion.add_argument("--heads", type=int, default=8, help="attention heads (MagicLens base 8, large 16)")
    fusion.add_argument("--projector", action="store_true", help="add the vision projector (methods.md §E)")
    fusion.add_argument("--projector-frozen", action="store_true",
                        help="keep the projector at its random init (the published, untrained set-up)")
    fusion.add_argument("--projector-random-init", action="store_true",
                        help="random projector init instead of the identity start")
    fusion.set_defaults(func=_run_train, kind="magiclens")

    combiner = cir_subparsers.add_parser("train-combiner", help="train a CLIP4Cir Combiner")
    _add_training_arguments(combiner, lr=2e-5, wd=0.0, batch_size=64)
    combiner.add_argument("--projection-dim", type=int, default=None, help="P (default 4d; published 2560)")
    combiner.add_argument("--hidden-dim", type=int, default=None, help="H (default 8d; published 5120)")
    combiner.add_argument("--published-sizes", action="store_true", help="P=2560, H=5120 whatever the backbone")
    combiner.set_defaults(func=_run_train, kind="combiner")

    reranker = cir_subparsers.add_parser("train-reranker", help="train the stage-II re-ranking cross-encoder")
    _add_training_arguments(reranker, lr=1e-4, wd=0.01, batch_size=32)
    reranker.add_argument("--depth", type=int, default=2, help="cross-attention blocks")
    reranker.add_argument("--heads", type=int, default=8)
    reranker.add_argument("--val-stage1", default="image-text-sum",
                          help="validation stage I: a method name or a top-K file of the validation split")
    reranker.add_argument("--val-stage1-checkpoint", default=None, help="checkpoint of the stage-I method")
    reranker.add_argument("--k", type=int, default=None, help="candidates re-ranked (default 50 CIRR, 100 FashionIQ)")
    reranker.add_argument("--hard-negatives", type=int, default=0,
                          help="per query, add N negatives from its stage-I top-K on the training split "
                               "(irkit option; default 0 = in-batch negatives only, the published recipe)")
    reranker.add_argument("--train-stage1", default=None,
                          help="stage I of the training split for --hard-negatives: a method name or a top-K file")
    reranker.add_argument("--train-stage1-checkpoint", default=None, help="checkpoint of that stage-I method")
    reranker.add_argument("--negative-pool", type=int, default=50,
                          help="hard negatives are drawn from each query's stage-I top-N (default 50)")
    reranker.set_defaults(func=_run_train, kind="reranker")

    stage1 = cir_subparsers.add_parser("stage1", help="write a stage-I top-K file with any registered method")
    add_data_arguments(stage1)
    add_method_arguments(stage1)
    add_context_arguments(stage1)
    stage1.add_argument("--k", type=int, default=None, help="candidates per query (default 50 CIRR, 100 FashionIQ)")
    stage1.add_argument("--out", type=Path, required=True, help="top-K JSON file to write")
    stage1.set_defaults(func=_run_stage1)

    rerank = cir_subparsers.add_parser("rerank", help="stage II: re-rank stage-I candidates; print metrics "
                                       "(annotated splits) and/or write the re-ranked top-K file")
    add_data_arguments(rerank)
    add_context_arguments(rerank)
    rerank.add_argument("--reranker", type=Path, required=True, help="re-ranker checkpoint (train-reranker)")
    rerank.add_argument("--stage1", required=True, help="a top-K file (cir stage1) or a stage-I method name")
    rerank.add_argument("--stage1-checkpoint", default=None, help="checkpoint of the stage-I method")
    rerank.add_argument("--stage1-option", action="append", default=[], metavar="KEY=VALUE")
    rerank.add_argument("--include-shared-concept", action="store_true")
    rerank.add_argument("--k", type=int, default=None, help="re-rank the first K stage-I candidates")
    rerank.add_argument("--stage1-weight", type=float, default=0.0,
                        help="sort by stage-II + W x stage-I score (irkit score fusion; default 0: stage II alone, "
                             "as published). Choose W on a training split, not on the split you report")
    rerank.add_argument("--out", type=Path, default=None, help="write the re-ranked top-K file here")
    rerank.add_argument("--no-eval", action="store_true", help="only write --out, even on an annotated split")
    rerank.set_defaults(func=_run_rerank)


def _training_config(args: argparse.Namespace) -> Any:
    from irkit.cir.training import TrainingConfig

    return TrainingConfig(steps=args.steps, batch_size=args.train_batch_size, learning_rate=args.lr,
                              weight_decay=args.wd, warmup=args.warmup, validate_every=args.validate_every,
                              seed=args.seed, include_shared_concept=args.include_shared_concept)


def _val_splits(args: argparse.Namespace) -> list[Any]:
    from irkit.errors import InputError

    if args.val_dataset is None:
        return []
    if args.val_root is None:
        raise InputError("--val-dataset needs --val-root", field="val-root")
    return load_splits(args, "val_")


def _run_train(args: argparse.Namespace) -> int:
    from irkit.cir.training import open_run

    config = _training_config(args)
    ctx = cir_context(args)
    train_splits, val_splits = load_splits(args), _val_splits(args)
    params = {"kind": args.kind, "model": args.model, "pretrained": args.pretrained, "checkpoint": args.checkpoint,
              "dataset": args.dataset, "root": args.root, "split": args.split, "val_dataset": args.val_dataset,
              "val_root": args.val_root, "val_split": args.val_split, "method": args.kind, **config.to_params(),
              **{k: v for k, v in vars(args).items() if k in ("depth", "heads", "projector", "projection_dim",
                                                               "hidden_dim", "val_stage1", "k", "hard_negatives",
                                                               "train_stage1", "negative_pool")}}
    run = open_run(args.log_dir, args.name, params, args.resume)
    try:
        result = _TRAINERS[args.kind](args, ctx, train_splits, val_splits, run, config)
    finally:
        run.close()
    print(json.dumps({"run_dir": str(run.path), "best_checkpoint": str(result.best_checkpoint or ""),
                      "best_value": result.best_value, "best_step": result.best_step,
                      "latest_checkpoint": str(result.latest_checkpoint or ""), "steps": result.step}))
    return 0


def _train_fusion(args: argparse.Namespace, ctx: Any, train_splits: list[Any], val_splits: list[Any],
                  run: Any, config: Any) -> Any:
    from irkit.methods.fusion import train_fusion
    from irkit.models.fusion import FusionConfig

    model_config = FusionConfig(embed_dim=ctx.loaded.embed_dim, depth=args.depth, num_heads=args.heads,
                                projector=args.projector, projector_trainable=not args.projector_frozen,
                                projector_zero_init=not args.projector_random_init)
    return train_fusion(ctx, train_splits, run, config, model_config, val_splits, args.val_metric, args.resume)


def _train_combiner(args: argparse.Namespace, ctx: Any, train_splits: list[Any], val_splits: list[Any],
                    run: Any, config: Any) -> Any:
    from irkit.methods.combiner import train_combiner
    from irkit.models.combiner import CombinerConfig

    model_config = CombinerConfig.scaled(ctx.loaded.embed_dim, args.projection_dim, args.hidden_dim,
                                         published=args.published_sizes)
    return train_combiner(ctx, train_splits, run, config, model_config, val_splits, args.val_metric, args.resume)


def _train_reranker(args: argparse.Namespace, ctx: Any, train_splits: list[Any], val_splits: list[Any],
                    run: Any, config: Any) -> Any:
    from irkit.errors import InputError
    from irkit.methods.rerank import stage1_parts, train_reranker
    from irkit.models.reranker import RerankerConfig

    model_config = RerankerConfig(embed_dim=ctx.loaded.embed_dim, token_dim=ctx.loaded.embed_dim, depth=args.depth,
                                  num_heads=args.heads)
    val_stage1 = []
    if val_splits:
        val_stage1 = stage1_parts(args.val_stage1, ctx, val_splits, k=args.k,
                                  checkpoint=args.val_stage1_checkpoint,
                                  include_shared_concept=args.include_shared_concept)
    train_stage1 = []
    if args.hard_negatives:
        if args.train_stage1 is None:
            raise InputError("--hard-negatives needs --train-stage1 (a method name or a top-K file of the "
                             "training split)", field="train-stage1")
        train_stage1 = stage1_parts(args.train_stage1, ctx, train_splits, k=args.negative_pool,
                                    checkpoint=args.train_stage1_checkpoint,
                                    include_shared_concept=args.include_shared_concept)
    return train_reranker(ctx, train_splits, run, config, model_config, val_splits, val_stage1, args.val_metric,
                          args.k, args.resume, train_stage1=train_stage1, hard_negatives=args.hard_negatives,
                          negative_pool=args.negative_pool)


_TRAINERS = {"magiclens": _train_fusion, "combiner": _train_combiner, "reranker": _train_reranker}


def _run_stage1(args: argparse.Namespace) -> int:
    from irkit.cir.topk import default_k, save_topk_file, stage1_topk

    ctx, method = cir_context(args), build_method(args)
    parts = [stage1_topk(method, ctx, split, args.k or default_k(split.dataset)) for split in load_splits(args)]
    save_topk_file(args.out, parts)
    print(json.dumps({"out": str(args.out), "method": args.method, "parts": len(parts),
                      "k": [p.k for p in parts], "queries": sum(len(p.query_ids) for p in parts)}))
    return 0


def _run_rerank(args: argparse.Namespace) -> int:
    from irkit.cir.registry import create_method
    from irkit.cir.topk import is_topk_path, save_topk_file
    from irkit.cir.evaluate import evaluate_method

    ctx, splits = cir_context(args), load_splits(args)
    stage1: Any = args.stage1
    if not is_topk_path(args.stage1):
        stage1 = build_method(argparse.Namespace(method=args.stage1, method_checkpoint=args.stage1_checkpoint,
                                            method_option=args.stage1_option,
                                            include_shared_concept=args.include_shared_concept))
    method = create_method("rerank", checkpoint=args.reranker, stage1=stage1, k=args.k,
                           include_shared_concept=args.include_shared_concept, stage1_weight=args.stage1_weight)
    output: dict[str, Any] = {"method": "rerank", "stage1": args.stage1}
    annotated = all(q.target is not None for split in splits for q in split.queries)
    if annotated and not args.no_eval:  # scored first: a failure writes nothing
        output["metrics"] = evaluate_method(method, ctx, splits, args.include_shared_concept)
    if args.out is not None:
        save_topk_file(args.out, [method.rerank(ctx, split).topk for split in splits])
        output["out"] = str(args.out)
    print(json.dumps(output, indent=2))
    return 0
