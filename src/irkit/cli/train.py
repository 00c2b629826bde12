"""``irkit train clip``: contrastive CLIP training / fine-tuning through open_clip_train."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from irkit.cli.common import (
    PRECISION_HELP,
    add_allow_param_change_argument,
    non_negative_int,
    output_folder,
    parse_separator,
    positive_int,
)

#: irkit's precision settings, then open_clip_train's own --precision names passed through as asked
#: (irkit.train.clip.OPEN_CLIP_TRAIN_PRECISIONS; repeated here so --help needs no torch import)
CLIP_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "amp", "amp_bf16", "amp_bfloat16", "pure_bf16", "pure_fp16")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train models (CLIP through open_clip_train)")
    group = parser.add_subparsers(dest="train_command", required=True)
    clip = group.add_parser(
        "clip",
        help="contrastive training from scratch (no --pretrained) or low-LR fine-tuning (with --pretrained)",
        description="Wraps open_clip_train: run folder log/<name>/{out.log,params.txt,checkpoints/,\n"
                    "results.jsonl,tensorboard/}; an existing run folder is never overwritten.\n"
                    "Every input is checked before the folder is made; a run that fails later is marked\n"
                    "FAILED (rerun with the same --name to start again, or --resume latest when it has\n"
                    "checkpoints).\n"
                    "Without --pretrained: from scratch (lr 1e-3, wd 0.1, warm-up 50, batch 128); with it:\n"
                    "the published low-LR fine-tuning recipe (lr 4e-7, wd 0.01, warm-up 10000, batch 25).",
    )
    clip.add_argument("--train-csv", type=Path, required=True, help="tab-separated filepath/title CSV")
    clip.add_argument("--val-csv", type=Path, default=None,
                      help="validation CSV (same columns); val loss and recall after every epoch (default: none)")
    clip.add_argument("--model", default="irkit-tiny", help="any open_clip model name")
    clip.add_argument("--pretrained", default=None, help="open_clip pretrained tag or a local checkpoint file")
    clip.add_argument("--epochs", type=positive_int, default=10, help="training epochs (passes over --train-csv)")
    clip.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default: 4e-7 fine-tuning, 1e-3 from scratch)")
    clip.add_argument("--wd", type=float, default=None,
                      help="AdamW weight decay (default: 0.01 fine-tuning, 0.1 from scratch)")
    clip.add_argument("--warmup", type=non_negative_int, default=None,
                      help="linear LR warm-up steps (default: 10000 fine-tuning, 50 from scratch)")
    clip.add_argument("--lr-scheduler", default="cosine", choices=["cosine", "const", "const-cooldown"],
                      help="open_clip_train's LR schedule after the linear warm-up")
    clip.add_argument("--batch-size", type=positive_int, default=None,
                      help="global image-caption pairs per step, split over the processes under torchrun / "
                           "--nproc (default: 25 fine-tuning, 128 from scratch)")
    clip.add_argument("--workers", type=non_negative_int, default=1, help="data-loading worker processes")
    clip.add_argument("--seed", type=int, default=0, help="random seed (data order, augmentation, init)")
    clip.add_argument("--precision", default="auto", choices=list(CLIP_PRECISIONS),
                      help=PRECISION_HELP + " (open_clip_train amp_bf16 / amp); open_clip_train's own names amp, "
                           "amp_bf16, pure_bf16, pure_fp16 are passed through; the choice is in the run's "
                           "precision.json")
    clip.add_argument("--transform", default="square", choices=["square", "targetpad", "center"],
                      help="training image preprocessing (square = black padding to a square, as published)")
    clip.add_argument("--log-dir", type=output_folder, default=Path("log"), help="parent folder of the run folder")
    clip.add_argument("--name", default=None, help="run name (default: date-model-lr-batch-...)")
    clip.add_argument("--resume", default=None, help="'latest' (with --name) or a checkpoint path")
    add_allow_param_change_argument(clip)
    clip.add_argument("--save-frequency", type=positive_int, default=1, help="write epoch_<n>.pt every N epochs")
    clip.add_argument("--csv-separator", type=parse_separator, default="\t",
                      help="CSV separator: tab (default), comma, semicolon, pipe or one character")
    clip.add_argument("--nproc", type=positive_int, default=1,
                      help="processes on this machine (one per GPU): runs `torchrun --standalone --nproc_per_node "
                           "N -m irkit train clip ...`; --batch-size stays the global batch. For several machines "
                           "run torchrun yourself with --nnodes/--node_rank/--master_addr")
    clip.add_argument("--exif-transpose", action=argparse.BooleanOptionalAction, default=True,
                      help="apply the images' EXIF orientation (default on; recorded in params.txt)")
    clip.add_argument("--max-image-pixels", type=positive_int, default=64_000_000,
                      help="refuse images with more pixels (width x height) before decoding (default 8000 x 8000)")
    clip.set_defaults(func=_run_clip)


def relaunch_argv(argv: list[str], nproc: int) -> list[str]:
    """``argv`` (irkit's arguments with ``--nproc N``) as a ``torchrun --standalone`` command line."""
    rest, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            rest.append(item)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "irkit", *rest]


def _run_clip(args: argparse.Namespace) -> int:
    from irkit.distributed import launched_rank, launched_world_size
    from irkit.errors import InputError
    from irkit.train.clip import ClipTrainConfig, train_clip

    if args.nproc > 1:
        if launched_world_size() > 1:
            raise InputError("--nproc is for a plain `irkit train clip`; under torchrun leave it out "
                             "(torchrun's --nproc_per_node sets the processes)", field="nproc")
        return subprocess.run(relaunch_argv(args.argv, args.nproc), check=False).returncode

    result = train_clip(ClipTrainConfig(
        train_csv=args.train_csv, val_csv=args.val_csv, model=args.model, pretrained=args.pretrained,
        epochs=args.epochs, lr=args.lr, wd=args.wd, warmup=args.warmup, lr_scheduler=args.lr_scheduler,
        batch_size=args.batch_size,
        workers=args.workers, seed=args.seed, precision=args.precision, transform=args.transform,
        log_dir=args.log_dir, name=args.name, resume=args.resume, save_frequency=args.save_frequency,
        csv_separator=args.csv_separator, exif_transpose=args.exif_transpose,
        max_image_pixels=args.max_image_pixels,
    ), allow_param_change=args.allow_param_change)
    if launched_rank() == 0:
        print(json.dumps({"run_dir": str(result.run_dir), "final_checkpoint": str(result.final_checkpoint),
                          "results": result.results[-1] if result.results else None,
                          "precision": result.precision}))
    return 0
