"""``irkit eval``: score prediction / submission files against a dataset's annotations.

    irkit eval cirr --root R --split val --predictions recall.json recall_subset.json
    irkit eval circo --root R --split val --predictions sub.json [--gallery-ids ids.txt]
    irkit eval fashioniq --root R --split val --predictions preds.json
    irkit eval traffic --root R --predictions submission.json [--ground-truth GT]
    irkit eval genecis --root R --predictions preds.json   ({task: {template index: [positions]}})

Prints ONE JSON object of metrics (named by protocol) to stdout.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

DATASETS = ("traffic", "fashioniq", "cirr", "circo", "genecis")


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval", help="score prediction files (CIRR, CIRCO, FashionIQ, traffic submission.json)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--root", required=True, help="dataset root (the published layout)")
    parser.add_argument("--split", default=None,
                        help="split to score against (default: test for traffic, val otherwise)")
    parser.add_argument("--predictions", nargs="+", required=True, metavar="FILE",
                        help="prediction file(s); CIRR takes the recall and the recall_subset file")
    parser.add_argument("--ground-truth", default=None, metavar="FILE",
                        help="traffic: 'text$img1$img2...' file (default <root>/test/test_ground_truth.txt)")
    parser.add_argument("--gallery-ids", default=None, metavar="FILE",
                        help="CIRCO: gallery image ids (.json list or one per line) when the COCO "
                             "image-info file is absent")
    parser.add_argument("--shared-concept", type=_bool, default=None, metavar="{true,false}",
                        help="CIRCO: whether the predictions used shared_concept in the query text "
                             "(recorded in the protocol)")
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from irkit.eval.submissions import evaluate_prediction_files, read_gallery_ids

    from irkit.errors import InputError

    for option, value, owner in (("--ground-truth", args.ground_truth, "traffic"),
                                 ("--gallery-ids", args.gallery_ids, "circo"),
                                 ("--shared-concept", args.shared_concept, "circo")):
        if value is not None and args.dataset != owner:
            raise InputError(f"{option} applies to {owner} only; got dataset {args.dataset!r}", field=option)
    split = args.split or ("test" if args.dataset == "traffic" else "val")
    kwargs: dict[str, Any] = {}
    if args.dataset == "traffic":
        kwargs["ground_truth"] = args.ground_truth
    if args.dataset == "circo":
        kwargs["shared_concept"] = args.shared_concept
        if args.gallery_ids is not None:
            kwargs["gallery_ids"] = read_gallery_ids(args.gallery_ids)
    if args.dataset == "genecis":  # scored by its benchmark spec (irkit.benchmarks.genecis)
        from irkit.benchmarks import get_benchmark

        result = get_benchmark("genecis").score_prediction_files(args.root, split, args.predictions)
    else:
        result = evaluate_prediction_files(args.dataset, args.root, split, args.predictions, **kwargs)
    print(json.dumps(result, indent=2))
    return 0
