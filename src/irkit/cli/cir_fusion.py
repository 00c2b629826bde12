"""``irkit cir`` sub-commands for trained fusion and two-stage re-ranking (docs/methods.md §D-G).

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
from irkit.cli.common import (
    add_allow_param_change_argument,
    output_file,
    output_folder,
    positive_int,
    printed_training_result,
)
from irkit.metrics import as_fractions


def _add_training_arguments(parser: argparse.ArgumentParser, lr: float, wd: float, batch_size: int) -> None:
    add_data_arguments(parser, default_split="train")
    add_data_arguments(parser, prefix="val-", required=False)
    add_context_arguments(parser)
    parser.add_argument("--val-metric", default=None,
                        help="metric selecting best.pt (default: (R@5+Rs@1)/2 CIRR, R@10 FashionIQ, mAP@10 CIRCO)")
    parser.add_argument("--include-shared-concept", action="store_true",
                        help="CIRCO query template 'find {shared_concept} but {caption}'")
    parser.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps")
    parser.add_argument("--train-batch-size", type=positive_int, default=batch_size, help="training queries per step")
    parser.add_argument("--lr", type=float, default=lr, help="AdamW learning rate")
    parser.add_argument("--wd", type=float, default=wd, help="AdamW weight decay (0 = Adam)")
    parser.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    parser.add_argument("--validate-every", type=positive_int, default=100,
                        help="validate (and keep best.pt) every N steps")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--log-dir", type=output_folder, default=Path("log"), help="parent folder of the run folder")
    parser.add_argument("--name", default=None, help="run name (default: date-model-lr-batch-kind)")
    parser.add_argument("--resume", default=None, help="'latest' (with --name) or a checkpoint path")
    add_allow_param_change_argument(parser)


def register(cir_subparsers: argparse._SubParsersAction) -> None:
    """Add train-fusion, train-combiner, stage1, train-reranker and rerank to ``irkit cir``."""
    fusion = cir_subparsers.add_parser(
        "train-fusion", help="train a MagicLens-style fusion head (optionally with the vision projector)")
    _add_training_arguments(fusion, lr=1e-4, wd=0.01, batch_size=64)
    fusion.add_argument("--depth", type=int, default=4, help="transformer layers (MagicLens: 4)")
    fusion.add_argument("--heads", type=int, default=8, help="attention heads (MagicLens base 8, large 16)")
    fusion.add_argument("--projector", action="store_true", help="add the vision projector (docs/methods.md §E)")
    fusion.add_argument("--projector-frozen", action="store_true",
                        help="keep the projector at its random init (the published, untrained set-up)")
    fusion.add_argument("--projector-random-init", action="store_true",
                        help="random projector init instead of the identity start")
    fusion.add_argument("--projector-style", choices=("irkit", "published"), default="irkit",
                        help="irkit: a residual per MLP block, exact GELU (default); published: the published "
                             "ResidualMLP, one residual around the 4 MLPs, tanh GELU, flax init (docs/methods.md §E)")
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
    reranker.add_argument("--heads", type=int, default=8, help="attention heads of each block")
    reranker.add_argument("--val-stage1", default="image-text-sum",
                          help="validation stage I: a method name or a top-K file of the validation split")
    reranker.add_argument("--val-stage1-checkpoint", default=None, help="checkpoint of the stage-I method")
    reranker.add_argument("--k", type=positive_int, default=None, help="candidates re-ranked (default 50 CIRR, 100 FashionIQ)")
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
    stage1.add_argument("--k", type=positive_int, default=None, help="candidates per query (default 50 CIRR, 100 FashionIQ)")
    stage1.add_argument("--out", type=output_file, required=True, help="top-K JSON file to write")
    stage1.set_defaults(func=_run_stage1)

    rerank = cir_subparsers.add_parser("rerank", help="stage II: re-rank stage-I candidates; print metrics "
                                       "(annotated splits) and/or write the re-ranked top-K file")
    add_data_arguments(rerank)
    add_context_arguments(rerank)
    rerank.add_argument("--reranker", type=Path, required=True, help="re-ranker checkpoint (train-reranker)")
    rerank.add_argument("--stage1", required=True, help="a top-K file (cir stage1) or a stage-I method name")
    rerank.add_argument("--stage1-checkpoint", default=None, help="checkpoint of the stage-I method")
    rerank.add_argument("--stage1-option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra option of the stage-I method (repeatable), as --method-option")
    rerank.add_argument("--include-shared-concept", action="store_true",
                        help="CIRCO: put shared_concept into the query text (recorded in the protocol)")
    rerank.add_argument("--k", type=positive_int, default=None, help="re-rank the first K stage-I candidates")
    rerank.add_argument("--stage1-weight", type=float, default=0.0,
                        help="sort by stage-II + W x stage-I score (irkit score fusion; default 0: stage II alone, "
                             "as published). Choose W on a training split, not on the split you report")
    rerank.add_argument("--stage1-tail", action="store_true",
                        help="with K below the protocol's depth (50), score the re-ranked top K followed by the "
                             "stage-I candidates after rank K in their stage-I order (how the README table scores "
                             "its K=20 rows; irkit option)")
    rerank.add_argument("--out", type=output_file, default=None, help="write the re-ranked top-K file here")
    rerank.add_argument("--no-eval", action="store_true", help="only write --out, even on an annotated split")
    rerank.set_defaults(func=_run_rerank)


def _training_config(args: argparse.Namespace) -> Any:
    from irkit.cir.training import TrainingConfig

    return TrainingConfig(steps=args.steps, batch_size=args.train_batch_size, learning_rate=args.lr,
                              weight_decay=args.wd, warmup=args.warmup, validate_every=args.validate_every,
                              seed=args.seed, include_shared_concept=args.include_shared_concept,
                              precision=args.precision)


def _val_splits(args: argparse.Namespace) -> list[Any]:
    from irkit.errors import InputError

    if args.val_dataset is None:
        return []
    if args.val_root is None:
        raise InputError("--val-dataset needs --val-root", field="val-root")
    return load_splits(args, "val_")


def _head_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model-config options of the head ``args.kind`` (:func:`irkit.workflows.cir.head_model_config`)."""
    if args.kind == "magiclens":
        return {"depth": args.depth, "num_heads": args.heads, "projector": args.projector,
                "projector_trainable": not args.projector_frozen, "projector_zero_init": not args.projector_random_init,
                "projector_style": args.projector_style}
    if args.kind == "combiner":
        return {"projection_dim": args.projection_dim, "hidden_dim": args.hidden_dim,
                "published": args.published_sizes}
    return {"depth": args.depth, "num_heads": args.heads}


