"""Pseudo-token text encoding (SEARLE/LinCIR injection) against open_clip's own encode_text."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from irkit.errors import InputError
from irkit.models.pseudo_token import (
    encode_prompts,
    encode_with_pseudo_tokens,
    placeholder_token_id,
    tokenize_prompts,
)

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny():
    from irkit.models import create_model

    return create_model("irkit-tiny", seed=0, random_init=True)


def _word_id(tokenizer, word: str) -> int:
    ids = tokenizer.encode(word)
    assert len(ids) == 1
    return ids[0]


def _replace(token_ids: torch.Tensor, old: int, new: int, which: str) -> torch.Tensor:
    """Token ids with the first (or every) ``old`` replaced by ``new`` — computed independently."""
    out = token_ids.clone()
    for row in range(out.shape[0]):
        positions = (out[row] == old).nonzero().flatten().tolist()
        for position in positions[:1] if which == "first" else positions:
            out[row, position] = new
    return out


def test_placeholder_id_comes_from_the_tokenizer(tiny):
    # 259 is "$</w>" in the CLIP BPE vocabulary; the function must find it by lookup.
    assert placeholder_token_id(tiny.tokenizer) == tiny.tokenizer.encoder["$</w>"] == 259


@pytest.mark.parametrize("mode", ["first", "all"])
def test_dollar_embedding_as_pseudo_token_reproduces_encode_text(tiny, mode):
    """Acceptance: with the `$` token's own embedding, the output equals model.encode_text."""
    model, tokenizer = tiny.model, tiny.tokenizer
    placeholder_id = placeholder_token_id(tokenizer)
    prompts = ["a photo of $ that is red", "$", "a $ next to a $ on the road", "a photo of $ that has " + "long " * 40]
    token_ids = tokenize_prompts(tokenizer, prompts)
    pseudo = model.token_embedding.weight[placeholder_id].detach().expand(len(prompts), -1)
    with torch.no_grad():
        ours = encode_with_pseudo_tokens(model, token_ids, pseudo, placeholder_id, mode)
        reference = model.encode_text(token_ids)
    assert ours.shape == (len(prompts), tiny.embed_dim)
    assert torch.max(torch.abs(ours - reference)).item() <= TOLERANCE


@pytest.mark.parametrize("mode", ["first", "all"])
def test_injection_equals_encoding_a_real_word_at_the_placeholder(tiny, mode):
    model, tokenizer = tiny.model, tiny.tokenizer
    placeholder_id = placeholder_token_id(tokenizer)
    dog = _word_id(tokenizer, "dog")
    token_ids = tokenize_prompts(tokenizer, ["a $ next to a $", "a photo of $"])
    pseudo = model.token_embedding.weight[dog].detach().expand(2, -1)
    with torch.no_grad():
        ours = encode_with_pseudo_tokens(model, token_ids, pseudo, placeholder_id, mode)
        expected = model.encode_text(_replace(token_ids, placeholder_id, dog, mode))
        untouched = model.encode_text(token_ids)
    assert torch.max(torch.abs(ours - expected)).item() <= TOLERANCE
    assert torch.max(torch.abs(ours - untouched)).item() > 1e-3  # the injection did change something


