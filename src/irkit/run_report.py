"""Browsable run reports: ``report.html`` per run folder and ``index.html`` comparing runs.

A run report is one self-contained HTML file (readable offline: every image is embedded as a
``data:`` URI, the CSS and the small sorting script are inline, nothing is fetched): the run's
metrics (``metrics.json`` flattened, the last ``results.jsonl`` records, ``params.txt``), its
TensorBoard scalar curves (every ``events.out.tfevents.*`` folder below the run, drawn with
matplotlib to PNG) with a summary table (points, last / min / max value), the image files the run
wrote (result grids, figures) and the executed notebook (markdown cells rendered, code cells
collapsed, outputs with their images). The index page is a sortable table of every run's
parameters and flattened metrics, each row linking to its ``report.html``.

A *run folder* holds an executed notebook (``*.ipynb``), ``metrics.json``, ``params.txt`` or
``results.jsonl``; its sub-folders (training stages) belong to it. Reports are written
atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import quote

from irkit.errors import InputError
from irkit.io import atomic_write_text, read_json

REPORT_FILE = "report.html"
INDEX_FILE = "index.html"
#: Files whose presence makes a folder a run folder.
RUN_MARKERS = ("metrics.json", "params.txt", "results.jsonl")
#: Image files embedded as figures: at most this many, each at most this many bytes.
MAX_FIGURES = 24
MAX_FIGURE_BYTES = 8 << 20
FIGURE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
#: Sub-folders never searched for figures (model weights, caches, TensorBoard files).
SKIPPED_DIRS = {"checkpoints", "tensorboard", ".cache", "__pycache__", ".ipynb_checkpoints"}
#: Records of ``results.jsonl`` shown (the last ones).
MAX_RESULT_RECORDS = 20
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_EXTERNAL_REF = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


@dataclass
class ScalarSeries:
    """One TensorBoard scalar tag of one event folder: ``points`` are ``(step, value)``, in step order."""

    source: str  # event folder, relative to the run folder
    tag: str
    points: list[tuple[int, float]] = field(default_factory=list)

    @property
    def last(self) -> float:
        return self.points[-1][1]

    @property
    def minimum(self) -> float:
        return min(v for _, v in self.points)

    @property
    def maximum(self) -> float:
        return max(v for _, v in self.points)


def is_run_folder(folder: Path | str) -> bool:
    """Whether ``folder`` holds a run: an executed notebook or one of :data:`RUN_MARKERS`."""
    folder = Path(folder)
    return folder.is_dir() and (any((folder / m).is_file() for m in RUN_MARKERS)
                                or any(folder.glob("*.ipynb")))


def find_runs(log_dir: Path | str) -> list[Path]:
    """Every run folder below ``log_dir`` (not descending into a run: its sub-folders are its
    stages), sorted by path."""
    log_dir = Path(log_dir)
    runs: list[Path] = []

    def visit(folder: Path) -> None:
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if is_run_folder(child):
                runs.append(child)
            elif child.name not in SKIPPED_DIRS:
                visit(child)

    visit(log_dir)
    return runs


def flatten_metrics(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def read_run_metrics(run_dir: Path | str) -> dict[str, Any]:
    """The run's ``metrics.json`` flattened (``{}`` when it has none); a malformed file is an
    :class:`InputError` naming it."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return {}
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise InputError(f"expected a JSON object of metrics, got {type(metrics).__name__}", path=path)
    return flatten_metrics(metrics)


def read_params(run_dir: Path | str) -> dict[str, str]:
    """``params.txt`` (``name: value`` lines) as a mapping; ``{}`` when absent."""
    path = Path(run_dir) / "params.txt"
    if not path.is_file():
        return {}
    params: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise InputError(f"expected 'name: value', got {line[:60]!r}", path=path, line=number)
        params[name.strip()] = value.strip()
    return params


def read_result_records(run_dir: Path | str) -> list[dict[str, Any]]:
    """The records of ``results.jsonl`` (each line one JSON object); a bad line is an
    :class:`InputError` naming its line."""
    path = Path(run_dir) / "results.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"malformed JSON line: {e.msg}", path=path, line=number) from None
        if not isinstance(record, dict):
            raise InputError("expected one JSON object per line", path=path, line=number)
        records.append(flatten_metrics(record))
    return records


