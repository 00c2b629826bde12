"""A CLI that explains itself (issue 15): every option of every command has help text, shown
defaults where they mean something, ``--help`` exits 0 everywhere, ``irkit --help`` describes
the tool and its command groups."""

from __future__ import annotations

import argparse
import re
from typing import Iterator

import pytest

from irkit.cli import build_parser, main


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree (the top one, each group, each command) with its command path."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


PARSERS = list(walk(build_parser()))
COMMANDS = [path for path, parser in PARSERS]


def test_the_tree_has_every_group_and_its_commands() -> None:
    groups = {path[0] for path in COMMANDS if path}
    assert groups == {"data", "eval", "embed", "index", "preprocess", "train", "infer", "batch", "cir", "search",
                      "report", "app"}
    for command in [("train", "clip"), ("embed", "search"), ("infer", "traffic"), ("cir", "rerank"),
                    ("batch", "run"), ("cir", "train-fusion")]:
        assert command in COMMANDS


def test_every_action_of_every_parser_has_help() -> None:
    """Options and positionals have help; a group's commands each have a one-line help."""
    missing = []
    for path, parser in PARSERS:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"irkit {' '.join(path)} {choice.dest}" for choice in action._choices_actions
                            if not (choice.help and choice.help.strip())]
            elif not (action.help and action.help.strip()):
                missing.append(f"irkit {' '.join(path)}: {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "irkit")
def test_help_exits_zero_and_shows_defaults(path: tuple[str, ...], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main([*path, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text  # no reST markup in descriptions
    parser = dict(PARSERS)[path]
    flat = re.sub(r"-\s+", "-", " ".join(text.split()))  # argparse wraps lines (also after a hyphen)
    for action in parser._actions:
        shown = (action.option_strings or [action.dest])[0]
        if action.option_strings:
            assert shown in text, shown
        meaningful = (action.option_strings and not action.required and action.nargs != 0
                      and action.default not in (None, [], argparse.SUPPRESS))
        if meaningful:
            assert "default" in " ".join(action.help.split()).lower() or \
                f"(default: {'tab' if action.default == chr(9) else action.default})" in flat, (path, shown)


def test_values_in_help_match_the_parsed_defaults(capsys: pytest.CaptureFixture) -> None:
    """A hand-picked sample: what --help prints is what an omitted option gets."""
    with pytest.raises(SystemExit):
        main(["train", "clip", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--epochs EPOCHS training epochs \(passes over --train-csv\) \(default: 10\)", text)
    assert "--device" not in text  # open_clip_train picks the device itself
    args = build_parser().parse_args(["train", "clip", "--train-csv", "t.csv"])
    assert (args.epochs, args.workers, args.save_frequency, args.precision) == (10, 1, 1, "auto")
    with pytest.raises(SystemExit):
        main(["embed", "search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "-k K images returned per query (default: 10)" in text
    assert "--device DEVICE torch device for the model: cpu, cuda, cuda:1, ... (default: cpu)" in text


def test_top_level_help_describes_the_tool_and_its_groups(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "The ``irkit`` command line" not in text and "thin wiring" not in text  # not the module docstring
    assert "command groups:" in text and "fractions in [0, 1]" in text
    for group in ("data", "eval", "embed", "preprocess", "train", "infer", "batch", "cir"):
        assert re.search(rf"^\s+{group}\s+\S", text, re.MULTILINE), group


def test_cli_precisions_are_the_model_factorys() -> None:
    from irkit.cli.common import MODEL_PRECISIONS
    from irkit.models.factory import PRECISIONS

    assert tuple(MODEL_PRECISIONS) == tuple(PRECISIONS)


def test_one_prompt_default_for_cli_pipeline_and_notebooks() -> None:
    """``irkit infer traffic --prompt``, the pipeline's parameters and both traffic notebooks'
    parameters cells default to the same prompt: irkit.traffic.DEFAULT_PROMPT (auto)."""
    import ast
    from pathlib import Path

    from irkit.notebook import notebook_parameters
    from irkit.traffic import DEFAULT_PROMPT
    from irkit.traffic.stages import TrafficRunParams

    assert DEFAULT_PROMPT == "auto"
    args = build_parser().parse_args(["infer", "traffic", "--root", "r", "--out", "o"])
    assert args.prompt == DEFAULT_PROMPT
    assert TrafficRunParams().prompt == DEFAULT_PROMPT
    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    for name in ("reproduce.ipynb", "quick-review.ipynb"):
        assert ast.literal_eval(notebook_parameters(notebooks / name)["prompt"]) == DEFAULT_PROMPT, name
