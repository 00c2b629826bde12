"""Live progress pieces (issue 15): durations, step rate / ETA, notebook stage names, the
training lines, and the logging clean-up after open_clip_train (no torch debug lines).

The end-to-end check (a tiny reproduce notebook through ``irkit batch run``, lines read while
it runs) is part of ``tests/test_notebooks.py::test_reproduce_then_quick_review_notebooks``,
so the suite runs that notebook once."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from irkit.notebook import cell_stage_names
from irkit.progress import StepRate, format_duration


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (59.4, "59 s"), (60, "1:00"), (89, "1:29"),
                                           (3725, "1:02:05"), (float("nan"), "?"), (-1, "?")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_step_rate_counts_only_this_sessions_steps() -> None:
    clock = FakeClock()
    rate = StepRate(total_steps=100, done=10, clock=clock)  # resumed at step 10
    assert rate.rate(10) == 0.0 and rate.describe(10) == "0 step/s, ETA ?"
    clock.now += 5.0
    # 10 steps in 5 s = 2 step/s; 80 steps left -> 40 s
    assert rate.rate(20) == pytest.approx(2.0)
    assert rate.eta_seconds(20) == pytest.approx(40.0)
    assert rate.describe(20) == "2 step/s, ETA 40 s"
    clock.now += 45.0
    assert rate.describe(100) == "1.8 step/s, ETA 0 s"  # 90 steps in 50 s


def _md(text: str) -> dict:
    return {"cell_type": "markdown", "source": text, "metadata": {}}


def _code(text: str, *tags: str) -> dict:
    return {"cell_type": "code", "source": text, "metadata": {"tags": list(tags)}}


def test_cell_stage_names_follow_headings() -> None:
    cells = [_md("# Title\nintro"), _code("a = 1", "parameters"), _code("a = 2", "injected-parameters"),
             _code("import json\nrun = open_run()"), _md("## (a) Data\nsome words"), _code("data = load()"),
             _code("print(data)"), _md("no heading here"), _code(["x = compute(\n", "  1)\n"])]
    assert cell_stage_names(cells) == {1: "parameters", 2: "injected parameters", 3: "set-up", 5: "(a) Data",
                                       6: "print(data)", 8: "x = compute("}


def test_training_progress_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Two epochs of two steps: a line at each epoch end with that step's loss and the epoch mean."""
    from irkit.train.clip import TrainingProgress

    progress = TrainingProgress(epochs=2, every_s=1e9)
    with caplog.at_level(logging.INFO):
        for epoch, losses in enumerate(([3.0, 1.0], [0.5, 0.25])):
            progress.start_epoch(epoch, steps_per_epoch=2)
            for loss in losses:
                progress.step(torch.tensor(loss))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("train epoch 1/2 step 2/2: loss 1.0000 (epoch mean 2.0000), ")
    assert lines[1].startswith("train epoch 2/2 step 2/2: loss 0.2500 (epoch mean 0.3750), ")
    assert lines[1].endswith("ETA 0 s") and "step/s" in lines[0]


def test_loop_log_lines_carry_rate_and_eta(tmp_path: Path) -> None:
    from irkit.runs import RunFolder
    from irkit.train.loop import train

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [torch.ones(4, 2)] * 2
    run = RunFolder.create(tmp_path, "run", {"kind": "test"})
    try:
        train(model, lambda batch: model(batch).pow(2).mean(), optimizer, lambda epoch: batches, run, max_steps=4,
              log_every=2, progress=False)
    finally:
        run.close()
    logged = [line for line in (tmp_path / "run" / "out.log").read_text().splitlines() if "| step " in line]
    assert [line.split("| ", 2)[2].split(" epoch")[0] for line in logged] == ["step 2/4", "step 4/4"]
    assert logged[0].split(", ")[-1].startswith("ETA ") and " step/s" in logged[0]
    assert logged[1].endswith("ETA 0 s")


def test_open_clip_logging_set_up_is_undone_placeholders_included() -> None:
    """open_clip_train's setup_logging turns placeholder loggers (``torch._subclasses``) into INFO
    loggers; after training they must be NOTSET again, so torch's ``FakeTensor cache stats``
    (logged at INFO at process exit) stays silent. Run in a fresh process to see the exit."""
    code = (
        "import logging, torch\n"
        "from open_clip_train.logger import setup_logging\n"
        "from irkit.train.clip import restored_logging\n"
        "assert isinstance(logging.root.manager.loggerDict.get('torch._subclasses'), logging.PlaceHolder)\n"
        "with restored_logging():\n"
        "    setup_logging(None, logging.INFO)\n"
        "    assert logging.getLogger('torch._subclasses').level == logging.INFO\n"
        "assert logging.getLogger('torch._subclasses').level == logging.NOTSET\n"
        "assert logging.getLogger('torch._subclasses.fake_tensor').getEffectiveLevel() > logging.INFO\n"
        "assert not logging.getLogger('irkit').isEnabledFor(logging.INFO)\n"
        "import irkit.embeddings\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "FakeTensor" not in done.stderr and "cache_hits" not in done.stderr, done.stderr
