"""CLIP training through open_clip_train: run folder layout, refusal to overwrite, exact resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from irkit.errors import InputError
from irkit.train.clip import ClipTrainConfig, train_clip

# ``python -c KILL_AT_EPOCH_MAIN E ARGS...`` = ``python -m irkit ARGS...`` whose training process
# SIGKILLs itself when open_clip_train starts (0-based) epoch E, i.e. right after epoch_E.pt was
# written. The hook lives only in this test's subprocess, not in irkit.
KILL_AT_EPOCH_MAIN = """
import os, runpy, signal, sys
import open_clip_train.main as oct_main

kill_epoch = int(sys.argv.pop(1))
original_train_one_epoch = oct_main.train_one_epoch


def train_one_epoch(model, data, loss, epoch, *args, **kwargs):
    if epoch == kill_epoch:
        os.kill(os.getpid(), signal.SIGKILL)
    return original_train_one_epoch(model, data, loss, epoch, *args, **kwargs)


oct_main.train_one_epoch = train_one_epoch  # irkit's per-epoch wrapper then calls this one
runpy.run_module("irkit", run_name="__main__", alter_sys=True)
"""

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def _make_csv(folder: Path, n: int = 24) -> Path:
    """Wide and tall coloured boxes with captions naming colour and shape."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["filepath\ttitle"]
    names = list(COLOURS)
    for i in range(n):
        colour = names[i % len(names)]
        wide = (i // len(names)) % 2 == 0
        size = (48, 24) if wide else (20, 44)
        image = Image.new("RGB", size, COLOURS[colour])
        path = folder / f"img_{i:03d}.jpg"
        image.save(path, quality=90)
        rows.append(f"{path}\ta {colour} {'wide' if wide else 'tall'} box")
    csv_path = folder / "train.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def _argv(csv_path: Path, log_dir: Path, name: str, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "irkit", "train", "clip", "--train-csv", str(csv_path),
            "--epochs", "2", "--batch-size", "8", "--workers", "0", "--lr", "1e-3", "--warmup", "2",
            "--log-dir", str(log_dir), "--name", name, *extra]


def _killed_at_epoch(argv: list[str], epoch: int) -> list[str]:
    """``argv`` (a ``python -m irkit ...`` command) run under :data:`KILL_AT_EPOCH_MAIN`."""
    assert argv[1:3] == ["-m", "irkit"]
    return [argv[0], "-c", KILL_AT_EPOCH_MAIN, str(epoch), *argv[3:]]


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env={**os.environ, "IRKIT_NUM_THREADS": "1", **env},
                          capture_output=True, text=True, timeout=600)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path) -> None:
    csv_path = _make_csv(tmp_path / "data")
    log_dir = tmp_path / "log"

    full = _run(_argv(csv_path, log_dir, "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    run = log_dir / "full"
    for item in ("out.log", "params.txt", "checkpoints", "tensorboard",
                 "checkpoints/epoch_1.pt", "checkpoints/epoch_2.pt"):
        assert (run / item).exists(), item
    assert any((run / "tensorboard").iterdir())

    killed = _run(_killed_at_epoch(_argv(csv_path, log_dir, "resumed"), epoch=1))
    assert killed.returncode == -signal.SIGKILL
    assert (log_dir / "resumed" / "checkpoints" / "epoch_1.pt").is_file()
    assert not (log_dir / "resumed" / "checkpoints" / "epoch_2.pt").exists()

    resumed = _run(_argv(csv_path, log_dir, "resumed", ["--resume", "latest"]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = _weights(run / "checkpoints" / "epoch_2.pt")
    actual = _weights(log_dir / "resumed" / "checkpoints" / "epoch_2.pt")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    # The first epoch must have changed the weights (otherwise equality proves nothing).
    first = _weights(run / "checkpoints" / "epoch_1.pt")
    assert not torch.equal(first["visual.conv1.weight"], expected["visual.conv1.weight"])


def test_existing_run_folder_is_never_overwritten(tmp_path: Path) -> None:
    csv_path = _make_csv(tmp_path / "data", n=8)
    (tmp_path / "log" / "taken").mkdir(parents=True)
    with pytest.raises(InputError, match="already exists"):
        train_clip(ClipTrainConfig(train_csv=csv_path, log_dir=tmp_path / "log", name="taken"))


def test_wrong_csv_separator_is_explained_before_training(tmp_path: Path) -> None:
    csv_path = _make_csv(tmp_path / "data", n=4)
    comma_csv = tmp_path / "comma.csv"
    comma_csv.write_text(csv_path.read_text().replace("\t", ","))
    with pytest.raises(InputError) as err:
        train_clip(ClipTrainConfig(train_csv=comma_csv, log_dir=tmp_path / "log", name="x"))
    assert str(comma_csv) in str(err.value)
    assert not (tmp_path / "log" / "x").exists()


def test_missing_pretrained_checkpoint_is_reported(tmp_path: Path) -> None:
    csv_path = _make_csv(tmp_path / "data", n=4)
    with pytest.raises(InputError, match="not found"):
        train_clip(ClipTrainConfig(train_csv=csv_path, log_dir=tmp_path / "log", name="y",
                                   pretrained=str(tmp_path / "nope.pt")))


@pytest.mark.parametrize("scheduler", ["cosine", "const"])
def test_open_clip_train_parses_the_argv(tmp_path: Path, scheduler: str) -> None:
    """Every flag irkit passes is one open_clip_train's own parser accepts, with the values meant."""
    from open_clip_train.params import parse_args

    from irkit.train.clip import open_clip_argv, resolved_config

    config = resolved_config(ClipTrainConfig(train_csv=tmp_path / "train.csv", lr_scheduler=scheduler, epochs=3,
                                      log_dir=tmp_path, name="run"))
    args = parse_args(open_clip_argv(config))
    assert args.lr_scheduler == scheduler and args.epochs == 3 and args.model == "irkit-tiny"
    assert (args.lr, args.wd, args.warmup, args.batch_size) == (1e-3, 0.1, 50, 128)  # from-scratch recipe
    assert args.image_resize_mode == "longest"  # square padding at train time
