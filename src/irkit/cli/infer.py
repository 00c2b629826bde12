"""``irkit infer {traffic,merge}``: traffic challenge inference and the submission merge."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from irkit.cli.common import (
    add_encoding_arguments,
    add_model_arguments,
    cache_dir,
    image_reader,
    load_model,
    output_file,
    output_folder,
    positive_int,
)
from irkit.traffic import DEFAULT_PROMPT, PROMPT_AUTO, PROMPT_MODES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("infer", help="traffic challenge inference (per-gallery top-10, merge)")
    group = parser.add_subparsers(dest="infer_command", required=True)

    traffic = group.add_parser(
        "traffic", help="answer test_text.txt: vehicle queries vs vehicle_* images, person vs person_*",
        description="Writes vehicle_results.json, person_results.json and inference.json to --out.")
    traffic.add_argument("--root", type=Path, required=True, help="traffic challenge root (train/ val/ test/)")
    traffic.add_argument("--split", default="test", choices=["test"], help="split with text queries and a gallery")
    traffic.add_argument("--prompt", default=DEFAULT_PROMPT, choices=[*PROMPT_MODES, PROMPT_AUTO],
                         help="suffix: append ' image taken by traffic surveillance cameras' to vehicle queries "
                              "(published); strip: drop 'A '/'This is a ' and the final '.' (published "
                              "non-prompt variant); none: queries as given; auto: the best of the three on "
                              "the labelled val split (<root>/val/val_label.txt)")
    traffic.add_argument("--out", type=output_folder, required=True, help="output folder")
    traffic.add_argument("--k", type=positive_int, default=10, help="answers per query (the challenge and --submission need 10)")
    traffic.add_argument("--num-vehicle-queries", type=int, default=None,
                         help="override the detected number of leading vehicle queries")
    traffic.add_argument("--submission", type=output_file, default=None,
                         help="also merge the two result files into this submission.json")
    add_model_arguments(traffic)
    add_encoding_arguments(traffic)
    traffic.set_defaults(func=_run_traffic)

    merge = group.add_parser("merge", help="submission.json = vehicle results + person results, test_text order")
    merge.add_argument("--vehicle", type=Path, required=True, help="vehicle_results.json")
    merge.add_argument("--person", type=Path, required=True, help="person_results.json")
    merge.add_argument("--test-text", type=Path, required=True, help="test/test_text.txt")
    merge.add_argument("--out", type=output_file, required=True, help="submission.json to write")
    merge.set_defaults(func=_run_merge)


def _run_traffic(args: argparse.Namespace) -> int:
    from irkit.data.traffic import load_traffic
    from irkit.traffic.inference import RESULT_FILES, infer_traffic, select_prompt_on_val
    from irkit.traffic.merge import merge_results

    split = load_traffic(args.root, args.split)
    loaded = load_model(args)
    reader = image_reader(args, exif_default=True)
    prompt, selection = args.prompt, None
    if prompt == PROMPT_AUTO:
        selection = select_prompt_on_val(split.root, loaded, batch_size=args.batch_size,
                                         num_workers=args.num_workers, cache_dir=cache_dir(args), reader=reader)
        prompt = selection.chosen
    inference = infer_traffic(split, loaded, prompt=prompt, out_dir=args.out, k=args.k,
                              batch_size=args.batch_size, num_workers=args.num_workers, cache_dir=cache_dir(args),
                              num_vehicle_queries=args.num_vehicle_queries, reader=reader)
    summary = inference.summary()
    if selection is not None:
        summary["prompt_selection"] = selection.to_json()
    if args.submission is not None:
        merge_results(args.out / RESULT_FILES["vehicle"], args.out / RESULT_FILES["person"],
                      split.root / "test" / "test_text.txt", args.submission)
        summary["submission"] = str(args.submission)
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    from irkit.traffic.merge import merge_results

    submission = merge_results(args.vehicle, args.person, args.test_text, args.out)
    print(json.dumps({"submission": str(args.out), "queries": len(submission["results"])}))
    return 0
