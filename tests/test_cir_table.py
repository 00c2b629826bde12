"""The CIR table driver (irkit.experiments.cir_table) end to end at tiny scale."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from irkit.errors import InputError
from irkit.experiments.cir_table import BASELINES, run_cir_table
from irkit.experiments.setup import TABLE_COLUMNS

# Smallest budgets that still run every zero-shot stage (and SEARLE-OTI) through its code path.
BUDGETS = {"clip_epochs": 1, "clip_batch_size": 16, "lincir_steps": 2, "lincir_batch_size": 8,
           "lincir_validate_every": 1, "oti_images": 4, "oti_steps": 2, "oti_batch_size": 4,
           "searle_steps": 2, "searle_batch_size": 4, "searle_validate_every": 1, "searle_oti_steps": 1}


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cirtable")
    kwargs = dict(data_root=root / "data", out_dir=root / "out", scale="tiny", fusion=False, seed=0, workers=0,
                  cache_dir=root / "cache", budget_overrides=BUDGETS)
    result = run_cir_table(**kwargs)
    return root, kwargs, result


def _read_table(out_dir: Path) -> dict[str, dict[str, str]]:
    with open(out_dir / "table.csv", newline="", encoding="utf-8") as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_table_has_every_row_and_fractions(table_run):
    _, kwargs, result = table_run
    table = _read_table(kwargs["out_dir"])
    assert list(table) == [*BASELINES, "LinCIR (phi)", "SEARLE (phi)", "SEARLE-OTI"]
    for row in table.values():
        for column in TABLE_COLUMNS:
            assert 0.0 <= float(row[column]) <= 1.0, (row["method"], column)
        assert row["notes"]
    markdown = (kwargs["out_dir"] / "table.md").read_text()
    assert markdown.count("\n| ") == 1 + len(table)  # header + one line per row
    assert "Notes:" in markdown


def test_table_equals_the_table_from_before_the_restructuring(table_run):
    """The tiny table gives the metrics it gave before the CIR engine was restructured
    (tests/goldens/pre_restructure.json, written by the code at db01abf)."""
    _, kwargs, _ = table_run
    before = json.loads((Path(__file__).parent / "goldens" / "pre_restructure.json").read_text())["cir_table"]
    table = _read_table(kwargs["out_dir"])
    assert set(table) == set(before)
    for method, row in before.items():
        for column, value in row.items():
            assert table[method][column] == value, (method, column)


def test_table_equals_independent_library_evaluation(table_run):
    """The table's numbers equal what `irkit cir eval`'s library calls give on their own, with
    the stage's checkpoints; CIRR image-only R@1 is also recomputed by hand from embeddings."""
    from irkit.cir.context import CIRContext
    from irkit.cir.evaluate import evaluate_method, load_cir_splits
    from irkit.cir.registry import create_method
    from irkit.models import create_model

    root, kwargs, result = table_run
    out_dir = kwargs["out_dir"]
    table = _read_table(out_dir)
    loaded = create_model("irkit-tiny", checkpoint=out_dir / "clip" / "model.safetensors")
    ctx = CIRContext(loaded, cache_dir=None, num_workers=0)
    data = kwargs["data_root"]

    cirr = load_cir_splits("cirr", data / "cirr", "val")
    lincir = json.loads((out_dir / "lincir" / "metrics.json").read_text())
    phi = out_dir / "lincir" / lincir["phi"]["best_checkpoint"]
    expected = evaluate_method(create_method("lincir", checkpoint=phi), ctx, cirr)
    assert float(table["LinCIR (phi)"]["cirr_R@1"]) == pytest.approx(expected["R@1"] / 100, abs=1e-12)
    assert float(table["LinCIR (phi)"]["cirr_Rs@1"]) == pytest.approx(expected["Rs@1"] / 100, abs=1e-12)

    circo = load_cir_splits("circo", data / "circo", "val")
    expected = evaluate_method(create_method("image-text-sum"), ctx, circo, False)
    assert float(table["image-text-sum"]["circo_mAP@10"]) == pytest.approx(expected["mAP@10"] / 100, abs=1e-12)

    fashioniq = load_cir_splits("fashioniq", data / "fashioniq", "val")
    expected = evaluate_method(create_method("text-only"), ctx, fashioniq)
    assert float(table["text-only"]["fashioniq_R@10"]) == pytest.approx(expected["average"]["R@10"] / 100,
                                                                        abs=1e-12)

    # Hand-worked CIRR R@1 of image-only: nearest gallery image to the reference, reference removed.
    (split,) = cirr
    gallery = ctx.image_embeddings(split, split.gallery)
    position = {image_id: i for i, image_id in enumerate(split.gallery)}
    hits = []
    for query in split.queries:
        scores = gallery @ gallery[position[query.reference]]
        scores[position[query.reference]] = -np.inf
        hits.append(split.gallery[int(np.argmax(scores))] == query.target)
    assert float(table["image-only"]["cirr_R@1"]) == pytest.approx(float(np.mean(hits)), abs=1e-6)


