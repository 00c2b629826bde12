"""The generic step-based trainer: logging, validation, best checkpoint, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from irkit.errors import InputError
from irkit.runs import RunFolder, load_checkpoint
from irkit.train.loop import BEST_NAME, LATEST_NAME, train

NUM_SAMPLES, BATCH = 20, 6  # 3 batches per epoch (last partial batch dropped)


class _Data:
    """A tiny regression set whose batch order depends only on (seed, epoch)."""

    def __init__(self, seed: int = 3) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(NUM_SAMPLES, 4, generator=g)
        self.y = self.x @ torch.randn(4, 1, generator=g) + 0.1
        self.seed = seed

    def __call__(self, epoch: int):
        order = torch.randperm(NUM_SAMPLES, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        for start in range(0, NUM_SAMPLES - BATCH + 1, BATCH):
            idx = order[start:start + BATCH]
            yield self.x[idx], self.y[idx]


def _model() -> nn.Module:
    torch.manual_seed(0)
    # Dropout makes the result depend on the global RNG, which resume must restore.
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))


class _Crash(Exception):
    pass


def _run(tmp_path, name, max_steps, crash_at=None, resume=None, run=None, val_every=2):
    data = _Data()
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    calls = {"n": 0}

    def loss_fn(batch):
        calls["n"] += 1
        x, y = batch
        if crash_at is not None and calls["n"] == crash_at:
            raise _Crash()
        loss = nn.functional.mse_loss(model(x), y)
        return loss, {"twice": 2 * loss.item()}

    def val_fn(m):
        x, y = data.x, data.y
        return {"neg_mse": -nn.functional.mse_loss(m(x), y).item()}

    run = run or RunFolder.create(tmp_path, name, {"lr": 1e-2})
    result = train(model, loss_fn, optimizer, data, run, max_steps, val_fn=val_fn, val_every=val_every,
                   best_metric="neg_mse", extra_state={"kind": "test"}, resume=resume, seed=7,
                   checkpoint_every=4, log_every=1, progress=False)
    return model, run, result


def test_resume_matches_uninterrupted_run(tmp_path):
    full_model, full_run, full_result = _run(tmp_path, "full", max_steps=11)
    # Interrupted run: crashes while computing step 9; latest.pt is then the step-8 checkpoint,
    # in the middle of epoch 2 (steps 7-9), written right after a validation.
    with pytest.raises(_Crash):
        _run(tmp_path, "cut", max_steps=11, crash_at=9)
    cut_run = RunFolder.open_existing(tmp_path / "cut")
    saved = load_checkpoint(cut_run.checkpoints_dir / LATEST_NAME)
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"]) == (8, 2, 2)
    resumed_model, _, resumed_result = _run(tmp_path, "cut", max_steps=11, resume="latest", run=cut_run)
    assert resumed_result.step == full_result.step == 11
    for (name, a), (_, b) in zip(full_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), name
    # A resumed run keeps the best value seen before the interruption.
    assert resumed_result.best_value == pytest.approx(full_result.best_value)
    full_run.close()
    cut_run.close()


def test_run_folder_contents(tmp_path):
    model, run, result = _run(tmp_path, "contents", max_steps=7)
    files = {p.name for p in run.checkpoints_dir.iterdir()}
    # 3 batches per epoch: epochs 1 and 2 complete within 7 steps.
    assert {"epoch_1.pt", "epoch_2.pt", LATEST_NAME, BEST_NAME} <= files
    latest = load_checkpoint(run.checkpoints_dir / LATEST_NAME)
    assert latest["step"] == 7 and latest["epoch"] == 2 and latest["batch_in_epoch"] == 1
    assert latest["extra"] == {"kind": "test"}
    # Validation at steps 2, 4, 6 and at the end (7).
    records = [json.loads(line) for line in (run.path / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 7]
    best = max(records, key=lambda r: r["neg_mse"])
    best_state = load_checkpoint(run.checkpoints_dir / BEST_NAME)
    assert best_state["step"] == best["step"] == result.best_step
    assert best_state["best"]["value"] == pytest.approx(best["neg_mse"])
    log = (run.path / "out.log").read_text()
    assert "step 7/7" in log and "validation" in log
    assert any(run.tensorboard_dir.iterdir())
    run.close()


def test_errors(tmp_path):
    run = RunFolder.create(tmp_path, "err", {})
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(InputError, match="max_steps"):
        train(model, lambda b: torch.zeros(()), opt, _Data(), run, 0, progress=False)
    with pytest.raises(InputError, match="no training batches"):
        train(model, lambda b: torch.zeros(()), opt, lambda epoch: iter(()), run, 3, progress=False)
    with pytest.raises(InputError, match="not among the validation metrics"):
        train(model, lambda b: nn.functional.mse_loss(model(b[0]), b[1]), opt, _Data(), run, 2,
              val_fn=lambda m: {"a": 1.0}, val_every=1, best_metric="b", progress=False)
    with pytest.raises(InputError, match="resume checkpoint not found"):
        train(model, lambda b: torch.zeros(()), opt, _Data(), run, 2, resume=tmp_path / "nope.pt", progress=False)
    run.close()
