"""``irkit cir`` end to end on tiny demo data (random-init irkit-tiny) and the notebook."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irkit.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "zero-shot-cir.ipynb"
FAST = ["--num-workers", "0", "--batch-size", "32", "--random-init"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from irkit.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, seed=0, scale="tiny", datasets=["cirr", "circo", "fashioniq"], progress=False)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


def cli(args) -> int:
    return main([str(a) for a in args])


def run_cli(args, capsys) -> tuple[int, dict | None, str]:
    capsys.readouterr()  # drop what fixtures printed
    code = cli(args)
    captured = capsys.readouterr()
    out = captured.out.strip()
    return code, (json.loads(out) if code == 0 and out else None), captured.err


@pytest.fixture(scope="module")
def phi_checkpoints(demo, work):
    """Phi checkpoints trained through the CLI: LinCIR from captions, SEARLE from OTI tokens."""
    cache = work / "cache"
    assert cli(["cir", "train-phi", "--method", "lincir", "--captions", demo / "captions" / "cirr_train.csv",
                 "--val-dataset", "cirr", "--val-root", demo / "cirr", "--steps", "4", "--validate-every", "2",
                 "--train-batch-size", "8", "--log-dir", work / "log", "--name", "lincir",
                 "--cache-dir", cache, *FAST]) == 0
    assert cli(["cir", "oti", "--dataset", "cirr", "--root", demo / "cirr", "--split", "train", "--images", "all",
                 "--out", work / "oti", "--steps", "2", "--oti-batch-size", "8", "--cache-dir", cache, *FAST]) == 0
    assert cli(["cir", "train-phi", "--method", "searle", "--oti", work / "oti", "--val-dataset", "circo",
                 "--val-root", demo / "circo", "--steps", "4", "--validate-every", "2", "--train-batch-size", "8",
                 "--log-dir", work / "log", "--name", "searle", "--cache-dir", cache, *FAST]) == 0
    return {"lincir": work / "log" / "lincir" / "checkpoints" / "best.pt",
            "searle": work / "log" / "searle" / "checkpoints" / "best.pt"}


def test_train_phi_writes_run_folders(phi_checkpoints, work):
    for name, checkpoint in phi_checkpoints.items():
        run = work / "log" / name
        assert checkpoint.is_file()
        assert (run / "out.log").is_file() and (run / "params.txt").is_file()
        assert f"method: {name}" in (run / "params.txt").read_text()
        assert len((run / "results.jsonl").read_text().splitlines()) == 2  # validated at steps 2 and 4


@pytest.mark.parametrize("dataset", ["cirr", "circo", "fashioniq"])
@pytest.mark.parametrize("method", ["searle", "lincir", "image-only", "text-only", "image-text-sum"])
def test_eval_every_method(method, dataset, demo, work, phi_checkpoints, capsys):
    args = ["cir", "eval", "--dataset", dataset, "--root", demo / dataset, "--split", "val", "--method", method,
            "--cache-dir", work / "cache", *FAST]
    if method in phi_checkpoints:
        args += ["--method-checkpoint", phi_checkpoints[method]]
    code, result, err = run_cli(args, capsys)
    assert code == 0, err
    assert result["method"] == method
    headline = {"cirr": "(R@5+Rs@1)/2", "circo": "mAP@10", "fashioniq": "average"}[dataset]
    assert headline in result
    assert result["protocol"].startswith(dataset)
    if dataset == "fashioniq":
        assert set(result) >= {"dress", "shirt", "toptee"}
        for k in (10, 50):
            mean = np.mean([result[c][f"R@{k}"] for c in ("dress", "shirt", "toptee")])
            assert result["average"][f"R@{k}"] == pytest.approx(mean)


def _image_embedding(loaded, path: Path) -> np.ndarray:
    with Image.open(path) as image:
        pixels = loaded.preprocess(image.convert("RGB"))[None]
    with torch.no_grad():
        feature = loaded.model.encode_image(pixels)[0].numpy()
    return feature / np.linalg.norm(feature)


def test_cirr_text_only_metrics_match_a_hand_computation(demo, work, capsys):
    """Independent of irkit's protocols: rank by hand, drop the reference, count hits."""
    from irkit.data import load_dataset
    from irkit.models import create_model

    code, result, err = run_cli(["cir", "eval", "--dataset", "cirr", "--root", demo / "cirr", "--method",
                                 "text-only", "--cache-dir", "none", *FAST], capsys)
    assert code == 0, err
    split = load_dataset("cirr", demo / "cirr", "val")
    loaded = create_model("irkit-tiny", random_init=True)
    gallery = np.stack([_image_embedding(loaded, split.image_path(i)) for i in split.gallery])
    texts = loaded.encode_texts([q.captions[0] for q in split.queries])
    hits = {1: 0, 5: 0, 10: 0}
    subset_hits = 0
    for query, text in zip(split.queries, texts):
        order = [split.gallery[i] for i in np.argsort(-(gallery @ text), kind="stable")]
        order = [name for name in order if name != query.reference]
        for k in hits:
            hits[k] += query.target in order[:k]
        members = [m for m in order if m in set(query.subset) and m != query.reference]
        subset_hits += members[0] == query.target
    n = len(split.queries)
    # printed as fractions in [0, 1], like every metric irkit prints
    assert result["units"] == "fraction"
    for k, count in hits.items():
        assert result[f"R@{k}"] == pytest.approx(count / n, abs=1e-8)
    assert result["Rs@1"] == pytest.approx(subset_hits / n, abs=1e-8)


