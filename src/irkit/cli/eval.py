"""``irkit eval``: score prediction / submission files against a dataset's annotations.

    irkit eval cirr --root R --split val --predictions recall.json recall_subset.json
    irkit eval circo --root R --split val --predictions sub.json [--gallery-ids ids.txt]
    irkit eval fashioniq --root R --split val --predictions preds.json
    irkit eval traffic --root R --predictions submission.json [--ground-truth GT]
    irkit eval genecis --root R --predictions predictions.json

Prints ONE JSON object of metrics (named by protocol) to stdout, as fractions in [0, 1]
("units": "fraction"; 0.5 = 50 %) for every dataset.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from irkit.benchmarks import list_benchmarks
from irkit.metrics import as_fractions


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval", help="score prediction files (CIRR, CIRCO, FashionIQ, GeneCIS, traffic submission.json)",
        description=__doc__)
    parser.add_argument("dataset", choices=list_benchmarks(), help="benchmark whose protocol scores the file(s)")
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


#: Options of ``irkit eval`` that only some benchmarks take (their ``prediction_file_options``).
BENCHMARK_OPTIONS = {"--ground-truth": "ground_truth", "--gallery-ids": "gallery_ids", "--shared-concept": "shared_concept"}


def run_eval(args: argparse.Namespace) -> int:
    from irkit.benchmarks import get_benchmark
    from irkit.benchmarks.checks import read_gallery_ids
    from irkit.errors import InputError

    benchmark = get_benchmark(args.dataset)
    options: dict[str, Any] = {}
    for flag, key in BENCHMARK_OPTIONS.items():
        value = getattr(args, key)
        if value is None:
            continue
        if key not in benchmark.prediction_file_options:
            takers = [n for n in list_benchmarks() if key in get_benchmark(n).prediction_file_options]
            raise InputError(f"{flag} applies to {', '.join(takers)} only; got dataset {args.dataset!r}", field=flag)
        options[key] = read_gallery_ids(value) if key == "gallery_ids" else value
    for key in benchmark.prediction_file_options:
        options.setdefault(key, None)
    result = benchmark.score_prediction_files(args.root, args.split or benchmark.default_split, args.predictions,
                                              **options)
    print(json.dumps(as_fractions(result), indent=2))
    return 0
