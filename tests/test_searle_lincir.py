"""SEARLE (OTI, phi distillation) and LinCIR (self-masking) on the random-init irkit-tiny model."""

from __future__ import annotations

import json
from pathlib import Path
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import irkit.methods.searle as searle_module
from irkit.cir.context import CIRContext
from irkit.cir.evaluate import evaluate_method, load_cir_splits
from irkit.cir.registry import create_method, list_methods
from irkit.cir.training import TrainingConfig, phi_validator
from irkit.errors import InputError
from irkit.methods.lincir import (
    clean_training_caption,
    keyword_spans,
    load_spacy,
    mask_captions,
    mask_text,
    read_captions,
    tokenize_masked,
    train_phi_lincir,
)
from irkit.methods.searle import (
    OTIConfig,
    OTITokens,
    oti_for_splits,
    run_oti,
    train_phi_searle,
)
from irkit.methods.textual_inversion import (
    build_phrases,
    cosine_distance_loss,
    mask_concept,
    query_prompts,
    read_concepts,
    read_phrase_templates,
    read_phrases,
    symmetric_contrastive_loss,
)
from irkit.models.phi import Phi
from irkit.models.pseudo_token import encode_prompts, placeholder_token_id
from irkit.runs import RunFolder

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny():
    from irkit.models import create_model

    return create_model("irkit-tiny", seed=0, random_init=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from irkit.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, seed=0, scale="tiny", datasets=["cirr", "circo", "fashioniq"], progress=False)
    return out


@pytest.fixture(scope="module")
def nlp():
    return load_spacy()


@pytest.fixture(scope="module")
def small_bank():
    concepts = [("car", "object"), ("red", "colour")]
    templates = {"object": ["a photo of a {}", "a {} on the road"], "colour": ["a {} dress"]}
    return build_phrases(concepts, templates)


def _ctx(tiny, tmp_path):
    return CIRContext(tiny, cache_dir=tmp_path / "cache", batch_size=32, num_workers=0)


# --------------------------------------------------------------------------- registry


def test_methods_are_registered():
    assert {"searle", "searle-oti", "lincir", "image-only", "text-only", "image-text-sum"} <= set(list_methods())


# --------------------------------------------------------------------------- LinCIR masking


@pytest.mark.parametrize("caption, masked", [
    # a/DET red/ADJ car/NOUN | parked next to | a tall man | in | a blue jacket | .
    ("a red car parked next to a tall man in a blue jacket.", "$ parked next to $ in $."),
    ("the cat sat on a mat", "$ sat on $"),
    ("has longer sleeves and is darker", "has $ and is $"),
    ("change the sedan to a white suv", "change $ to $"),
])
def test_keyword_runs_become_placeholders(nlp, caption, masked):
    assert mask_captions(nlp, [caption]) == [masked]


def test_no_keyword_masks_exactly_one_random_word(nlp):
    caption = "is running quickly"  # AUX VERB ADV: no NOUN/PROPN/ADJ/DET
    assert keyword_spans(nlp(caption)) == []
    for seed in range(5):
        masked = mask_captions(nlp, [caption], torch.Generator().manual_seed(seed))[0].split()
        original = caption.split()
        changed = [i for i, (a, b) in enumerate(zip(original, masked)) if a != b]
        assert len(masked) == len(original) and len(changed) == 1 and masked[changed[0]] == "$"


def test_mask_text_by_spans_and_fallbacks():
    assert mask_text("ab cd ef", [(0, 2), (6, 8)]) == "$ cd $"
    assert mask_text("", []) == "a photo of $"
    assert clean_training_caption("  A $5 Red   Car ") == "a 5 red car"


def test_masked_caption_whose_placeholder_is_truncated_falls_back(tiny):
    masked = ["word " * 60 + "$", "a $ here"]
    ids = tokenize_masked(tiny.tokenizer, masked)
    assert torch.equal(ids[0], tiny.tokenizer(["a photo of $"])[0])
    assert 259 in ids[1].tolist()


