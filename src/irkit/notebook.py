"""Papermill-driven notebook runs: one run folder per execution, and parameter grids.

Every execution gets its own run folder ``<log_dir>/<name>/`` (never overwritten); the
executed notebook is saved there as ``<notebook stem>.ipynb`` and the notebook receives the
folder as its ``run_dir`` parameter, writing ``metrics.json`` beside it; when it finishes the
folder gets its ``report.html`` (:mod:`irkit.run_report`). A grid runs the
notebook once per combination of parameter values and writes one comparison table
(``comparison.csv`` + ``comparison.md``, and ``index.html``) of the runs' metrics.

Progress (stderr, as it happens): one line when a code cell starts and one when it ends with
its elapsed seconds, named by the markdown heading above it; everything the kernel prints
(the stages' log lines, training epochs with loss and ETA) is forwarded; a last line lists
the seconds per stage. The kernel talks to papermill over local IPC sockets, not TCP.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from irkit.errors import InputError
from irkit.io import atomic_write_text
from irkit.progress import console_line, format_duration
from irkit.run_report import INDEX_FILE, build_index, flatten_metrics, write_run_report

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


_HEADING = re.compile(r"^\s*#+\s*(.+?)\s*$", re.MULTILINE)


def cell_stage_names(cells: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Cell index -> stage name of every code cell: ``parameters`` / ``injected parameters``
    for papermill's cells, else the first markdown heading right above the cell (no code cell
    in between), else ``set-up`` for a cell with imports, else the cell's first code line (at
    most 60 characters)."""
    names: dict[int, str] = {}
    heading: Optional[str] = None
    for index, cell in enumerate(cells):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        if cell.get("cell_type") == "markdown":
            found = _HEADING.search(source)
            heading = found.group(1) if found else heading
            continue
        if cell.get("cell_type") != "code":
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags:
            names[index] = "injected parameters"
        elif "parameters" in tags:
            names[index] = "parameters"
        elif heading is not None:
            names[index] = heading
        elif re.search(r"^(import|from) \w", source, re.MULTILINE):
            names[index] = "set-up"
        else:
            first = next((line.strip() for line in source.splitlines() if line.strip()), "(empty cell)")
            names[index] = first if len(first) <= 60 else first[:57] + "..."
        heading = None
    return names


class _ConsoleProgress:
    """Stage lines of one notebook execution (hooked into papermill's cell start/end calls)."""

    def __init__(self, cells: Sequence[Mapping[str, Any]], stream: Any) -> None:
        self.names = cell_stage_names(cells)
        self.order = {index: number for number, index in enumerate(sorted(self.names), start=1)}
        self.stream = stream
        self.started: dict[int, float] = {}
        self.seconds: dict[str, float] = {}

    def _label(self, index: int) -> str:
        return f"stage {self.order[index]}/{len(self.order)}"

    def start(self, index: Optional[int]) -> None:
        if index in self.names:
            self.started[index] = time.perf_counter()
            console_line(f"{self._label(index)} started: {self.names[index]}", self.stream)

    def end(self, index: Optional[int], failed: bool = False) -> None:
        if index in self.started:
            seconds = time.perf_counter() - self.started.pop(index)
            self.seconds[self.names[index]] = seconds
            console_line(f"{self._label(index)} {'FAILED' if failed else 'done'} after {seconds:.1f} s: "
                         f"{self.names[index]}", self.stream)

    def summary(self) -> None:
        slow = {name: s for name, s in self.seconds.items() if s >= 0.05}
        console_line(f"notebook finished in {format_duration(sum(self.seconds.values()))}; seconds per stage: "
                     + "; ".join(f"{name} {s:.1f}" for name, s in slow.items()), self.stream)


def _progress_engine() -> str:
    """Register (once) and name the papermill engine that prints stage lines and forwards the
    kernel's stdout/stderr to this process's stderr as the kernel writes them."""
    from papermill.engines import NBClientEngine, papermill_engines

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
            progress = _ConsoleProgress(nb_man.nb.cells, sys.stderr)
            original_start, original_complete = nb_man.cell_start, nb_man.cell_complete
            original_exception = nb_man.cell_exception
            failed: set[Optional[int]] = set()

            def cell_start(cell: Any, cell_index: Optional[int] = None, **kw: Any) -> Any:
                progress.start(cell_index)
                return original_start(cell, cell_index, **kw)

            def cell_exception(cell: Any, cell_index: Optional[int] = None, **kw: Any) -> Any:
                failed.add(cell_index)
                return original_exception(cell, cell_index, **kw)

            def cell_complete(cell: Any, cell_index: Optional[int] = None, **kw: Any) -> Any:
                progress.end(cell_index, failed=cell_index in failed)
                return original_complete(cell, cell_index, **kw)

            nb_man.cell_start, nb_man.cell_complete, nb_man.cell_exception = cell_start, cell_complete, cell_exception
            try:
                return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
            finally:
                if not failed:
                    progress.summary()

    papermill_engines.register("irkit-progress", ProgressEngine)  # re-registering replaces it
    return "irkit-progress"