def _reranker_candidates(args: argparse.Namespace, ctx: Any, train_splits: list[Any],
                         val_splits: list[Any]) -> dict[str, Any]:
    """Stage-I candidates the re-ranker trains against (validation; hard negatives)."""
    from irkit.errors import InputError
    from irkit.methods.rerank import stage1_parts

    if args.kind != "reranker":
        return {}
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
    return {"val_stage1": val_stage1, "k": args.k, "train_stage1": train_stage1,
            "hard_negatives": args.hard_negatives, "negative_pool": args.negative_pool}


def _run_train(args: argparse.Namespace) -> int:
    from irkit import distributed
    from irkit.cir.training import open_run
    from irkit.workflows.cir import describe_result, head_model_config, train_head

    distributed.init_process_group()  # under torchrun: before the model picks its device
    config = _training_config(args)
    ctx = cir_context(args)
    train_splits, val_splits = load_splits(args), _val_splits(args)
    params = {"kind": args.kind, "model": args.model, "pretrained": args.pretrained, "checkpoint": args.checkpoint,
              "dataset": args.dataset, "root": args.root, "split": args.split, "val_dataset": args.val_dataset,
              "val_root": args.val_root, "val_split": args.val_split, "method": args.kind, **config.to_params(),
              **{k: v for k, v in vars(args).items() if k in ("depth", "heads", "projector", "projector_style", "projection_dim",
                                                               "hidden_dim", "val_stage1", "k", "hard_negatives",
                                                               "train_stage1", "negative_pool")}}
    model_config = head_model_config(args.kind, ctx.loaded.embed_dim, **_head_options(args))
    candidates = _reranker_candidates(args, ctx, train_splits, val_splits)
    run = open_run(args.log_dir, args.name, params, args.resume, args.allow_param_change)
    with run.failure_recorded():
        result = train_head(args.kind, ctx, train_splits, run, config, model_config, val_splits, args.val_metric,
                            args.resume, **candidates)
    if distributed.is_main():
        print(json.dumps(printed_training_result(describe_result(run, result))))
    return 0


def _run_stage1(args: argparse.Namespace) -> int:
    from irkit.workflows.cir import write_stage1_file

    parts = write_stage1_file(build_method(args), cir_context(args), load_splits(args), args.out, args.k)
    print(json.dumps({"out": str(args.out), "method": args.method, "parts": len(parts),
                      "k": [p.k for p in parts], "queries": sum(len(p.query_ids) for p in parts)}))
    return 0


def _run_rerank(args: argparse.Namespace) -> int:
    from irkit.cli.common import parse_key_values
    from irkit.workflows.cir import rerank

    output = rerank(cir_context(args), load_splits(args), args.reranker, args.stage1, k=args.k,
                    include_shared_concept=args.include_shared_concept, stage1_weight=args.stage1_weight,
                    stage1_tail=args.stage1_tail, out=args.out, evaluate=not args.no_eval,
                    stage1_checkpoint=args.stage1_checkpoint,
                    stage1_options=parse_key_values(args.stage1_option, "--stage1-option", underscore_keys=True))
    if "metrics" in output:
        output["metrics"] = as_fractions(output["metrics"])
    print(json.dumps(output, indent=2))
    return 0