def test_read_captions_txt_and_csv(tmp_path):
    txt = tmp_path / "caps.txt"
    txt.write_text("a red car\n\n a man \n")
    assert read_captions(txt) == ["a red car", "a man"]
    csv_path = tmp_path / "caps.csv"
    csv_path.write_text("filepath\ttitle\nimg/a.png\ta blue bus\n")
    assert read_captions(csv_path) == ["a blue bus"]
    with pytest.raises(InputError, match="no captions"):
        (tmp_path / "empty.txt").write_text("\n")
        read_captions(tmp_path / "empty.txt")


# --------------------------------------------------------------------------- losses


def test_cosine_distance_loss_matches_torch():
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    expected = torch.nn.CosineEmbeddingLoss()(a, b, torch.ones(6))
    assert torch.allclose(cosine_distance_loss(a, b), expected, atol=1e-6)


def test_symmetric_contrastive_loss_matches_the_explicit_formula():
    torch.manual_seed(0)
    a, b, temperature = torch.randn(4, 3), torch.randn(4, 3), 0.25
    z = [v / v.norm() for v in list(a) + list(b)]
    n = len(a)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        numerator = math.exp(float(z[i] @ z[positive]) / temperature)
        denominator = sum(math.exp(float(z[i] @ z[j]) / temperature) for j in range(2 * n) if j != i)
        total += -math.log(numerator / denominator)
    assert abs(symmetric_contrastive_loss(a, b, temperature).item() - total / (2 * n)) < 1e-5


# --------------------------------------------------------------------------- phrases


def test_build_phrases_from_templates(small_bank):
    assert small_bank.concepts == ["car", "red"]
    assert [(p.concept, p.text, p.masked) for p in small_bank.phrases] == [
        ("car", "a photo of a car", "a photo of a $"),
        ("car", "a car on the road", "a $ on the road"),
        ("red", "a red dress", "a $ dress"),
    ]


def test_default_vocabulary_covers_the_demo_world():
    concepts = dict(read_concepts())
    for word in ("car", "truck", "bus", "man", "woman", "dress", "shirt", "jacket", "red", "white", "dog"):
        assert word in concepts
    assert concepts["red"] == "colour" and concepts["car"] == "object"
    templates = read_phrase_templates()
    assert {kind for kind in concepts.values()} <= set(templates)


def test_phrase_file_drops_concepts_missing_from_their_phrases(tmp_path):
    assert mask_concept("a cart in a car park", "car") == "a cart in a $ park"
    assert mask_concept("a cart", "car") is None
    path = tmp_path / "phrases.tsv"
    path.write_text("# comment\ncar\ta red car on the road\nbus\ta bus stop\nbus\ta tram\n")
    bank = read_phrases(path)
    assert bank.concepts == ["car"] and bank.phrases[0].masked == "a red $ on the road"
    bad = tmp_path / "bad.tsv"
    bad.write_text("car\n")
    with pytest.raises(InputError, match="line 1"):
        read_phrases(bad)


def test_bad_concept_and_template_files(tmp_path):
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("car\nred\tcolour\textra\n")
    with pytest.raises(InputError, match="line 2"):
        read_concepts(concepts)
    templates = tmp_path / "templates.txt"
    templates.write_text("object\ta photo without slot\n")
    with pytest.raises(InputError, match="exactly one"):
        read_phrase_templates(templates)
    with pytest.raises(InputError, match="no phrase templates"):
        build_phrases([("red", "colour")], {"object": ["a {}"]})


# --------------------------------------------------------------------------- prompts


def test_query_prompts():
    from irkit.data.records import CIRQuery

    fiq = CIRQuery("0", "ref", ("is red.", " has long sleeves?"))
    assert query_prompts(fiq, "fashioniq") == ["a photo of $ that is red and has long sleeves",
                                                "a photo of $ that has long sleeves and is red"]
    circo = CIRQuery("1", "ref", ("has two $ dogs",), shared_concept="the bench")
    assert query_prompts(circo, "circo") == ["a photo of $ that has two dogs"]
    assert query_prompts(circo, "circo", include_shared_concept=True) == \
        ["a photo of $ that shows the bench but has two dogs"]


