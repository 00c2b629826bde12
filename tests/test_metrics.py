"""Hand-worked checks of every metric in irkit.metrics (arithmetic in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from irkit import metrics
from irkit.errors import InputError

# A ranking of 10 with relevant items at ranks 2 and 5.
RANKED = ["a", "R1", "b", "c", "R2", "d", "e", "f", "g", "h"]


# --------------------------------------------------------------------------- AP@10


def test_official_ap_divides_by_hits_in_top_10():
    # hits at ranks 2 and 5: precision 1/2 and 2/5; official = (1/2 + 2/5) / (2 + 1e-6)
    value = metrics.official_ap_at_k(RANKED, {"R1", "R2", "R3", "R4"}, 10)
    assert value == pytest.approx(0.9 / (2 + 1e-6), rel=1e-12)
    assert value == pytest.approx(0.45, abs=1e-6)
    # the number of relevant items outside the top 10 does not change it
    assert metrics.official_ap_at_k(RANKED, {"R1", "R2"}, 10) == pytest.approx(value, rel=1e-12)


def test_standard_ap_divides_by_min_relevant_and_k():
    # same sum 0.9; 4 relevant -> 0.9 / 4 = 0.225
    assert metrics.standard_ap_at_k(RANKED, {"R1", "R2", "R3", "R4"}, 10) == pytest.approx(0.225)
    # 12 relevant -> min(12, 10) = 10 -> 0.9 / 10 = 0.09
    many = {"R1", "R2"} | {f"x{i}" for i in range(10)}
    assert metrics.standard_ap_at_k(RANKED, many, 10) == pytest.approx(0.09)
    # 2 relevant, both found -> 0.9 / 2 = 0.45 (exactly; no epsilon)
    assert metrics.standard_ap_at_k(RANKED, {"R1", "R2"}, 10) == pytest.approx(0.45, rel=1e-12)


def test_no_hit_scores_zero_in_both():
    assert metrics.official_ap_at_k(RANKED, {"zzz"}, 10) == 0.0
    assert metrics.standard_ap_at_k(RANKED, {"zzz"}, 10) == 0.0


def test_perfect_official_is_one_minus_epsilon():
    # 3 hits at ranks 1,2,3: (1 + 1 + 1) / (3 + 1e-6)
    assert metrics.official_ap_at_k(["x", "y", "z"], {"x", "y", "z"}, 10) == pytest.approx(3 / (3 + 1e-6), rel=1e-12)


def test_ap_only_counts_top_k():
    # with k = 4 only the hit at rank 2 counts: official = (1/2) / 1 ; standard = 0.5 / min(2, 4) = 0.25
    assert metrics.official_ap_at_k(RANKED, {"R1", "R2"}, 4) == pytest.approx(0.5, abs=1e-6)
    assert metrics.standard_ap_at_k(RANKED, {"R1", "R2"}, 4) == pytest.approx(0.25)


def test_duplicates_are_rejected():
    with pytest.raises(InputError, match="more than once"):
        metrics.official_ap_at_k(["a", "b", "a"], {"a"}, 10)
    with pytest.raises(InputError, match="field 'q7'"):
        metrics.recall_at_k(["a", "a"], {"a"}, 1, query_id="q7")
    with pytest.raises(InputError, match="more than once"):
        metrics.mean_average_precision_at_k({"q": ["x", "x"]}, {"q": {"x"}}, 5)


# --------------------------------------------------------------------------- recall / ranks


def test_recall_at_k_any_relevant():
    rel = {"R1", "R2"}
    assert metrics.recall_at_k(RANKED, rel, 1) == 0.0  # rank 1 is "a"
    assert metrics.recall_at_k(RANKED, rel, 2) == 1.0  # R1 at rank 2
    assert metrics.recall_at_k(RANKED, {"R2"}, 4) == 0.0
    assert metrics.recall_at_k(RANKED, {"R2"}, 5) == 1.0


def test_first_relevant_rank_and_statistics():
    assert metrics.first_relevant_rank(RANKED, {"R2", "R1"}) == 2
    assert metrics.first_relevant_rank(RANKED, {"h"}) == 10
    with pytest.raises(InputError, match="full ranking"):
        metrics.first_relevant_rank(RANKED, {"nope"})
    # ranks 1, 2, 3, 10: mean = 16/4 = 4; 0-based 0,1,2,9 -> median 1.5 -> floor 1 -> +1 = 2
    stats = metrics.rank_statistics([1, 2, 3, 10])
    assert stats == {"mean_rank": 4.0, "median_rank": 2.0}
    # odd count: ranks 5, 1, 3 -> mean 3, median 3
    assert metrics.rank_statistics([5, 1, 3]) == {"mean_rank": 3.0, "median_rank": 3.0}


def test_first_relevant_ranks_from_scores_ties_by_gallery_order():
    scores = np.array([
        [0.1, 0.9, 0.5, 0.9],   # relevant {3}: 0.9 at index 1 ties and comes first -> rank 2
        [0.2, 0.2, 0.2, 0.2],   # relevant {2, 0}: index 0 is first of all ties -> rank 1
        [0.9, 0.8, 0.7, 0.6],   # relevant {3, 2}: best relevant is index 2 (0.7) -> rank 3
    ], dtype=np.float32)
    ranks = metrics.first_relevant_ranks_from_scores(scores, [{3}, {2, 0}, {3, 2}])
    assert ranks.tolist() == [2, 1, 3]
    # cross-check against a stable argsort of each row
    for q, rel in enumerate([{3}, {2, 0}, {3, 2}]):
        order = np.argsort(-scores[q], kind="stable").tolist()
        assert ranks[q] == 1 + min(order.index(r) for r in rel)
    with pytest.raises(InputError, match="no relevant"):
        metrics.first_relevant_ranks_from_scores(scores, [{1}, set(), {0}])


# --------------------------------------------------------------------------- generic over queries


def test_generic_map_and_recall_over_queries():
    rankings = {"q1": ["a", "b", "c"], "q2": ["c", "b", "a"]}
    relevant = {"q1": {"b"}, "q2": {"c", "a"}}
    # q1: hit at 2 -> AP@3 = (1/2)/1 = 0.5 ; q2: hits at 1 and 3 -> (1 + 2/3)/2 = 5/6
    assert metrics.mean_average_precision_at_k(rankings, relevant, 3) == pytest.approx((0.5 + 5 / 6) / 2)
    # R@1: q1 no, q2 yes -> 0.5
    assert metrics.mean_recall_at_k(rankings, relevant, 1) == 0.5
    with pytest.raises(InputError, match="without a ranking"):
        metrics.mean_recall_at_k({"q1": ["a"]}, relevant, 1)


# --------------------------------------------------------------------------- FashionIQ


def test_fashioniq_metrics_and_average():
    g = [f"g{i}" for i in range(60)]
    rankings = {"0": g, "1": g, "2": g, "3": g}
    targets = {"0": "g0", "1": "g9", "2": "g10", "3": "g55"}
    # target ranks 1, 10, 11, 56 -> R@10 = 2/4 = 50%, R@50 = 3/4 = 75%
    assert metrics.fashioniq_metrics(rankings, targets) == {"R@10": 50.0, "R@50": 75.0}
    per_cat = {"dress": {"R@10": 10.0, "R@50": 40.0}, "shirt": {"R@10": 20.0, "R@50": 50.0},
               "toptee": {"R@10": 30.0, "R@50": 60.0}}
    # means: R@10 = 20, R@50 = 50, their mean 35
    assert metrics.fashioniq_average(per_cat) == {"R@10": 20.0, "R@50": 50.0, "mean(R@10,R@50)": 35.0}


# --------------------------------------------------------------------------- CIRR


def _cirr_case():
    # gallery order r, t1, x, y, t2, m1..m4 ; query A: ref "rA", target "tA"
    full_a = ["rA", "x1", "m1", "tA", "m2", "m3", "m4"] + [f"z{i}" for i in range(60)]
    members_a = ("rA", "tA", "m1", "m2", "m3", "m4")
    # query B: target ranked first once the reference (rank 1) is removed
    full_b = ["rB", "tB", "n1", "n2", "n3", "n4"] + [f"z{i}" for i in range(60)]
    members_b = ("n1", "rB", "n2", "n3", "tB", "n4")
    return ({"A": full_a, "B": full_b}, {"A": "tA", "B": "tB"}, {"A": "rA", "B": "rB"},
            {"A": members_a, "B": members_b})


def test_cirr_reference_removed_and_subset_restricted():
    rankings, targets, refs, members = _cirr_case()
    result = metrics.cirr_metrics(rankings, targets, refs, members)
    # A: after removing rA the ranking is x1, m1, tA -> target at rank 3 -> R@1 no, R@5 yes
    # B: after removing rB -> tB at rank 1
    assert result["R@1"] == 50.0
    assert result["R@5"] == 100.0 and result["R@10"] == 100.0 and result["R@50"] == 100.0
    # A subset: members minus rA in global order: m1, tA, m2, m3, m4 -> target at subset rank 2
    # (x1 is not a member, so it does not count)
    # B subset: tB, n1, n2, n3, n4 -> rank 1
    assert result["Rs@1"] == 50.0 and result["Rs@2"] == 100.0 and result["Rs@3"] == 100.0
    # headline (R@5 + Rs@1)/2 = (100 + 50)/2 = 75
    assert result["(R@5+Rs@1)/2"] == 75.0
    # without removing the reference, B's target would be rank 2: check we did remove it
    assert metrics.recall_at_k(rankings["B"], {"tB"}, 1) == 0.0


def test_cirr_subset_ranking_helper_and_given_subset():
    rankings, targets, refs, members = _cirr_case()
    assert metrics.subset_ranking(rankings["A"], members["A"], "rA") == ["m1", "tA", "m2", "m3", "m4"]
    with pytest.raises(InputError, match="full ranking"):
        metrics.subset_ranking(rankings["A"][:4], members["A"], "rA")
    # a given subset ranking overrides: A's target first, B's third
    given = {"A": ["tA", "m1", "m2"], "B": ["n1", "n2", "tB"]}
    result = metrics.cirr_metrics(rankings, targets, refs, members, subset_rankings=given)
    assert (result["Rs@1"], result["Rs@2"], result["Rs@3"]) == (50.0, 50.0, 100.0)
    with pytest.raises(InputError, match="not one of the candidates"):
        metrics.cirr_metrics(rankings, targets, refs, members,
                             subset_rankings={"A": ["rA", "tA", "m1"], "B": given["B"]})


def test_cirr_random_subset_rs1_is_twenty_percent():
    # every possible position of the target among 5 candidates once -> Rs@1 = 1/5 = 20%
    candidates = ["t", "c1", "c2", "c3", "c4"]
    rankings, targets, refs, members = {}, {}, {}, {}
    for pos in range(5):
        others = [c for c in candidates if c != "t"]
        order = others[:pos] + ["t"] + others[pos:]
        rankings[str(pos)] = ["ref"] + order
        targets[str(pos)], refs[str(pos)], members[str(pos)] = "t", "ref", tuple(["ref"] + candidates)
    result = metrics.cirr_metrics(rankings, targets, refs, members)
    assert result["Rs@1"] == pytest.approx(20.0)
    assert result["Rs@2"] == pytest.approx(40.0)
    assert result["Rs@3"] == pytest.approx(60.0)


# --------------------------------------------------------------------------- CIRCO


def test_circo_map_uses_min_gt_k_and_recall_uses_target_only():
    base = [f"d{i}" for i in range(60)]
    # q0: 2 ground truths (target g0 at rank 1, g1 at rank 3):
    #     AP@5 = (1/1 + 2/3) / min(2, 5) = (5/3)/2 = 0.8333...
    ranking0 = ["g0", "d0", "g1"] + base[1:]
    # q1: 8 ground truths; ranks 2, 4, 6 hold g-ids (target t1 at rank 6)
    #     AP@5 = (1/2 + 2/4) / min(8, 5) = 1.0/5 = 0.2
    #     AP@10 = (1/2 + 2/4 + 3/6) / min(8, 10) = 1.5/8 = 0.1875
    gt1 = ["t1", "h1", "h2", "h3", "h4", "h5", "h6", "h7"]
    ranking1 = ["d0", "h1", "d1", "h2", "d2", "t1"] + base[3:]
    rankings = {"0": ranking0, "1": ranking1}
    gts = {"0": ("g0", "g1"), "1": tuple(gt1)}
    targets = {"0": "g0", "1": "t1"}
    result = metrics.circo_metrics(rankings, gts, targets)
    assert result["mAP@5"] == pytest.approx(100 * (5 / 6 + 0.2) / 2)
    # q0 AP@10 unchanged (min(2,10) = 2) -> 5/6
    assert result["mAP@10"] == pytest.approx(100 * (5 / 6 + 0.1875) / 2)
    # recall on target only: q0 target at 1, q1 target at 6 (even though h1 at rank 2 is a GT)
    assert result["R@5"] == 50.0
    assert result["R@10"] == 100.0
    assert set(result) == {"mAP@5", "mAP@10", "mAP@25", "mAP@50", "R@5", "R@10", "R@25", "R@50"}


def test_circo_duplicate_prediction_is_error():
    with pytest.raises(InputError, match="more than once"):
        metrics.circo_metrics({"0": ["g0", "x", "g0"]}, {"0": ("g0",)}, {"0": "g0"})


# --------------------------------------------------------------------------- traffic


def test_traffic_metrics_named_and_fractions():
    rankings = {"q1": RANKED, "q2": ["R3"] + [f"o{i}" for i in range(9)]}
    relevant = {"q1": {"R1", "R2", "R3", "R4"}, "q2": {"R3", "R5"}}
    result = metrics.traffic_metrics(rankings, relevant)
    # q1 official 0.9/(2+1e-6); q2 official 1/(1+1e-6)
    assert result["official_mAP@10"] == pytest.approx((0.9 / (2 + 1e-6) + 1 / (1 + 1e-6)) / 2, rel=1e-12)
    # q1 standard 0.9/4 = 0.225; q2 standard 1/min(2,10) = 0.5
    assert result["standard_mAP@10"] == pytest.approx((0.225 + 0.5) / 2)
    # R@1: only q2 -> 0.5; R@5 both -> 1.0
    assert (result["R@1"], result["R@5"], result["R@10"]) == (0.5, 1.0, 1.0)
