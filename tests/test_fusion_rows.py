"""fusion_rows: the trained-head and re-ranking rows of the CIR table, at tiny scale.

One run (tiny demo FashionIQ / CIRR / CIRCO, untrained irkit-tiny) is checked against
independent evaluations of its saved checkpoints, its re-ranked top-K file against its
stage-I file, and a second call must skip every stage.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from irkit.cir.context import CIRContext
from irkit.cir.evaluate import evaluate_method, load_cir_splits
from irkit.cir.registry import create_method
from irkit.cir.topk import TopK, load_topk_file
from irkit.data.demo import generate_demo
from irkit.errors import InputError
from irkit.experiments import fusion_rows as fr
from irkit.experiments.setup import TABLE_COLUMNS, CIRBenchSetup, table_metrics
from irkit.models import create_model

KS = (5, 50)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # One thread for every encoding (torch's and irkit's own, which follows $IRKIT_NUM_THREADS), as
    # the golden rows were made: at 2 threads float noise flips one of the 10 tiny CIRR queries.
    torch.set_num_threads(1)
    patch = pytest.MonkeyPatch()
    patch.setenv("IRKIT_NUM_THREADS", "1")
    try:
        return _run(tmp_path_factory)
    finally:
        patch.undo()


def _run(tmp_path_factory):
    base = tmp_path_factory.mktemp("fusion_rows")
    generate_demo(base / "data", seed=0, scale="tiny", datasets=("fashioniq", "cirr", "circo"), workers=1,
                  progress=False)
    setup = CIRBenchSetup(data_root=base / "data", out_dir=base / "out", cache_dir=base / "cache", scale="tiny",
                          workers=0, budgets={"rerank_ks": KS, "unrelated_stage_steps": 7}, random_init=True)
    rows = fr.fusion_rows(setup)
    ctx = CIRContext(create_model("irkit-tiny", seed=0, random_init=True), cache_dir=base / "cache", num_workers=0)
    return setup, rows, ctx


def _rank(scores: np.ndarray, target: int) -> int:
    """0-based rank of gallery item ``target``: higher scores first, ties by gallery order."""
    return int((scores > scores[target]).sum() + (scores[:target] == scores[target]).sum())


def _val(setup, dataset):
    return load_cir_splits(dataset, setup.data_root / dataset, "val")


def test_rows_equal_the_rows_from_before_the_restructuring(run):
    """The tiny fusion / re-ranking rows give the metrics they gave before the CIR engine was
    restructured (tests/goldens/pre_restructure.json, written by the code at db01abf; the fusion
    rows re-made for the published MagicLens logit cap and initialisation and for channels-last,
    see its README). The 7-step tiny head trainings amplify float rounding into different ranks,
    so the rows are kept per CPU kernel set (torch's CPU capability), each made by the same
    earlier code on a machine with those kernels."""
    import json
    from pathlib import Path

    _, rows, _ = run
    by_kernels = json.loads((Path(__file__).parent / "goldens" / "pre_restructure.json").read_text())[
        "fusion_rows_by_cpu_kernels"]
    kernels = torch.backends.cpu.get_cpu_capability()
    assert kernels in by_kernels, (
        f"tests/goldens/pre_restructure.json has fusion rows for CPU kernels {sorted(by_kernels)}, not for this "
        f"CPU's {kernels}: make them with the code and fixture named in tests/goldens/README.md")
    before = by_kernels[kernels]
    assert [r["method"] for r in rows] == list(before) or {r["method"] for r in rows} == set(before)
    for row in rows:
        for column in TABLE_COLUMNS:
            assert row[column] == pytest.approx(before[row["method"]][column], abs=1e-12), (row["method"], column)


def test_rows_shape(run):
    _, rows, _ = run
    assert [r["method"] for r in rows][:3] == [label for _, _, label in fr.HEADS.values()]
    assert rows[3]["method"].startswith("Stage I alone")
    assert [r["method"] for r in rows[4:]] == [
        f"Stage I + II re-ranking{variant}{fused}, K={k}" for variant in ("", " (hard negatives)")
        for fused in ("", " + score fusion") for k in KS]
    for row in rows:
        for column in TABLE_COLUMNS:
            assert 0.0 <= row[column] <= 1.0, (row["method"], column)
        assert "CIRR-trained head" in row["notes"] or row["method"].startswith("Stage I alone")


def test_fusion_row_matches_independent_evaluation(run):
    setup, rows, ctx = run
    row = rows[0]  # fusion without projector
    checkpoint = {d: setup.out_dir / "fusion" / d / "checkpoints" / "best.pt" for d in ("fashioniq", "cirr")}
    fiq = evaluate_method(create_method("magiclens", checkpoint=checkpoint["fashioniq"]), ctx, _val(setup, "fashioniq"))
    cirr = evaluate_method(create_method("magiclens", checkpoint=checkpoint["cirr"]), ctx, _val(setup, "cirr"))
    circo = evaluate_method(create_method("magiclens", checkpoint=checkpoint["cirr"]), ctx, _val(setup, "circo"),
                            include_shared_concept=False)
    assert row["fashioniq_R@10"] == pytest.approx(fiq["average"]["R@10"] / 100)
    assert row["fashioniq_R@50"] == pytest.approx(fiq["average"]["R@50"] / 100)
    assert row["cirr_R@1"] == pytest.approx(cirr["R@1"] / 100)
    assert row["cirr_R@5"] == pytest.approx(cirr["R@5"] / 100)
    assert row["cirr_Rs@1"] == pytest.approx(cirr["Rs@1"] / 100)
    assert row["circo_mAP@10"] == pytest.approx(circo["mAP@10"] / 100)

    # A second formula: CIRR R@1 / R@5 and FashionIQ R@10 from the embeddings with numpy.
    method = create_method("magiclens", checkpoint=checkpoint["cirr"])
    (split,) = _val(setup, "cirr")
    queries, gallery = method.query_embeddings(ctx, split), method.gallery_embeddings(ctx, split)
    scores = queries @ gallery.T
    for i, q in enumerate(split.queries):
        scores[i, split.gallery.index(q.reference)] = -np.inf
    rank = np.array([_rank(scores[i], split.gallery.index(q.target)) for i, q in enumerate(split.queries)])
    assert row["cirr_R@1"] == pytest.approx(np.mean(rank < 1))
    assert row["cirr_R@5"] == pytest.approx(np.mean(rank < 5))
    method = create_method("magiclens", checkpoint=checkpoint["fashioniq"])
    per_category = []
    for split in _val(setup, "fashioniq"):
        scores = method.query_embeddings(ctx, split) @ method.gallery_embeddings(ctx, split).T
        per_category.append(np.mean([_rank(scores[i], split.gallery.index(q.target)) < 10
                                     for i, q in enumerate(split.queries)]))
    assert row["fashioniq_R@10"] == pytest.approx(np.mean(per_category))


def test_stage1_row_is_its_chosen_head(run):
    setup, rows, _ = run
    stage1 = json.loads((setup.out_dir / "stage1" / "result.json").read_text())
    heads = list(fr.HEADS)
    for column in TABLE_COLUMNS:
        dataset = column.split("_")[0]
        chosen = stage1["choice"][fr.TRAINED_ON[dataset]]
        assert rows[3][column] == rows[heads.index(chosen)][column]


def test_reranked_lists_keep_exactly_k_stage1_candidates(run):
    setup, _, _ = run
    stage1 = {p.key(): p for p in load_topk_file(setup.out_dir / "stage1" / fr.TOPK_FILE)}
    for k in KS:
        reranked = load_topk_file(setup.out_dir / f"rerank-k{k}" / fr.RERANKED_FILE)
        assert {p.key() for p in reranked} == set(stage1)
        for part in reranked:
            before = stage1[part.key()]
            assert part.query_ids == before.query_ids
            for ids, ids_before in zip(part.ids, before.ids):
                assert len(ids) == min(k, len(ids_before))
                assert sorted(ids) == sorted(ids_before[:k])
    # K=5 is below every tiny gallery: the cut is real.
    for part in load_topk_file(setup.out_dir / "rerank-k5" / fr.RERANKED_FILE):
        assert all(len(ids) == 5 < len(ids_before) for ids, ids_before in zip(part.ids, stage1[part.key()].ids))


@pytest.mark.parametrize("stage, rows_stage", [("reranker", "rerank-k50"), ("reranker-hn", "rerank-hn-k50"),
                                               ("reranker", "rerank-fused-k50"),
                                               ("reranker-hn", "rerank-hn-fused-k50")])
def test_rerank_row_matches_library_rerank_method(run, stage, rows_stage):
    setup, rows, ctx = run
    variant = " (hard negatives)" if "-hn" in rows_stage else ""
    fused = " + score fusion" if "fused" in rows_stage else ""
    (row,) = [r for r in rows if r["method"] == f"Stage I + II re-ranking{variant}{fused}, K=50"]
    # K=50 >= the protocols' depth: the library scores the re-ranked lists alone
    weights = json.loads((setup.out_dir / rows_stage / "result.json").read_text())["stage1_weights"]
    assert fused or set(weights.values()) == {0.0}
    topk_file = setup.out_dir / "stage1" / fr.TOPK_FILE
    reranker = {d: setup.out_dir / stage / d / "checkpoints" / "best.pt" for d in ("fashioniq", "cirr")}
    results = {d: evaluate_method(create_method("rerank", checkpoint=reranker[fr.TRAINED_ON[d]], stage1=topk_file,
                                                k=50, stage1_weight=weights[fr.TRAINED_ON[d]]),
                                  ctx, _val(setup, d), include_shared_concept=False)
               for d in ("fashioniq", "cirr", "circo")}
    expected = table_metrics(results)
    for column in TABLE_COLUMNS:
        assert row[column] == pytest.approx(expected[column]), column


def test_hard_negative_pools_are_the_stage1_head_on_the_train_splits(run):
    """stage1-train holds, per training split, the chosen head's top-N computed independently."""
    setup, _, ctx = run
    stage1 = json.loads((setup.out_dir / "stage1" / "result.json").read_text())
    parts = {p.key(): p for p in load_topk_file(setup.out_dir / "stage1-train" / fr.TRAIN_TOPK_FILE)}
    budget = fr.resolve_budget(setup)
    depth = max(budget.hard_negative_pool, max(budget.rerank_ks), 50)  # pools and the weight choice's scoring
    for dataset in fr.TRAIN_DATASETS:
        head = stage1["choice"][dataset]
        method = create_method(fr.HEADS[head][0], checkpoint=setup.out_dir / stage1["checkpoints"][dataset],
                               **fr.HEADS[head][1])
        for split in load_cir_splits(dataset, setup.data_root / dataset, "train"):
            part = parts[(dataset, "train", split.category)]
            scores = method.query_embeddings(ctx, split) @ method.gallery_embeddings(ctx, split).T
            if dataset == "cirr":  # the reference is removed, as in the protocol
                for i, q in enumerate(split.queries):
                    scores[i, split.gallery.index(q.reference)] = -np.inf
            for i, ids in enumerate(part.ids):
                assert len(ids) == min(depth, len(split.gallery) - (dataset == "cirr"))  # CIRR: no reference
                top = np.sort(scores[i])[::-1][:len(ids)]
                got = scores[i, [split.gallery.index(c) for c in ids]]
                np.testing.assert_allclose(got, top, rtol=1e-5, atol=1e-6)
    result = json.loads((setup.out_dir / "reranker-hn" / "result.json").read_text())
    assert result["hard_negatives"] == fr.resolve_budget(setup).hard_negatives > 0


def test_rerank_significance_pairs_the_table_rows(run):
    """Per-query means of the re-ranked and stage-I files equal the table's rows."""
    from irkit.experiments.significance import rerank_comparisons

    setup, rows, _ = run
    val = {d: _val(setup, d) for d in ("fashioniq", "cirr")}
    comparisons = rerank_comparisons(setup.out_dir, val, resamples=200)
    by_label = {r["method"]: r for r in rows}
    stage1_row = rows[3]
    variants = ("", "-hn", "-fused", "-hn-fused")
    expected_stages = {f"rerank{v}-k{k}" for v in variants for k in KS}
    assert {c["method"] for c in comparisons if c["metric"] == "R@1"} == {f"stage I + II ({s})" for s in expected_stages}
    # FashionIQ R@10 is left out for K=5 (it would look past the re-sorted top 5)
    assert {c["method"] for c in comparisons if c["metric"] == "R@10"} == \
        {f"stage I + II (rerank{v}-k50)" for v in variants}
    for c in comparisons:
        variant, k = c["method"][len("stage I + II (rerank"):-1].rsplit("-k", 1)
        label = ("Stage I + II re-ranking" + (" (hard negatives)" if "-hn" in variant else "")
                 + (" + score fusion" if "fused" in variant else "") + f", K={k}")
        column = f"{c['benchmark']}_{c['metric']}"
        assert c["mean_a"] == pytest.approx(by_label[label][column], abs=1e-9)
        assert c["mean_b"] == pytest.approx(stage1_row[column], abs=1e-9)


def test_second_call_skips_every_stage(run, monkeypatch):
    setup, rows, _ = run
    results = sorted(setup.out_dir.glob("*/result.json"))
    before = {p: p.read_bytes() for p in results}
    runs_before = sorted(p for p in setup.out_dir.glob("*/*") if p.is_dir())

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    import irkit.methods.combiner
    import irkit.methods.fusion
    import irkit.methods.rerank

    monkeypatch.setattr(irkit.methods.fusion, "train_fusion", refuse)
    monkeypatch.setattr(irkit.methods.combiner, "train_combiner", refuse)
    monkeypatch.setattr(irkit.methods.rerank, "train_reranker", refuse)
    monkeypatch.setattr(irkit.methods.rerank, "stage1_topk", refuse)
    monkeypatch.setattr(irkit.methods.rerank.RerankMethod, "rerank", refuse)
    assert fr.fusion_rows(setup) == rows
    assert {p: p.read_bytes() for p in results} == before
    assert sorted(p for p in setup.out_dir.glob("*/*") if p.is_dir()) == runs_before


def test_rankings_with_tail_by_hand():
    stage1 = TopK("cirr", "val", None, 4, ["q1", "q2"], [["a", "b", "c", "d"], ["e", "f", "g", "h"]],
                  [[4.0, 3.0, 2.0, 1.0]] * 2)
    reranked = TopK("cirr", "val", None, 2, ["q1", "q2"], [["b", "a"], ["e", "f"]], [[9.0, 1.0]] * 2)
    from irkit.methods.rerank import rankings_with_tail

    assert rankings_with_tail(reranked, stage1) == {"q1": ["b", "a", "c", "d"], "q2": ["e", "f", "g", "h"]}


def test_budget_overrides_and_bad_budget(tmp_path):
    setup = CIRBenchSetup(data_root=tmp_path, out_dir=tmp_path, scale="full", budgets={"fusion_steps": 11})
    budget = fr.resolve_budget(setup)
    assert budget.fusion_steps == 11 and budget.combiner_steps == fr.FusionBudget().combiner_steps
    assert fr._default_val_k(fr.FusionBudget(rerank_ks=(20, 50))) == 50
    assert fr._default_val_k(fr.FusionBudget(rerank_ks=(10, 20))) == 50
    with pytest.raises(InputError, match="stage1"):
        fr.resolve_budget(CIRBenchSetup(data_root=tmp_path, out_dir=tmp_path, budgets={"stage1": "nope"}))
    with pytest.raises(InputError, match="scale"):
        fr.resolve_budget(CIRBenchSetup(data_root=tmp_path, out_dir=tmp_path, scale="huge"))


def test_published_projector_row_is_added_beside_the_others(run):
    """Budget published_projector adds the fusion row with the published-structure projector,
    trains only that stage, and leaves every other row and the stage-I choice as they were."""
    from dataclasses import replace

    from irkit.runs import load_checkpoint

    setup, rows, ctx = run
    torch.set_num_threads(1)
    extra = fr.fusion_rows(replace(setup, budgets={**setup.budgets, "published_projector": True}))
    label = fr.OPTIONAL_HEADS["fusion-projector-published"][2]
    labels = [r["method"] for r in extra]
    assert labels == [r["method"] for r in rows[:3]] + [label] + [r["method"] for r in rows[3:]]
    assert [r for r in extra if r["method"] != label] == rows
    added = extra[3]
    assert "published ResidualMLP structure" in added["notes"] and "irkit structure" in extra[1]["notes"]
    result = json.loads((setup.out_dir / "fusion-projector-published" / "result.json").read_text())
    assert result["model_config"]["projector_style"] == "published"
    state = load_checkpoint(setup.out_dir / result["checkpoints"]["cirr"])
    assert any(k.startswith("projector.mlps.3.fc2") for k in state["model"])
    assert not any(k.startswith("projector.blocks") for k in state["model"])
    # The row's CIRR numbers are those of an independent evaluation of its saved checkpoint.
    method = create_method("magiclens", checkpoint=setup.out_dir / result["checkpoints"]["cirr"])
    independent = table_metrics({"cirr": evaluate_method(method, ctx, _val(setup, "cirr"))})
    for column in ("cirr_R@1", "cirr_R@5", "cirr_Rs@1"):
        assert added[column] == pytest.approx(independent[column], abs=1e-12)