# --------------------------------------------------------------------------- OTI


def test_oti_fits_the_image_better_than_its_initialisation(tiny, small_bank, tmp_path):
    torch.manual_seed(0)
    features = torch.randn(3, tiny.embed_dim)
    ids = ["a", "b", "c"]
    start = run_oti(tiny, ids, features, tmp_path / "s0", OTIConfig(steps=0, batch_size=3), small_bank, progress=False)
    fitted = run_oti(tiny, ids, features, tmp_path / "s25", OTIConfig(steps=25, batch_size=3), small_bank,
                     progress=False)
    assert torch.equal(start.tokens, start.last_tokens)  # no step: the EMA is the initial token
    assert 0.005 < start.tokens.std().item() < 0.04  # ~N(0, 0.02)

    def cosine(tokens):
        with torch.no_grad():
            text = encode_prompts(tiny.model, tiny.tokenizer, ["a photo of $"] * 3, tokens)
        return F.cosine_similarity(text, features).mean().item()

    assert cosine(fitted.last_tokens) > cosine(start.tokens) + 0.05
    assert not torch.equal(fitted.tokens, fitted.last_tokens)  # EMA lags the raw token


def test_oti_resume_skips_done_batches_and_matches_an_uninterrupted_run(tiny, small_bank, tmp_path, monkeypatch):
    torch.manual_seed(1)
    features = torch.randn(5, tiny.embed_dim)
    ids = [f"img{i}" for i in range(5)]
    config = OTIConfig(steps=3, batch_size=2)
    full = run_oti(tiny, ids, features, tmp_path / "full", config, small_bank, progress=False)

    original = searle_module._invert_batch
    calls: list[int] = []
    crash = {"at": 2}

    class SimulatedCrash(Exception):
        pass

    def crash_on_third(*args, **kwargs):
        batch_index = args[-1]
        calls.append(batch_index)
        if batch_index == crash["at"]:
            raise SimulatedCrash()
        return original(*args, **kwargs)

    monkeypatch.setattr(searle_module, "_invert_batch", crash_on_third)
    with pytest.raises(SimulatedCrash):
        run_oti(tiny, ids, features, tmp_path / "resumed", config, small_bank, progress=False)
    assert calls == [0, 1, 2]  # crashed inside the third batch
    assert OTITokens.load(tmp_path / "resumed").ids == ids[:4]  # batches 0 and 1 were saved

    calls.clear()
    crash["at"] = None
    resumed = run_oti(tiny, ids, features, tmp_path / "resumed", config, small_bank, progress=False)
    assert calls == [2]  # only the missing batch ran
    assert resumed.ids == ids
    assert torch.equal(resumed.tokens, full.tokens) and torch.equal(resumed.last_tokens, full.last_tokens)
    saved = json.loads((tmp_path / "resumed" / "oti_ids.json").read_text())
    assert saved["ids"] == ids and saved["params"]["steps"] == 3

    calls.clear()
    run_oti(tiny, ids, features, tmp_path / "resumed", config, small_bank, progress=False)
    assert calls == []  # everything done: nothing recomputed
    with pytest.raises(InputError, match="other settings .*steps: saved 3, now 4"):
        run_oti(tiny, ids, features, tmp_path / "resumed", OTIConfig(steps=4, batch_size=2), small_bank,
                progress=False)


# --------------------------------------------------------------------------- methods


