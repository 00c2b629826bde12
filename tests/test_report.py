"""Run reports (irkit.run_report, ``irkit report``): hand-made run folders with known metrics,
TensorBoard scalars, a result grid and an executed notebook; the notebook-run hook; and the page in
a real headless Chromium (images load, metrics table present, nothing fetched, sorting works)."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from browser_fixtures import IMAGE_WIDTHS_JS, browser, guarded_page, save_screenshot
from irkit.cli import main as irkit_main
from irkit.errors import InputError
from irkit.run_report import build_run_report, find_runs, write_reports, write_run_report

LOSS = [(0, 4.0), (1, 3.0), (2, 2.5), (3, 2.0), (4, 2.25)]
VAL_R1 = [(1, 0.1), (2, 0.3)]
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


class Tables(HTMLParser):
    """Every ``<table id=...>`` as a list of rows (lists of cell texts); ``links`` per table."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.links: dict[str, list[str]] = {}
        self.images: list[str] = []
        self._table = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id", "")
            self.tables[self._table] = []
            self.links[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ""
        elif tag == "a" and self._table is not None:
            self.links[self._table].append(attrs["href"])
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parse(text: str) -> Tables:
    parser = Tables()
    parser.feed(text)
    return parser


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (30, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_scalars(folder: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step, value in LOSS:
        writer.add_scalar("train/loss", value, step)
    for step, value in VAL_R1:
        writer.add_scalar("val/R@1", value, step)
    writer.close()


def write_notebook(path: Path, image: bytes) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Reproduction\n\nThe **trained** model."),
        nbformat.v4.new_code_cell("print('epoch 1 loss 3.0')", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="epoch 1 loss 3.0\n")]),
        nbformat.v4.new_code_cell("show()", outputs=[
            nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(image).decode(),
                                                         "text/plain": "<Figure>"}),
            nbformat.v4.new_output("display_data", data={
                "text/html": '<script src="https://cdn.example.org/x.js"></script>',
                "text/plain": "plain fallback"})]),
    ]
    nb.metadata["papermill"] = {"parameters": {"epochs": 6, "run_dir": "/x"}}
    nbformat.write(nb, path)


def make_run(folder: Path, r1: float, epochs: int, grid_colour: tuple[int, int, int] = (200, 10, 10)) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(
        {"trained": {"R@1": r1, "num_queries": 482}, "units": "fraction"}))
    (folder / "params.txt").write_text(f"epochs: {epochs}\nmodel: irkit-tiny\n")
    (folder / "results.jsonl").write_text(json.dumps({"step": 1, "val": {"R@1": 0.1}}) + "\n"
                                          + json.dumps({"step": 2, "val": {"R@1": 0.3}}) + "\n")
    write_scalars(folder / "stage-clip" / "tensorboard")
    (folder / "grid.png").write_bytes(png_bytes(grid_colour))
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "not-a-figure.png").write_bytes(png_bytes((0, 0, 0)))
    write_notebook(folder / "reproduce.ipynb", png_bytes((10, 200, 10), (40, 24)))
    return folder


