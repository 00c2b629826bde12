"""Stage-II cross-encoder for candidate re-ranking (docs/methods.md §G).

Scores a (reference, text, candidate) triplet jointly: two query tokens (the reference
image embedding and the text embedding, each plus a learned type embedding) pass through
pre-LN transformer blocks that self-attend and cross-attend to the candidate's tokens
(its global image embedding followed by its patch tokens, in the joint embedding space);
the pooled query tokens give one scalar score.

The score adds a scaled cosine prior, ``prior_scale * cos(normalise(ref + text), candidate)``
(the image+text-sum baseline), to the learned term, whose last layer starts at zero: an
untrained re-ranker therefore orders candidates like that baseline, and training moves
it from there.

The candidate side (its tokens, their LayerNorm and every block's cross-attention keys and
values) does not depend on the query, so it is computed once per candidate
(:meth:`CrossEncoderReranker.candidate_memory`) and shared by all the queries that rank it.

Shapes: ``B`` pairs, ``N`` candidates, ``D`` joint embedding width, ``P`` patch tokens,
``C`` token width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from irkit.errors import InputError
from irkit.models.config import HeadConfig
from irkit.models.layers import Mlp, TransformerBlock, init_linear_lecun

#: Per block, the cross-attention (keys, values) of N candidates, each [N, heads, 1 + P, head_dim].
CandidateMemory = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class RerankerConfig(HeadConfig):
    """Sizes of a :class:`CrossEncoderReranker`."""
    config_name: ClassVar[str] = "re-ranker"

    embed_dim: int                 # D: joint embedding width of ref / text / candidate embeddings
    token_dim: int                 # C: width of the candidate patch tokens
    depth: int = 2
    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    init_prior_scale: float = 10.0  # initial weight of the cosine prior (learned)


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

    def _queries(self, reference: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Query tokens [B, 2, D]: unit reference and text embeddings (scaled to per-channel ~1)."""
        scale = math.sqrt(self.config.embed_dim)
        queries = torch.stack([F.normalize(reference, dim=-1), F.normalize(text, dim=-1)], dim=1) * scale
        return queries + self.type_embeddings[:2]

    def candidate_context(self, candidate: torch.Tensor, candidate_tokens: torch.Tensor) -> torch.Tensor:
        """Candidate tokens [N, 1 + P, D]: its unit global embedding, then its projected patch tokens."""
        scale = math.sqrt(self.config.embed_dim)
        context = torch.cat([F.normalize(candidate, dim=-1)[:, None] * scale,
                             self.token_in(candidate_tokens.to(candidate.dtype))], dim=1)
        return context + self.type_embeddings[2]

    def candidate_memory(self, candidate: torch.Tensor, candidate_tokens: torch.Tensor) -> CandidateMemory:
        """Everything the candidate side contributes, computed once per candidate: the
        cross-attention keys/values of every block, [N, heads, 1 + P, head_dim] each."""
        context = self.candidate_context(candidate, candidate_tokens)
        return [block.context_kv(context) for block in self.blocks]

    def forward_features(self, reference: torch.Tensor, text: torch.Tensor, memory: CandidateMemory,
                         rows: torch.Tensor) -> torch.Tensor:
        """Query tokens [B, 2, D] after attending to candidate ``rows`` [B] of ``memory``."""
        queries = self._queries(reference, text)
        for block, (keys, values) in zip(self.blocks, memory):
            queries = block(queries, context_kv=(keys[rows], values[rows]))
        return queries

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoded query tokens [B, 2, D] -> learned score term [B]."""
        return self.head(self.norm(tokens).mean(dim=1))[:, 0]

    def prior(self, reference: torch.Tensor, text: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """Scaled cosine between normalise(ref) + normalise(text) and the candidate -> [B]."""
        query = F.normalize(F.normalize(reference, dim=-1) + F.normalize(text, dim=-1), dim=-1)
        return self.log_prior_scale.exp() * (query * F.normalize(candidate, dim=-1)).sum(-1)

    def score_pairs(self, reference: torch.Tensor, text: torch.Tensor, candidate: torch.Tensor,
                    memory: CandidateMemory, rows: torch.Tensor) -> torch.Tensor:
        """Scores [B] of pairs (reference[i], text[i], candidate row ``rows[i]``), given the
        candidates' embeddings [N, D] and :meth:`candidate_memory`."""
        tokens = self.forward_features(reference, text, memory, rows)
        return self.forward_head(tokens) + self.prior(reference, text, candidate[rows])

    def forward(self, reference: torch.Tensor, text: torch.Tensor, candidate: torch.Tensor,
                candidate_tokens: torch.Tensor) -> torch.Tensor:
        """One score per (reference [B, D], text [B, D], candidate [B, D] + tokens [B, P, C]) row -> [B]."""
        memory = self.candidate_memory(candidate, candidate_tokens)
        return self.score_pairs(reference, text, candidate, memory, torch.arange(candidate.shape[0]))

    def score_matrix(self, reference: torch.Tensor, text: torch.Tensor, candidates: torch.Tensor,
                     candidate_tokens: torch.Tensor) -> torch.Tensor:
        """Every query against every candidate: [B, D] x [N, D] (+ [N, P, C]) -> scores [B, N].

        The candidate side is computed once per candidate, not once per pair.
        """
        num_queries, num_candidates = reference.shape[0], candidates.shape[0]
        memory = self.candidate_memory(candidates, candidate_tokens)
        rows = torch.arange(num_candidates).repeat(num_queries)
        scores = self.score_pairs(reference.repeat_interleave(num_candidates, dim=0),
                                  text.repeat_interleave(num_candidates, dim=0), candidates, memory, rows)
        return scores.view(num_queries, num_candidates)
