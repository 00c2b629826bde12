"""phi: the textual-inversion network of SEARLE and LinCIR (docs/methods.md §B, §C).

Linear(d, 4d) -> GELU -> Dropout(0.5) -> Linear(4d, 4d) -> GELU -> Dropout(0.5) -> Linear(4d, w)

Input: an unnormalised joint-space embedding [B, d] (image for SEARLE, image or text for
LinCIR). Output: one pseudo-word token [B, w] for the text tower's token embedding space.
The state dict keys are ``layers.{0,3,6}.{weight,bias}`` as in the published checkpoints,
which store them under the key ``"Phi"`` (``{"epoch": n, "Phi": state_dict}``); irkit's
trainer (:mod:`irkit.train.loop`) stores them under ``"model"``.
"""

from __future__ import annotations

import pathlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from irkit.errors import InputError

CHECKPOINT_KEY = "Phi"
#: Where :mod:`irkit.train.loop` checkpoints keep the weights.
LOOP_CHECKPOINT_KEY = "model"
_LINEAR_KEYS = ("layers.0", "layers.3", "layers.6")


class Phi(nn.Module):
    """Image/text embedding [B, d] -> pseudo token [B, w]."""

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int | None = None, dropout: float = 0.5) -> None:
        super().__init__()
        hidden_dim = 4 * input_dim if hidden_dim is None else hidden_dim
        self.input_dim, self.hidden_dim, self.output_dim = input_dim, hidden_dim, output_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, d] -> [B, w]."""
        return self.layers(x)

    def checkpoint_state(self, **extra: Any) -> dict[str, Any]:
        """The published checkpoint layout: ``{"Phi": state_dict, **extra}`` (extra: plain values)."""
        return {CHECKPOINT_KEY: self.state_dict(), **extra}

    def load_phi_state(self, state: Mapping[str, torch.Tensor], source: Path | str | None = None) -> None:
        """Load a phi state dict, checking every shape first (one clear error for a wrong width)."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise InputError(
                f"not a phi state dict: missing keys {missing}, unexpected keys {unexpected}; "
                f"expected keys {sorted(own)}",
                path=source,
            )
        mismatched = [f"{k}: expected {tuple(own[k].shape)}, found {tuple(state[k].shape)}"
                      for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        if mismatched:
            raise InputError(
                f"phi checkpoint does not fit this model (phi input d={self.input_dim}, hidden {self.hidden_dim}, "
                f"output w={self.output_dim}); shape mismatch: " + "; ".join(mismatched)
                + ". Was it trained for another CLIP backbone?",
                path=source,
            )
        self.load_state_dict(state)

    @classmethod
    def from_checkpoint(cls, path: Path | str, input_dim: int, output_dim: int, dropout: float = 0.5) -> "Phi":
        """Load a phi checkpoint: the published SEARLE/LinCIR format (``{"Phi": state_dict, ...}``),
        irkit's trainer checkpoints (``{"model": state_dict, "extra": ...}``), or a bare state
        dict. Loaded with ``weights_only=True``; returned in eval mode on CPU.
        """
        from irkit.runs import load_checkpoint

        # SEARLE's full training checkpoints also hold 'training_path', a pathlib path: admit
        # those path classes (plain constructors of a path from strings) and nothing else.
        with torch.serialization.safe_globals([pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
                                               pathlib.PureWindowsPath]):
            checkpoint = load_checkpoint(path)
        if isinstance(checkpoint, Mapping) and CHECKPOINT_KEY in checkpoint:
            state = checkpoint[CHECKPOINT_KEY]
        elif isinstance(checkpoint, Mapping) and LOOP_CHECKPOINT_KEY in checkpoint:
            state = checkpoint[LOOP_CHECKPOINT_KEY]
        elif isinstance(checkpoint, Mapping) and any(str(k).startswith("layers.") for k in checkpoint):
            state = checkpoint
        else:
            keys = sorted(map(str, checkpoint)) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise InputError(
                f"not a phi checkpoint: expected a dict with key '{CHECKPOINT_KEY}' (or '{LOOP_CHECKPOINT_KEY}') holding "
                f"{[k + '.weight' for k in _LINEAR_KEYS]}, found {keys}",
                path=path,
            )
        if not isinstance(state, Mapping):
            raise InputError(f"phi weights are a {type(state).__name__}, expected a state dict", path=path)
        phi = cls(input_dim, output_dim, dropout=dropout)
        phi.load_phi_state(state, source=path)
        return phi.eval()
