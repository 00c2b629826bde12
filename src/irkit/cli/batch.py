"""``irkit batch``: run papermill notebooks into run folders, alone or over a parameter grid."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from irkit.cli.common import add_precision_argument, non_negative_int, output_folder


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", type=Path, help="notebook with a papermill 'parameters' cell, e.g. "
                                                    "notebooks/reproduce.ipynb")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="notebook parameter (JSON literal or string); repeatable")
    parser.add_argument("--log-dir", type=output_folder, default=Path("log"), help="parent folder of the run folders")
    parser.add_argument("--quiet", action="store_true",
                        help="no stage lines and no kernel output on the console (the executed notebook keeps all)")
    parser.add_argument("--name", default=None, help="run (or batch) folder name")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("batch", help="papermill notebook runs and parameter grids")
    group = parser.add_subparsers(dest="batch_command", required=True)
    run = group.add_parser("run", help="execute a notebook once into log/<name>/")
    _add_common(run)
    run.set_defaults(func=_run)
    grid = group.add_parser("grid", help="execute a notebook over a parameter grid + comparison table")
    _add_common(grid)
    grid.add_argument("--grid", action="append", required=True, metavar="NAME=V1,V2",
                      help="a parameter and its values; repeatable (the product is run)")
    grid.add_argument("--columns", default=None, help="comma-separated metric columns for the table")
    grid.set_defaults(func=_grid)
    compare = group.add_parser("compare", help="comparison table (CSV + markdown) of existing notebook runs")
    compare.add_argument("runs", nargs="+", type=Path, help="run folders (each with metrics.json)")
    compare.add_argument("--out", type=output_folder, required=True, help="folder for comparison.csv / comparison.md")
    compare.add_argument("--columns", default=None, help="comma-separated metric columns for the table")
    compare.set_defaults(func=_compare)
    best = group.add_parser("best", help="copy the best reproduce run into best-result-review/")
    best.add_argument("folders", nargs="+", type=Path, help="folders searched for reproduce runs")
    best.add_argument("--out", type=output_folder, default=Path("best-result-review"),
                      help="folder to copy the best run into")
    best.add_argument("--metric", default="official_mAP@10",
                      help="metrics.json key of the trained model that picks the best run (higher is better)")
    best.set_defaults(func=_best)
    table = group.add_parser("cir-table", help="CIR comparison table: data, demo CLIP, baselines, LinCIR, SEARLE, "
                                               "fusion rows (resumable)")
    table.add_argument("--data-root", type=Path, required=True,
                       help="holds fashioniq/, cirr/, circo/ (demo data is generated here when absent)")
    table.add_argument("--out", type=output_folder, required=True, help="run folder (re-running it resumes)")
    table.add_argument("--scale", default="full", choices=["tiny", "small", "full"],
                       help="demo data scale and stage budgets (tiny: seconds, for tests)")
    table.add_argument("--model", default="irkit-tiny", help="any open_clip model name")
    weights = table.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", default=None, help="open_clip pretrained tag")
    weights.add_argument("--checkpoint", type=Path, default=None,
                         help="local CLIP checkpoint (starting point of the demo CIR model unless --no-clip-training)")
    table.add_argument("--no-clip-training", action="store_true",
                       help="use the given CLIP weights as they are (a real pretrained model)")
    table.add_argument("--skip-fusion", action="store_true", help="zero-shot rows only")
    table.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                       help="override one stage budget (repeatable), e.g. lincir_steps=100")
    table.add_argument("--seed", type=int, default=0, help="random seed of data, training and sampling")
    table.add_argument("--workers", type=non_negative_int, default=2, help="image decoding worker processes")
    table.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    table.add_argument("--cache-dir", type=Path, default=Path(".cache/irkit"), help="embedding cache")
    add_precision_argument(table)
    table.set_defaults(func=_cir_table)


def _params(args: argparse.Namespace) -> dict:
    from irkit.notebook import parse_value

    return {name: parse_value(value) for name, value in args.param}


def _run(args: argparse.Namespace) -> int:
    from irkit.metrics import as_fractions
    from irkit.notebook import read_metrics, run_notebook

    run_dir = run_notebook(args.notebook, _params(args), log_dir=args.log_dir, name=args.name,
                           progress=not args.quiet)
    # blocks of metrics.json in percent (CIR notebooks) are printed as fractions like every metric
    print(json.dumps({"run_dir": str(run_dir), "metrics": as_fractions(read_metrics(run_dir))}, indent=1))
    return 0


def _grid(args: argparse.Namespace) -> int:
    from irkit.notebook import parse_grid, run_grid

    columns = args.columns.split(",") if args.columns else None
    result = run_grid(args.notebook, parse_grid(args.grid), _params(args), log_dir=args.log_dir,
                      batch_name=args.name, metric_columns=columns, progress=not args.quiet)
    print((result.batch_dir / "comparison.md").read_text())
    return 0


def _best(args: argparse.Namespace) -> int:
    from irkit.traffic.best_result import export_best_result

    run_dir = export_best_result(args.folders, args.out, args.metric)
    print(json.dumps({"best_run": str(run_dir), "out": str(args.out)}))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from irkit.notebook import compare_runs

    columns = args.columns.split(",") if args.columns else None
    result = compare_runs(args.runs, args.out, metric_columns=columns)
    print((result.batch_dir / "comparison.md").read_text())
    return 0


def _cir_table(args: argparse.Namespace) -> int:
    import torch

    from irkit.cli.common import parse_key_values
    from irkit.experiments.cir_table import run_cir_table

    overrides = parse_key_values(args.budget, "--budget")
    torch.set_num_threads(max(1, args.threads))
    result = run_cir_table(args.data_root, args.out, scale=args.scale, model=args.model, pretrained=args.pretrained,
                           checkpoint=args.checkpoint, train_clip=not args.no_clip_training,
                           fusion=not args.skip_fusion, seed=args.seed, workers=args.workers,
                           cache_dir=args.cache_dir, budget_overrides=overrides, precision=args.precision)
    print((result.out_dir / "table.md").read_text())
    return 0
