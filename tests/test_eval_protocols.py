"""Protocols on hand-built splits: what is ranked against what, and the scores that follow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from irkit.benchmarks.cirr import BENCHMARK as CIRR
from irkit.benchmarks.fashioniq import combine_categories
from irkit.benchmarks.traffic import (
    evaluate_traffic_submission,
    traffic_ground_truth_from_labels,
    traffic_rank_statistics,
)
from irkit.cir.protocol import evaluate_embeddings, evaluate_rankings, rank_split
from irkit.data.records import CIRQuery, CIRSplit
from irkit.errors import InputError


def _split(dataset: str, queries: list[CIRQuery], gallery: list[str], category=None) -> CIRSplit:
    return CIRSplit(dataset=dataset, split="val", root=Path("."), queries=queries, gallery=gallery,
                    image_paths={g: Path(f"{g}.png") for g in gallery}, category=category)


def _one_hot(n: int, d: int) -> np.ndarray:
    return np.eye(d, dtype=np.float32)[:n]


# --------------------------------------------------------------------------- rank_split


def test_cirr_removes_reference_others_keep_it():
    gallery = ["g0", "g1", "g2", "g3"]
    gallery_emb = _one_hot(4, 4)
    # query = reference g0's embedding + a little of g2: g0 best, then g2
    query_emb = np.array([[1.0, 0.0, 0.5, 0.0]], np.float32)
    q = CIRQuery("7", reference="g0", captions=("c",), target="g2", ground_truths=("g2",),
                 subset=("g0", "g1", "g2", "g3", "g1", "g3"))
    cirr = rank_split(_split("cirr", [q], gallery), query_emb, gallery_emb, k=3)
    assert cirr == {"7": ["g2", "g1", "g3"]}  # g0 removed; g1/g3 tie at 0 -> gallery order
    circo = rank_split(_split("circo", [q], gallery), query_emb, gallery_emb, k=3)
    assert circo == {"7": ["g0", "g2", "g1"]}
    fiq = rank_split(_split("fashioniq", [q], gallery, "dress"), query_emb, gallery_emb, k=2)
    assert fiq == {"7": ["g0", "g2"]}


def test_shape_mismatch_is_input_error():
    q = CIRQuery("0", reference="a", captions=("c",), target="b", ground_truths=("b",))
    split = _split("circo", [q], ["a", "b"])
    with pytest.raises(InputError, match=r"expected \[1, D\]"):
        rank_split(split, np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32), 1)
    with pytest.raises(InputError, match=r"expected \[2, D\]"):
        rank_split(split, np.zeros((1, 4), np.float32), np.zeros((3, 4), np.float32), 1)
    with pytest.raises(InputError, match="4-d but gallery"):
        rank_split(split, np.zeros((1, 4), np.float32), np.zeros((2, 3), np.float32), 1)


def test_rank_cirr_subset_follows_full_order_with_ties():
    # 8 gallery images; all subset candidates tie with the same score -> gallery order
    gallery = [f"i{j}" for j in range(8)]
    gallery_emb = np.zeros((8, 3), np.float32)
    gallery_emb[:, 0] = 1.0           # every image scores 1.0 on axis 0 ...
    gallery_emb[5] = [0.0, 1.0, 0.0]  # ... except i5 (the reference) which scores highest on axis 1
    query_emb = np.array([[0.6, 0.8, 0.0]], np.float32)
    q = CIRQuery("1", reference="i5", captions=("c",), target="i6", ground_truths=("i6",),
                 subset=("i7", "i5", "i6", "i1", "i3", "i4"))
    split = _split("cirr", [q], gallery)
    rankings, subsets = CIRR.rank_with_subsets(split, query_emb, gallery_emb, k=4, subset_k=5)
    # scores: i5 = 0.8 (removed), the rest 0.6 -> ties in gallery order
    assert rankings == {"1": ["i0", "i1", "i2", "i3"]}
    # candidates = members minus i5, ordered by their gallery (= tie) order: i1, i3, i4, i6, i7
    assert subsets == {"1": ["i1", "i3", "i4", "i6", "i7"]}
    result = evaluate_embeddings(split, query_emb, gallery_emb)
    # target i6: global rank among 7 (ref removed) = position 6 -> R@1/5 = 0, R@10 = 100
    assert (result["R@1"], result["R@5"], result["R@10"]) == (0.0, 0.0, 100.0)
    # subset rank 4 -> Rs@1..3 all 0
    assert (result["Rs@1"], result["Rs@2"], result["Rs@3"]) == (0.0, 0.0, 0.0)
    assert result["protocol"].startswith("cirr-val: reference removed")
    assert result["units"] == "percent" and result["num_queries"] == 1


def _brute_force_cirr(split: CIRSplit, query_emb: np.ndarray, gallery_emb: np.ndarray) -> dict:
    """Independent CIRR scoring: full stable argsort per query, reference dropped."""
    scores = query_emb @ gallery_emb.T
    r_hits = {k: 0 for k in (1, 5, 10, 50)}
    rs_hits = {k: 0 for k in (1, 2, 3)}
    for row, q in enumerate(split.queries):
        order = [split.gallery[j] for j in np.argsort(-scores[row], kind="stable")]
        order = [x for x in order if x != q.reference]
        rank = order.index(q.target) + 1
        sub = [x for x in order if x in set(q.subset) - {q.reference}]
        srank = sub.index(q.target) + 1
        for k in r_hits:
            r_hits[k] += rank <= k
        for k in rs_hits:
            rs_hits[k] += srank <= k
    n = len(split.queries)
    out = {f"R@{k}": 100 * v / n for k, v in r_hits.items()}
    out.update({f"Rs@{k}": 100 * v / n for k, v in rs_hits.items()})
    return out


def test_cirr_embeddings_match_brute_force():
    rng = np.random.default_rng(0)
    gallery = [f"img{j}" for j in range(120)]
    queries = []
    for i in range(40):
        members = tuple(rng.choice(gallery, 6, replace=False))
        queries.append(CIRQuery(str(100 + i), reference=members[0], captions=("c",), target=members[1],
                                ground_truths=(members[1],), subset=members))
    split = _split("cirr", queries, gallery)
    gallery_emb = rng.standard_normal((120, 8)).astype(np.float32)
    # the query is near its target so the scores spread over ranks
    target_rows = np.array([gallery.index(q.target) for q in queries])
    query_emb = (gallery_emb[target_rows] * 0.5 + rng.standard_normal((40, 8))).astype(np.float32)
    result = evaluate_embeddings(split, query_emb, gallery_emb)
    expected = _brute_force_cirr(split, query_emb, gallery_emb)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key
    assert result["(R@5+Rs@1)/2"] == pytest.approx((expected["R@5"] + expected["Rs@1"]) / 2)


# --------------------------------------------------------------------------- evaluate_rankings


def test_evaluate_rankings_depth_and_keys_are_checked():
    gallery = [f"g{j}" for j in range(60)]
    q = CIRQuery("0", reference="g0", captions=("a", "b"), target="g1", ground_truths=("g1",), category="dress")
    split = _split("fashioniq", [q], gallery, "dress")
    with pytest.raises(InputError, match="at least 50"):
        evaluate_rankings(split, {"0": gallery[:10]})
    with pytest.raises(InputError, match="no ranking"):
        evaluate_rankings(split, {})
    with pytest.raises(InputError, match="not in"):
        evaluate_rankings(split, {"0": gallery[:50], "9": gallery[:50]})
    with pytest.raises(InputError, match="not in the fashioniq-val gallery"):
        evaluate_rankings(split, {"0": gallery[:49] + ["nope"]})
    result = evaluate_rankings(split, {"0": gallery[:50]})
    # target g1 at rank 2 -> R@10 = R@50 = 100
    assert result["R@10"] == 100.0 and result["R@50"] == 100.0
    assert result["category"] == "dress"
    assert result["protocol"] == "fashioniq-val/dress: reference kept in gallery; R@K on target"


def test_small_gallery_needs_only_what_can_be_ranked():
    gallery = ["a", "b", "c"]
    q = CIRQuery("0", reference="a", captions=("c",), target="c", ground_truths=("c",),
                 subset=("a", "b", "c", "b", "c", "b"))
    split = _split("cirr", [q], gallery)
    # 2 rankable ids (reference removed) suffice; the reference may be given and is removed
    result = evaluate_rankings(split, {"0": ["a", "b", "c"]})
    # after removal: b, c -> target rank 2; subset candidates b, c -> rank 2
    assert (result["R@1"], result["R@5"], result["Rs@1"], result["Rs@2"]) == (0.0, 100.0, 0.0, 100.0)


def test_test_split_cannot_be_scored():
    q = CIRQuery("0", reference="a", captions=("c",))
    with pytest.raises(InputError, match="without a target"):
        evaluate_rankings(_split("circo", [q], ["a", "b"]), {"0": ["a", "b"]})


def test_circo_protocol_names_shared_concept():
    gallery = [f"{j}" for j in range(100, 160)]
    q = CIRQuery("0", reference="100", captions=("c",), target="101", ground_truths=("101", "150"))
    split = _split("circo", [q], gallery)
    ranking = ["100", "150", "101"] + gallery[2:50]
    ranking = list(dict.fromkeys(ranking))[:50]
    result = evaluate_rankings(split, {"0": ranking}, shared_concept=True)
    assert result["protocol"].startswith("circo-val: shared_concept=True")
    # hits at 2 and 3 (reference kept at rank 1): AP@5 = (1/2 + 2/3) / min(2, 5) = 7/12
    assert result["mAP@5"] == pytest.approx(100 * 7 / 12)
    # target 101 at rank 3
    assert (result["R@5"], result["R@10"]) == (100.0, 100.0)
    unspecified = evaluate_rankings(split, {"0": ranking})
    assert "shared_concept=unspecified" in unspecified["protocol"]


def test_generic_dataset_uses_ground_truths():
    gallery = [f"x{j}" for j in range(60)]
    q = CIRQuery("a", reference="x0", captions=("c",), target="x3", ground_truths=("x3", "x1"))
    split = _split("mybench", [q], gallery)
    result = evaluate_rankings(split, {"a": gallery[:50]})
    # hits at ranks 2 (x1) and 4 (x3): AP@5 = (1/2 + 2/4) / 2 = 0.5; R@1 = 0, R@5 = 100
    assert result["mAP@5"] == pytest.approx(50.0)
    assert (result["R@1"], result["R@5"]) == (0.0, 100.0)
    assert result["protocol"].startswith("mybench-val: generic")


def test_combine_fashioniq():
    per = {
        "dress": {"protocol": "p", "R@10": 10.0, "R@50": 30.0, "num_queries": 2, "category": "dress"},
        "shirt": {"protocol": "p", "R@10": 20.0, "R@50": 40.0, "num_queries": 3, "category": "shirt"},
        "toptee": {"protocol": "p", "R@10": 60.0, "R@50": 80.0, "num_queries": 5, "category": "toptee"},
    }
    combined = combine_categories(per)
    # R@10 mean = 90/3 = 30; R@50 mean = 150/3 = 50; their mean 40
    assert combined["average"] == {"R@10": 30.0, "R@50": 50.0, "mean(R@10,R@50)": 40.0}
    assert combined["dress"]["R@10"] == 10.0 and combined["num_queries"] == 10
    with pytest.raises(InputError, match="expected exactly"):
        combine_categories({"dress": per["dress"]})


# --------------------------------------------------------------------------- traffic


def _traffic_case():
    truth = {"A white car.": ["c1.jpg", "c2.jpg"], "A man with a hat.": ["p1.jpg", "p2.jpg", "p3.jpg"]}
    others = [f"o{i}.jpg" for i in range(10)]
    submission = {"results": [
        # query 1: hits at 1 and 3 -> official (1 + 2/3)/(2 + 1e-6); standard (5/3)/2
        {"text": "A white car.", "image_names": ["c1.jpg", "o0.jpg", "c2.jpg"] + others[1:8]},
        # query 2: one hit at 4 -> official (1/4)/(1 + 1e-6); standard (1/4)/3
        {"text": "A man with a hat.", "image_names": others[:3] + ["p3.jpg"] + others[3:9]},
    ]}
    return truth, submission


def test_traffic_submission_scores():
    truth, submission = _traffic_case()
    result = evaluate_traffic_submission(submission, truth)
    assert result["official_mAP@10"] == pytest.approx(((5 / 3) / (2 + 1e-6) + 0.25 / (1 + 1e-6)) / 2, rel=1e-12)
    assert result["standard_mAP@10"] == pytest.approx(((5 / 3) / 2 + 0.25 / 3) / 2)
    assert (result["R@1"], result["R@5"], result["R@10"]) == (0.5, 1.0, 1.0)
    assert result["units"] == "fraction" and result["num_queries"] == 2
    assert result["protocol"].startswith("traffic-test: official mAP@10")


def test_traffic_submission_validation():
    truth, submission = _traffic_case()
    swapped = {"results": submission["results"][::-1]}
    with pytest.raises(InputError, match=r"results\[0\]\.text"):
        evaluate_traffic_submission(swapped, truth)
    short = {"results": [dict(submission["results"][0], image_names=["c1.jpg"]), submission["results"][1]]}
    with pytest.raises(InputError, match="expected exactly 10"):
        evaluate_traffic_submission(short, truth)
    dup_names = ["c1.jpg"] * 2 + [f"o{i}.jpg" for i in range(8)]
    dup = {"results": [dict(submission["results"][0], image_names=dup_names), submission["results"][1]]}
    with pytest.raises(InputError, match="more than once"):
        evaluate_traffic_submission(dup, truth)
    with pytest.raises(InputError, match="one per query"):
        evaluate_traffic_submission({"results": submission["results"][:1]}, truth)
    with pytest.raises(InputError, match="not in the test gallery"):
        evaluate_traffic_submission(submission, truth, gallery={"c1.jpg"})


def test_traffic_rank_statistics():
    scores = np.array([[0.9, 0.1, 0.5], [0.1, 0.2, 0.3], [0.3, 0.3, 0.3], [0.0, 1.0, 0.5]], np.float32)
    relevant = [{0}, {0}, {2}, {2, 0}]
    # ranks: q0 1; q1 3; q2 3 (ties by gallery order); q3 best relevant idx 2 -> 2
    # mean = 9/4 = 2.25; 0-based 0,2,2,1 -> median 1.5 -> floor 1 -> +1 = 2
    stats = traffic_rank_statistics(scores, relevant)
    assert stats["mean_rank"] == 2.25 and stats["median_rank"] == 2.0
    assert "protocol" in stats and stats["num_queries"] == 4


def test_traffic_ground_truth_from_labels():
    from irkit.data.records import TrafficLabel

    labels = [TrafficLabel("a.jpg", "x", "A red car.", "vehicle", 1),
              TrafficLabel("b.jpg", "x", "A blue bus.", "vehicle", 2),
              TrafficLabel("c.jpg", "x", "A red car.", "vehicle", 3)]
    assert traffic_ground_truth_from_labels(labels) == {
        "A red car.": ["a.jpg", "c.jpg"], "A blue bus.": ["b.jpg"]}


def test_per_query_values_average_to_the_aggregate():
    """For every protocol, mean(per-query value) x 100 equals the aggregate metric (the
    significance report pairs these values)."""
    from irkit.cir.protocol import per_query_values

    gallery = [f"x{i}" for i in range(60)]
    queries = [CIRQuery("a", reference="x0", captions=("c",), target="x3", ground_truths=("x3", "x1")),
               CIRQuery("b", reference="x2", captions=("c",), target="x9", ground_truths=("x9",))]
    rankings = {"a": ["x1"] + [g for g in gallery if g != "x1"][:49], "b": gallery[:50]}
    for dataset in ("mybench", "circo"):
        split = _split(dataset, queries, gallery)
        result = evaluate_rankings(split, rankings)
        for metric in ("R@5", "R@10", "mAP@10", "mAP@50"):
            assert 100 * per_query_values(split, rankings, metric).mean() == pytest.approx(result[metric]), \
                (dataset, metric)
    # query a: its other ground truth x1 is at rank 1 -> a generic hit, but CIRCO's R@K counts the target
    # (x3, rank 4) only; query b: target x9 at rank 10 -> a miss at R@1 for both, a hit at R@10
    assert per_query_values(_split("mybench", queries, gallery), rankings, "R@1").tolist() == [1.0, 0.0]
    assert per_query_values(_split("circo", queries, gallery), rankings, "R@1").tolist() == [0.0, 0.0]
    assert per_query_values(_split("circo", queries, gallery), rankings, "R@10").tolist() == [1.0, 1.0]


def test_one_fashioniq_category_is_its_own_result():
    """``--category dress``: the one category's result, not a refusal to average."""
    from irkit.cir.protocol import combine_split_results

    gallery = [f"g{i}" for i in range(60)]
    split = _split("fashioniq", [CIRQuery("0", reference="g0", captions=("a", "b"), target="g1")], gallery, "dress")
    result = evaluate_rankings(split, {"0": gallery[:50]})
    assert combine_split_results([split], [result]) == result
    assert result["category"] == "dress" and result["R@10"] == 100.0


def test_a_dataset_with_a_loader_alone_gets_the_generic_protocol(tmp_path):
    """A dataset registered with a loader but no spec loads, ranks and scores generically."""
    from irkit.benchmarks import get_benchmark
    from irkit.cir.evaluate import load_cir_splits
    from irkit.cir.topk import default_k
    from irkit.data.registry import register_dataset

    gallery = [f"g{i}" for i in range(60)]
    query = CIRQuery("0", reference="g0", captions=("c",), target="g2")
    register_dataset("loader-only-bench")(lambda root, split, **kw: _split("loader-only-bench", [query], gallery))
    (split,) = load_cir_splits("loader-only-bench", tmp_path, "val")
    assert default_k("loader-only-bench") == 50
    assert get_benchmark("loader-only-bench").protocol_name(split).endswith("AP@K/min(|relevant|, K)")
    assert evaluate_rankings(split, {"0": gallery[:50]})["R@5"] == 100.0
