"""Both traffic notebooks execute through papermill at tiny scale; their outputs are checked
independently of the code that wrote them (submission schema/order from the raw files)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
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


def _batch_run(notebook: str, log_dir: Path, name: str, **params: object) -> dict:
    argv = [sys.executable, "-m", "irkit", "batch", "run", str(REPO / "notebooks" / notebook),
            "--log-dir", str(log_dir), "--name", name]
    for key, value in params.items():
        argv += ["-p", key, json.dumps(value) if not isinstance(value, str) else value]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=log_dir)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


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
    out = _batch_run("reproduce.ipynb", tmp_path, "repro", data_root=str(tiny_demo), scale="tiny", epochs=2,
                     warmup_epochs=1, batch_size=16, workers=0, cache_dir=str(tmp_path / "cache"))
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
    review = _batch_run("quick-review.ipynb", tmp_path, "review", data_root=str(tiny_demo), scale="tiny",
                        checkpoint=checkpoint, workers=0, cache_dir=str(tmp_path / "cache"))
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
