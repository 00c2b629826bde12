"""``irkit cir train-fusion | train-combiner | stage1 | train-reranker | rerank`` on tiny demo data.

Each model trains a few steps, is evaluated through the shared protocols, and the run
folders / files are checked (CI budget: a few seconds per command).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fusion_fixtures import make_demo

from irkit.cir.topk import load_topk_file
from irkit.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo")), tmp_path_factory.mktemp("cache")


def _run(capsys, *argv) -> dict:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    return json.loads(captured.out)


def _common(demo, dataset, split="val"):
    root, cache = demo
    return ["--dataset", dataset, "--root", root / dataset, "--split", split,
            "--cache-dir", cache, "--num-workers", "0", "--random-init"]


def _training(demo, dataset, tmp_path, name, steps):
    root, _ = demo
    return [*_common(demo, dataset, "train"), "--val-dataset", dataset, "--val-root", root / dataset,
            "--steps", steps, "--validate-every", 2, "--train-batch-size", 4, "--lr", 1e-3,
            "--log-dir", tmp_path / "log", "--name", name]


def test_train_fusion_with_projector_resume_and_eval(demo, tmp_path, capsys):
    first = _run(capsys, "cir", "train-fusion", *_training(demo, "cirr", tmp_path, "fusion", 2), "--projector")
    run_dir = tmp_path / "log" / "fusion"
    assert first["steps"] == 2 and first["run_dir"] == str(run_dir)
    expected = {"params.txt", "out.log", "results.jsonl", "checkpoints", "tensorboard"}
    assert expected <= {p.name for p in run_dir.iterdir()}
    resumed = _run(capsys, "cir", "train-fusion", *_training(demo, "cirr", tmp_path, "fusion", 4), "--projector",
                   "--resume", "latest")
    assert resumed["steps"] == 4 and "resumed from" in (run_dir / "out.log").read_text()
    steps = [json.loads(line)["step"] for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    metrics = _run(capsys, "cir", "eval", *_common(demo, "cirr"), "--method", "magiclens",
                   "--method-checkpoint", resumed["best_checkpoint"])
    assert metrics["method"] == "magiclens" and metrics["(R@5+Rs@1)/2"] == pytest.approx(resumed["best_value"])
    without = _run(capsys, "cir", "eval", *_common(demo, "cirr"), "--method", "magiclens",
                   "--method-checkpoint", resumed["best_checkpoint"], "--method-option", "projector=false")
    assert 0 <= without["R@10"] <= 100
    # A new run under an existing name is refused (runs are never overwritten).
    assert main(["cir", "train-fusion", *map(str, _training(demo, "cirr", tmp_path, "fusion", 2))]) == 2
    assert "already exists" in capsys.readouterr().err


def test_train_combiner_on_fashioniq_and_eval(demo, tmp_path, capsys):
    trained = _run(capsys, "cir", "train-combiner", *_training(demo, "fashioniq", tmp_path, "comb", 2))
    assert trained["steps"] == 2 and trained["best_checkpoint"].endswith("best.pt")
    metrics = _run(capsys, "cir", "eval", *_common(demo, "fashioniq"), "--method", "combiner",
                   "--method-checkpoint", trained["best_checkpoint"])
    assert set(metrics) >= {"dress", "shirt", "toptee", "average"}
    assert metrics["average"]["R@10"] == pytest.approx(trained["best_value"])


def test_stage1_train_reranker_and_rerank(demo, tmp_path, capsys):
    topk = tmp_path / "stage1.json"
    written = _run(capsys, "cir", "stage1", *_common(demo, "cirr"), "--method", "image-text-sum", "--out", topk)
    (part,) = load_topk_file(topk)
    assert written["queries"] == len(part.query_ids) and part.stage == "stage1:image-text-sum"
    assert part.k == 50 and all(len(ids) == 29 for ids in part.ids)  # 30 images minus the reference
    trained = _run(capsys, "cir", "train-reranker", *_training(demo, "cirr", tmp_path, "rr", 2),
                   "--val-stage1", topk, "--depth", 1)
    # Hard negatives from a stage I computed on the training split (a method name here).
    hard = _run(capsys, "cir", "train-reranker", *_training(demo, "cirr", tmp_path, "rr-hn", 2),
                "--val-stage1", topk, "--depth", 1, "--hard-negatives", 3, "--train-stage1", "image-text-sum",
                "--negative-pool", 6)
    assert hard["steps"] == 2 and Path(hard["best_checkpoint"]).is_file()
    assert "hard_negatives: 3" in (Path(hard["run_dir"]) / "params.txt").read_text()
    assert main(["cir", "train-reranker", *map(str, _training(demo, "cirr", tmp_path, "rr-hn2", 2)),
                 "--val-stage1", str(topk), "--hard-negatives", "3"]) == 2
    assert "--hard-negatives needs --train-stage1" in capsys.readouterr().err
    reranked_path = tmp_path / "reranked.json"
    result = _run(capsys, "cir", "rerank", *_common(demo, "cirr"), "--reranker", trained["best_checkpoint"],
                  "--stage1", topk, "--out", reranked_path)
    (reranked,) = load_topk_file(reranked_path)
    for before, after in zip(part.ids, reranked.ids):
        assert sorted(before) == sorted(after) and len(after) == 29
    assert result["metrics"]["method"] == "rerank"
    assert result["metrics"]["(R@5+Rs@1)/2"] == pytest.approx(trained["best_value"])
    # Score fusion with a huge stage-I weight is stage I's order: the same R@K as stage I.
    fused = _run(capsys, "cir", "rerank", *_common(demo, "cirr"), "--reranker", trained["best_checkpoint"],
                 "--stage1", topk, "--stage1-weight", 1e6)
    stage1_only = _run(capsys, "cir", "eval", *_common(demo, "cirr"), "--method", "image-text-sum")
    for key in ("R@1", "R@5", "R@10"):
        assert fused["metrics"][key] == pytest.approx(stage1_only[key])
    # `cir eval --method rerank` with a stage-I method name (computed on the fly): the same numbers.
    by_name = _run(capsys, "cir", "eval", *_common(demo, "cirr"), "--method", "rerank",
                   "--method-checkpoint", trained["best_checkpoint"], "--method-option", "stage1=image-text-sum")
    assert {k: v for k, v in by_name.items() if k.startswith("R")} == \
        {k: v for k, v in result["metrics"].items() if k.startswith("R")}
    # Fewer candidates than the protocol's depth (R@50) cannot be scored: a clear error, nothing written;
    # --no-eval writes the K=20 lists.
    short_args = [*map(str, _common(demo, "cirr")), "--reranker", trained["best_checkpoint"], "--stage1", str(topk),
                  "--k", "20", "--out", str(tmp_path / "short.json")]
    assert main(["cir", "rerank", *short_args]) == 2
    assert "re-rank K >= 50" in capsys.readouterr().err and not (tmp_path / "short.json").exists()
    _run(capsys, "cir", "rerank", *short_args, "--no-eval")
    assert all(len(ids) == 20 for ids in load_topk_file(tmp_path / "short.json")[0].ids)
    # A top-K file of another split is a clean input error, not a traceback.
    args = [*map(str, _common(demo, "cirr", "train")), "--reranker", trained["best_checkpoint"], "--stage1", str(topk)]
    assert main(["cir", "rerank", *args]) == 2
    assert "no top-K part" in capsys.readouterr().err


@pytest.mark.slow
def test_fusion_rerank_notebook(demo, tmp_path):
    import nbformat

    from irkit.notebook import run_notebook

    root, cache = demo
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "fusion-rerank.ipynb"
    run_dir = run_notebook(notebook, {"data_root": str(root), "cache_dir": str(cache), "steps": 2,
                                      "validate_every": 2, "batch_size": 4, "hard_negatives": 2,
                                      "negative_pool": 6, "random_init": True}, log_dir=tmp_path, name="nb")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["results"]) == {"image-text-sum", "magiclens", "combiner", "magiclens, projector off",
                                       "rerank (stage I: magiclens)"}
    for result in metrics["results"].values():
        assert result["protocol"].startswith("cirr-val") and 0 <= result["(R@5+Rs@1)/2"] <= 100
    for head in ("fusion", "combiner", "reranker"):
        assert (run_dir / head / "checkpoints" / "best.pt").is_file()
    assert "hard_negatives: 2" in (run_dir / "reranker" / "params.txt").read_text()
    (stage1,) = load_topk_file(run_dir / "stage1_topk.json")
    assert stage1.stage == "stage1:magiclens"
    executed = nbformat.read(run_dir / "fusion-rerank.ipynb", as_version=4)
    images = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2
