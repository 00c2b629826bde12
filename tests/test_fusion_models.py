"""Fusion heads: attention pooling, MagicLens fusion, vision projector, Combiner, re-ranker."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from irkit.cir.features import in_batch_contrastive_loss
from irkit.cir.training import TrainingConfig, train_head_model
from irkit.errors import InputError
from irkit.models.combiner import Combiner, CombinerConfig
from irkit.models.fusion import FusionConfig, MagicLensFusion
from irkit.models.layers import AttentionPool
from irkit.models.projector import VisionProjector
from irkit.models.reranker import CrossEncoderReranker, RerankerConfig
from irkit.runs import RunFolder, load_checkpoint


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values in every parameter (zero-initialised ones included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# --------------------------------------------------------------------------- attention pooling


def test_attention_pool_of_identical_tokens_depends_on_the_token_alone():
    torch.manual_seed(0)
    dim = 32
    pool = AttentionPool(dim, num_heads=4).eval()
    _randomise(pool)
    token = torch.randn(3, 1, dim)
    single = pool(token)
    for length in (2, 5, 9):
        repeated = pool(token.expand(-1, length, -1))
        torch.testing.assert_close(repeated, single, rtol=1e-5, atol=1e-5)
    # Independent formula: uniform attention over equal keys returns the value of the token,
    # so the output is LayerNorm(W_o (W_v t + b_v) + b_o).
    attn = pool.attn
    expected = pool.norm(attn.proj(attn.v(token)))
    torch.testing.assert_close(single, expected, rtol=1e-5, atol=1e-5)
    # ... and it is not a constant: another token gives another output.
    assert not torch.allclose(pool(token + 1.0), single, atol=1e-3)


def test_attention_pool_masks_padding():
    torch.manual_seed(1)
    pool = AttentionPool(16, num_heads=2).eval()
    tokens = torch.randn(2, 4, 16)
    mask = torch.tensor([[False, False, True, True], [False, False, False, True]])
    garbage = tokens.clone()
    garbage[mask] = 1e3
    torch.testing.assert_close(pool(tokens, key_padding_mask=mask), pool(garbage, key_padding_mask=mask))
    torch.testing.assert_close(pool(tokens[:1, :2]), pool(tokens[:1], key_padding_mask=mask[:1]))


# --------------------------------------------------------------------------- MagicLens fusion


def test_fusion_structure_and_outputs():
    model = MagicLensFusion(FusionConfig(embed_dim=64, num_heads=4)).eval()
    assert len(model.blocks) == 4
    block = model.blocks[0]
    assert block.mlp.fc1.weight.shape == (256, 64) and isinstance(block.mlp.act, torch.nn.ReLU)
    assert model.pool.query.shape == (1, 64)
    image, text = torch.randn(5, 64), torch.randn(5, 64)
    out = model(image, text)
    assert out.shape == (5, 64)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))
    # No position or modality embeddings (as published): swapping the two tokens changes nothing.
    torch.testing.assert_close(model(text, image), out, rtol=1e-5, atol=1e-5)
    # Targets: the same model with the empty instruction, broadcast over the batch.
    empty = torch.randn(64)
    torch.testing.assert_close(model.encode_targets(image, empty), model(image, empty.expand(5, -1)))
    assert model.projector is None
    with pytest.raises(InputError, match="divisible"):
        MagicLensFusion(FusionConfig(embed_dim=60, num_heads=8))


def test_projector_residual_blocks_match_hand_computation():
    projector = VisionProjector(8, depth=4, ratio=16, zero_init=True)
    x = torch.randn(3, 8)
    torch.testing.assert_close(projector(x), x)  # identity start
    _randomise(projector, seed=3)
    expected = x
    for block in projector.blocks:
        fc1, fc2 = block.mlp.fc1, block.mlp.fc2
        assert fc1.weight.shape == (128, 8) and fc2.weight.shape == (8, 128)
        expected = expected + F.linear(F.gelu(F.linear(expected, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
    torch.testing.assert_close(projector(x), expected)


def test_projector_switch_and_same_checkpoint(tmp_path):
    dim = 32
    config = FusionConfig(embed_dim=dim, num_heads=4, projector=True)
    torch.manual_seed(0)
    model = MagicLensFusion(config)
    plain = MagicLensFusion(FusionConfig(embed_dim=dim, num_heads=4))
    keys = set(model.state_dict())
    projector_keys = {k for k in keys if k.startswith("projector.")}
    assert len(projector_keys) == 4 * 4  # 4 blocks x (fc1, fc2) x (weight, bias)
    assert keys - projector_keys == set(plain.state_dict())

    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, dim, generator=g), torch.randn(8, dim, generator=g), torch.randn(8, dim, generator=g))
            for _ in range(3)]

    def loss_fn(batch):
        reference, text, target = batch
        logits = 10 * model(reference, text) @ model.encode_targets(target, torch.zeros(dim)).T
        return in_batch_contrastive_loss(logits, torch.arange(8))

    run = RunFolder.create(tmp_path, "proj", {})
    loaded = type("Backbone", (), {"model_name": "m", "weights_id": "w", "embed_dim": dim, "transform_name": "t"})()
    result = train_head_model(model, loss_fn, lambda epoch: iter(data), run, TrainingConfig(steps=3, validate_every=0),
                        "magiclens", config.to_dict(), loaded)
    run.close()
    state = load_checkpoint(result.latest_checkpoint)
    assert projector_keys <= set(state["model"])
    # Trained: the projector left its identity start, and the checkpoint holds those weights.
    assert state["model"]["projector.blocks.0.mlp.fc2.weight"].abs().sum() > 0
    restored = MagicLensFusion(FusionConfig.from_dict(state["extra"]["model_config"])).eval()
    restored.load_state_dict(state["model"])
    model.eval()
    image, text = torch.randn(4, dim), torch.randn(4, dim)
    torch.testing.assert_close(restored(image, text), model(image, text))
    # Switched off: exactly the fusion model without the projector (same other weights).
    restored.use_projector = False
    plain.load_state_dict({k: v for k, v in state["model"].items() if k not in projector_keys})
    plain.eval()
    torch.testing.assert_close(restored(image, text), plain(image, text))
    assert not torch.allclose(restored(image, text), model(image, text), atol=1e-4)


def test_frozen_projector_keeps_its_initialisation():
    torch.manual_seed(0)
    model = MagicLensFusion(FusionConfig(embed_dim=16, num_heads=2, projector=True, projector_trainable=False,
                                         projector_zero_init=False))
    assert all(not p.requires_grad for p in model.projector.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("projector."))
    assert model.projector.blocks[0].mlp.fc2.weight.abs().sum() > 0  # random, not identity


# --------------------------------------------------------------------------- Combiner


# Written from methods.md §F / the published CLIP4Cir module, independently of the code:
# name -> shape as a function of (d, P, H).
COMBINER_SPEC = {
    "text_projection_layer.weight": lambda d, p, h: (p, d),
    "text_projection_layer.bias": lambda d, p, h: (p,),
    "image_projection_layer.weight": lambda d, p, h: (p, d),
    "image_projection_layer.bias": lambda d, p, h: (p,),
    "combiner_layer.weight": lambda d, p, h: (h, 2 * p),
    "combiner_layer.bias": lambda d, p, h: (h,),
    "output_layer.weight": lambda d, p, h: (d, h),
    "output_layer.bias": lambda d, p, h: (d,),
    "dynamic_scalar.0.weight": lambda d, p, h: (h, 2 * p),
    "dynamic_scalar.0.bias": lambda d, p, h: (h,),
    "dynamic_scalar.3.weight": lambda d, p, h: (1, h),
    "dynamic_scalar.3.bias": lambda d, p, h: (1,),
}


@pytest.mark.parametrize("d, p, h, published", [(640, 2560, 5120, True), (128, 512, 1024, False)])
def test_combiner_state_dict_matches_published_shapes(d, p, h, published):
    config = CombinerConfig.scaled(d, published=published)
    assert (config.projection_dim, config.hidden_dim) == (p, h)
    state = Combiner(config).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: f(d, p, h) for k, f in COMBINER_SPEC.items()}


def test_combiner_forward_matches_the_formula():
    torch.manual_seed(0)
    model = Combiner(CombinerConfig(clip_feature_dim=6, projection_dim=10, hidden_dim=12)).eval()
    assert [type(m).__name__ for m in model.dynamic_scalar] == ["Linear", "ReLU", "Dropout", "Linear", "Sigmoid"]
    assert model.dropout1.p == model.dropout2.p == model.dropout3.p == model.dynamic_scalar[2].p == 0.5
    image, text, target = torch.randn(4, 6), torch.randn(4, 6), torch.randn(3, 6)
    sd = model.state_dict()

    def lin(x, name):
        return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    raw = torch.cat([torch.relu(lin(text, "text_projection_layer")),
                     torch.relu(lin(image, "image_projection_layer"))], -1)
    lam = torch.sigmoid(lin(torch.relu(lin(raw, "dynamic_scalar.0")), "dynamic_scalar.3"))
    out = lin(torch.relu(lin(raw, "combiner_layer")), "output_layer") + lam * text + (1 - lam) * image
    query = out / out.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(model.combine_features(image, text), query)
    logits = 100 * query @ (target / target.norm(dim=-1, keepdim=True)).T
    torch.testing.assert_close(model(image, text, target), logits)


# --------------------------------------------------------------------------- re-ranker


def test_reranker_scores_pairs_and_starts_from_the_cosine_prior():
    torch.manual_seed(0)
    dim, patches = 32, 5
    model = CrossEncoderReranker(RerankerConfig(embed_dim=dim, token_dim=dim, num_heads=4)).eval()
    ref, text = torch.randn(3, dim), torch.randn(3, dim)
    cand, tokens = torch.randn(4, dim), torch.randn(4, patches, dim)
    # Untrained: the learned term is zero, the score is 10 * cos(norm(ref) + norm(text), cand).
    query = F.normalize(F.normalize(ref, dim=-1) + F.normalize(text, dim=-1), dim=-1)
    prior = 10.0 * query @ F.normalize(cand, dim=-1).T
    torch.testing.assert_close(model.score_matrix(ref, text, cand, tokens), prior, rtol=1e-5, atol=1e-5)
    # Trained-like weights: the patch tokens matter, and score_matrix[i, j] == forward(pair i, j).
    _randomise(model, seed=2)
    matrix = model.score_matrix(ref, text, cand, tokens)
    for i in range(3):
        for j in range(4):
            single = model(ref[i:i + 1], text[i:i + 1], cand[j:j + 1], tokens[j:j + 1])
            torch.testing.assert_close(matrix[i, j], single[0], rtol=1e-4, atol=1e-4)
    other_tokens = tokens + torch.randn_like(tokens)
    assert not torch.allclose(model.score_matrix(ref, text, cand, other_tokens), matrix, atol=1e-3)


def test_in_batch_loss_masks_duplicate_targets():
    logits = torch.tensor([[2.0, 1.0, 5.0], [0.0, 3.0, 1.0], [4.0, 0.5, 1.0]])
    targets = torch.tensor([7, 8, 7])  # queries 0 and 2 share their target image
    # Row 0: column 2 is the same image -> masked; row 2: column 0 masked.
    expected = torch.stack([
        -torch.log_softmax(torch.tensor([2.0, 1.0]), 0)[0],
        -torch.log_softmax(torch.tensor([0.0, 3.0, 1.0]), 0)[1],
        -torch.log_softmax(torch.tensor([0.5, 1.0]), 0)[1],
    ]).mean()
    torch.testing.assert_close(in_batch_contrastive_loss(logits, targets), expected)


def test_encoder_attention_caps_logits_as_published():
    """Every encoder self-attention computes softmax(50 tanh(q.k / sqrt(h) / 50)) (hand formula),
    unless ``encoder_logit_cap=None`` (irkit's earlier uncapped encoder)."""
    torch.manual_seed(0)
    capped = MagicLensFusion(FusionConfig(embed_dim=16, num_heads=2)).eval()
    attn = capped.blocks[0].attn
    with torch.no_grad():
        attn.q.weight.mul_(40.0)
        attn.k.weight.mul_(40.0)  # logits far beyond 50
    x = torch.randn(3, 2, 16)
    q = attn.q(x).view(3, 2, 2, 8).transpose(1, 2) / 8 ** 0.5
    k = attn.k(x).view(3, 2, 2, 8).transpose(1, 2)
    v = attn.v(x).view(3, 2, 2, 8).transpose(1, 2)
    logits = q @ k.transpose(-2, -1)
    assert logits.abs().max() > 100
    by_hand = ((50 * torch.tanh(logits / 50)).softmax(-1) @ v).transpose(1, 2).reshape(3, 2, 16)
    torch.testing.assert_close(attn(x), attn.proj(by_hand), rtol=1e-5, atol=1e-5)

    uncapped = MagicLensFusion(FusionConfig(embed_dim=16, num_heads=2, encoder_logit_cap=None)).eval()
    uncapped.load_state_dict(capped.state_dict())
    plain = (logits.softmax(-1) @ v).transpose(1, 2).reshape(3, 2, 16)
    torch.testing.assert_close(uncapped.blocks[0].attn(x), attn.proj(plain), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(uncapped.blocks[0].attn(x), attn(x), atol=1e-3)
    assert capped.pool.attn.logit_cap == 50.0 and all(b.attn.logit_cap == 50.0 for b in capped.blocks)


def test_fusion_initialises_as_published():
    """MagicLens's LayerNorm applies 1 + scale with scale initialised to ones (weight 2, eps 1e-6);
    the pooler's raw per-dim scale starts at ones. init="unit" keeps irkit's earlier start."""
    model = MagicLensFusion(FusionConfig(embed_dim=32, num_heads=4))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 4 + 1
    for norm in norms:
        assert norm.eps == 1e-6
        torch.testing.assert_close(norm.weight.detach(), torch.full((32,), 2.0))
        torch.testing.assert_close(norm.bias.detach(), torch.zeros(32))
    torch.testing.assert_close(model.pool.attn.per_dim_scale.detach(), torch.ones(32 * 4 // 4))
    unit = MagicLensFusion(FusionConfig(embed_dim=32, num_heads=4, init="unit"))
    assert all(torch.equal(m.weight, torch.ones(32)) for m in unit.modules() if isinstance(m, torch.nn.LayerNorm))
    torch.testing.assert_close(unit.pool.attn.per_dim_scale.detach(), torch.zeros(32))
    with pytest.raises(InputError, match="unknown fusion init"):
        MagicLensFusion(FusionConfig(embed_dim=32, num_heads=4, init="zeros"))
