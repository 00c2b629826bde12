"""The ``irkit`` command line: thin wiring around library calls, one module per command group."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from irkit.cli.common import IrkitParser
from irkit.errors import InputError

# command group -> module under irkit.cli that defines ``register(subparsers)``.
# Each registered sub-parser sets ``func`` (called with the parsed args, returns an exit code).
_GROUPS = ("data", "eval", "embed", "preprocess", "train", "infer", "batch", "cir")


DESCRIPTION = """\
irkit: text -> image retrieval and composed image retrieval (reference image + modification
text -> target) on OpenCLIP and PyTorch. Any open_clip model (with a pretrained tag or a local
checkpoint) or the built-in from-scratch demo model irkit-tiny; demo data in the published
layouts of the traffic challenge, FashionIQ, CIRR, CIRCO and GeneCIS.

Printed metrics are fractions in [0, 1] (0.613 = 61.3 %), as in metrics.json and the README."""

EPILOG = """\
examples:
  irkit data demo --out data/demo --scale tiny
  irkit batch run notebooks/reproduce.ipynb -p scale small -p epochs 6
  irkit cir eval --dataset cirr --root data/demo/cirr --method image-text-sum

'irkit <group> --help' lists a group's commands, 'irkit <group> <command> --help' every option
with its default."""


def build_parser() -> argparse.ArgumentParser:
    """The ``irkit`` parser: one sub-parser per command group, every option with help text."""
    parser = IrkitParser(prog="irkit", description=DESCRIPTION, epilog=EPILOG)
    subparsers = parser.add_subparsers(dest="command", required=True, title="command groups", metavar="<group>")
    for group in _GROUPS:
        try:
            module = importlib.import_module(f"irkit.cli.{group}")
        except ModuleNotFoundError as e:
            if e.name == f"irkit.cli.{group}":
                continue  # group not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"irkit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
