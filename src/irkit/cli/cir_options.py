"""Options and wiring shared by every ``irkit cir`` command: data, method and backbone."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from irkit.benchmarks import list_benchmarks
from irkit.cli.common import (
    add_encoding_arguments,
    add_model_arguments,
    cache_dir,
    image_reader,
    load_model,
    parse_key_values,
)


def add_context_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_encoding_arguments(parser)


def add_data_arguments(parser: argparse.ArgumentParser, prefix: str = "", required: bool = True,
                       default_split: Optional[str] = "val") -> None:
    """``--dataset/--root/--split/--category|--task/--gallery-ids/--loader-option`` (each with
    ``prefix``, e.g. ``val-``); ``default_split=None``: the benchmark's test-server split."""
    dest = prefix.replace("-", "_")
    parser.add_argument(f"--{prefix}dataset", choices=list_benchmarks("cir"), required=required, dest=f"{dest}dataset",
                        help="validation benchmark (default: no validation)" if prefix == "val-" else "benchmark to load")
    parser.add_argument(f"--{prefix}root", type=Path, required=required, dest=f"{dest}root",
                        help="dataset root (the published layout)")
    parser.add_argument(f"--{prefix}split", default=default_split, dest=f"{dest}split",
                        help=f"split to load (default: {default_split or 'the benchmark test-server split'})")
    parser.add_argument(f"--{prefix}category", f"--{prefix}task", default=None, dest=f"{dest}category",
                        help="one part of the benchmark: a FashionIQ category or a GeneCIS task (default: all)")
    parser.add_argument(f"--{prefix}gallery-ids", type=Path, default=None, dest=f"{dest}gallery_ids",
                        help="CIRCO: gallery ids file when the COCO image-info file is absent")
    parser.add_argument(f"--{prefix}loader-option", action="append", default=[], metavar="KEY=VALUE",
                        dest=f"{dest}loader_option",
                        help="extra loader option (repeatable), e.g. crop_dir=/tmp/crops or coco_dir=/data/val2017 "
                             "for GeneCIS")


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True,
                        help="any registered method: image-only, text-only, image-text-sum, searle, searle-oti, "
                             "lincir, ... (an unknown name lists them)")
    parser.add_argument("--method-checkpoint", default=None,
                        help="the method's trained part: phi checkpoint (searle, lincir), OTI folder (searle-oti), ...")
    parser.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra method option (repeatable), e.g. steps=50 for searle-oti")
    parser.add_argument("--include-shared-concept", action="store_true",
                        help="CIRCO: put shared_concept into the query text (recorded in the protocol)")


def cir_context(args: argparse.Namespace, method: Any = None) -> Any:
    """The backbone and cache of a ``cir`` command; torch's threads follow ``$IRKIT_NUM_THREADS``
    for the whole command (text encoding too, not only image encoding). A ``method`` whose
    checkpoint brings its own CLIP towers (``published_backbone``: a published MagicLens file) is
    the backbone when no weights are given (``--checkpoint`` / ``--pretrained`` / ``--random-init``)."""
    import torch

    from irkit.cir.context import CIRContext
    from irkit.embeddings import num_threads

    torch.set_num_threads(num_threads())
    own_backbone = getattr(method, "published_backbone", None)
    weights_given = args.checkpoint or args.pretrained or getattr(args, "random_init", False)
    loaded = own_backbone if own_backbone is not None and not weights_given else load_model(args)
    return CIRContext(loaded, cache_dir=cache_dir(args), batch_size=args.batch_size,
                      num_workers=args.num_workers, reader=image_reader(args, exif_default=False))


def loader_options(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    from irkit.benchmarks import get_benchmark
    from irkit.benchmarks.checks import read_gallery_ids

    options: dict[str, Any] = parse_key_values(getattr(args, f"{prefix}loader_option"),
                                               f"--{prefix.replace('_', '-')}loader-option", underscore_keys=True)
    part = getattr(args, f"{prefix}category")
    gallery_ids = getattr(args, f"{prefix}gallery_ids")
    if part is not None:
        options[get_benchmark(getattr(args, f"{prefix}dataset")).part_option] = part
    if gallery_ids is not None:
        options["gallery_ids"] = read_gallery_ids(gallery_ids)
    return options


def load_splits(args: argparse.Namespace, prefix: str = "") -> list[Any]:
    from irkit.benchmarks import get_benchmark
    from irkit.cir.evaluate import load_cir_splits

    dataset = getattr(args, f"{prefix}dataset")
    split = getattr(args, f"{prefix}split") or get_benchmark(dataset).test_split
    return load_cir_splits(dataset, getattr(args, f"{prefix}root"), split, **loader_options(args, prefix))


def build_method(args: argparse.Namespace) -> Any:
    from irkit.cir.registry import create_method, method_options

    extra = parse_key_values(args.method_option, "--method-option", underscore_keys=True)
    return create_method(args.method, **method_options(args.method, args.method_checkpoint,
                                                       args.include_shared_concept, extra))
