"""Stage-II cross-encoder for candidate re-ranking (methods.md §G).

Scores a (reference, text, candidate) triplet jointly: two query tokens (the reference
image embedding and the text embedding, each plus a learned type embedding) pass through
pre-LN transformer blocks that self-attend and cross-attend to the candidate's tokens
(its global image embedding followed by its patch tokens, in the joint embedding space);
the pooled query tokens give one scalar score.

The score adds a scaled cosine prior, ``prior_scale * cos(normalise(ref + text), candidate)``
(the image+text-sum baseline), to the learned term, whose last layer starts at zero: an
untrained re-ranker therefore orders candidates like that baseline, and training moves
it from there.

Shapes: ``B`` pairs, ``D`` joint embedding width, ``P`` patch tokens, ``C`` token width.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from irkit.errors import InputError
from irkit.models.layers import Mlp, TransformerBlock, init_linear_lecun


@dataclass
class RerankerConfig:
    """Sizes of a :class:`CrossEncoderReranker`."""

    embed_dim: int                 # D: joint embedding width of ref / text / candidate embeddings
    token_dim: int                 # C: width of the candidate patch tokens
    depth: int = 2
    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    init_prior_scale: float = 10.0  # initial weight of the cosine prior (learned)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RerankerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown re-ranker config keys {unknown}; expected some of {sorted(known)}",
                             field="model_config")
        return cls(**values)


class CrossEncoderReranker(nn.Module):
    """(reference [B, D], text [B, D], candidate [B, D] + patch tokens [B, P, C]) -> score [B]."""

    def __init__(self, config: RerankerConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        if dim % config.num_heads:
            raise InputError(f"embed_dim {dim} is not divisible by num_heads {config.num_heads}",
                             field="num_heads")
        self.config = config
        self.type_embeddings = nn.Parameter(torch.zeros(3, dim))  # reference, text, candidate
        self.token_in = nn.Linear(config.token_dim, dim)
        self.blocks = nn.ModuleList([
            TransformerBlock(dim, config.num_heads, mlp_ratio=config.mlp_ratio, act="gelu",
                             dropout=config.dropout, cross_attention=True)
            for _ in range(config.depth)
        ])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = Mlp(dim, dim, 1, act="gelu")
        init_linear_lecun(self)
        nn.init.normal_(self.type_embeddings, std=0.02)
        nn.init.zeros_(self.head.fc2.weight)
        nn.init.zeros_(self.head.fc2.bias)
        self.log_prior_scale = nn.Parameter(torch.tensor(math.log(config.init_prior_scale)))

    def forward_features(self, reference: torch.Tensor, text: torch.Tensor, candidate: torch.Tensor,
                         candidate_tokens: torch.Tensor) -> torch.Tensor:
        """Encoded query tokens [B, 2, D] after attending to the candidate's tokens."""
        scale = math.sqrt(self.config.embed_dim)  # unit vectors -> per-channel magnitude ~1
        queries = torch.stack([F.normalize(reference, dim=-1), F.normalize(text, dim=-1)], dim=1) * scale
        queries = queries + self.type_embeddings[:2]
        context = torch.cat([F.normalize(candidate, dim=-1)[:, None] * scale,
                             self.token_in(candidate_tokens.to(queries.dtype))], dim=1)
        context = context + self.type_embeddings[2]
        for block in self.blocks:
            queries = block(queries, context=context)
        return queries

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoded query tokens [B, 2, D] -> learned score term [B]."""
        return self.head(self.norm(tokens).mean(dim=1))[:, 0]

    def prior(self, reference: torch.Tensor, text: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """Scaled cosine between normalise(ref) + normalise(text) and the candidate -> [B]."""
        query = F.normalize(F.normalize(reference, dim=-1) + F.normalize(text, dim=-1), dim=-1)
        return self.log_prior_scale.exp() * (query * F.normalize(candidate, dim=-1)).sum(-1)

    def forward(self, reference: torch.Tensor, text: torch.Tensor, candidate: torch.Tensor,
                candidate_tokens: torch.Tensor) -> torch.Tensor:
        """One score per (reference, text, candidate) row -> [B]."""
        tokens = self.forward_features(reference, text, candidate, candidate_tokens)
        return self.forward_head(tokens) + self.prior(reference, text, candidate)

    def score_matrix(self, reference: torch.Tensor, text: torch.Tensor, candidates: torch.Tensor,
                     candidate_tokens: torch.Tensor) -> torch.Tensor:
        """Every query against every candidate: [B, D] x [N, D] (+ [N, P, C]) -> scores [B, N]."""
        num_queries, num_candidates = reference.shape[0], candidates.shape[0]
        scores = self(
            reference.repeat_interleave(num_candidates, dim=0),
            text.repeat_interleave(num_candidates, dim=0),
            candidates.repeat(num_queries, 1),
            candidate_tokens.repeat(num_queries, 1, 1),
        )
        return scores.view(num_queries, num_candidates)
