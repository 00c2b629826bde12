"""``irkit report``: a self-contained HTML report of a run folder, or of every run below a folder
plus an ``index.html`` comparing them."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="write report.html for a run folder, or for every run below a folder plus index.html",
        description="A run folder (metrics.json, params.txt, results.jsonl or an executed notebook) gets "
                    "report.html: metrics, TensorBoard curves, result grids and the executed notebook, images "
                    "embedded, readable offline. Any other folder (e.g. log/) gets one report per run below it and "
                    "index.html, a sortable table of every run's metrics linking to the reports.")
    parser.add_argument("folder", type=Path, help="a run folder, or a folder of runs such as log/")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from irkit.run_report import write_reports

    for path in write_reports(args.folder):
        print(path)
    return 0