def test_submit_writes_test_server_files(demo, work, phi_checkpoints, capsys):
    from irkit.benchmarks.circo import read_circo_submission
    from irkit.benchmarks.cirr import read_cirr_submission
    from irkit.data import load_dataset

    out = work / "submission"
    code, result, err = run_cli(["cir", "submit", "--dataset", "cirr", "--root", demo / "cirr", "--split", "test1",
                                 "--method", "lincir", "--method-checkpoint", phi_checkpoints["lincir"],
                                 "--out", out, "--cache-dir", work / "cache", *FAST], capsys)
    assert code == 0, err
    split = load_dataset("cirr", demo / "cirr", "test1")
    recall = read_cirr_submission(out / "test1_pred_ranks_recall.json", "recall", split)
    subset = read_cirr_submission(out / "test1_pred_ranks_recall_subset.json", "recall_subset", split)
    for query in split.queries:
        assert query.reference not in recall[query.query_id]
        assert set(subset[query.query_id]) <= set(query.subset) - {query.reference}

    code, result, err = run_cli(["cir", "submit", "--dataset", "circo", "--root", demo / "circo", "--split", "test",
                                 "--method", "image-text-sum", "--include-shared-concept", "--out", out,
                                 "--cache-dir", work / "cache", *FAST], capsys)
    assert code == 0, err
    circo_test = load_dataset("circo", demo / "circo", "test")
    assert set(read_circo_submission(out / "submission_test.json", circo_test)) == \
        {q.query_id for q in circo_test.queries}


def test_searle_oti_method_with_precomputed_tokens(demo, work, capsys):
    oti_dir = work / "oti-val"
    assert cli(["cir", "oti", "--dataset", "cirr", "--root", demo / "cirr", "--out", oti_dir, "--steps", "2",
                 "--cache-dir", work / "cache", *FAST]) == 0
    capsys.readouterr()
    code, result, err = run_cli(["cir", "eval", "--dataset", "cirr", "--root", demo / "cirr", "--method", "searle-oti",
                                 "--method-checkpoint", oti_dir, "--cache-dir", work / "cache", *FAST], capsys)
    assert code == 0, err
    assert result["method"] == "searle-oti" and "Rs@1" in result


def _error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("irkit: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_phi_checkpoint_of_the_wrong_width_is_one_clear_error(demo, work, capsys):
    from irkit.models.phi import Phi

    bad = work / "phi_wrong_width.pt"
    torch.save({"Phi": Phi(512, 768).state_dict()}, bad)  # a ViT-L-sized phi for the 128-d tiny model
    code, _, err = run_cli(["cir", "eval", "--dataset", "cirr", "--root", demo / "cirr", "--method", "searle",
                            "--method-checkpoint", bad, "--cache-dir", work / "cache", *FAST], capsys)
    assert code == 2
    line = _error_line(err)
    assert str(bad) in line and "expected (512, 128), found (2048, 512)" in line


def test_bad_method_arguments_are_clear_errors(demo, work, capsys):
    base = ["cir", "eval", "--dataset", "cirr", "--root", demo / "cirr", "--cache-dir", "none", *FAST]
    code, _, err = run_cli(base + ["--method", "no-such-method"], capsys)
    assert code == 2 and "registered:" in _error_line(err) and "searle" in err
    code, _, err = run_cli(base + ["--method", "lincir"], capsys)
    assert code == 2 and "needs a phi checkpoint" in _error_line(err)
    code, _, err = run_cli(base + ["--method", "text-only", "--method-option", "steps=3"], capsys)
    assert code == 2 and "does not take option(s) ['steps']" in _error_line(err)
    code, _, err = run_cli(["cir", "train-phi", "--method", "lincir", "--log-dir", work / "log"], capsys)
    assert code == 2 and "needs --captions" in _error_line(err)


def test_phrases_command_writes_the_default_phrases(work, capsys):
    from irkit.methods.textual_inversion import load_phrase_bank, read_phrases

    code, result, err = run_cli(["cir", "phrases", "--out", work / "phrases.tsv"], capsys)
    assert code == 0, err
    default = load_phrase_bank()
    written = read_phrases(work / "phrases.tsv")
    assert result["phrases"] == len(default.phrases) == len(written.phrases)
    assert written.phrases == default.phrases  # the file round-trips, masks included


def test_notebook_runs_at_tiny_scale(work, monkeypatch):
    import nbformat
    import papermill

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel is a separate process on a shared 2-core machine
    run_dir = work / "notebook-run"
    output = work / "zero-shot-cir.out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(output), kernel_name="python3", progress_bar=False, cwd=str(work),
        parameters={"data_root": str(work / "nb-demo"), "dataset": "cirr", "method": "lincir", "lincir_steps": 2,
                    "cache_dir": str(work / "nb-cache"), "run_dir": str(run_dir), "num_queries": 2,
                    "random_init": True})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "lincir" and metrics["protocol"].startswith("cirr-val")
    assert (run_dir / "phi" / "checkpoints" / "best.pt").is_file()
    executed = nbformat.read(output, as_version=4)
    images = [o for cell in executed.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1
    parameters_cell = next(c for c in executed.cells if "parameters" in c.metadata.get("tags", []))
    assert "phi_checkpoint" in parameters_cell.source and "scale" in parameters_cell.source