def test_one_token_per_placeholder_with_3d_pseudo_tokens(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    placeholder_id = placeholder_token_id(tokenizer)
    dog, cat = _word_id(tokenizer, "dog"), _word_id(tokenizer, "cat")
    token_ids = tokenize_prompts(tokenizer, ["a $ chasing a $"])
    pseudo = model.token_embedding.weight[[dog, cat]].detach()[None]  # [1, 2, w]
    expected_ids = token_ids.clone()
    positions = (token_ids[0] == placeholder_id).nonzero().flatten().tolist()
    expected_ids[0, positions[0]], expected_ids[0, positions[1]] = dog, cat
    with torch.no_grad():
        ours = encode_with_pseudo_tokens(model, token_ids, pseudo, placeholder_id)
        expected = model.encode_text(expected_ids)
    assert torch.max(torch.abs(ours - expected)).item() <= TOLERANCE
    with pytest.raises(InputError, match="2 placeholders but 3 pseudo tokens"):
        encode_with_pseudo_tokens(model, token_ids, torch.zeros(1, 3, pseudo.shape[-1]), placeholder_id)


def test_gradients_reach_the_pseudo_token(tiny):
    model, tokenizer = tiny.model, tiny.tokenizer
    pseudo = torch.zeros(1, model.token_embedding.embedding_dim, requires_grad=True)
    features = encode_prompts(model, tokenizer, ["a photo of $"], pseudo)
    features.sum().backward()
    assert pseudo.grad is not None and pseudo.grad.abs().sum().item() > 0


def test_placeholder_next_to_punctuation_is_still_one_token(tiny):
    tokenizer = tiny.tokenizer
    # "$," alone would be BPE'd into other ids (not 259); the prompt tokenizer separates it.
    assert 259 not in tokenizer(["a $, b"])[0].tolist()
    assert 259 in tokenize_prompts(tokenizer, ["a $, b"])[0].tolist()


def test_prompt_without_placeholder_is_a_clear_error(tiny):
    with pytest.raises(InputError, match=r"prompt 1 'a photo of a dog' has no '\$' placeholder"):
        tokenize_prompts(tiny.tokenizer, ["a photo of $", "a photo of a dog"])
    token_ids = tiny.tokenizer(["a photo of a dog"])
    with pytest.raises(InputError, match="holds no placeholder token"):
        encode_with_pseudo_tokens(tiny.model, token_ids, torch.zeros(1, 128), 259)


def test_placeholder_cut_off_by_the_context_length_is_an_error(tiny):
    prompt = "word " * 60 + "$"
    with pytest.raises(InputError, match="within the context length"):
        tokenize_prompts(tiny.tokenizer, [prompt])


def test_text_tower_without_token_embedding_is_refused():
    class HFStyle(nn.Module):  # like CustomTextCLIP with an HFTextEncoder
        def __init__(self) -> None:
            super().__init__()
            self.text = nn.Linear(4, 4)

    with pytest.raises(InputError, match="cannot take pseudo tokens"):
        encode_with_pseudo_tokens(HFStyle(), torch.ones(1, 4, dtype=torch.long), torch.zeros(1, 4), 259)


def test_tokenizer_without_single_token_placeholder_is_refused():
    class SplitsDollar:
        sot_token_id = 1

        def encode(self, text: str) -> list[int]:
            return [5, 6]

    with pytest.raises(InputError, match="exactly one token"):
        placeholder_token_id(SplitsDollar())


@pytest.mark.parametrize("variant", ["causal-argmax", "bidirectional-padmask-last-linear"])
def test_custom_text_tower_matches_its_forward(tiny, variant):
    """A CustomTextCLIP-style ``.text`` TextTransformer (other pooling / masks / projection)."""
    from open_clip.transformer import TextTransformer

    torch.manual_seed(0)
    if variant == "causal-argmax":
        tower = TextTransformer(context_length=16, width=32, heads=2, layers=1, output_dim=24)
    else:
        tower = TextTransformer(context_length=16, width=32, heads=2, layers=1, output_dim=24,
                                no_causal_mask=True, use_pad_mask=True, pool_type="last", proj_bias=True)
    tower.eval()

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text = tower

    token_ids = tiny.tokenizer(["a photo of $ that is red", "$ and $"], context_length=16)
    pseudo = tower.token_embedding.weight[259].detach().expand(2, -1)
    with torch.no_grad():
        ours = encode_with_pseudo_tokens(Wrapper(), token_ids, pseudo, 259, "all")
        reference = tower(token_ids)
    assert torch.max(torch.abs(ours - reference)).item() <= TOLERANCE
