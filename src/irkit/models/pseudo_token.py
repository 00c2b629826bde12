"""Pseudo-word tokens in an open_clip text tower (SEARLE / LinCIR textual inversion).

A prompt such as ``"a photo of $ that is red"`` is tokenised as usual; the ``$`` token's
input embedding is then overwritten with a learned or predicted *pseudo token* (a vector
of the text tower's token width w) before the positional embedding, causal transformer,
final LayerNorm, pooling and text projection run exactly as in open_clip 3.3.0's
``CLIP.encode_text`` / ``TextTransformer.forward``.

Two injection modes (docs/methods.md §B, §C):

* ``"first"`` — only the first ``$`` of each prompt is replaced (SEARLE);
* ``"all"``   — every ``$`` is replaced by the same token (LinCIR).

Shapes: token ids [B, L] int64; pseudo tokens [B, w] (or [B, n, w]: the k-th ``$`` of a
prompt gets token k); output [B, d] unnormalised joint-space text features.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Sequence

import torch
from torch import nn

from irkit.errors import InputError

PLACEHOLDER = "$"
InjectionMode = Literal["first", "all"]
_PLACEHOLDER_RE = re.compile(r"\s*\$\s*")


@dataclass
class TextTower:
    """The parts of an open_clip text tower that pseudo-token encoding needs."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Any                      # nn.Parameter [w, d], nn.Linear, or None
    attn_mask: Optional[torch.Tensor]         # causal additive mask [ctx, ctx] or None
    pool_type: str
    eos_token_id: Optional[int]
    padding_mask: Optional[Callable[[torch.Tensor, int, torch.dtype], torch.Tensor]] = None

    @property
    def width(self) -> int:
        """w: the token embedding width (the size of one pseudo token)."""
        return int(self.token_embedding.embedding_dim)

    @property
    def cast_dtype(self) -> torch.dtype:
        return self.transformer.get_cast_dtype()


def text_tower(model: nn.Module) -> TextTower:
    """Locate the text tower of an open_clip model, or raise :class:`InputError`.

    Supported: ``open_clip.CLIP`` (text tower flattened onto the model) and
    ``CustomTextCLIP`` whose ``.text`` is an open_clip ``TextTransformer`` without a CoCa
    class token. Hugging Face text towers (``HFTextEncoder``) have no ``token_embedding``
    and cannot take pseudo tokens this way.
    """
    from open_clip.transformer import TextTransformer

    if isinstance(getattr(model, "token_embedding", None), nn.Embedding) and hasattr(model, "ln_final"):
        return TextTower(
            token_embedding=model.token_embedding,
            positional_embedding=model.positional_embedding,
            transformer=model.transformer,
            ln_final=model.ln_final,
            text_projection=model.text_projection,
            attn_mask=model.attn_mask,
            pool_type=getattr(model, "text_pool_type", "argmax"),
            eos_token_id=getattr(model, "text_eos_id", None),
        )
    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        if text.cls_emb is not None:
            raise InputError(
                "pseudo-token encoding needs a text tower without an appended class token; "
                f"found a CoCa-style TextTransformer (cls_emb) in {type(model).__name__}"
            )
        padding_mask = text._build_additive_mask if text.use_pad_mask else None
        return TextTower(
            token_embedding=text.token_embedding,
            positional_embedding=text.positional_embedding,
            transformer=text.transformer,
            ln_final=text.ln_final,
            text_projection=text.text_projection,
            attn_mask=text.attn_mask,
            pool_type=text.pool_type,
            eos_token_id=getattr(text, "eos_id", None),
            padding_mask=padding_mask,
        )
    found = type(text).__name__ if text is not None else "no token_embedding"
    raise InputError(
        f"pseudo-token encoding needs an open_clip text transformer with a token_embedding; "
        f"found {type(model).__name__} with {found} (e.g. a Hugging Face text tower), "
        "which cannot take pseudo tokens. Expected an open_clip CLIP model or a CustomTextCLIP "
        "with a TextTransformer text tower"
    )