def test_run_report_shows_metrics_curves_grids_and_the_notebook(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", r1=0.5622, epochs=6)
    path = write_run_report(run)
    assert path == run / "report.html"
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    metrics = {row[0]: row[1] for row in page.tables["metrics"][1:]}
    assert metrics == {"trained.R@1": "0.5622", "trained.num_queries": "482", "units": "fraction"}
    assert page.tables["params"][1:] == [["epochs", "6"], ["model", "irkit-tiny"]]
    assert page.tables["results"][0] == ["step", "val.R@1"]
    assert page.tables["results"][1:] == [["1", "0.1000"], ["2", "0.3000"]]
    scalars = {row[1]: row for row in page.tables["scalars"][1:]}
    # folder, tag, points, last step, last, min, max: worked out from LOSS and VAL_R1 by hand
    assert scalars["train/loss"] == ["stage-clip/tensorboard", "train/loss", "5", "4", "2.2500", "2.0000", "4.0000"]
    assert scalars["val/R@1"] == ["stage-clip/tensorboard", "val/R@1", "2", "2", "0.3000", "0.1000", "0.3000"]
    grid_uri = "data:image/png;base64," + base64.b64encode((run / "grid.png").read_bytes()).decode()
    notebook_uri = "data:image/png;base64," + base64.b64encode(png_bytes((10, 200, 10), (40, 24))).decode()
    assert grid_uri in page.images and notebook_uri in page.images
    checkpoint_uri = base64.b64encode((run / "checkpoints" / "not-a-figure.png").read_bytes()).decode()
    assert checkpoint_uri not in text
    curve_images = [src for src in page.images if src not in (grid_uri, notebook_uri)]
    assert len(curve_images) == 1  # one curves figure for the one event folder
    decoded = Image.open(io.BytesIO(base64.b64decode(curve_images[0].split(",", 1)[1])))
    assert decoded.format == "PNG" and decoded.width > 100
    assert "<h1>Reproduction</h1>" in text and "<strong>trained</strong>" in text
    assert "<details><summary>code cell 2</summary>" in text and "epoch 1 loss 3.0" in text
    assert "cdn.example.org" not in text and "plain fallback" in text
    assert not EXTERNAL.search(text)


def test_index_compares_runs_and_links_their_reports(tmp_path: Path) -> None:
    log = tmp_path / "log"
    make_run(log / "grid-batch" / "epochs_2", r1=0.25, epochs=2)
    make_run(log / "single", r1=0.75, epochs=6)
    (log / "empty-folder").mkdir()
    assert find_runs(log) == [log / "grid-batch" / "epochs_2", log / "single"]
    written = write_reports(log)
    assert written == [log / "grid-batch" / "epochs_2" / "report.html", log / "single" / "report.html",
                       log / "index.html"]
    page = parse((log / "index.html").read_text(encoding="utf-8"))
    header, *rows = page.tables["runs"]
    assert header[0] == "run" and "trained.R@1" in header and "units" in header
    # the last results.jsonl record's numbers, for runs without metrics.json
    assert "last result: val.R@1" in header and "last result: step" in header
    assert [row[header.index("last result: val.R@1")] for row in rows] == ["0.3000", "0.3000"]
    # the run's notebook parameters (papermill metadata) are the same in both runs: no parameter column
    assert "epochs" not in header
    column = header.index("trained.R@1")
    assert [(row[0], row[column]) for row in rows] == [("grid-batch/epochs_2", "0.2500"), ("single", "0.7500")]
    assert page.links["runs"] == ["grid-batch/epochs_2/report.html", "single/report.html"]


def test_table_values() -> None:
    from irkit.run_report import format_value

    assert [format_value(v) for v in (0.5622, 4e-07, 0.0, 1.5e7, 482, None, True, [1, 2], float("nan"))] == [
        "0.5622", "4.000e-07", "0.0000", "1.500e+07", "482", "", "true", "[1, 2]", "nan"]


def test_bad_run_files_are_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"R@1": 0.5,\n  oops}')
    with pytest.raises(InputError, match=r"metrics.json, line 2: malformed JSON"):
        build_run_report(run)
    (run / "metrics.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a JSON object of metrics"):
        build_run_report(run)
    (run / "metrics.json").write_text("{}")
    (run / "results.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(InputError, match=r"results.jsonl, line 2: malformed JSON line"):
        build_run_report(run)
    (run / "results.jsonl").unlink()
    (run / "params.txt").write_text("epochs: 2\nno colon here\n")
    with pytest.raises(InputError, match=r"params.txt, line 2: expected 'name: value'"):
        build_run_report(run)
    assert not (run / "report.html").exists()

    assert irkit_main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing: folder not found" in err[0]
    (tmp_path / "nothing").mkdir()
    assert irkit_main(["report", str(tmp_path / "nothing")]) == 2
    assert "no run folders found" in capsys.readouterr().err


def test_cli_report_of_one_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run", r1=0.5, epochs=1)
    assert irkit_main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert "0.5000" in (run / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_notebook_run_and_grid_write_their_reports(tmp_path: Path) -> None:
    from irkit.notebook import run_notebook

    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("run_dir = None\nscore = 0.0")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell(
        "import json, pathlib\n"
        "pathlib.Path(run_dir, 'metrics.json').write_text(json.dumps({'score': score}))\n"
        "print('done')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook = tmp_path / "tiny.ipynb"
    nbformat.write(nb, notebook)
    run_dir = run_notebook(notebook, {"score": 0.125}, log_dir=tmp_path / "log", name="one")
    page = parse((run_dir / "report.html").read_text(encoding="utf-8"))
    assert {row[0]: row[1] for row in page.tables["metrics"][1:]} == {"score": "0.1250"}

    from irkit.notebook import run_grid

    result = run_grid(notebook, {"score": [0.5, 0.25]}, {}, log_dir=tmp_path / "log", batch_name="grid")
    assert all((d / "report.html").is_file() for d in (result.batch_dir / "score_0.5", result.batch_dir / "score_0.25"))
    header, *rows = parse((result.batch_dir / "index.html").read_text(encoding="utf-8")).tables["runs"]
    assert header == ["run", "score"]  # the differing parameter; its metric has the same name and is shown once
    assert rows == [["score_0.5", "0.5000"], ["score_0.25", "0.2500"]]  # in the order the grid ran them


@pytest.mark.slow
def test_a_failed_notebook_run_still_gets_its_report(tmp_path: Path) -> None:
    from papermill.exceptions import PapermillExecutionError

    from irkit.notebook import run_notebook

    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("run_dir = None")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell("print('stage one done')"),
                nbformat.v4.new_code_cell("raise ValueError('bad stage two')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "failing.ipynb")
    with pytest.raises(PapermillExecutionError, match="bad stage two"):
        run_notebook(tmp_path / "failing.ipynb", {}, log_dir=tmp_path / "log", name="broken")
    text = (tmp_path / "log" / "broken" / "report.html").read_text(encoding="utf-8")
    assert "stage one done" in text and "ValueError: bad stage two" in text
    assert 'id="no-metrics"' in text


@pytest.fixture(scope="module")
def chromium():
    yield from browser()


def test_report_renders_in_chromium_with_its_images(chromium, tmp_path: Path) -> None:
    log = tmp_path / "log"
    make_run(log / "run-a", r1=0.25, epochs=2)
    make_run(log / "run-b", r1=0.75, epochs=6, grid_colour=(20, 20, 220))
    make_run(log / "run-c", r1=0.5, epochs=4)
    write_reports(log)
    blocked: list[str] = []
    page = guarded_page(chromium, ["file://", "data:"], blocked)
    page.goto((log / "run-b" / "report.html").as_uri())
    page.wait_for_load_state("load")
    widths = page.evaluate(IMAGE_WIDTHS_JS, "img")
    assert len(widths) == 3 and all(w > 0 for w in widths), widths  # grid, notebook image, curves
    assert page.locator("#metrics tbody tr").count() == 3
    assert page.locator("#metrics").inner_text().count("0.7500") == 1
    save_screenshot(page, "report.png")

    page.goto((log / "index.html").as_uri())
    runs = page.locator("#runs tbody tr td:first-child")
    assert runs.all_inner_texts() == ["run-a", "run-b", "run-c"]
    header = page.locator("#runs th", has_text="trained.R@1")
    header.click()  # ascending by R@1
    assert runs.all_inner_texts() == ["run-a", "run-c", "run-b"]
    header.click()  # descending
    assert runs.all_inner_texts() == ["run-b", "run-c", "run-a"]
    page.locator("#runs a", has_text="run-c").click()
    page.wait_for_load_state("load")
    assert page.url.endswith("run-c/report.html")
    assert blocked == []
    page.close()
