"""phi: published checkpoint format, irkit's trainer format, clear errors for the wrong width."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from irkit.errors import InputError
from irkit.models.phi import Phi

D, W = 16, 12


def _published_sequential(d: int, w: int) -> nn.Sequential:
    """Built independently of irkit: the published SEARLE phi layer stack."""
    return nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(0.5), nn.Linear(4 * d, 4 * d), nn.GELU(),
                         nn.Dropout(0.5), nn.Linear(4 * d, w))


def test_state_dict_keys_are_the_published_ones():
    assert sorted(Phi(D, W).state_dict()) == sorted(
        f"layers.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias"))


def test_published_checkpoint_loads_unchanged_and_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    reference = _published_sequential(D, W).eval()
    path = tmp_path / "phi_best.pt"
    # The published layout: {"epoch": n, "Phi": state_dict} whose keys are "layers.*".
    torch.save({"epoch": 7, "Phi": {f"layers.{k}": v for k, v in reference.state_dict().items()}}, path)
    phi = Phi.from_checkpoint(path, input_dim=D, output_dim=W)
    assert not phi.training
    x = torch.randn(5, D)
    with torch.no_grad():
        assert torch.equal(phi(x), reference(x))


def test_irkit_trainer_checkpoint_loads(tmp_path):
    torch.manual_seed(2)
    source = Phi(D, W)
    path = tmp_path / "best.pt"
    torch.save({"model": source.state_dict(), "extra": {"method": "lincir"}, "step": 3}, path)
    phi = Phi.from_checkpoint(path, D, W)
    x = torch.randn(3, D)
    with torch.no_grad():
        assert torch.equal(phi(x), source.eval()(x))


def test_wrong_width_is_one_clear_error(tmp_path):
    path = tmp_path / "phi.pt"
    torch.save({"Phi": Phi(32, W).state_dict()}, path)
    with pytest.raises(InputError) as info:
        Phi.from_checkpoint(path, input_dim=D, output_dim=W)
    message = str(info.value)
    assert str(path) in message
    assert "layers.0.weight: expected (64, 16), found (128, 32)" in message
    assert "d=16" in message


def test_not_a_phi_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(2)}}, path)
    with pytest.raises(InputError, match="not a phi checkpoint"):
        Phi.from_checkpoint(path, D, W)
    with pytest.raises(InputError, match="checkpoint not found"):
        Phi.from_checkpoint(tmp_path / "missing.pt", D, W)