def _encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without start/end/padding tokens."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):  # open_clip SimpleTokenizer
        return list(tokenizer.encode(text))
    hf = getattr(tokenizer, "tokenizer", None)  # open_clip HFTokenizer wraps a transformers tokenizer
    if hf is not None and hasattr(hf, "encode"):
        return list(hf.encode(text, add_special_tokens=False))
    raise InputError(
        f"cannot look up the id of the '{PLACEHOLDER}' token: tokenizer {type(tokenizer).__name__} "
        "has neither an open_clip SimpleTokenizer .encode nor a wrapped Hugging Face tokenizer"
    )


def placeholder_token_id(tokenizer: Any, placeholder: str = PLACEHOLDER) -> int:
    """The single token id of ``placeholder`` in ``tokenizer`` (259 for ``$`` in the CLIP BPE)."""
    ids = _encode_plain(tokenizer, placeholder)
    if len(ids) != 1:
        raise InputError(
            f"tokenizer {type(tokenizer).__name__} splits the placeholder '{placeholder}' into "
            f"{len(ids)} tokens {ids}; pseudo-token encoding needs a tokenizer where it is exactly one token"
        )
    return int(ids[0])


def normalize_placeholders(prompt: str, placeholder: str = PLACEHOLDER) -> str:
    """Surround every ``$`` with single spaces so the BPE keeps it a word of its own.

    (In the CLIP BPE ``"$,"`` is one chunk and would not contain token 259.)
    """
    if placeholder != PLACEHOLDER:
        return re.sub(rf"\s*{re.escape(placeholder)}\s*", f" {placeholder} ", prompt).strip()
    return _PLACEHOLDER_RE.sub(f" {PLACEHOLDER} ", prompt).strip()


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str], placeholder: str = PLACEHOLDER) -> torch.Tensor:
    """Tokenise prompts holding ``$`` -> ids [B, L]; every prompt must keep at least one ``$``.

    Raises :class:`InputError` naming the prompt when it has no ``$`` or when truncation to
    the context length cut every ``$`` off.
    """
    placeholder_id = placeholder_token_id(tokenizer, placeholder)
    for index, prompt in enumerate(prompts):
        if placeholder not in prompt:
            raise InputError(
                f"prompt {index} {prompt!r} has no '{placeholder}' placeholder; expected a prompt such as "
                f"'a photo of {placeholder} that ...' where the pseudo token goes"
            )
    token_ids = tokenizer([normalize_placeholders(p, placeholder) for p in prompts])
    check_placeholders(token_ids, placeholder_id, prompts)
    return token_ids


