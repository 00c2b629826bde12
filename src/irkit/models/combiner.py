"""CLIP4Cir Combiner (docs/methods.md §F), with the published structure and parameter names.

Image and text branches ``Linear(d, P) + ReLU + Dropout(0.5)``; their concatenation
(text first, as published) [2P] feeds ``Linear(2P, H) + ReLU + Dropout(0.5) -> Linear(H, d)``
and a dynamic scalar ``lam = Sigmoid(Linear(H, 1)(Dropout(ReLU(Linear(2P, H)))))``;
``output = normalise(out + lam * text + (1 - lam) * image)``;
``logits = 100 * output . normalise(target)^T``, trained with cross-entropy.

Module names match the published code (``text_projection_layer``, ``image_projection_layer``,
``combiner_layer``, ``output_layer``, ``dynamic_scalar.{0,3}``), so a published Combiner state
dict loads unchanged (:func:`load_published_combiner` reads the published file). Published sizes are P 2560 / H 5120 for CLIP RN50x4 (d 640); irkit
scales them with the backbone (``P = 4d``, ``H = 8d`` by default) and takes explicit sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from irkit.errors import InputError
from irkit.models.config import HeadConfig

PUBLISHED_PROJECTION_DIM = 2560
PUBLISHED_HIDDEN_DIM = 5120


@dataclass
class CombinerConfig(HeadConfig):
    """Sizes of a :class:`Combiner`: CLIP width ``d``, projection ``P``, hidden ``H``."""
    config_name: ClassVar[str] = "combiner"

    clip_feature_dim: int
    projection_dim: int
    hidden_dim: int
    dropout: float = 0.5
    logit_scale: float = 100.0

    @classmethod
    def scaled(cls, clip_feature_dim: int, projection_dim: Optional[int] = None,
               hidden_dim: Optional[int] = None, published: bool = False) -> "CombinerConfig":
        """Sizes for a backbone of width d: published P/H with ``published``, else 4d / 8d."""
        if published:
            default_p, default_h = PUBLISHED_PROJECTION_DIM, PUBLISHED_HIDDEN_DIM
        else:
            default_p, default_h = 4 * clip_feature_dim, 8 * clip_feature_dim
        return cls(clip_feature_dim, projection_dim or default_p, hidden_dim or default_h)


class Combiner(nn.Module):
    """Fuses [B, d] reference-image and [B, d] caption features into a [B, d] unit query."""

    def __init__(self, config: CombinerConfig) -> None:
        super().__init__()
        self.config = config
        d, p, h, drop = config.clip_feature_dim, config.projection_dim, config.hidden_dim, config.dropout
        self.text_projection_layer = nn.Linear(d, p)
        self.image_projection_layer = nn.Linear(d, p)
        self.dropout1 = nn.Dropout(drop)
        self.dropout2 = nn.Dropout(drop)
        self.combiner_layer = nn.Linear(2 * p, h)
        self.output_layer = nn.Linear(h, d)
        self.dropout3 = nn.Dropout(drop)
        self.dynamic_scalar = nn.Sequential(nn.Linear(2 * p, h), nn.ReLU(), nn.Dropout(drop),
                                            nn.Linear(h, 1), nn.Sigmoid())
        self.logit_scale = config.logit_scale

    def forward_features(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Projected, concatenated branches [B, 2P] (text first)."""
        text_projected = self.dropout1(F.relu(self.text_projection_layer(text_features)))
        image_projected = self.dropout2(F.relu(self.image_projection_layer(image_features)))
        return torch.cat((text_projected, image_projected), dim=-1)

    def combine_features(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """[B, d] image + [B, d] text -> L2-normalised [B, d] query."""
        raw_combined = self.forward_features(image_features, text_features)
        combined = self.dropout3(F.relu(self.combiner_layer(raw_combined)))
        lam = self.dynamic_scalar(raw_combined)  # [B, 1]
        output = self.output_layer(combined) + lam * text_features + (1 - lam) * image_features
        return F.normalize(output, dim=-1)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                target_features: torch.Tensor) -> torch.Tensor:
        """Logits [B, N] = ``logit_scale`` x query . normalise(target [N, d])^T."""
        query = self.combine_features(image_features, text_features)
        return self.logit_scale * query @ F.normalize(target_features, dim=-1).T


#: Key of the published CLIP4Cir checkpoint (``{"epoch": n, "Combiner": state_dict}``).
PUBLISHED_CHECKPOINT_KEY = "Combiner"


def load_published_combiner(path: str | Path) -> Combiner:
    """A published CLIP4Cir Combiner file (``{"epoch", "Combiner": state_dict}`` or the bare
    state dict, read with ``weights_only=True``) -> :class:`Combiner` in eval mode, sizes
    (d, P, H) taken from the weights. Anything else is an :class:`InputError` naming the file."""
    from irkit.runs import load_checkpoint

    checkpoint = load_checkpoint(path)
    state = checkpoint.get(PUBLISHED_CHECKPOINT_KEY, checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    weight = state.get("text_projection_layer.weight") if isinstance(state, Mapping) else None
    hidden = state.get("combiner_layer.weight") if isinstance(state, Mapping) else None
    if not isinstance(weight, torch.Tensor) or not isinstance(hidden, torch.Tensor):
        found = sorted(map(str, state))[:6] if isinstance(state, Mapping) else type(state).__name__
        raise InputError(f"not a CLIP4Cir Combiner checkpoint: expected '{PUBLISHED_CHECKPOINT_KEY}' (or a bare state "
                         f"dict) with text_projection_layer / combiner_layer weights, found {found}", path=path)
    config = CombinerConfig(clip_feature_dim=int(weight.shape[1]), projection_dim=int(weight.shape[0]),
                            hidden_dim=int(hidden.shape[0]))
    model = Combiner(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"the Combiner weights do not fit d={config.clip_feature_dim}, P={config.projection_dim}, "
                         f"H={config.hidden_dim} ({str(e).splitlines()[0]})", path=path) from None
    return model.eval()
