"""One printed unit (issue 15): every metric irkit prints is a fraction in [0, 1]; files keep
their documented units (CIR JSON in percent). Hand-made results, converted by hand."""

from __future__ import annotations

import pytest

from irkit.metrics import as_fractions


def test_percent_blocks_become_fractions_nested_blocks_included() -> None:
    fashioniq = {"protocol": "fashioniq", "units": "percent", "num_queries": 24,
                 "dress": {"units": "percent", "R@10": 62.5, "R@50": 100.0, "num_queries": 8},
                 "average": {"R@10": 58.75, "R@50": 100.0, "mean(R@10,R@50)": 79.375}}
    printed = as_fractions(fashioniq)
    assert printed == {"protocol": "fashioniq", "units": "fraction", "num_queries": 24,
                       "dress": {"units": "fraction", "R@10": 0.625, "R@50": 1.0, "num_queries": 8},
                       "average": {"R@10": pytest.approx(0.5875), "R@50": 1.0, "mean(R@10,R@50)": 0.79375}}
    assert fashioniq["units"] == "percent" and fashioniq["dress"]["R@10"] == 62.5  # the input is not changed


def test_fraction_and_rank_blocks_are_kept() -> None:
    traffic = {"units": "fraction", "official_mAP@10": 0.613, "R@1": 0.562,
               "rank_statistics": {"units": "rank", "mean_rank": 3.5, "median_rank": 2}}
    assert as_fractions(traffic) == traffic
    cirr = {"units": "percent", "R@1": 2.0, "(R@5+Rs@1)/2": 18.25, "num_queries": 1500, "method": "lincir"}
    assert as_fractions(cirr) == {"units": "fraction", "R@1": 0.02, "(R@5+Rs@1)/2": 0.1825, "num_queries": 1500,
                                  "method": "lincir"}


def test_training_line_prints_the_selection_metric_as_a_fraction() -> None:
    from irkit.cli.common import printed_training_result

    line = printed_training_result({"run_dir": "log/x", "best_value": 37.5, "best_step": 4, "steps": 8})
    assert line == {"run_dir": "log/x", "best_value": 0.375, "best_step": 4, "steps": 8, "units": "fraction"}
    assert printed_training_result({"best_value": None})["best_value"] is None