def check_placeholders(token_ids: torch.Tensor, placeholder_id: int,
                       prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
    """[B] count of placeholder tokens per row; InputError for a row without one."""
    counts = (token_ids == placeholder_id).sum(dim=1)
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        row = missing[0]
        shown = f" {prompts[row]!r}" if prompts is not None else ""
        raise InputError(
            f"prompt {row}{shown} holds no placeholder token (id {placeholder_id}) after tokenisation "
            f"({len(missing)} such prompt(s)); expected one '{PLACEHOLDER}' within the context length"
        )
    return counts


def inject_pseudo_tokens(token_embeddings: torch.Tensor, token_ids: torch.Tensor, pseudo_tokens: torch.Tensor,
                         placeholder_id: int, mode: InjectionMode = "first") -> torch.Tensor:
    """Replace placeholder positions of ``token_embeddings`` [B, L, w] with pseudo tokens.

    ``pseudo_tokens`` [B, w]: ``mode="first"`` replaces the first placeholder of each row,
    ``mode="all"`` every placeholder. [B, n, w]: the k-th placeholder of a row gets token k,
    and each row must hold exactly n placeholders. Differentiable in ``pseudo_tokens``.
    """
    if mode not in ("first", "all"):
        raise InputError(f"injection mode must be 'first' or 'all', got {mode!r}")
    batch, length, width = token_embeddings.shape
    if pseudo_tokens.shape[0] != batch or pseudo_tokens.shape[-1] != width or pseudo_tokens.dim() not in (2, 3):
        raise InputError(
            f"pseudo tokens must have shape [B={batch}, w={width}] or [B={batch}, n, w={width}]; "
            f"got {tuple(pseudo_tokens.shape)}"
        )
    is_placeholder = token_ids == placeholder_id
    counts = check_placeholders(token_ids, placeholder_id)
    occurrence = torch.cumsum(is_placeholder.long(), dim=1) - 1  # k for the k-th placeholder
    pseudo_tokens = pseudo_tokens.to(token_embeddings.dtype)
    if pseudo_tokens.dim() == 2:
        replace = is_placeholder & (occurrence == 0) if mode == "first" else is_placeholder
        values = pseudo_tokens[:, None, :].expand(batch, length, width)
    else:
        n = pseudo_tokens.shape[1]
        if bool((counts != n).any()):
            row = int(torch.nonzero(counts != n)[0])
            raise InputError(
                f"prompt {row} holds {int(counts[row])} placeholders but {n} pseudo tokens were given per prompt"
            )
        replace = is_placeholder
        index = occurrence.clamp(0, n - 1)[..., None].expand(batch, length, width)
        values = torch.gather(pseudo_tokens, 1, index)
    return torch.where(replace[..., None], values, token_embeddings)


def encode_with_pseudo_tokens(model: nn.Module, token_ids: torch.Tensor, pseudo_tokens: torch.Tensor,
                              placeholder_id: int, mode: InjectionMode = "first") -> torch.Tensor:
    """Text features [B, d] of ``token_ids`` [B, L] with pseudo tokens at the ``$`` positions.

    Mirrors open_clip 3.3.0 ``CLIP.encode_text``: token embedding (in the tower's cast
    dtype) -> pseudo-token injection -> + positional embedding -> causal transformer
    (batch-first input; the transformer transposes itself when not batch-first) -> final
    LayerNorm -> pooling by ``text_pool_type`` (EOT argmax for CLIP) -> text projection.
    Unnormalised, like ``encode_text(normalize=False)``.
    """
    tower = text_tower(model)
    device = tower.token_embedding.weight.device
    token_ids = token_ids.to(device)
    pseudo_tokens = pseudo_tokens.to(device)
    cast_dtype = tower.cast_dtype
    length = token_ids.shape[1]
    if length > tower.positional_embedding.shape[0]:
        raise InputError(
            f"token ids are {length} long but the text tower's context length is "
            f"{tower.positional_embedding.shape[0]}"
        )

    x = tower.token_embedding(token_ids).to(cast_dtype)  # [B, L, w]
    x = inject_pseudo_tokens(x, token_ids, pseudo_tokens, placeholder_id, mode)
    attn_mask = tower.attn_mask
    if attn_mask is not None:
        attn_mask = attn_mask[:length, :length]
    if tower.padding_mask is not None:
        pad_mask = tower.padding_mask(token_ids, length, x.dtype)
        attn_mask = pad_mask if attn_mask is None else attn_mask.unsqueeze(0) + pad_mask
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=attn_mask)
    x = tower.ln_final(x)

    from open_clip.transformer import text_global_pool

    x = text_global_pool(x, token_ids, tower.pool_type, eos_token_id=tower.eos_token_id)
    if tower.text_projection is not None:
        if isinstance(tower.text_projection, nn.Linear):
            x = tower.text_projection(x)
        else:
            x = x @ tower.text_projection
    return x


def encode_prompts(model: nn.Module, tokenizer: Any, prompts: Sequence[str], pseudo_tokens: torch.Tensor,
                   mode: InjectionMode = "first") -> torch.Tensor:
    """Tokenise ``prompts`` (each with ``$``) and encode them with ``pseudo_tokens`` -> [B, d]."""
    if len(prompts) != pseudo_tokens.shape[0]:
        raise InputError(f"{len(prompts)} prompts but {pseudo_tokens.shape[0]} pseudo tokens; expected one per prompt")
    token_ids = tokenize_prompts(tokenizer, prompts)
    return encode_with_pseudo_tokens(model, token_ids, pseudo_tokens, placeholder_token_id(tokenizer), mode)


def token_width(model: nn.Module) -> int:
    """w: the width of one pseudo token for ``model``'s text tower."""
    return text_tower(model).width


def embed_dim(model: nn.Module) -> int:
    """d: the joint embedding width (text projection output), i.e. phi's input width."""
    tower = text_tower(model)
    projection = tower.text_projection
    if projection is None:
        return tower.width
    if isinstance(projection, nn.Linear):
        return int(projection.out_features)
    return int(projection.shape[1])
