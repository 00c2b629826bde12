"""``irkit data``: dataset utilities (``demo``: write the deterministic offline demo datasets)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from irkit.cli.common import output_folder, positive_int


def _demo(args: argparse.Namespace) -> int:
    from irkit.data.demo import generate_demo

    summary = generate_demo(Path(args.out), seed=args.seed, scale=args.scale, datasets=args.datasets,
                            workers=args.workers, progress=not args.no_progress)
    for dataset in summary["generated"]:
        print(f"{dataset}: generated in {summary['seconds'][dataset]:.1f}s  "
              f"{json.dumps(summary['counts'][dataset], sort_keys=True)}")
    for dataset in summary["skipped"]:
        print(f"{dataset}: already present (same seed/scale), kept")
    print(f"demo data (seed {summary['seed']}, scale {summary['scale']}) in {summary['out']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group to the ``irkit`` parser."""
    from irkit.data.demo.config import DATASETS, SCALES

    group = subparsers.add_parser("data", help="dataset utilities", description=__doc__)
    commands = group.add_subparsers(dest="data_command", required=True)
    demo = commands.add_parser(
        "demo", help="write deterministic synthetic stand-ins of traffic, FashionIQ, CIRR and CIRCO",
        description="Write the demo datasets in their published layouts (plus irkit_attributes.jsonl "
                    "sidecars, captions/*.csv and demo_manifest.json). The same seed and scale give "
                    "byte-identical files; a folder made with another seed/scale is never written into.")
    demo.add_argument("--out", type=output_folder, default="data/demo", help="output folder (new, empty, or a compatible demo folder)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (non-negative integer)")
    demo.add_argument("--scale", choices=list(SCALES), default="tiny",
                      help="tiny: seconds (tests); small: a few hundred images per dataset; "
                           "full: >= 3,000 gallery images per dataset")
    demo.add_argument("--datasets", default=",".join(DATASETS),
                      help=f"comma-separated subset of {','.join(DATASETS)}")
    demo.add_argument("--workers", type=positive_int, default=None,
                      help="rendering processes (default: available CPUs, at most 2)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.set_defaults(func=_demo)
