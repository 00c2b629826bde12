"""The ``irkit`` command line: thin wiring around library calls, one module per command group."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from typing import Optional, Sequence

from irkit.cli.common import IrkitParser
from irkit.errors import InputError, RunFailed

# command group -> module under irkit.cli that defines ``register(subparsers)``.
# Each registered sub-parser sets ``func`` (called with the parsed args, returns an exit code).
_GROUPS = ("data", "eval", "embed", "index", "preprocess", "train", "infer", "batch", "cir", "search", "report",
           "app")


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
  irkit cir eval --dataset cirr --root data/demo/cirr --checkpoint best-result-review/model_fp16.safetensors \
      --method image-text-sum

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


_OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full; free space or write somewhere else (--out, --log-dir, --cache-dir)",
    errno.EDQUOT: "the disk quota is exhausted; free space or write somewhere else",
    errno.EACCES: "no permission; choose a location you can write to",
    errno.EPERM: "operation not permitted; choose a location you can write to",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.EISDIR: "a folder is where a file was expected",
    errno.ENOTDIR: "a file is where a folder was expected",
}


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error: the file, what happened and what to do."""
    where = ", ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
    what = error.strerror or str(error) or type(error).__name__
    code = errno.errorcode.get(error.errno or -1)
    hint = _OS_ERROR_HINTS.get(error.errno or -1)
    text = f"{where}: {what}" if where else what
    text += f" ({code})" if code else ""
    return (f"{text}; {hint}" if hint else text).replace("\n", " ")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one ``irkit`` command; bad input, a failed run or an OS error is one line on stderr
    (exit 2 for bad input, 1 otherwise)."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # commands that re-launch themselves (--nproc)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"irkit: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"irkit: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"irkit: error: {describe_os_error(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