def test_significance_report_pairs_the_table_values(table_run):
    """The bootstrap's per-query means equal the table's values (computed by another route),
    and the best baseline it compares against is the row maximum."""
    _, kwargs, result = table_run
    out_dir = kwargs["out_dir"]
    table = _read_table(out_dir)
    report = json.loads((out_dir / "significance.json").read_text())
    assert report == result.significance
    questions = {(c["method"], c["benchmark"], c["metric"]) for c in report["comparisons"]}
    assert questions == {(m, b, k) for m in ("LinCIR (phi)", "SEARLE (phi)", "SEARLE-OTI")
                         for b, k in (("cirr", "R@1"), ("circo", "mAP@10"))}
    for c in report["comparisons"]:
        column = f"{c['benchmark']}_{c['metric']}"
        best = max(BASELINES, key=lambda name: float(table[name][column]))
        assert c["against"] == best
        assert c["mean_a"] == pytest.approx(float(table[c["method"]][column]), abs=1e-9)
        assert c["mean_b"] == pytest.approx(float(table[best][column]), abs=1e-9)
        assert c["low"] <= c["difference"] <= c["high"]
    assert "| LinCIR (phi) |" in (out_dir / "significance.md").read_text()


def test_rerun_skips_finished_stages(table_run, capsys):
    _, kwargs, _ = table_run
    out_dir = kwargs["out_dir"]
    before = {p: p.stat().st_mtime_ns for p in out_dir.rglob("metrics.json")}
    model_mtime = (out_dir / "clip" / "model.safetensors").stat().st_mtime_ns
    table_before = (out_dir / "table.csv").read_text()
    again = run_cir_table(**kwargs)
    assert again.stage_seconds  # the recorded times of the first run are kept
    assert {p: p.stat().st_mtime_ns for p in out_dir.rglob("metrics.json")} == before
    assert (out_dir / "clip" / "model.safetensors").stat().st_mtime_ns == model_mtime
    assert (out_dir / "table.csv").read_text() == table_before
    log = (out_dir / "out.log").read_text()
    console = capsys.readouterr().err  # the same stage lines reach the console as they happen
    for stage in ("data", "clip", "baselines", "lincir", "searle", "searle-oti"):
        assert f"stage {stage}: done already" in log
        assert f"| INFO | stage {stage}: done already" in console


def test_out_folder_with_other_params_is_refused(table_run):
    _, kwargs, _ = table_run
    with pytest.raises(InputError, match="other parameters.*seed"):
        run_cir_table(**{**kwargs, "seed": 1})
    with pytest.raises(InputError, match="other parameters.*lincir_steps"):
        run_cir_table(**{**kwargs, "budget_overrides": {**BUDGETS, "lincir_steps": 3}})


def test_fusion_rows_may_be_added_to_a_zero_shot_folder(tmp_path):
    from irkit.experiments.cir_table import claim_out_dir

    out = tmp_path / "o"
    params = {"seed": 0, "fusion": False, "budgets": {"lincir_steps": 3}}
    assert claim_out_dir(out, params) is False
    assert claim_out_dir(out, {**params, "fusion": True}) is True  # adds rows: resumed
    assert json.loads((out / "params.json").read_text()) == {**params, "fusion": True}
    with pytest.raises(InputError, match="other parameters.*fusion: saved True, now False"):
        claim_out_dir(out, params)  # switching rows off would rewrite the table without them
    with pytest.raises(InputError, match="other parameters.*seed"):
        claim_out_dir(out, {**params, "fusion": True, "seed": 1})
    # a SEARLE-OTI row (searle_oti_steps 0 -> N) is added the same way; other budgets stay fixed
    zero = {**params, "fusion": True, "budgets": {"lincir_steps": 3, "searle_oti_steps": 0}}
    out2 = tmp_path / "o2"
    claim_out_dir(out2, zero)
    with_oti = {**zero, "budgets": {"lincir_steps": 3, "searle_oti_steps": 50}}
    assert claim_out_dir(out2, with_oti) is True
    assert json.loads((out2 / "params.json").read_text()) == with_oti
    with pytest.raises(InputError, match="searle_oti_steps: saved 50, now 60"):
        claim_out_dir(out2, {**zero, "budgets": {"lincir_steps": 3, "searle_oti_steps": 60}})
    with pytest.raises(InputError, match="lincir_steps: saved 3, now 4"):
        claim_out_dir(out2, {**zero, "budgets": {"lincir_steps": 4, "searle_oti_steps": 50}})


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(InputError, match="unknown budget key"):
        run_cir_table(tmp_path / "d", tmp_path / "o", scale="tiny", fusion=False, budget_overrides={"nope": 1})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not a CIR table run"):
        run_cir_table(tmp_path / "d", tmp_path / "other", scale="tiny", fusion=False)
    real = tmp_path / "real"
    (real / "cirr").mkdir(parents=True)
    weights = tmp_path / "clip.safetensors"  # --no-clip-training needs weights; the data check comes first
    weights.write_bytes(b"not read")
    with pytest.raises(InputError, match="not an irkit demo folder"):
        run_cir_table(real, tmp_path / "o2", scale="tiny", fusion=False, train_clip=False, checkpoint=weights)
