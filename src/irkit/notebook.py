"""Papermill-driven notebook runs: one run folder per execution, and parameter grids.

Every execution gets its own run folder ``<log_dir>/<name>/`` (never overwritten); the
executed notebook is saved there as ``<notebook stem>.ipynb`` and the notebook receives the
folder as its ``run_dir`` parameter, writing ``metrics.json`` beside it; when it finishes the
folder gets its ``report.html`` (:mod:`irkit.run_report`). A grid runs the
notebook once per combination of parameter values and writes one comparison table
(``comparison.csv`` + ``comparison.md``, and ``index.html``) of the runs' metrics.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from irkit.errors import InputError
from irkit.io import atomic_write_text
from irkit.run_report import INDEX_FILE, build_index, write_run_report

METRICS_FILE = "metrics.json"


def parse_value(text: str) -> Any:
    """Parse a command-line parameter value: JSON literals (numbers, true/false/null, lists)
    become Python values, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["prompt=suffix,strip", "lr=1e-3,5e-4"]`` -> ``{"prompt": [...], "lr": [...]}``."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        if "=" not in spec:
            raise InputError(f"grid entry '{spec}' must look like name=value1,value2", field="--grid")
        name, values = spec.split("=", 1)
        grid[name.strip()] = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not grid[name.strip()]:
            raise InputError(f"grid entry '{spec}' lists no values", field="--grid")
    return grid


def notebook_parameters(notebook: Path) -> dict[str, Any]:
    """Names and defaults of the notebook's ``parameters`` cell (papermill's inspection)."""
    import papermill

    return {name: info["default"] for name, info in papermill.inspect_notebook(str(notebook)).items()}


def _check_parameters(notebook: Path, params: Mapping[str, Any]) -> None:
    known = notebook_parameters(notebook)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise InputError(f"unknown parameter(s) {', '.join(unknown)}; the notebook's parameters cell "
                         f"defines: {', '.join(sorted(known))}", path=notebook)


def run_notebook(notebook: Path | str, params: Mapping[str, Any], log_dir: Path | str = "log",
                 name: Optional[str] = None, kernel_name: str = "python3") -> Path:
    """Execute ``notebook`` with papermill into a new run folder; return the folder.

    The notebook's ``run_dir`` parameter is set to the folder. Raises if it exists.
    """
    import papermill

    notebook = Path(notebook)
    if not notebook.is_file():
        raise InputError("notebook not found", path=notebook)
    params = dict(params)
    _check_parameters(notebook, params)
    name = name or f"{time.strftime('%Y_%m_%d-%H_%M_%S')}-{notebook.stem}"
    run_dir = Path(log_dir) / name
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise InputError("run folder already exists; choose another name", path=run_dir) from None
    params["run_dir"] = str(run_dir.resolve())
    try:
        papermill.execute_notebook(
            str(notebook), str(run_dir / notebook.name), parameters=params,
            kernel_name=kernel_name, progress_bar=False, cwd=str(Path.cwd()),
        )
    except BaseException:
        # A failed run still gets its report (the notebook up to the failing cell), but the
        # notebook's own error is what the caller sees.
        with contextlib.suppress(Exception):
            write_run_report(run_dir)
        raise
    write_run_report(run_dir)
    return run_dir


def read_metrics(run_dir: Path | str) -> dict[str, Any]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise InputError("the notebook run wrote no metrics.json", path=run_dir)
    return json.loads(path.read_text())


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{full}."))
        else:
            flat[full] = value
    return flat


def _format_cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass
class GridResult:
    batch_dir: Path
    rows: list[dict[str, Any]]
    columns: list[str]


def run_grid(notebook: Path | str, grid: Mapping[str, Sequence[Any]], base_params: Mapping[str, Any],
             log_dir: Path | str = "log", batch_name: Optional[str] = None,
             metric_columns: Optional[Sequence[str]] = None) -> GridResult:
    """Run ``notebook`` once per combination of ``grid`` values into ``<log_dir>/<batch>/<run>/``
    and write ``comparison.csv`` / ``comparison.md`` of every run's flattened metrics and
    ``index.html`` (the runs' sortable table, linking their reports)."""
    notebook = Path(notebook)
    batch_name = batch_name or f"{time.strftime('%Y_%m_%d-%H_%M_%S')}-{notebook.stem}-grid"
    batch_dir = Path(log_dir) / batch_name
    if batch_dir.exists():
        raise InputError("batch folder already exists; choose another --name", path=batch_dir)
    _check_parameters(notebook, {**base_params, **grid})
    names = list(grid)
    run_dirs: list[Path] = []
    for values in itertools.product(*(grid[n] for n in names)):
        combo = dict(zip(names, values))
        run_name = "-".join(f"{n}_{v}" for n, v in combo.items()) or "run"
        run_dirs.append(run_notebook(notebook, {**base_params, **combo}, log_dir=batch_dir, name=run_name))
    result = compare_runs(run_dirs, batch_dir, parameters=names, metric_columns=metric_columns)
    atomic_write_text(batch_dir / INDEX_FILE, build_index(batch_dir, run_dirs))
    return result


def read_run_parameters(run_dir: Path | str) -> dict[str, Any]:
    """The parameters a notebook run was executed with: the defaults of the saved notebook's
    ``parameters`` cell overlaid with the values papermill injected."""
    import ast

    import nbformat
    import papermill

    for notebook in sorted(Path(run_dir).glob("*.ipynb")):
        papermill_meta = nbformat.read(notebook, as_version=4).metadata.get("papermill", {})
        if "parameters" not in papermill_meta:
            continue
        values: dict[str, Any] = {}
        for name, spec in papermill.inspect_notebook(str(notebook)).items():
            try:
                values[name] = ast.literal_eval(spec["default"])
            except (ValueError, SyntaxError):
                values[name] = spec["default"]
        values.update(papermill_meta["parameters"])
        return values
    return {}


def compare_runs(run_dirs: Sequence[Path | str], out_dir: Path | str, parameters: Optional[Sequence[str]] = None,
                 metric_columns: Optional[Sequence[str]] = None) -> GridResult:
    """Write ``comparison.csv`` / ``comparison.md`` of the runs' parameters and flattened metrics.

    ``parameters`` names the notebook parameters shown as columns (default: those that differ
    between the runs).
    """
    import pandas as pd

    run_params = [read_run_parameters(d) for d in run_dirs]
    if parameters is None:
        keys = sorted({k for p in run_params for k in p} - {"run_dir", "run_name"})
        parameters = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in run_params}) > 1]
    rows = [{"run": Path(d).name, **{n: p.get(n) for n in parameters}, **flatten(read_metrics(d))}
            for d, p in zip(run_dirs, run_params)]
    metric_names = list(metric_columns) if metric_columns else sorted(
        {k for row in rows for k in row} - {"run", *parameters})
    columns = ["run", *parameters, *metric_names]
    out_dir = Path(out_dir)
    table = pd.DataFrame(rows, columns=columns)
    atomic_write_text(out_dir / "comparison.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "comparison.md", markdown_table(rows, columns))
    return GridResult(batch_dir=out_dir, rows=rows, columns=columns)
