"""Reusable layers for the small heads irkit trains on frozen CLIP features.

In the spirit of ``timm.layers``: each layer is a plain ``nn.Module`` with explicit sizes,
so the fusion model (MagicLens, docs/methods.md §D), the vision projector (§E) and the
re-ranking cross-encoder (§G) are assembled from the same parts.

Shapes: ``B`` batch, ``T`` query tokens, ``S`` key/value tokens, ``D`` model width.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (``relu`` or ``gelu``)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """LeCun-normal init (truncated normal, variance 1/fan_in), Flax's default kernel init."""
    fan_in = weight.shape[1] if weight.ndim > 1 else weight.shape[0]
    # 0.8796... is the std of a unit normal truncated to [-2, 2]; dividing keeps variance 1/fan_in.
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def init_linear_lecun(module: nn.Module) -> None:
    """Apply LeCun-normal weights and zero biases to every ``nn.Linear`` inside ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            lecun_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class Mlp(nn.Module):
    """Linear(in, hidden) -> activation -> dropout -> Linear(hidden, out)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: Optional[int] = None,
                 act: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = make_activation(act)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class ResidualMlpBlock(nn.Module):
    """``x + fc2(act(fc1(x)))``: one block of the vision projector (docs/methods.md §E).

    ``zero_init`` starts the block as the identity (fc2 weights and bias zero), so a freshly
    added projector does not move the embeddings until it is trained.
    """

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu", zero_init: bool = False) -> None:
        super().__init__()
        self.mlp = Mlp(dim, hidden_dim, dim, act=act)
        if zero_init:
            nn.init.zeros_(self.mlp.fc2.weight)
            nn.init.zeros_(self.mlp.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class Attention(nn.Module):
    """Multi-head dot-product attention with separate query and key/value inputs.

    ``hidden_dim`` is the total q/k/v width (``num_heads`` x head width), ``dim`` the
    input/output width of the query side, ``kv_dim`` that of the key/value side.
    Options used by MagicLens (docs/methods.md §D): ``per_dim_scale`` (the pooler's learned
    per-channel query scale ``1.442695041 / sqrt(head width) * softplus(raw)``, the raw value
    initialised to ``per_dim_scale_init``: 1.0 as published, 0.0 gives exactly 1/sqrt(head width))
    and ``logit_cap`` (``cap * tanh(logits / cap)``; MagicLens caps at 50 in every attention).
    """

    def __init__(self, dim: int, num_heads: int, hidden_dim: Optional[int] = None,
                 kv_dim: Optional[int] = None, bias: bool = True, per_dim_scale: bool = False,
                 logit_cap: Optional[float] = None, dropout: float = 0.0,
                 per_dim_scale_init: float = 1.0) -> None:
        super().__init__()
        hidden_dim = hidden_dim or dim
        if hidden_dim % num_heads:
            raise ValueError(f"attention width {hidden_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        kv_dim = kv_dim or dim
        self.q = nn.Linear(dim, hidden_dim, bias=bias)
        self.k = nn.Linear(kv_dim, hidden_dim, bias=bias)
        self.v = nn.Linear(kv_dim, hidden_dim, bias=bias)
        self.proj = nn.Linear(hidden_dim, dim, bias=bias)
        self.per_dim_scale = (nn.Parameter(torch.full((self.head_dim,), float(per_dim_scale_init)))
                              if per_dim_scale else None)
        self.logit_cap = logit_cap
        self.attn_drop = nn.Dropout(dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # [B, N, L, H]

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``context`` [B, S, kv_dim] -> two [B, heads, S, head_dim] tensors.

        Computing them once lets many queries attend to the same context (re-ranking).
        """
        return self._split_heads(self.k(context)), self._split_heads(self.v(context))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None,
                kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """``x`` [B, T, D] attends to ``context`` [B, S, kv_dim] (default: ``x``) -> [B, T, D].

        ``kv``: precomputed :meth:`project_kv` output used instead of ``context``.
        ``key_padding_mask`` [B, S] is True where a key must be ignored.
        """
        q = self._split_heads(self.q(x))
        k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        if self.per_dim_scale is not None:
            # 1.442695041 = 1 / softplus(0): a raw value of 0 scales by exactly 1/sqrt(head_dim).
            q = q * (1.442695041 / math.sqrt(self.head_dim)) * F.softplus(self.per_dim_scale)
        else:
            q = q * self.head_dim ** -0.5
        logits = q @ k.transpose(-2, -1)  # [B, N, T, S]
        if self.logit_cap is not None:
            logits = self.logit_cap * torch.tanh(logits / self.logit_cap)
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        weights = self.attn_drop(logits.softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-LN transformer block, optionally with cross-attention to a context sequence.

    ``x = x + attn(LN(x))``; with ``cross_attention``: ``x = x + xattn(LN(x), LN(context))``;
    then ``x = x + Mlp(LN(x))`` with hidden width ``mlp_ratio * dim``. MagicLens's layer is
    the self-attention-only form with a ReLU FFN of 4D and ``logit_cap=50`` (docs/methods.md §D).
    ``logit_cap`` applies to the self-attention (and cross-attention) logits.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, act: str = "relu",
                 dropout: float = 0.0, cross_attention: bool = False, context_dim: Optional[int] = None,
                 eps: float = 1e-6, logit_cap: Optional[float] = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, dropout=dropout, logit_cap=logit_cap)
        self.cross_attention = cross_attention
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim, eps=eps)
            self.norm_context = nn.LayerNorm(context_dim or dim, eps=eps)
            self.cross_attn = Attention(dim, num_heads, kv_dim=context_dim or dim, dropout=dropout,
                                        logit_cap=logit_cap)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, act=act, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values of ``context`` [B, S, C] (reusable across queries)."""
        return self.cross_attn.project_kv(self.norm_context(context))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_padding_mask: Optional[torch.Tensor] = None,
                context_kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """``x`` [B, T, D] (and ``context`` [B, S, C], or its :meth:`context_kv`, with
        cross-attention) -> [B, T, D]."""
        x = x + self.drop(self.attn(self.norm1(x)))
        if self.cross_attention:
            if context_kv is None:
                if context is None:
                    raise ValueError("this block has cross-attention: pass a context [B, S, C] or its context_kv")
                context_kv = self.context_kv(context)
            x = x + self.drop(self.cross_attn(self.norm_cross(x), kv=context_kv,
                                              key_padding_mask=context_padding_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class AttentionPool(nn.Module):
    """Attention pooling with learnable query tokens (MagicLens's token pooling layer).

    ``num_queries`` learnable queries attend to the input tokens (inner width
    ``hidden_dim``, default 4D as in MagicLens; per-dim query scale, raw value initialised to
    ``per_dim_scale_init``; logits capped at 50), then a LayerNorm. The input is not normalised
    and carries no positions, so the output
    for a sequence of identical tokens depends only on that token, not on the length.
    """

    def __init__(self, dim: int, num_heads: int, num_queries: int = 1, hidden_dim: Optional[int] = None,
                 per_dim_scale: bool = True, logit_cap: Optional[float] = 50.0, eps: float = 1e-6,
                 per_dim_scale_init: float = 1.0) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.empty(num_queries, dim))
        lecun_normal_(self.query)
        self.attn = Attention(dim, num_heads, hidden_dim=hidden_dim or 4 * dim,
                              per_dim_scale=per_dim_scale, logit_cap=logit_cap,
                              per_dim_scale_init=per_dim_scale_init)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, tokens: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``tokens`` [B, S, D] -> [B, num_queries, D]."""
        query = self.query.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.norm(self.attn(query, tokens, key_padding_mask=key_padding_mask))
