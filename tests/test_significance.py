"""Paired bootstrap and per-query values behind the CIR table's significance report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from irkit.data.records import CIRQuery, CIRSplit
from irkit.errors import InputError
from irkit.cir.protocol import per_query_values, split_values
from irkit.experiments.significance import paired_bootstrap


def test_bootstrap_of_identical_and_shifted_values():
    a = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    same = paired_bootstrap(a, a, resamples=500)
    assert (same["difference"], same["low"], same["high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    shifted = paired_bootstrap(a + 0.25, a, resamples=500)  # every query +0.25: no spread at all
    assert shifted["difference"] == pytest.approx(0.25)
    assert shifted["low"] == pytest.approx(0.25) and shifted["high"] == pytest.approx(0.25)
    assert shifted["p_value"] == 0.0 and shifted["mean_a"] == pytest.approx(0.85)


def test_bootstrap_interval_matches_the_normal_approximation():
    """Second formula: for many queries the 95% interval is about mean +- 1.96 sd / sqrt(n)."""
    rng = np.random.default_rng(1)
    a = (rng.random(4000) < 0.30).astype(float)
    b = np.where(rng.random(4000) < 0.8, a, (rng.random(4000) < 0.25).astype(float))
    result = paired_bootstrap(a, b, resamples=4000, seed=3)
    d = a - b
    half = 1.96 * d.std() / np.sqrt(d.size)
    assert result["difference"] == pytest.approx(d.mean())
    assert result["low"] == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert result["high"] == pytest.approx(d.mean() + half, abs=0.15 * half)
    again = paired_bootstrap(a, b, resamples=4000, seed=3)
    assert again == result  # seeded


def test_bad_bootstrap_input():
    with pytest.raises(InputError, match="equal-length"):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(InputError, match="equal-length"):
        paired_bootstrap([], [])


def _split(dataset, queries, gallery):
    return CIRSplit(dataset, "val", Path("."), queries, gallery, {})


def test_per_query_recall_drops_the_cirr_reference():
    queries = [CIRQuery("q1", "ref1", ("t",), target="a"), CIRQuery("q2", "ref2", ("t",), target="b")]
    split = _split("cirr", queries, ["a", "b", "ref1", "ref2", "c"])
    rankings = {"q1": ["ref1", "a", "c"], "q2": ["c", "b", "ref2"]}  # q1: target first once ref1 is dropped
    np.testing.assert_array_equal(per_query_values(split, rankings, "R@1"), [1.0, 0.0])
    np.testing.assert_array_equal(per_query_values(split, rankings, "R@2"), [1.0, 1.0])
    # FashionIQ keeps the reference: the same lists give q1 a miss at R@1
    fiq = _split("fashioniq", queries, ["a", "b", "ref1", "ref2", "c"])
    np.testing.assert_array_equal(per_query_values(fiq, rankings, "R@1"), [0.0, 0.0])
    with pytest.raises(InputError, match="expected R@k or mAP@k"):
        per_query_values(split, rankings, "Rs@1")
    with pytest.raises(InputError, match="no ranking for query 'q2'"):
        per_query_values(split, {"q1": ["a"]}, "R@1")


def test_per_query_ap_by_hand():
    # relevant {a, b, c}; ranking hits at ranks 2 and 4 within the top 5:
    # AP@5 = (1/2 + 2/4) / min(3, 5) = 1/3
    query = CIRQuery("1", "r", ("t",), target="a", ground_truths=("a", "b", "c"))
    split = _split("circo", [query], ["a", "b", "c", "x", "y", "z", "r"])
    values = per_query_values(split, {"1": ["x", "a", "y", "b", "z", "c"]}, "mAP@5")
    assert values[0] == pytest.approx(1 / 3)


def test_split_values_refuses_unequal_category_sizes():
    one = _split("fashioniq", [CIRQuery("1", "r", ("t",), target="a")], ["a", "r"])
    two = _split("fashioniq", [CIRQuery("1", "r", ("t",), target="a"), CIRQuery("2", "r", ("t",), target="r")],
                 ["a", "r"])
    with pytest.raises(InputError, match="different sizes"):
        split_values([one, two], [{"1": ["a"]}, {"1": ["a"], "2": ["a"]}], "R@1")
