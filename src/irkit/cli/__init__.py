"""The ``irkit`` command line: thin wiring around library calls, one module per command group."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from irkit.errors import InputError

# command group -> module under irkit.cli that defines ``register(subparsers)``.
# Each registered sub-parser sets ``func`` (called with the parsed args, returns an exit code).
_GROUPS = ("data", "eval", "embed", "index", "preprocess", "train", "infer", "batch", "cir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="irkit", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
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
