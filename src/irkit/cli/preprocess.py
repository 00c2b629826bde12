"""``irkit preprocess {attributes,augment,csv}``: the traffic pipeline's preprocessing stages."""

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
    parse_separator,
)
from irkit.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("preprocess", help="traffic challenge preprocessing (parse, augment, CSV)")
    group = parser.add_subparsers(dest="preprocess_command", required=True)

    attributes = group.add_parser(
        "attributes", help="parse vehicle attributes into car_attribute.json; split person/vehicle labels",
        description="Colours/types come from closed sets (+ synonyms); the rest of a phrase is the brand. "
                    "Each list in car_attribute.json is sorted by frequency (most frequent first), ties by name.")
    attributes.add_argument("--labels", type=Path, nargs="+", required=True, help="*_label.txt file(s)")
    attributes.add_argument("--out", type=output_file, required=True, help="car_attribute.json to write")
    attributes.add_argument("--split-out", type=Path, default=None,
                            help="folder for vehicle_label.txt and person_label.txt (all inputs, in order)")
    attributes.add_argument("--closed-colors", action="store_true",
                            help="only closed-set colours (default also takes a leading lower-case word)")
    attributes.set_defaults(func=_run_attributes)

    augment = group.add_parser(
        "augment", help="fill missing colour/type of vehicle captions zero-shot with a CLIP model",
        description="Writes the labels with a 4th '$aug' column (persons and complete labels: aug = text).")
    augment.add_argument("--labels", type=Path, required=True, help="<split>_label.txt")
    augment.add_argument("--images", type=Path, required=True, help="<split>_images folder")
    augment.add_argument("--vocab", type=Path, default=None,
                         help="car_attribute.json with the candidate values (default: irkit's bundled vocabulary)")
    augment.add_argument("--out", type=output_file, required=True, help="augmented label file to write")
    augment.add_argument("--truth", type=Path, default=None,
                         help="per-image attribute sidecar (irkit_attributes.jsonl) to score the filled slots; "
                              "default: <dataset root>/irkit_attributes.jsonl when present")
    add_model_arguments(augment)
    add_encoding_arguments(augment)
    augment.set_defaults(func=_run_augment)

    csv = group.add_parser("csv", help="open_clip training CSV (filepath/title, absolute paths) from labels")
    csv.add_argument("--labels", type=Path, required=True, help="(augmented) label file")
    csv.add_argument("--images", type=Path, required=True, help="folder of the labelled images")
    csv.add_argument("--out", type=output_file, required=True, help="CSV to write (+ <csv>.json recording the separator)")
    csv.add_argument("--caption", choices=["aug", "text"], default="aug",
                     help="aug = augmented caption (4th column), text = original sentence")
    csv.add_argument("--sep", type=parse_separator, default="\t", help="separator: tab (default), comma, ...")
    csv.set_defaults(func=_run_csv)


def _run_attributes(args: argparse.Namespace) -> int:
    from irkit.data.traffic import read_label_file, write_label_file
    from irkit.traffic.attributes import count_attributes, default_vocab, split_labels, write_car_attribute

    labels = [label for path in args.labels for label in read_label_file(path)]
    vocab = default_vocab()
    counts = count_attributes(labels, vocab, open_colors=not args.closed_colors)
    data = write_car_attribute(args.out, counts)
    summary = {
        "car_attribute": str(args.out), "vehicles": counts.num_vehicles, "persons": counts.num_persons,
        "counts": {key: len(values) for key, values in data.items()},
        "labels_missing": dict(counts.slot_missing),
        "colors_outside_closed_set": [c for c in data["Colors"] if c not in vocab.colors],
        "brands_not_in_bundled_vocab": [b for b in data["Brands"] if b not in vocab.brands],
    }
    if args.split_out is not None:
        vehicles, persons = split_labels(labels)
        for name, subset in (("vehicle_label.txt", vehicles), ("person_label.txt", persons)):
            write_label_file(args.split_out / name, subset)
        summary["split_out"] = str(args.split_out)
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def _run_augment(args: argparse.Namespace) -> int:
    from irkit.data.traffic import read_label_file, write_label_file
    from irkit.traffic.attributes import default_vocab, load_car_attribute
    from irkit.traffic.augment import augment_labels_detailed, default_truth_path, fill_accuracy, read_attribute_truth

    labels = read_label_file(args.labels, images_dir=args.images)
    vocab = load_car_attribute(args.vocab) if args.vocab is not None else default_vocab()
    truth_path = args.truth if args.truth is not None else default_truth_path(args.images)
    if args.truth is not None and not args.truth.is_file():
        raise InputError("attribute sidecar not found; expected an irkit_attributes.jsonl", path=args.truth)
    loaded = load_model(args)
    result = augment_labels_detailed(labels, loaded, args.images, vocab, batch_size=args.batch_size,
                                     cache_dir=cache_dir(args), num_workers=args.num_workers, source=args.labels,
                                     reader=image_reader(args, exif_default=True))
    write_label_file(args.out, result.labels)
    summary = {"out": str(args.out), "weights_id": loaded.weights_id, **result.summary()}
    if truth_path is not None and truth_path.is_file():
        summary["fill_accuracy"] = fill_accuracy(result, read_attribute_truth(truth_path), args.images)
        summary["truth"] = str(truth_path)
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def _run_csv(args: argparse.Namespace) -> int:
    from irkit.data.traffic import read_label_file
    from irkit.traffic.training_csv import build_training_csv, csv_sidecar_path

    labels = read_label_file(args.labels)
    out = build_training_csv(labels, args.images, args.out, caption=args.caption, sep=args.sep, source=args.labels)
    print(json.dumps({"csv": str(out), "rows": len(labels), "caption": args.caption,
                      "csv_separator": args.sep, "sidecar": str(csv_sidecar_path(out))}))
    return 0
