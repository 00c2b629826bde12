"""Protocols and submission files at the real sizes of CIRR, CIRCO and FashionIQ.

The published annotation files (no images) are scored with stand-in embeddings: seeded
random ones (scores must sit near chance) and an "oracle" whose query embedding equals its
target's embedding (R@1 must be 100). Test-split submissions must have exactly the keys and
list lengths of the published example submissions.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from irkit.benchmarks.circo import read_circo_submission, write_circo_submission
from irkit.benchmarks.cirr import BENCHMARK as CIRR
from irkit.benchmarks.cirr import cirr_submission_paths, read_cirr_submission, write_cirr_submission
from irkit.benchmarks.fashioniq import combine_categories, write_fashioniq_submission
from irkit.cir.evaluate import score_prediction_files, write_submission_from_embeddings
from irkit.cir.protocol import evaluate_embeddings, rank_split
from irkit.data.registry import load_dataset

DIM = 32


def _unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _oracle_queries(split, gallery_emb: np.ndarray) -> np.ndarray:
    position = {g: i for i, g in enumerate(split.gallery)}
    return gallery_emb[[position[q.target] for q in split.queries]]


def _within(value: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    """|value - expected| within ``sigmas`` binomial standard deviations (percent units)."""
    p = expected / 100.0
    return abs(value - expected) <= sigmas * 100.0 * math.sqrt(p * (1 - p) / n) + 1e-9


# --------------------------------------------------------------------------- CIRR


@pytest.fixture(scope="module")
def cirr_root(real_benchmarks):
    return real_benchmarks / "cirr"


def test_cirr_val_end_to_end(cirr_root, tmp_path):
    split = load_dataset("cirr", cirr_root, "val")
    assert (len(split.queries), len(split.gallery)) == (4181, 2297)
    rng = np.random.default_rng(0)
    gallery_emb = _unit_rows(rng, len(split.gallery))

    oracle = evaluate_embeddings(split, _oracle_queries(split, gallery_emb), gallery_emb)
    for key in ("R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "(R@5+Rs@1)/2"):
        assert oracle[key] == pytest.approx(100.0), key

    random_queries = _unit_rows(rng, len(split.queries))
    result = evaluate_embeddings(split, random_queries, gallery_emb)
    n, rankable = len(split.queries), len(split.gallery) - 1  # reference removed
    for k in (5, 10, 50):
        assert _within(result[f"R@{k}"], 100.0 * k / rankable, n), (k, result[f"R@{k}"])
    for k in (1, 2, 3):  # 5 subset candidates: Rs@K = 20 K %
        assert _within(result[f"Rs@{k}"], 20.0 * k, n), (k, result[f"Rs@{k}"])
    assert result["num_queries"] == 4181

    # The same numbers through submission files and the file scorer (what `irkit eval` runs).
    rankings, subsets = CIRR.rank_with_subsets(split, random_queries, gallery_emb)
    recall_path, subset_path = cirr_submission_paths(tmp_path, "val")
    write_cirr_submission(recall_path, subset_path, split, rankings, subsets)
    from_files = score_prediction_files("cirr", cirr_root, "val", [recall_path, subset_path])
    for key in ("R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3"):
        assert from_files[key] == pytest.approx(result[key]), key


def test_cirr_test1_submission_matches_examples(cirr_root, tmp_path):
    split = load_dataset("cirr", cirr_root, "test1")
    assert (len(split.queries), len(split.gallery)) == (4148, 2315)
    rng = np.random.default_rng(1)
    recall_path, subset_path = write_submission_from_embeddings(
        split, _unit_rows(rng, len(split.queries)), _unit_rows(rng, len(split.gallery)), tmp_path)
    assert (recall_path.name, subset_path.name) == ("test1_pred_ranks_recall.json",
                                                    "test1_pred_ranks_recall_subset.json")
    examples = cirr_root / "submission_examples"
    for ours_path, example_name, metric, length in (
        (recall_path, "test1_pred_ranks_recall.json", "recall", 50),
        (subset_path, "test1_pred_ranks_recall_subset.json", "recall_subset", 3),
    ):
        ours = json.loads(ours_path.read_text())
        example = json.loads((examples / example_name).read_text())
        assert set(ours) == set(example)
        assert (ours["version"], ours["metric"]) == (example["version"], example["metric"]) == ("rc2", metric)
        lists = {k: v for k, v in ours.items() if k not in ("version", "metric")}
        assert {len(v) for v in lists.values()} == {length}
        by_id = {q.query_id: q for q in split.queries}
        for pairid, names in lists.items():
            assert by_id[pairid].reference not in names
            if metric == "recall_subset":
                assert set(names) <= set(by_id[pairid].subset)
        # the published example passes our strict reader too
        assert len(read_cirr_submission(examples / example_name, metric, split)) == 4148


# --------------------------------------------------------------------------- CIRCO


def _circo_gallery(real_benchmarks, distractors: int = 3000) -> list[int]:
    """Stand-in gallery: every id in the val/test annotations plus unrelated distractor ids."""
    ids: dict[int, None] = {}
    for name in ("val", "test"):
        for entry in json.loads((real_benchmarks / "circo" / "annotations" / f"{name}.json").read_text()):
            ids[entry["reference_img_id"]] = None
            for gt in entry.get("gt_img_ids", []):
                ids[gt] = None
    next_id = 600000  # above COCO unlabeled ids used in the annotations
    while distractors:
        if next_id not in ids:
            ids[next_id] = None
            distractors -= 1
        next_id += 1
    return list(ids)


def test_circo_val_end_to_end(real_benchmarks, tmp_path):
    root = real_benchmarks / "circo"
    gallery_ids = _circo_gallery(real_benchmarks)
    split = load_dataset("circo", root, "val", gallery_ids=gallery_ids)
    assert len(split.queries) == 220
    rng = np.random.default_rng(2)
    gallery_emb = _unit_rows(rng, len(split.gallery))

    oracle = evaluate_embeddings(split, _oracle_queries(split, gallery_emb), gallery_emb,
                                           shared_concept=False)
    assert oracle["protocol"].startswith("circo-val: shared_concept=False")
    for k in (5, 10, 25, 50):
        assert oracle[f"R@{k}"] == pytest.approx(100.0)
    # Only the target is certainly at rank 1; other ground truths land by chance, so
    # AP@5 >= 1 / min(|gt|, 5) from the annotation file itself.
    annotations = json.loads((root / "annotations" / "val.json").read_text())
    floor = 100.0 * np.mean([1.0 / min(len(a["gt_img_ids"]), 5) for a in annotations])
    assert floor - 1e-6 <= oracle["mAP@5"] <= floor + 5.0

    random_result = evaluate_embeddings(split, _unit_rows(rng, len(split.queries)), gallery_emb)
    # chance R@50 = 50 / G (about 1.2 %); mAP near zero
    assert _within(random_result["R@50"], 100.0 * 50 / len(split.gallery), 220)
    assert random_result["mAP@50"] < 2.0

    # file round trip: the val submission scores the same through evaluate_prediction_files
    rankings = rank_split(split, _oracle_queries(split, gallery_emb), gallery_emb, 50)
    path = tmp_path / "circo_val.json"
    write_circo_submission(path, split, rankings)
    from_file = score_prediction_files("circo", root, "val", [path], gallery_ids=gallery_ids,
                                                      shared_concept=False)
    for key in ("mAP@5", "mAP@10", "mAP@25", "mAP@50", "R@5"):
        assert from_file[key] == pytest.approx(oracle[key]), key


def test_circo_test_submission_matches_example(real_benchmarks, tmp_path):
    root = real_benchmarks / "circo"
    split = load_dataset("circo", root, "test", gallery_ids=_circo_gallery(real_benchmarks))
    assert len(split.queries) == 800
    rng = np.random.default_rng(3)
    (path,) = write_submission_from_embeddings(
        split, _unit_rows(rng, 800), _unit_rows(rng, len(split.gallery)), tmp_path)
    assert path.name == "submission_test.json"
    ours = json.loads(path.read_text())
    example_path = root / "submission_examples" / "submission_test.json"
    example = json.loads(example_path.read_text())
    assert set(ours) == set(example)
    assert {len(v) for v in ours.values()} == {len(v) for v in example.values()} == {50}
    assert all(type(x) is int and len(set(v)) == 50 for v in ours.values() for x in v)
    # the published example passes the shape checks of our reader
    assert len(read_circo_submission(example_path)) == 800


# --------------------------------------------------------------------------- FashionIQ


def test_fashioniq_val_end_to_end(real_benchmarks, tmp_path):
    root = real_benchmarks / "fashioniq"
    sizes = {"dress": (2017, 3817), "shirt": (2038, 6346), "toptee": (1961, 5373)}
    rng = np.random.default_rng(4)
    splits, oracle, chance, rankings = {}, {}, {}, {}
    for category, (num_queries, num_gallery) in sizes.items():
        split = load_dataset("fashioniq", root, "val", category=category)
        assert (len(split.queries), len(split.gallery)) == (num_queries, num_gallery)
        gallery_emb = _unit_rows(rng, num_gallery)
        oracle[category] = evaluate_embeddings(split, _oracle_queries(split, gallery_emb), gallery_emb)
        random_queries = _unit_rows(rng, num_queries)
        chance[category] = evaluate_embeddings(split, random_queries, gallery_emb)
        assert _within(chance[category]["R@50"], 100.0 * 50 / num_gallery, num_queries), category
        splits[category] = split
        rankings[category] = rank_split(split, random_queries, gallery_emb, 50)
    combined = combine_categories(oracle)
    assert combined["average"]["R@10"] == pytest.approx(100.0)
    assert combined["num_queries"] == 2017 + 2038 + 1961

    path = tmp_path / "fiq_val.json"
    write_fashioniq_submission(path, splits, rankings)
    from_file = score_prediction_files("fashioniq", root, "val", [path])
    for category in sizes:
        assert from_file[category]["R@50"] == pytest.approx(chance[category]["R@50"])
    expected_avg = np.mean([chance[c]["R@10"] for c in sizes])
    assert from_file["average"]["R@10"] == pytest.approx(expected_avg)