def read_scalar_series(run_dir: Path | str) -> list[ScalarSeries]:
    """Every scalar tag of every TensorBoard event folder below ``run_dir`` (sorted by folder, tag)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    folders = sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*") if p.is_file()})
    series: list[ScalarSeries] = []
    for folder in folders:
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        try:
            accumulator.Reload()
        except Exception as e:  # noqa: BLE001 - a truncated or foreign event file
            raise InputError(f"cannot read TensorBoard events ({type(e).__name__}: {e})", path=folder) from None
        relative = folder.relative_to(run_dir).as_posix()
        for tag in sorted(accumulator.Tags().get("scalars", [])):
            points = sorted((int(e.step), float(e.value)) for e in accumulator.Scalars(tag))
            if points:
                series.append(ScalarSeries(relative, tag, points))
    return series


def image_data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...`` of image bytes."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def curve_figures(series: Sequence[ScalarSeries], columns: int = 3) -> list[tuple[str, str]]:
    """One PNG (as a data URI) per event folder, one panel per tag: ``[(folder, uri)]``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figures = []
    for source in dict.fromkeys(s.source for s in series):
        tags = [s for s in series if s.source == source]
        rows = -(-len(tags) // columns)
        cols = min(columns, len(tags))
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
        for ax in axes.flat[len(tags):]:
            ax.axis("off")
        for ax, one in zip(axes.flat, tags):
            steps, values = zip(*one.points)
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3)
            ax.set_title(one.tag, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        figures.append((source, image_data_uri(buffer.getvalue())))
    return figures


def find_figures(run_dir: Path | str) -> list[Path]:
    """Image files the run wrote (result grids, figures), outside checkpoints / TensorBoard /
    caches, sorted by path; at most :data:`MAX_FIGURES`, each at most :data:`MAX_FIGURE_BYTES`."""
    run_dir = Path(run_dir)
    found = []

    def visit(folder: Path) -> None:
        for child in sorted(folder.iterdir()):
            if child.is_dir():
                if child.name not in SKIPPED_DIRS and not child.name.startswith("."):
                    visit(child)
            elif (child.suffix.lower() in FIGURE_SUFFIXES and child.stat().st_size <= MAX_FIGURE_BYTES
                  and not child.name.startswith(".")):
                found.append(child)

    visit(run_dir)
    return found[:MAX_FIGURES]


def _is_self_contained(markup: str) -> bool:
    return "<script" not in markup.lower() and "<link" not in markup.lower() and not _EXTERNAL_REF.search(markup)


def _output_text(value: Any) -> str:
    text = "".join(value) if isinstance(value, list) else str(value)
    return _ANSI.sub("", text)


def render_output(output: Mapping[str, Any]) -> str:
    """HTML of one notebook output: streams and errors as text, ``image/png`` / ``image/jpeg`` as
    embedded images, ``image/svg+xml`` and ``text/html`` inline when they fetch nothing, else the
    output's ``text/plain``."""
    kind = output.get("output_type")
    if kind == "stream":
        css = "stderr" if output.get("name") == "stderr" else "stdout"
        return f'<pre class="{css}">{html.escape(_output_text(output.get("text", "")))}</pre>'
    if kind == "error":
        trace = _output_text("\n".join(output.get("traceback", [])))
        return (f'<pre class="error">{html.escape(str(output.get("ename", "")))}: '
                f'{html.escape(str(output.get("evalue", "")))}\n{html.escape(trace)}</pre>')
    data = output.get("data", {})
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            payload = re.sub(r"\s+", "", "".join(data[mime]) if isinstance(data[mime], list) else str(data[mime]))
            if _BASE64.fullmatch(payload):
                return f'<img class="output" alt="notebook output" src="data:{mime};base64,{payload}">'
            return '<pre class="error">an image output that is not base64 text was left out</pre>'
    if "image/svg+xml" in data and _is_self_contained(_output_text(data["image/svg+xml"])):
        return f'<div class="svg">{_output_text(data["image/svg+xml"])}</div>'
    if "text/html" in data and _is_self_contained(_output_text(data["text/html"])):
        return f'<div class="html-output">{_output_text(data["text/html"])}</div>'
    if "text/markdown" in data:
        return render_markdown(_output_text(data["text/markdown"]))
    if "text/plain" in data:
        return f'<pre>{html.escape(_output_text(data["text/plain"]))}</pre>'
    return ""


def render_markdown(text: str) -> str:
    """Markdown to HTML (python-markdown, tables and fenced code); raw HTML that would fetch
    something is shown escaped."""
    import markdown

    rendered = markdown.markdown(text, extensions=["tables", "fenced_code"])
    return rendered if _is_self_contained(rendered) else f"<pre>{html.escape(text)}</pre>"


def render_notebook(notebook: Path | str) -> str:
    """HTML of an executed notebook: markdown cells rendered, each code cell's source in a
    collapsed ``<details>``, then its outputs."""
    import nbformat

    notebook = Path(notebook)
    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception as e:  # noqa: BLE001 - nbformat raises several types for broken files
        raise InputError(f"not a readable notebook ({type(e).__name__}: {e})", path=notebook) from None
    parts = []
    for number, cell in enumerate(nb.cells, start=1):
        if cell.cell_type == "markdown":
            parts.append(f'<div class="cell markdown">{render_markdown(cell.source)}</div>')
        elif cell.cell_type == "code":
            outputs = "".join(render_output(o) for o in cell.get("outputs", []))
            parts.append(f'<div class="cell code"><details><summary>code cell {number}</summary>'
                         f'<pre class="source">{html.escape(cell.source)}</pre></details>{outputs}</div>')
    return "\n".join(parts)


def format_value(value: Any) -> str:
    """A table cell: floats with 4 decimals (3 significant digits in e-notation below 1e-3 or from
    1e7 on), lists as JSON, ``None`` empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        tiny_or_huge = value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e7)
        return f"{value:.3e}" if tiny_or_huge else f"{value:.4f}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _sort_key(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    return format_value(value)


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;
color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
th.sortable{cursor:pointer;user-select:none}th.sortable:after{content:" \\2195";color:#999}
pre{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:.8em;max-height:30em}pre.stderr{background:#fff4e5}
pre.error{background:#fde8e8}img{max-width:100%;border:1px solid #eee}.figures figure{display:inline-block;
margin:.4em;vertical-align:top}.figures img{max-height:420px}figcaption{font-size:.8em;color:#555}
.cell{margin:.6em 0}details summary{cursor:pointer;color:#555;font-size:.85em}nav a{margin-right:1em}
.scroll{max-height:24em;overflow:auto;display:inline-block;border-bottom:1px solid #eee}
nav{font-size:.9em;margin-bottom:.5em}.wide{overflow-x:auto}
"""

_SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.classList.add('sortable');
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var ascending = th.getAttribute('data-order') !== 'asc';
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-order'); });
      th.setAttribute('data-order', ascending ? 'asc' : 'desc');
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-sort'), y = b.cells[col].getAttribute('data-sort');
        var nx = parseFloat(x), ny = parseFloat(y), c;
        if (x === '' && y !== '') { return 1; }
        if (y === '' && x !== '') { return -1; }
        c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return ascending ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def html_table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], table_id: str, sortable: bool = False,
               links: Optional[Mapping[str, Sequence[str]]] = None) -> str:
    """An HTML table; each cell carries ``data-sort`` (numbers as floats). ``links[column][i]``
    makes row ``i``'s cell of that column a link."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for column in columns:
            value = row.get(column)
            text = html.escape(format_value(value))
            if links and column in links:
                text = f'<a href="{html.escape(links[column][i])}">{text}</a>'
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(f'<td data-sort="{html.escape(_sort_key(value))}"{" class=num" if numeric else ""}>'
                         f"{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    css = ' class="sortable"' if sortable else ""
    return (f'<table id="{table_id}"{css}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _page(title: str, body: str, script: bool = False) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n{body}\n"
            + (f"<script>{_SORT_SCRIPT}</script>" if script else "") + "</body></html>\n")


def build_run_report(run_dir: Path | str) -> str:
    """The HTML text of ``run_dir``'s report (see the module docstring)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError("run folder not found", path=run_dir)
    sections = [f"<h1>Run {html.escape(run_dir.name)}</h1>"]
    metrics = read_run_metrics(run_dir)
    if metrics:
        rows = [{"metric": k, "value": v} for k, v in metrics.items()]
        sections.append('<h2 id="sec-metrics">Metrics (metrics.json)</h2><div class="scroll">'
                        + html_table(["metric", "value"], rows, "metrics") + "</div>")
    records = read_result_records(run_dir)
    if records:
        columns = list(dict.fromkeys(k for r in records for k in r))
        shown = records[-MAX_RESULT_RECORDS:]
        sections.append(f'<h2 id="sec-results">Results (results.jsonl, last {len(shown)} of {len(records)})</h2>'
                        '<div class="scroll">' + html_table(columns, shown, "results") + "</div>")
    if not metrics and not records:
        sections.append('<h2 id="sec-metrics">Metrics</h2><p id="no-metrics">This run wrote no metrics.json or results.jsonl.</p>')
    series = read_scalar_series(run_dir)
    if series:
        rows = [{"folder": s.source, "tag": s.tag, "points": len(s.points), "last step": s.points[-1][0],
                 "last": s.last, "min": s.minimum, "max": s.maximum} for s in series]
        figures = "".join(f'<figure><img alt="curves of {html.escape(source)}" src="{uri}">'
                          f"<figcaption>{html.escape(source)}</figcaption></figure>"
                          for source, uri in curve_figures(series))
        sections.append('<h2 id="sec-curves">Curves (TensorBoard scalars)</h2>'
                        + html_table(["folder", "tag", "points", "last step", "last", "min", "max"], rows, "scalars")
                        + f'<div class="figures">{figures}</div>')
    figure_paths = find_figures(run_dir)
    if figure_paths:
        items = "".join(
            f'<figure><img alt="{html.escape(p.name)}" '
            f'src="{image_data_uri(p.read_bytes(), FIGURE_SUFFIXES[p.suffix.lower()])}">'
            f"<figcaption>{html.escape(p.relative_to(run_dir).as_posix())}</figcaption></figure>"
            for p in figure_paths)
        sections.append(f'<h2 id="sec-figures">Result grids and figures</h2><div class="figures">{items}</div>')
    params = read_params(run_dir)
    if params:
        sections.append('<h2 id="sec-params">Parameters (params.txt)</h2>' + html_table(
            ["name", "value"], [{"name": k, "value": v} for k, v in params.items()], "params"))
    for number, notebook in enumerate(sorted(run_dir.glob("*.ipynb")), start=1):
        sections.append(f'<h2 id="sec-notebook-{number}">Notebook {html.escape(notebook.name)}</h2>'
                        f'<div class="notebook">{render_notebook(notebook)}</div>')
    links = "".join(f'<a href="#{anchor}">{html.escape(title.strip())}</a>'
                    for anchor, title in re.findall(r'<h2 id="([^"]+)">([^<(]+)', "".join(sections)))
    sections.insert(1, f"<nav>{links}</nav>")
    return _page(f"irkit run {run_dir.name}", "\n".join(sections))


