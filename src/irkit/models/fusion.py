"""MagicLens-style fusion of an image embedding and a text embedding (docs/methods.md §D).

Query = (image, instruction): the CLIP image embedding and text embedding (unnormalised,
each [B, D]) are stacked into two tokens [B, 2, D], passed through a 4-layer pre-LN
transformer (FFN 4D, ReLU), pooled by attention with one learnable query token and
L2-normalised -> [B, D]. Targets go through the same model with an empty instruction.
Query texts follow MagicLens's templates (FashionIQ ``" and ".join(captions)``, CIRCO
``find {shared_concept} but {caption}``) through the benchmark's ``query_text`` (:mod:`irkit.benchmarks`).

The layer structure follows the released MagicLens inference code: pre-LN self-attention
and FFN with residuals, attention logits capped as ``50 * tanh(x / 50)`` in every layer,
no position or modality embeddings, and a pooling layer whose attention is 4D wide with a
per-dimension query scale, logits capped at 50 and a LayerNorm on the pooled token.
MagicLens's LayerNorm stores ``scale`` and applies ``1 + scale`` (eps 1e-6); irkit keeps
``nn.LayerNorm`` with ``weight = 1 + scale`` (:mod:`irkit.models.magiclens_checkpoint`
converts), and initialises as published: stored scale 1 (weight 2), raw per-dim scale 1. Optionally a :class:`~irkit.models.projector.VisionProjector`
(docs/methods.md §E) maps image embeddings first, for queries and targets alike; it lives in
the same module, so it is saved in the same checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from irkit.errors import InputError
from irkit.models.config import HeadConfig
from irkit.models.layers import AttentionPool, TransformerBlock, init_linear_lecun
from irkit.models.projector import VisionProjector


#: Initialisation styles of :class:`MagicLensFusion` (``FusionConfig.init``).
FUSION_INITS = ("published", "unit")


@dataclass
class FusionConfig(HeadConfig):
    """Sizes of a :class:`MagicLensFusion` (MagicLens base: D 512, 8 heads; large: D 768, 16 heads)."""
    config_name: ClassVar[str] = "fusion"

    embed_dim: int
    depth: int = 4
    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    projector: bool = False          # include the vision projector (docs/methods.md §E)
    projector_depth: int = 4
    projector_ratio: int = 16
    projector_zero_init: bool = True  # False: the published random initialisation
    projector_trainable: bool = True  # False: frozen at its seeded init (the published set-up)
    projector_style: str = "irkit"   # "published": one residual around the MLPs (§E); absent in old files = irkit
    init_temperature: float = 0.07   # initial contrastive temperature (learned)
    #: attention logit cap of the encoder layers (published: 50); None = irkit's earlier uncapped encoder
    encoder_logit_cap: Optional[float] = 50.0
    #: "published": LayerNorm weight 1 + 1 and raw per-dim scale 1, as MagicLens initialises;
    #: "unit": irkit's earlier initialisation (LayerNorm weight 1, raw per-dim scale 0)
    init: str = "published"


class MagicLensFusion(nn.Module):
    """[B, D] image + [B, D] text embeddings -> [B, D] L2-normalised fused embedding."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        if dim % config.num_heads:
            raise InputError(f"embed_dim {dim} is not divisible by num_heads {config.num_heads}",
                             field="num_heads")
        if config.init not in FUSION_INITS:
            raise InputError(f"unknown fusion init {config.init!r} (expected one of: {', '.join(FUSION_INITS)})",
                             field="init")
        self.config = config
        published = config.init == "published"
        self.blocks = nn.ModuleList([
            TransformerBlock(dim, config.num_heads, mlp_ratio=config.mlp_ratio, act="relu", dropout=config.dropout,
                             logit_cap=config.encoder_logit_cap)
            for _ in range(config.depth)
        ])
        self.pool = AttentionPool(dim, config.num_heads, num_queries=1, hidden_dim=4 * dim,
                                  per_dim_scale_init=1.0 if published else 0.0)
        init_linear_lecun(self.blocks)
        init_linear_lecun(self.pool)
        if published:  # MagicLens's LayerNorm applies 1 + scale with scale initialised to ones
            for module in (self.blocks, self.pool):
                for layer in module.modules():
                    if isinstance(layer, nn.LayerNorm):
                        nn.init.constant_(layer.weight, 2.0)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.projector: Optional[VisionProjector] = None
        if config.projector:
            self.projector = VisionProjector(dim, depth=config.projector_depth, ratio=config.projector_ratio,
                                             zero_init=config.projector_zero_init, style=config.projector_style)
            self.projector.requires_grad_(config.projector_trainable)
        #: run-time switch: evaluate with (True) or without (False) the projector.
        self.use_projector = config.projector

    def project_images(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """The vision projector on [B, D] image embeddings, when present and switched on."""
        if self.projector is not None and self.use_projector:
            return self.projector(image_embeddings)
        return image_embeddings

    def forward_features(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """[B, D] image + [B, D] text -> encoded tokens [B, 2, D]."""
        tokens = torch.stack([self.project_images(image_embeddings), text_embeddings], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoded tokens [B, S, D] -> pooled, L2-normalised [B, D]."""
        return F.normalize(self.pool(tokens)[:, 0], dim=-1)

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """[B, D] image + [B, D] text (unnormalised CLIP embeddings) -> [B, D] L2-normalised."""
        if text_embeddings.shape[0] == 1 and image_embeddings.shape[0] != 1:
            text_embeddings = text_embeddings.expand(image_embeddings.shape[0], -1)
        return self.forward_head(self.forward_features(image_embeddings, text_embeddings))

    def encode_targets(self, image_embeddings: torch.Tensor, empty_text_embedding: torch.Tensor) -> torch.Tensor:
        """Gallery/target side: the same model with the empty instruction's [1, D] text embedding."""
        return self(image_embeddings, empty_text_embedding.reshape(1, -1))