def test_searle_query_is_the_prompt_with_phi_token(tiny, demo, tmp_path):
    """A phi that always outputs the `$` embedding makes the query the plain text prompt."""
    splits = load_cir_splits("fashioniq", demo / "fashioniq", "val", category="dress")
    placeholder = tiny.model.token_embedding.weight[placeholder_token_id(tiny.tokenizer)].detach()
    phi = Phi(tiny.embed_dim, placeholder.shape[0])
    with torch.no_grad():
        phi.layers[6].weight.zero_()
        phi.layers[6].bias.copy_(placeholder)
    ctx = _ctx(tiny, tmp_path)
    queries = create_method("searle", phi=phi).query_embeddings(ctx, splits[0])
    for row, query in enumerate(splits[0].queries[:3]):
        c1, c2 = (c.strip(".?, ") for c in query.captions)
        texts = tiny.encode_texts([f"a photo of $ that {c1} and {c2}", f"a photo of $ that {c2} and {c1}"])
        expected = texts.mean(0) / np.linalg.norm(texts.mean(0))
        assert np.allclose(queries[row], expected, atol=1e-5)


def test_searle_without_checkpoint_is_a_clear_error():
    with pytest.raises(InputError, match="needs a phi checkpoint"):
        create_method("searle")


# --------------------------------------------------------------------------- phi training


def _check_run_keeps_best(run_path, result, metric):
    assert (run_path / "out.log").is_file() and (run_path / "params.txt").is_file()
    assert any((run_path / "tensorboard").iterdir())
    records = [json.loads(line) for line in (run_path / "results.jsonl").read_text().splitlines()]
    assert records, "validation results were not logged"
    best = max(records, key=lambda r: r[metric])  # first maximum, as the trainer keeps ties
    assert result.best_step == best["step"] and result.best_value == best[metric]
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    return best


def test_lincir_training_runs_validates_and_keeps_best(tiny, demo, tmp_path, nlp):
    ctx = _ctx(tiny, tmp_path)
    captions = read_captions(demo / "captions" / "cirr_train.csv")
    validator = phi_validator(ctx, "lincir", "cirr", demo / "cirr", "val")
    config = TrainingConfig(steps=6, batch_size=8, validate_every=2, seed=0)
    run = RunFolder.create(tmp_path / "log", "lincir-library", config.to_params())
    try:
        result = train_phi_lincir(tiny, captions, run, config, validator, nlp=nlp)
    finally:
        run.close()
    best = _check_run_keeps_best(run.path, result, "(R@5+Rs@1)/2")
    # The kept checkpoint scores what the validation recorded for its step.
    phi = Phi.from_checkpoint(result.best_checkpoint, tiny.embed_dim, tiny.model.token_embedding.embedding_dim)
    rescored = evaluate_method(create_method("lincir", phi=phi), ctx, validator.splits)
    assert rescored["(R@5+Rs@1)/2"] == best["(R@5+Rs@1)/2"]


def test_searle_distillation_training_on_oti_tokens(tiny, demo, tmp_path, small_bank):
    ctx = _ctx(tiny, tmp_path)
    train_splits = load_cir_splits("cirr", demo / "cirr", "train")
    oti = oti_for_splits(ctx, train_splits, tmp_path / "oti", "all", OTIConfig(steps=2, batch_size=8), small_bank,
                         progress=False)
    assert len(oti.ids) == len({i for s in train_splits for i in s.gallery} |
                               {q.reference for s in train_splits for q in s.queries})
    validator = phi_validator(ctx, "searle", "circo", demo / "circo", "val")
    config = TrainingConfig(steps=4, batch_size=8, validate_every=2, seed=0)
    run = RunFolder.create(tmp_path / "log", "searle-library", config.to_params())
    try:
        result = train_phi_searle(tiny, oti, run, config, small_bank, validator)
    finally:
        run.close()
    _check_run_keeps_best(run.path, result, "mAP@10")
    checkpoint = torch.load(result.best_checkpoint, weights_only=True)
    assert checkpoint["extra"]["method"] == "searle" and checkpoint["extra"]["weights_id"] == tiny.weights_id


def test_searle_training_refuses_tokens_of_another_backbone(tiny, small_bank, tmp_path):
    oti = OTITokens(["a"], torch.zeros(1, 128), torch.zeros(1, 128), torch.zeros(1, 128),
                    {"weights_id": "random-init:99"})
    run = RunFolder.create(tmp_path / "log", "searle-wrong-backbone", {})
    try:
        with pytest.raises(InputError, match="computed with weights 'random-init:99'"):
            train_phi_searle(tiny, oti, run, TrainingConfig(steps=1), small_bank)
    finally:
        run.close()


