"""``irkit cir``: zero-shot composed image retrieval (SEARLE, SEARLE-OTI, LinCIR, baselines, ...).

    irkit cir eval   --dataset cirr --root R --split val --method searle --method-checkpoint phi.pt
    irkit cir submit --dataset cirr --root R --split test1 --method lincir --method-checkpoint phi.pt --out DIR
    irkit cir oti    --dataset cirr --root R --split val --out oti/cirr-val
    irkit cir train-phi --method searle --oti oti/cirr-train --val-dataset cirr --val-root R
    irkit cir train-phi --method lincir --captions captions.csv --val-dataset circo --val-root R
    irkit cir phrases --out phrases.tsv

``eval`` prints ONE JSON object of metrics, as fractions in [0, 1] ("units": "fraction"), as
does every command that prints metrics. Every registered method works (an unknown
``--method`` lists them); ``--method-checkpoint`` is passed to it as ``checkpoint``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from irkit.cli import cir_fusion
from irkit.cli.cir_options import (
    add_context_arguments,
    add_data_arguments,
    add_method_arguments,
    build_method,
    cir_context,
    load_splits,
    loader_options,
)
from irkit.cli.common import (
    add_allow_param_change_argument,
    output_file,
    output_folder,
    parse_separator,
    positive_int,
    printed_training_result,
)
from irkit.metrics import as_fractions


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cir", help="composed image retrieval: evaluate, submit, OTI, train phi / fusion / re-ranker",
                                   description=__doc__)
    cir_subparsers = parser.add_subparsers(dest="cir_command", required=True)

    evaluate = cir_subparsers.add_parser("eval", help="score a method on an annotated split (prints JSON)")
    add_data_arguments(evaluate)
    add_method_arguments(evaluate)
    add_context_arguments(evaluate)
    evaluate.set_defaults(func=_run_eval)

    submit = cir_subparsers.add_parser("submit", help="write CIRR / CIRCO / FashionIQ test-server files")
    add_data_arguments(submit, default_split=None)
    add_method_arguments(submit)
    add_context_arguments(submit)
    submit.add_argument("--out", type=output_folder, required=True,
                        help="output folder for the submission file(s); existing ones are refused unless --overwrite")
    submit.add_argument("--overwrite", action="store_true", help="replace existing submission files in --out")
    submit.set_defaults(func=_run_submit)

    oti = cir_subparsers.add_parser("oti", help="SEARLE OTI pseudo tokens per image (resumable)")
    add_data_arguments(oti)
    add_context_arguments(oti)
    oti.add_argument("--images", choices=["references", "gallery", "all"], default="references",
                     help="which images of the split get a pseudo token")
    oti.add_argument("--out", type=output_folder, required=True, help="OTI folder (re-running resumes it)")
    oti.add_argument("--steps", type=positive_int, default=350, help="optimisation steps per image (SEARLE: 350)")
    oti.add_argument("--oti-batch-size", type=int, default=32, help="images optimised together")
    oti.add_argument("--lr", type=float, default=2e-2, help="AdamW learning rate of the pseudo tokens")
    oti.add_argument("--wd", type=float, default=0.01, help="AdamW weight decay")
    oti.add_argument("--ema-decay", type=float, default=0.99, help="decay of the token's exponential moving average")
    oti.add_argument("--top-k-concepts", type=positive_int, default=15,
                     help="regularisation phrases from each image's top-K concepts (published OTI: 15)")
    oti.add_argument("--seed", type=int, default=0, help="random seed of the token initialisation")
    _add_phrase_arguments(oti)
    oti.set_defaults(func=_run_oti)

    train = cir_subparsers.add_parser("train-phi", help="train phi: SEARLE distillation or LinCIR (text only)")
    train.add_argument("--method", required=True, choices=["searle", "lincir"],
                       help="searle: distil OTI tokens (needs --oti); lincir: text-only training (needs --captions)")
    add_context_arguments(train)
    train.add_argument("--oti", type=Path, default=None, help="searle: OTI folder of the training images")
    train.add_argument("--captions", type=Path, default=None,
                       help="lincir: captions (.txt one per line, or a filepath/title caption CSV)")
    train.add_argument("--csv-separator", type=parse_separator, default="\t",
                       help="caption CSV separator: tab (default), comma, semicolon, pipe or one character")
    train.add_argument("--caption-key", default="title", help="caption column of a caption CSV")
    add_data_arguments(train, prefix="val-", required=False)
    train.add_argument("--val-metric", default=None,
                       help="metric that selects the best checkpoint (default: (R@5+Rs@1)/2 CIRR, mAP@10 CIRCO, "
                            "R@10 FashionIQ)")
    train.add_argument("--include-shared-concept", action="store_true", help="CIRCO validation query text")
    train.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps")
    train.add_argument("--train-batch-size", type=positive_int, default=256, help="training examples per step")
    train.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    train.add_argument("--wd", type=float, default=0.01, help="AdamW weight decay")
    train.add_argument("--dropout", type=float, default=0.5, help="dropout inside phi")
    train.add_argument("--validate-every", type=positive_int, default=100, help="validate (and keep best.pt) every N steps")
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--temperature", type=float, default=0.25, help="searle: distillation temperature")
    train.add_argument("--lambda-reg", type=float, default=0.75, help="searle: phrase regulariser weight")
    train.add_argument("--masking", choices=("spans", "published"), default="spans",
                       help="lincir: keyword masking at spaCy spans (irkit, default) or LinCIR's str.replace "
                            "masking and tokenisation, exactly as published (docs/methods.md §C)")
    train.add_argument("--top-k-concepts", type=int, default=150,
                       help="searle: regularisation phrases from each image's top-K concepts (published 150; "
                            "OTI uses 15)")
    _add_phrase_arguments(train)
    train.add_argument("--log-dir", type=output_folder, default=Path("log"), help="parent folder of the run folder")
    train.add_argument("--name", default=None, help="run name (default: date-model-lr-batch-method)")
    train.add_argument("--resume", default=None, help="'latest' (with --name) or a checkpoint path")
    add_allow_param_change_argument(train)
    train.set_defaults(func=_run_train_phi)

    phrases = cir_subparsers.add_parser("phrases", help="write the default SEARLE regularisation phrases")
    phrases.add_argument("--out", type=output_file, required=True, help="concept<TAB>phrase file to write")
    phrases.add_argument("--concepts", type=Path, default=None, help="concept vocabulary file (default: built-in)")
    phrases.add_argument("--templates", type=Path, default=None, help="phrase template file (default: built-in)")
    phrases.set_defaults(func=_run_phrases)

    cir_fusion.register(cir_subparsers)  # the fusion / re-ranking commands join the same group


def _add_phrase_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--phrases", type=Path, default=None, help="concept<TAB>phrase file (default: built-in)")
    parser.add_argument("--concepts", type=Path, default=None, help="concept vocabulary file")
    parser.add_argument("--templates", type=Path, default=None, help="phrase template file")


def _run_eval(args: argparse.Namespace) -> int:
    from irkit.cir.evaluate import evaluate_method

    splits = load_splits(args)
    method = build_method(args)
    ctx = cir_context(args, method)
    result = evaluate_method(method, ctx, splits, include_shared_concept=args.include_shared_concept)
    print(json.dumps({**as_fractions(result), "precision": ctx.loaded.precision}, indent=2))
    return 0


def _run_submit(args: argparse.Namespace) -> int:
    from irkit.cir.evaluate import check_submission_paths, write_method_submission

    splits = load_splits(args)
    check_submission_paths(splits, args.out, args.overwrite)  # before any model or method is loaded
    method = build_method(args)
    paths = write_method_submission(method, cir_context(args, method), splits, args.out, args.overwrite)
    print(json.dumps({"written": [str(p) for p in paths], "method": args.method}))
    return 0


def _phrase_bank(args: argparse.Namespace) -> Any:
    from irkit.methods.textual_inversion import load_phrase_bank

    return load_phrase_bank(args.phrases, args.concepts, args.templates)


def _run_oti(args: argparse.Namespace) -> int:
    from irkit.methods.searle import OTIConfig, oti_for_splits

    config = OTIConfig(steps=args.steps, learning_rate=args.lr, weight_decay=args.wd, ema_decay=args.ema_decay,
                       top_k_concepts=args.top_k_concepts, batch_size=args.oti_batch_size, seed=args.seed)
    store = oti_for_splits(cir_context(args), load_splits(args), args.out, args.images, config, _phrase_bank(args))
    print(json.dumps({"out": str(args.out), "images": len(store.ids), "token_width": int(store.tokens.shape[1])}))
    return 0


def _run_train_phi(args: argparse.Namespace) -> int:
    from irkit import distributed
    from irkit.cir.training import TrainingConfig, open_run, phi_validator
    from irkit.errors import InputError
    from irkit.workflows.cir import describe_result, train_phi

    distributed.init_process_group()  # under torchrun: before the model picks its device
    if args.method == "searle" and args.oti is None:
        raise InputError("searle phi training needs --oti (an OTI folder from `irkit cir oti`)", field="oti")
    if args.method == "lincir" and args.captions is None:
        raise InputError("lincir phi training needs --captions (a .txt or caption CSV)", field="captions")
    config = TrainingConfig(steps=args.steps, batch_size=args.train_batch_size, learning_rate=args.lr,
                            weight_decay=args.wd, dropout=args.dropout, validate_every=args.validate_every,
                            seed=args.seed, include_shared_concept=args.include_shared_concept,
                            precision=args.precision)
    ctx = cir_context(args)
    validator = None
    if args.val_dataset is not None:
        if args.val_root is None:
            raise InputError("--val-dataset needs --val-root", field="val-root")
        validator = phi_validator(ctx, args.method, args.val_dataset, args.val_root, args.val_split,
                                       args.include_shared_concept, args.val_metric, **loader_options(args, "val_"))
    params = {"method": args.method, "model": args.model, "pretrained": args.pretrained,
              "checkpoint": args.checkpoint, "oti": args.oti, "captions": args.captions,
              "val_dataset": args.val_dataset, "val_root": args.val_root, "val_split": args.val_split,
              "masking": args.masking, "top_k_concepts": args.top_k_concepts, **config.to_params()}
    # Inputs are read and validated before the run folder exists, so a bad file blocks no --name.
    oti = captions = bank = None
    if args.method == "searle":
        from irkit.methods.searle import OTITokens

        oti, bank = OTITokens.load(args.oti), _phrase_bank(args)
    else:
        from irkit.methods.lincir import read_captions

        captions = read_captions(args.captions, sep=args.csv_separator, caption_key=args.caption_key)
    run = open_run(args.log_dir, args.name, params, args.resume, args.allow_param_change)
    with run.failure_recorded():
        result = train_phi(args.method, ctx.loaded, run, config, oti=oti, captions=captions,
                           phrase_bank=bank, validator=validator, resume=args.resume,
                           temperature=args.temperature, lambda_reg=args.lambda_reg,
                           top_k_concepts=args.top_k_concepts, masking=args.masking)
    if distributed.is_main():
        described = printed_training_result(describe_result(run, result))
        described.pop("steps")
        print(json.dumps(described))
    return 0


def _run_phrases(args: argparse.Namespace) -> int:
    from irkit.methods.textual_inversion import load_phrase_bank, write_phrases

    bank = load_phrase_bank(None, args.concepts, args.templates)
    write_phrases(args.out, bank)
    print(json.dumps({"out": str(args.out), "concepts": len(bank.concepts), "phrases": len(bank.phrases)}))
    return 0