def _kernel_config() -> Any:
    """Kernel-manager config: IPC transport (local sockets, no plain-text TCP and no kernel
    warning about it) when the socket paths fit the OS limit, else jupyter's TCP default."""
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets.config import Config

    # socket path: <runtime dir>/kernel-<36-char uuid>-ipc-<n>; AF_UNIX paths hold < 108 bytes
    if len(jupyter_runtime_dir()) + len("/kernel-") + 36 + len("-ipc-10") < 100:
        return Config({"KernelManager": {"transport": "ipc"}})
    return Config()


#: warnings the kernel would print on every run that say nothing about the run: huggingface_hub
#: (imported by open_clip) imports tqdm.auto, which in a kernel without ipywidgets warns once.
KERNEL_WARNING_FILTERS = ("ignore:IProgress not found",)


@contextlib.contextmanager
def _quiet_kernel_environment() -> Iterator[None]:
    """``PYTHONWARNINGS`` for the kernel process (inherited at its start) extended by
    :data:`KERNEL_WARNING_FILTERS`; this process's value is restored afterwards."""
    saved = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (saved, *KERNEL_WARNING_FILTERS)))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = saved


def run_notebook(notebook: Path | str, params: Mapping[str, Any], log_dir: Path | str = "log",
                 name: Optional[str] = None, kernel_name: str = "python3", progress: bool = True) -> Path:
    """Execute ``notebook`` with papermill into a new run folder; return the folder.

    The notebook's ``run_dir`` parameter is set to the folder. Raises if it exists.
    ``progress``: print stage lines and forward the kernel's output to stderr while it runs
    (the executed notebook keeps every output either way).
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
    console = {"engine_name": _progress_engine(), "stdout_file": sys.stderr, "stderr_file": sys.stderr} \
        if progress else {}
    if progress:
        console_line(f"notebook {notebook.name} -> run folder {run_dir}")
    try:
        with _quiet_kernel_environment():
            papermill.execute_notebook(
                str(notebook), str(run_dir / notebook.name), parameters=params,
                kernel_name=kernel_name, progress_bar=False, cwd=str(Path.cwd()), config=_kernel_config(),
                **console,
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
             metric_columns: Optional[Sequence[str]] = None, progress: bool = True) -> GridResult:
    """Run ``notebook`` once per combination of ``grid`` values into ``<log_dir>/<batch>/<run>/``
    and write ``comparison.csv`` / ``comparison.md`` of every run's flattened metrics and
    ``index.html`` (the runs' sortable table, linking their reports).
    ``progress``: a line per grid run (with ETA) besides each run's stage lines."""
    notebook = Path(notebook)
    batch_name = batch_name or f"{time.strftime('%Y_%m_%d-%H_%M_%S')}-{notebook.stem}-grid"
    batch_dir = Path(log_dir) / batch_name
    if batch_dir.exists():
        raise InputError("batch folder already exists; choose another --name", path=batch_dir)
    _check_parameters(notebook, {**base_params, **grid})
    names = list(grid)
    run_dirs: list[Path] = []
    combos = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
    started = time.perf_counter()
    for number, combo in enumerate(combos, start=1):
        run_name = "-".join(f"{n}_{v}" for n, v in combo.items()) or "run"
        if progress:
            console_line(f"grid run {number}/{len(combos)}: {run_name}")
        run_dirs.append(run_notebook(notebook, {**base_params, **combo}, log_dir=batch_dir, name=run_name,
                                     progress=progress))
        if progress:
            elapsed = time.perf_counter() - started
            console_line(f"grid run {number}/{len(combos)} done; {format_duration(elapsed)} so far, ETA "
                         f"{format_duration(elapsed / number * (len(combos) - number))}")
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
    rows = [{"run": Path(d).name, **{n: p.get(n) for n in parameters}, **flatten_metrics(read_metrics(d))}
            for d, p in zip(run_dirs, run_params)]
    metric_names = list(metric_columns) if metric_columns else sorted(
        {k for row in rows for k in row} - {"run", *parameters})
    columns = ["run", *parameters, *metric_names]
    out_dir = Path(out_dir)
    table = pd.DataFrame(rows, columns=columns)
    atomic_write_text(out_dir / "comparison.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "comparison.md", markdown_table(rows, columns))
    return GridResult(batch_dir=out_dir, rows=rows, columns=columns)
