"""Vision projector: a residual MLP on image embeddings (docs/methods.md §E).

4 blocks of ``x + Dense(16D, D)(GELU(Dense(D, 16D)(x)))`` on the image embedding only, applied
to query (reference) and gallery image embeddings alike. The published fork re-initialised
it randomly on every call and never trained it; irkit's is a trainable module saved inside
the fusion model's checkpoint. ``zero_init=True`` (irkit's default) starts it as the
identity so switching it on cannot hurt an untrained model; ``zero_init=False`` is the
published random initialisation (which, kept frozen, reproduces the published set-up
deterministically from a seed).
"""

from __future__ import annotations

import torch
from torch import nn

from irkit.models.layers import ResidualMlpBlock


class VisionProjector(nn.Module):
    """``[..., D] -> [..., D]``: ``depth`` residual MLP blocks of hidden width ``ratio * D``."""

    def __init__(self, dim: int, depth: int = 4, ratio: int = 16, act: str = "gelu", zero_init: bool = True) -> None:
        super().__init__()
        self.dim, self.depth, self.ratio = dim, depth, ratio
        self.blocks = nn.Sequential(*[ResidualMlpBlock(dim, ratio * dim, act=act, zero_init=zero_init)
                                      for _ in range(depth)])

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        return self.blocks(image_embeddings)