def write_run_report(run_dir: Path | str) -> Path:
    """Write ``<run_dir>/report.html`` atomically; returns its path."""
    text = build_run_report(run_dir)
    path = Path(run_dir) / REPORT_FILE
    atomic_write_text(path, text)
    return path


def _notebook_parameters(run_dir: Path) -> dict[str, Any]:
    import nbformat

    for notebook in sorted(run_dir.glob("*.ipynb")):
        try:
            meta = nbformat.read(notebook, as_version=4).metadata.get("papermill", {})
        except Exception as e:  # noqa: BLE001 - nbformat raises several types for broken files
            raise InputError(f"not a readable notebook ({type(e).__name__}: {e})", path=notebook) from None
        if "parameters" in meta:
            return {k: v for k, v in meta["parameters"].items() if k not in ("run_dir", "run_name")}
    return {}


def last_result(run_dir: Path | str) -> dict[str, Any]:
    """The numbers of the run's last ``results.jsonl`` record, keyed ``last result: <name>``
    (the index's columns for training runs, which write no ``metrics.json``)."""
    records = read_result_records(run_dir)
    if not records:
        return {}
    return {f"last result: {k}": v for k, v in records[-1].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def build_index(log_dir: Path | str, runs: Sequence[Path]) -> str:
    """The HTML text of an index page over ``runs`` (folders below ``log_dir``): one row per run
    with the parameters that differ between runs and every flattened metric, sortable by any
    column, each run name linking to its ``report.html``."""
    log_dir = Path(log_dir)
    params = [_notebook_parameters(r) or read_params(r) for r in runs]
    differing = sorted(k for k in {k for p in params for k in p}
                       if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in params}) > 1)
    metrics = [{**read_run_metrics(r), **last_result(r)} for r in runs]
    metric_names = sorted({k for m in metrics for k in m})
    rows = [{"run": r.relative_to(log_dir).as_posix(), **{k: p.get(k) for k in differing}, **m}
            for r, p, m in zip(runs, params, metrics)]
    links = {"run": [quote(f"{r.relative_to(log_dir).as_posix()}/{REPORT_FILE}") for r in runs]}
    columns = ["run", *differing, *[m for m in metric_names if m not in differing]]
    body = (f"<h1>Runs in {html.escape(log_dir.name or str(log_dir))}</h1>"
            f"<p>{len(runs)} run(s). Click a column header to sort; click a run for its report.</p>"
            + '<div class="wide">' + html_table(columns, rows, "runs", sortable=True, links=links) + "</div>")
    return _page(f"irkit runs in {log_dir.name}", body, script=True)


def write_reports(folder: Path | str) -> list[Path]:
    """``irkit report``: a run folder gets its ``report.html``; any other folder gets one per run
    found below it plus ``index.html`` comparing them. Returns the files written."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("folder not found (expected a run folder or a folder of runs such as log/)", path=folder)
    if is_run_folder(folder):
        return [write_run_report(folder)]
    runs = find_runs(folder)
    if not runs:
        raise InputError("no run folders found (expected folders holding metrics.json, params.txt, "
                         "results.jsonl or an executed notebook)", path=folder)
    written = [write_run_report(run) for run in runs]
    index = folder / INDEX_FILE
    atomic_write_text(index, build_index(folder, runs))
    return [*written, index]