def test_lincir_training_resumes_exactly(tiny, tmp_path, nlp):
    captions = ["a red car on the road", "a man in a blue jacket", "is running quickly", "the white bus",
                "a tall woman with a black bag", "two dogs on the grass"]
    config = TrainingConfig(steps=4, batch_size=4, validate_every=100, seed=3)

    def train(name, steps, resume=None):
        run = RunFolder.open_existing(tmp_path / name) if resume else RunFolder.create(tmp_path, name, {})
        try:
            result = train_phi_lincir(tiny, captions, run, TrainingConfig(**{**config.to_params(), "steps": steps}),
                                      resume=resume, nlp=nlp)
        finally:
            run.close()
        return result

    train("straight", 4)
    train("interrupted", 2)
    result = train("interrupted", 4, resume="latest")
    assert result.step == 4
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "interrupted" / "checkpoints" / "latest.pt", weights_only=True)["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_searle_oti_method_runs_oti_once_and_caches_it(tiny, demo, tmp_path, monkeypatch):
    split = load_cir_splits("cirr", demo / "cirr", "val")[0]
    ctx = _ctx(tiny, tmp_path)
    calls: list[int] = []
    original = searle_module._invert_batch

    def counting(*args, **kwargs):
        calls.append(args[-1])
        return original(*args, **kwargs)

    monkeypatch.setattr(searle_module, "_invert_batch", counting)
    method = create_method("searle-oti", steps=1, batch_size=64)
    first = method.query_embeddings(ctx, split)
    assert first.shape == (len(split.queries), tiny.embed_dim)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert calls == [0]
    second = create_method("searle-oti", steps=1, batch_size=64).query_embeddings(ctx, split)
    assert calls == [0] and np.array_equal(first, second)  # the cached OTI store was reused


def test_phi_query_embeddings_are_cached_by_checkpoint_content(tiny, tmp_path):
    """A second eval with the same phi file reads its query embeddings from the cache (no phi, no
    text encoder); a phi file with other content at the same path is a new entry."""
    from irkit.cir.context import CIRContext
    from irkit.data.demo import generate_demo
    from irkit.models.phi import Phi
    from irkit.models.pseudo_token import embed_dim, token_width

    generate_demo(tmp_path / "d", seed=0, scale="tiny", datasets=("cirr",), workers=1, progress=False)
    (split,) = load_cir_splits("cirr", tmp_path / "d" / "cirr", "val")
    ctx = CIRContext(tiny, cache_dir=tmp_path / "cache", num_workers=0)
    d, w = embed_dim(tiny.model), token_width(tiny.model)

    def save_phi(seed: int) -> Path:
        torch.manual_seed(seed)
        path = tmp_path / "phi.pt"
        torch.save({"Phi": Phi(d, w).state_dict()}, path)
        return path

    path = save_phi(0)
    first = ctx.query_embeddings(create_method("lincir", checkpoint=path), split)
    again = create_method("lincir", checkpoint=path)
    again.query_embeddings = None  # a cache miss would call it and fail
    np.testing.assert_array_equal(ctx.query_embeddings(again, split), first)
    other = ctx.query_embeddings(create_method("lincir", checkpoint=save_phi(1)), split)
    assert not np.allclose(other, first)  # new content, same path: recomputed
    # an in-memory phi (validation during training) is never cached
    assert create_method("lincir", phi=Phi(d, w)).cache_identity() is None


def test_lincir_keeps_pronouns_the_parse_tags_as_pron(nlp):
    """With the parser in the pipeline (as LinCIR loads en_core_web_sm), "this" / "which" are
    pronouns and stay; without it the attribute ruler tags them DET and they would be masked."""
    assert mask_captions(nlp, ["this has the same shape", "which is red and has a logo"]) == \
        ["this has $", "which is $ and has $"]
