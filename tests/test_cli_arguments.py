"""Numeric CLI options out of range are refused at parse time with one line (exit 2), instead of
answering ``--k 0`` with empty lists or turning ``--num-workers -3`` into 0."""

from __future__ import annotations

import pytest

from irkit.cli import main


@pytest.mark.parametrize("argv, expected", [
    (["infer", "traffic", "--root", "r", "--k", "0"], "argument --k: expected a positive integer, got 0"),
    (["embed", "search", "--collection", "c", "--text", "t", "-k", "-1"], "argument -k: expected a positive integer"),
    (["cir", "eval", "--dataset", "cirr", "--root", "r", "--method", "image-only", "--num-workers", "-3"],
     "argument --num-workers/--workers: expected an integer >= 0, got -3"),
    (["cir", "stage1", "--dataset", "cirr", "--root", "r", "--method", "image-only", "--out", "o.json", "--k", "0"],
     "argument --k: expected a positive integer, got 0"),
    (["cir", "eval", "--dataset", "cirr", "--root", "r", "--method", "image-only", "--batch-size", "x"],
     "argument --batch-size: expected a positive integer, got 'x'"),
    (["train", "clip", "--train-csv", "t.csv", "--workers", "-1"], "argument --workers: expected an integer >= 0"),
])
def test_out_of_range_numbers_are_one_line_errors(argv, expected, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["train", "clip", "--train-csv", "t.csv", "--csv-separator", "comma"],
    ["cir", "train-phi", "--method", "lincir", "--captions", "c.csv", "--csv-separator", "comma"],
    ["preprocess", "csv", "--labels", "l.txt", "--images", "i", "--out", "o.csv", "--sep", "comma"],
])
def test_separator_words_work_wherever_a_csv_separator_is_taken(argv):
    from irkit.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.sep if hasattr(args, "sep") else args.csv_separator) == ","
