"""Both traffic notebooks execute through papermill at tiny scale; their outputs are checked
independently of the code that wrote them (submission schema/order from the raw files)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from irkit.data.demo import generate_demo

REPO = Path(__file__).resolve().parents[1]
HEADLINE = ("official_mAP@10", "standard_mAP@10", "R@1", "R@5", "R@10")


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, seed=0, scale="tiny", datasets=("traffic",))
    return root


@dataclass
class StreamedRun:
    """A finished subprocess: its stdout, and each stderr line with the monotonic second it
    arrived at (read while the process ran), the start and the exit second."""

    stdout: str
    lines: list[tuple[float, str]]
    started: float
    exited: float

    def first(self, pattern: str) -> tuple[float, str]:
        """The first stderr line matching ``pattern`` (regex) with its arrival time."""
        found = [(t, line) for t, line in self.lines if re.search(pattern, line)]
        assert found, f"no stderr line matches {pattern!r}; got:\n" + "\n".join(l for _, l in self.lines[-40:])
        return found[0]


def run_streaming(argv: list[str], cwd: Path, timeout: float = 900) -> StreamedRun:
    """Run ``argv``, reading stderr line by line as the process writes it (a thread per pipe)."""
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    lines: list[tuple[float, str]] = []
    out: list[str] = []

    def read_stderr() -> None:
        for line in process.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))

    readers = [threading.Thread(target=read_stderr), threading.Thread(target=lambda: out.append(process.stdout.read()))]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    exited = time.monotonic()
    for reader in readers:
        reader.join()
    assert process.returncode == 0, "\n".join(line for _, line in lines[-60:])
    return StreamedRun(stdout="".join(out), lines=lines, started=started, exited=exited)


def _batch_run(notebook: str, log_dir: Path, name: str, **params: object) -> tuple[dict, StreamedRun]:
    argv = [sys.executable, "-m", "irkit", "batch", "run", str(REPO / "notebooks" / notebook),
            "--log-dir", str(log_dir), "--name", name]
    for key, value in params.items():
        argv += ["-p", key, json.dumps(value) if not isinstance(value, str) else value]
    done = run_streaming(argv, cwd=log_dir)
    return json.loads(done.stdout), done


#: lines a user must never see on the console of a notebook run (issue 15)
STRAY = ("IPKernelApp", "FakeTensor", "TqdmWarning", "IProgress", "Traceback")


def _check_live_progress(run: StreamedRun, stages: list[str]) -> None:
    """Stage lines arrive while the notebook runs, each stage has a start and an end line with
    its seconds, and no stray kernel / torch / tqdm line reaches the console."""
    whole = run.exited - run.started
    first_time, _ = run.first(r"\| stage 1/\d+ started: parameters$")
    # the first stage line arrives at the start, not in a dump at the exit
    assert run.exited - first_time > 0.5 * whole, (first_time - run.started, whole)
    for stage in stages:
        start_time, _ = run.first(rf"\| stage \d+/\d+ started: {re.escape(stage)}$")
        end_time, end = run.first(rf"\| stage \d+/\d+ done after \d+\.\d s: {re.escape(stage)}$")
        assert start_time <= end_time
    for _, line in run.lines:
        assert not any(word in line for word in STRAY), line
        assert not line.startswith("INFO:"), line  # no library messages in logging's bare default format
    run.first(r"\| notebook finished in .*; seconds per stage: ")


def _check_submission(run_dir: Path, root: Path) -> None:
    queries = (root / "traffic" / "test" / "test_text.txt").read_text().splitlines()
    gallery = {p.name for p in (root / "traffic" / "test" / "test_images").iterdir()}
    submission = json.loads((run_dir / "submission.json").read_text())
    assert list(submission) == ["results"]
    texts = [entry["text"] for entry in submission["results"]]
    assert texts == queries  # every query once, in test_text.txt order
    truth = {}
    for line in (root / "traffic" / "test" / "test_ground_truth.txt").read_text().splitlines():
        text, *images = line.split("$")
        truth[text] = images
    for entry in submission["results"]:
        names = entry["image_names"]
        assert len(names) == 10 and len(set(names)) == 10 and set(names) <= gallery
        # a query is answered from its own gallery: the kind of its relevant images
        kind = truth[entry["text"]][0].split("_")[0]
        assert all(name.startswith(kind + "_") for name in names), entry["text"]


def _check_metrics_in_range(metrics: dict) -> None:
    for key in HEADLINE:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["standard_mAP@10"] <= metrics["official_mAP@10"] + 1e-9  # min(#rel,10) >= hits


STAGE_CALL = re.compile(r"^\w+ = (\w+)\(", re.MULTILINE)


def _stage_calls(notebook: nbformat.NotebookNode) -> list[str]:
    """Per code cell besides the parameters, the one function it assigns the result of (a stage)."""
    calls = []
    for cell in notebook.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "code" and "parameters" not in tags and "injected-parameters" not in tags:
            found = [name for name in STAGE_CALL.findall(cell.source) if name != "TrafficRunParams"]
            assert len(found) == 1, cell.source
            calls.append(found[0])
    return calls


def _images_per_stage(notebook: nbformat.NotebookNode) -> dict[str, int]:
    """Stage call -> number of PNG outputs of its cell (cells without pictures left out)."""
    counts = {}
    for cell in notebook.cells:
        images = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        if images:
            counts[STAGE_CALL.search(cell.source).group(1)] = len(images)
    return counts


@pytest.mark.slow
def test_reproduce_then_quick_review_notebooks(tiny_demo: Path, tmp_path: Path) -> None:
    out, streamed = _batch_run("reproduce.ipynb", tmp_path, "repro", data_root=str(tiny_demo), scale="tiny",
                               epochs=2, warmup_epochs=1, batch_size=16, workers=0, cache_dir=str(tmp_path / "cache"))
    # live progress (issue 15): stage lines while it runs; per training epoch (warm-up, then the
    # main run: 1 epoch each at epochs=2, warmup_epochs=1) a line with loss, step rate and ETA,
    # seen before inference starts, i.e. while the notebook still runs
    _check_live_progress(streamed, ["set-up", "(a) Data and attribute vocabulary",
                                    "(b) Zero-shot caption augmentation", "(c) Training", "(d) Inference per gallery",
                                    "(e) Merge", "(f) Score (test split, local ground truth)"])
    epoch_line = r"\| INFO \| train epoch 1/1 step (\d+)/\1: loss \d+\.\d{4} \(epoch mean \d+\.\d{4}\), [\d.e+-]+ step/s, ETA 0 s$"
    epoch_lines = [(t, line) for t, line in streamed.lines if re.search(epoch_line, line)]
    # tiny train split: 60 labels at batch 16 (open_clip drops the last partial batch) = 3 steps
    assert [re.search(epoch_line, line).group(1) for _, line in epoch_lines] == ["3", "3"], epoch_lines
    inference_started, _ = streamed.first(r"started: \(d\) Inference per gallery$")
    assert epoch_lines[-1][0] < inference_started < streamed.exited
    run_dir = Path(out["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert out["metrics"] == metrics
    _check_submission(run_dir, tiny_demo)
    for block in ("trained", "before_training"):
        _check_metrics_in_range(metrics[block])
    # the same numbers as before the traffic task moved into irkit.traffic (tests/goldens/README.md)
    before = json.loads((REPO / "tests" / "goldens" / "pre_restructure.json").read_text())["reproduce"]
    for block in ("trained", "before_training"):
        assert {k: metrics[block][k] for k in before[block]} == before[block], block
    assert {p: {k: m[k] for k in before["prompt_ablation"][p]} for p, m in metrics["prompt_ablation"].items()} \
        == before["prompt_ablation"]
    assert set(metrics["prompt_ablation"]) == {"suffix", "strip", "none"}
    # prompt "auto" (the default): the headline variant is the best one on the labelled val split
    selection = metrics["prompt_selection"]["trained"]
    val_scores = {v: m["official_mAP@10"] for v, m in selection["metrics"].items()}
    best = max(val_scores.values())
    assert selection["chosen"] == next(v for v in ("suffix", "strip", "none") if val_scores[v] == best)
    assert metrics["trained"]["prompt"] == selection["chosen"]
    assert metrics["trained"]["official_mAP@10"] == metrics["prompt_ablation"][selection["chosen"]]["official_mAP@10"]
    assert metrics["augmentation"]["enabled"] is True
    # run folders in open_clip_train's layout for both training stages
    for stage in ("warmup", "train"):
        for item in ("out.log", "params.txt", "checkpoints", "tensorboard"):
            assert (run_dir / stage / item).exists(), (stage, item)
    assert (run_dir / "train" / "results.jsonl").is_file()
    # the executed notebook is saved into the run folder, one cell per stage; three stages draw
    # a picture: the filled labels (b), the training curves (c) and the sample answers (d)
    executed = nbformat.read(run_dir / "reproduce.ipynb", as_version=4)
    assert _images_per_stage(executed) == {"prepare_captions": 1, "train_model": 1, "infer_galleries": 1}
    assert _stage_calls(executed) == ["open_run", "prepare_data", "prepare_captions", "train_model",
                                      "infer_galleries", "merge_submissions", "score_reproduction"]

    checkpoint = metrics["training"]["final_checkpoint"]
    review, review_streamed = _batch_run("quick-review.ipynb", tmp_path, "review", data_root=str(tiny_demo),
                                         scale="tiny", checkpoint=checkpoint, workers=0,
                                         cache_dir=str(tmp_path / "cache"))
    for _, line in review_streamed.lines:
        assert not any(word in line for word in STRAY), line
    review_dir = Path(review["run_dir"])
    _check_submission(review_dir, tiny_demo)
    _check_metrics_in_range(review["metrics"]["trained"])
    # same weights, same data, same prompt -> the same answers as the reproduce run
    assert json.loads((review_dir / "submission.json").read_text()) == \
        json.loads((run_dir / "submission.json").read_text())
    reviewed = nbformat.read(review_dir / "quick-review.ipynb", as_version=4)
    assert _images_per_stage(reviewed) == {"infer_galleries": 1}
    assert _stage_calls(reviewed) == ["open_run", "load_test_data", "infer_galleries", "merge_submissions",
                                      "score_quick_review"]

    # the one-call pipeline runs the same stages: the same metrics and answers as the notebook
    from irkit.traffic.pipeline import quick_review
    from irkit.traffic.stages import TrafficRunParams

    result = quick_review(TrafficRunParams(data_root=str(tiny_demo), scale="tiny", checkpoint=checkpoint, workers=0,
                                           cache_dir=str(tmp_path / "cache")), tmp_path / "review-call")
    assert json.loads((result.run_dir / "metrics.json").read_text()) == review["metrics"]
    assert json.loads(result.submission_path.read_text()) == json.loads((review_dir / "submission.json").read_text())


def test_existing_run_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    done = subprocess.run([sys.executable, "-m", "irkit", "batch", "run", str(REPO / "notebooks" / "quick-review.ipynb"),
                           "--log-dir", str(tmp_path), "--name", "taken"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "already exists" in done.stderr and "Traceback" not in done.stderr


def test_unknown_notebook_parameter_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "irkit", "batch", "run", str(REPO / "notebooks" / "quick-review.ipynb"),
                           "--log-dir", str(tmp_path), "-p", "epoch", "3"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "unknown parameter(s) epoch" in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_grid_runs_each_combination_into_its_own_folder_and_tabulates(tiny_demo: Path, tmp_path: Path) -> None:
    """quick-review over two prompt variants of one (random-init) model: two run folders and a
    comparison table whose cells equal each run's own metrics.json."""
    argv = [sys.executable, "-m", "irkit", "batch", "grid", str(REPO / "notebooks" / "quick-review.ipynb"),
            "--grid", "prompt=suffix,strip", "-p", "data_root", str(tiny_demo), "-p", "workers", "0",
            "-p", "cache_dir", str(tmp_path / "cache"), "-p", "random_init", "true", "--log-dir", str(tmp_path),
            "--name", "grid",
            "--columns", "trained.official_mAP@10,trained.R@1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    batch = tmp_path / "grid"
    runs = sorted(p.name for p in batch.iterdir() if p.is_dir())
    assert runs == ["prompt_strip", "prompt_suffix"]
    import csv

    with open(batch / "comparison.csv", newline="") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    for run in runs:
        metrics = json.loads((batch / run / "metrics.json").read_text())
        assert rows[run]["prompt"] == run.split("_", 1)[1] == metrics["trained"]["prompt"]
        assert float(rows[run]["trained.official_mAP@10"]) == pytest.approx(metrics["trained"]["official_mAP@10"])
    table = (batch / "comparison.md").read_text().splitlines()
    assert table[0] == "| run | prompt | trained.official_mAP@10 | trained.R@1 |" and len(table) == 4


def test_parse_grid_and_values() -> None:
    from irkit.errors import InputError
    from irkit.notebook import parse_grid, parse_value

    assert parse_grid(["augment=true,false", "lr=1e-3,5e-4", "prompt=suffix"]) == {
        "augment": [True, False], "lr": [1e-3, 5e-4], "prompt": ["suffix"]}
    assert parse_value("null") is None and parse_value("True") is True and parse_value("x.pt") == "x.pt"
    with pytest.raises(InputError, match="name=value1,value2"):
        parse_grid(["augment"])


def test_read_run_parameters_fills_defaults_from_the_parameters_cell(tmp_path: Path) -> None:
    """A parameter left at its notebook default still appears (with its default value) beside
    the injected ones, so comparison tables show e.g. augment=True for a default run."""
    from irkit.notebook import read_run_parameters

    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('augment = True   # comment\nlr = None\nname = "demo"\nepochs = 6')
    cell.metadata["tags"] = ["parameters"]
    notebook.cells = [cell]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["papermill"] = {"parameters": {"epochs": 2}}
    nbformat.write(notebook, tmp_path / "run.ipynb")
    assert read_run_parameters(tmp_path) == {"augment": True, "lr": None, "name": "demo", "epochs": 2}
