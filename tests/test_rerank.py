"""Two-stage re-ranking: top-K files, stage I, stage II keeps exactly the top-K, training."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from fusion_fixtures import make_demo, tiny_context

from irkit.cir.evaluate import evaluate_method, load_cir_splits
from irkit.cir.features import build_features
from irkit.cir.protocol import rank_split
from irkit.cir.registry import EmbeddingMethod, RankingMethod, create_method
from irkit.cir.topk import TopK, load_topk_file, save_topk_file, stage1_topk
from irkit.cir.training import TrainingConfig
from irkit.errors import InputError
from irkit.methods.rerank import rerank_split, resort_candidates, train_reranker
from irkit.models.reranker import CrossEncoderReranker, RerankerConfig
from irkit.runs import RunFolder


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = make_demo(tmp_path_factory.mktemp("demo"))
    ctx = tiny_context(tmp_path_factory.mktemp("cache"))
    return root, ctx


def test_resort_candidates_property():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(0, 12)
        candidates = [f"img{i}" for i in rng.sample(range(100), n)]
        scores = [float(rng.randint(0, 3)) for _ in range(n)]  # many ties
        ranked, values = resort_candidates(candidates, scores)
        assert sorted(ranked) == sorted(candidates) and len(ranked) == n
        assert values == sorted(values, reverse=True)
        assert values == [scores[candidates.index(c)] for c in ranked]
        for a, b in zip(ranked, ranked[1:]):  # ties keep the stage-I order
            if scores[candidates.index(a)] == scores[candidates.index(b)]:
                assert candidates.index(a) < candidates.index(b)


def _random_part(split, rng: np.random.Generator, k: int) -> TopK:
    ids, scores = [], []
    for query in split.queries:
        pool = [g for g in split.gallery if g != query.reference]
        chosen = [pool[i] for i in rng.permutation(len(pool))[:k]]
        ids.append(chosen)
        scores.append(sorted(rng.normal(size=len(chosen)).tolist(), reverse=True))
    return TopK(split.dataset, split.split, split.category, k, [q.query_id for q in split.queries], ids, scores)


def test_rerank_keeps_exactly_the_top_k_property(demo):
    root, ctx = demo
    (split,) = load_cir_splits("cirr", root / "cirr", "val")
    features = build_features(ctx, split)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = CrossEncoderReranker(RerankerConfig(embed_dim=128, token_dim=128, num_heads=4, depth=1))
    with torch.no_grad():  # a model whose learned term is not zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    for _ in range(8):
        stage1_k = int(rng.integers(1, len(split.gallery)))
        k = int(rng.integers(1, stage1_k + 1))
        part = _random_part(split, rng, stage1_k)
        result = rerank_split(model, ctx, split, part, features, k=k, chunk_size=int(rng.integers(1, 64)))
        assert result.topk.k == k and result.topk.query_ids == part.query_ids
        for query, before, after, scores in zip(split.queries, part.ids, result.topk.ids, result.topk.scores):
            assert len(after) == k and sorted(after) == sorted(before[:k])
            assert scores == sorted(scores, reverse=True)
            assert query.reference not in after
        for query in split.queries:  # subset rankings: the 5 candidates, each once
            members = sorted(set(query.subset) - {query.reference})
            assert sorted(result.subset_rankings[query.query_id]) == members
    with pytest.raises(InputError, match="k=9"):
        rerank_split(model, ctx, split, _random_part(split, rng, 5), features, k=9)


def test_topk_file_round_trip(tmp_path):
    parts = [
        TopK("fashioniq", "val", "dress", 3, ["0", "1"], [["a", "b", "c"], ["c", "a", "b"]],
             [[0.5, 0.25, -1.0 / 3.0], [1e-7, -2.5, -3.0]], stage="stage1:magiclens"),
        TopK("fashioniq", "val", "shirt", 2, ["0"], [["x", "y"]], [[0.1, 0.1]], stage="stage1:magiclens"),
    ]
    path = save_topk_file(tmp_path / "topk.json", parts)
    assert load_topk_file(path) == parts  # scores exactly, order, categories, stage
    data = json.loads(path.read_text())
    assert data["format"] == "irkit-topk" and data["parts"][0]["queries"][1]["ids"] == ["c", "a", "b"]


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d["parts"][0].update(k=0), "parts[0].k"),
    (lambda d: d["parts"][0]["queries"][0].update(ids=["a", "a"]), "parts[0].queries[0].ids"),
    (lambda d: d["parts"][0]["queries"][0].update(scores=[1.0]), "parts[0].queries[0].scores"),
    (lambda d: d["parts"][0]["queries"][0].update(ids=["a", "b", "c"], scores=[1, 2, 3]), "parts[0].queries[0].ids"),
    (lambda d: d["parts"][0].pop("queries"), "parts[0]"),
])
def test_malformed_topk_files(tmp_path, mutate, field):
    good = {"format": "irkit-topk", "version": 1, "stage": "s", "parts": [
        {"dataset": "cirr", "split": "val", "category": None, "k": 2,
         "queries": [{"query_id": "1", "ids": ["a", "b"], "scores": [2.0, 1.0]}]}]}
    mutate(good)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(good))
    with pytest.raises(InputError) as info:
        load_topk_file(path)
    assert info.value.field == field and str(path) in str(info.value)


def test_saving_invalid_scores_writes_nothing(tmp_path):
    bad = TopK("cirr", "val", None, 2, ["1"], [["a", "b"]], [[1.0, float("nan")]])
    with pytest.raises(InputError, match="finite"):
        save_topk_file(tmp_path / "t.json", [bad])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dataset", ["cirr", "fashioniq"])
def test_stage1_agrees_with_the_protocol_ranking(demo, dataset):
    root, ctx = demo
    split = load_cir_splits(dataset, root / dataset, "val")[0]
    method = create_method("image-text-sum")
    k = len(split.gallery) - 2
    part = stage1_topk(method, ctx, split, k)
    query, gallery = method.query_embeddings(ctx, split), method.gallery_embeddings(ctx, split)
    expected = rank_split(split, query, gallery, k)
    assert part.rankings() == expected
    assert all(len(ids) == k for ids in part.ids)
    position = {g: i for i, g in enumerate(split.gallery)}
    for row, (ids, scores) in enumerate(zip(part.ids, part.scores)):
        expected_scores = [float(query[row] @ gallery[position[i]]) for i in ids]
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)


def test_train_and_evaluate_reranker(demo, tmp_path):
    root, ctx = demo
    train = load_cir_splits("cirr", root / "cirr", "train")
    val = load_cir_splits("cirr", root / "cirr", "val")
    stage1 = [stage1_topk(create_method("image-text-sum"), ctx, s, 50) for s in val]
    topk_path = save_topk_file(tmp_path / "stage1.json", stage1)
    run = RunFolder.create(tmp_path / "log", "rr", {})
    config = TrainingConfig(steps=3, batch_size=4, learning_rate=1e-3, validate_every=2)
    model_config = RerankerConfig(embed_dim=128, token_dim=128, num_heads=4, depth=1)
    result = train_reranker(ctx, train, run, config, model_config, val_splits=val, val_stage1=stage1)
    run.close()
    assert result.step == 3 and result.best_checkpoint is not None
    method = create_method("rerank", checkpoint=result.best_checkpoint, stage1=str(topk_path))
    metrics = evaluate_method(method, ctx, val)
    assert metrics["method"] == "rerank" and metrics["num_queries"] == len(val[0].queries)
    assert metrics["(R@5+Rs@1)/2"] == pytest.approx(result.best_value)  # best.pt is the best validation
    # The reranked lists are the stage-I lists, re-sorted (the gallery is smaller than K=50).
    reranked = method.rerank(ctx, val[0]).topk
    for before, after in zip(stage1[0].ids, reranked.ids):
        assert sorted(before) == sorted(after)
    # a declared ranking method: it ranks, it has no query embeddings to misuse
    assert isinstance(method, RankingMethod) and not isinstance(method, EmbeddingMethod)
    assert not hasattr(method, "query_embeddings")
    with pytest.raises(InputError, match="no top-K part"):
        create_method("rerank", checkpoint=result.best_checkpoint, stage1=str(topk_path)).rerank(
            ctx, load_cir_splits("cirr", root / "cirr", "train")[0])


def test_patch_tokens_match_open_clip_and_are_cached(demo, tmp_path):
    from PIL import Image

    from irkit.cir import features as feature_module

    root, ctx = demo
    (split,) = load_cir_splits("cirr", root / "cirr", "val")
    paths = [split.image_path(i) for i in split.gallery[:3]]
    cache = tmp_path / "tokens"
    tokens = feature_module.encode_image_tokens(ctx.loaded, paths, cache_dir=cache, num_workers=0)
    visual = ctx.loaded.model.visual
    cells = (ctx.loaded.image_size // 32) ** 2  # irkit-tiny is a ModifiedResNet: stride-32 feature map
    assert tokens.shape == (3, cells, ctx.loaded.embed_dim) and tokens.dtype == np.float16
    # Independently: open_clip's forward_intermediates (last stage feature map), each cell through
    # the attention pool's value and output projections.
    pixels = torch.stack([ctx.loaded.preprocess(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        last = visual.forward_intermediates(pixels, indices=1, intermediates_only=True)["image_intermediates"][-1]
        grid = last.flatten(2).transpose(1, 2) + visual.attnpool.positional_embedding[1:]
        pool = visual.attnpool
        expected = (((grid @ pool.v_proj.weight.T) + pool.v_proj.bias) @ pool.c_proj.weight.T + pool.c_proj.bias).numpy()
    np.testing.assert_allclose(tokens.astype(np.float32), expected, rtol=1e-2, atol=1e-2)
    records = [json.loads(p.read_text()) for p in cache.glob("*.json")]
    assert len(records) == 1 and records[0]["material"]["kind"] == "image_patch_tokens"
    feature_module._MEMO.clear()  # the next call must come from the disk cache
    cached = feature_module.encode_image_tokens(ctx.loaded, paths, cache_dir=cache, num_workers=0)
    np.testing.assert_array_equal(cached, tokens)
    assert len(list(cache.glob("*.npy"))) == 1


def test_hard_negative_batches_come_from_the_stage1_pool(demo):
    """Negatives are drawn from each query's own stage-I pool, never its target, seeded."""
    from irkit.cir.features import TripletBatches, build_training_features

    root, ctx = demo
    train = load_cir_splits("cirr", root / "cirr", "train")
    stage1 = [stage1_topk(create_method("image-text-sum"), ctx, s, 6) for s in train]
    features = build_training_features(ctx, train, with_tokens=True, negatives=stage1, negative_pool=4)
    queries = [q for q in train[0].queries if q.target is not None]
    pools = {q.query_id: [c for c in ids[:4] if c != q.target] for q, ids in
             zip(train[0].queries, stage1[0].ids) if q.target is not None}
    # negative_index lists, per query, exactly its top-4 without its target, in rank order
    for row, query in enumerate(queries):
        listed = [features.image_ids[i] for i in features.negative_index[row].tolist() if i >= 0]
        assert listed == pools[query.query_id]
    batches = TripletBatches(features, batch_size=4, seed=3, with_tokens=True, num_negatives=5)
    first = list(batches(0))
    assert [b["negative"].tolist() for b in first] == [b["negative"].tolist() for b in batches(0)]
    image_row = {i: r for r, i in enumerate(features.image_ids)}
    for batch in first:
        assert batch["negative"].shape[:2] == (4, 5) and batch["negative_tokens"].shape[:2] == (4, 5)
        for q in range(4):
            # which query is this? match its target row
            row = next(r for r, query in enumerate(queries)
                       if image_row[query.target] == int(batch["target_index"][q])
                       and torch.equal(features.text[r], batch["text"][q]))
            pool = pools[queries[row].query_id]
            mask = batch["negative_mask"][q]
            assert int(mask.sum()) == min(5, len(pool))  # pool of <= 4: the 5th slot is masked
            picked = [features.image_ids[int(torch.nonzero((features.images == v).all(1))[0])]
                      for v, m in zip(batch["negative"][q], mask) if m]
            assert sorted(picked) == sorted(pool) and queries[row].target not in picked
    with pytest.raises(InputError, match="one per split"):
        build_training_features(ctx, train, negatives=stage1 + stage1)


def test_hard_negative_loss_matches_a_hand_built_cross_entropy():
    """reranker_loss with negatives = CE over [in-batch targets | own negatives], masked."""
    from irkit.methods.rerank import reranker_loss

    torch.manual_seed(0)
    model = CrossEncoderReranker(RerankerConfig(embed_dim=16, token_dim=16, num_heads=4, depth=1))
    torch.nn.init.normal_(model.head.fc2.weight, std=0.5)  # a non-zero learned term
    size, count, patches = 3, 2, 5
    batch = {"reference": torch.randn(size, 16), "text": torch.randn(size, 16), "target": torch.randn(size, 16),
             "target_tokens": torch.randn(size, patches, 16), "target_index": torch.arange(size),
             "negative": torch.randn(size, count, 16), "negative_tokens": torch.randn(size, count, patches, 16),
             "negative_mask": torch.tensor([[True, True], [True, False], [False, False]])}
    with torch.no_grad():
        loss = reranker_loss(model, batch)
        total = 0.0
        for i in range(size):  # one pair at a time through forward()
            pair = lambda cand, toks: float(model(batch["reference"][i:i + 1], batch["text"][i:i + 1],
                                                  cand[None], toks[None])[0])
            row = [pair(batch["target"][j], batch["target_tokens"][j]) for j in range(size)]
            row += [pair(batch["negative"][i, n], batch["negative_tokens"][i, n])
                    for n in range(count) if batch["negative_mask"][i, n]]
            values = np.array(row)
            total += -(values[i] - np.log(np.exp(values).sum()))
    assert float(loss) == pytest.approx(total / size, rel=1e-4)


def test_train_reranker_with_hard_negatives(demo, tmp_path):
    root, ctx = demo
    train = load_cir_splits("cirr", root / "cirr", "train")
    val = load_cir_splits("cirr", root / "cirr", "val")
    method = create_method("image-text-sum")
    val_stage1 = [stage1_topk(method, ctx, s, 50) for s in val]
    train_stage1 = [stage1_topk(method, ctx, s, 8) for s in train]
    config = TrainingConfig(steps=3, batch_size=4, learning_rate=1e-3, validate_every=3)
    model_config = RerankerConfig(embed_dim=128, token_dim=128, num_heads=4, depth=1)
    run = RunFolder.create(tmp_path / "log", "hn", {})
    result = train_reranker(ctx, train, run, config, model_config, val_splits=val, val_stage1=val_stage1,
                            train_stage1=train_stage1, hard_negatives=4, negative_pool=8)
    run.close()
    assert result.step == 3 and result.best_checkpoint is not None and np.isfinite(result.best_value)
    with pytest.raises(InputError, match="stage-I top-K of the training split"):
        train_reranker(ctx, train, RunFolder.create(tmp_path / "log", "hn2", {}), config, model_config,
                       hard_negatives=4)


def test_score_fusion_resort_by_hand():
    """stage2 + w * stage1 re-sorts the top-k; subset members outside the top-k come last."""
    from irkit.data.records import CIRQuery, CIRSplit
    from irkit.methods.rerank import CandidateScores, resort_scored

    query = CIRQuery("q", "ref", ("t",), target="b", subset=("ref", "a", "b", "x", "y"))
    split = CIRSplit("cirr", "val", Path("."), [query], ["ref", "a", "b", "c", "x", "y"], {})
    stage1 = TopK("cirr", "val", None, 3, ["q"], [["a", "b", "c"]], [[0.9, 0.8, 0.1]])
    # pool: top-3 (a, b, c), then subset members outside it (x, y)
    scored = CandidateScores(3, [["a", "b", "c", "x", "y"]], [3], [[0.9, 0.8, 0.1]],
                             [np.array([1.0, 1.5, 2.0, 9.0, 8.0])], True)
    alone = resort_scored(split, stage1, scored, 0.0)
    assert alone.topk.ids == [["c", "b", "a"]]                      # 2.0 > 1.5 > 1.0
    assert alone.subset_rankings == {"q": ["x", "y", "b", "a"]}     # all by stage II
    fused = resort_scored(split, stage1, scored, 10.0)
    # a: 1 + 9 = 10, b: 1.5 + 8 = 9.5, c: 2 + 1 = 3
    assert fused.topk.ids == [["a", "b", "c"]]
    assert fused.topk.scores[0] == pytest.approx([10.0, 9.5, 3.0])
    assert fused.subset_rankings == {"q": ["a", "b", "x", "y"]}     # inside the top-3 first
    with pytest.raises(InputError, match="expected >= 0"):
        resort_scored(split, stage1, scored, -1.0)


def test_choose_stage1_weight_takes_the_best_and_the_smaller_on_ties():
    from irkit.methods.rerank import choose_stage1_weight

    values = {0.0: 0.2, 1.0: 0.5, 3.0: 0.5, 10.0: 0.1}
    assert choose_stage1_weight(values.__getitem__, tuple(values)) == (1.0, values)
    with pytest.raises(InputError, match="no stage-I weights"):
        choose_stage1_weight(values.__getitem__, ())


def test_resort_puts_the_target_after_its_ties_when_asked():
    """GeneCIS's rule in stage II: a candidate tying with the target ranks ahead of it."""
    from irkit.methods.rerank import resort_candidates

    ids, _ = resort_candidates(["0", "1", "2", "3"], [0.5, 0.9, 0.5, 0.1], last_on_ties="0")
    assert ids == ["1", "2", "0", "3"]
    assert resort_candidates(["0", "1", "2", "3"], [0.5, 0.9, 0.5, 0.1])[0] == ["1", "0", "2", "3"]


def test_stage1_tail_scores_the_reranked_top_k_then_stage1(demo, tmp_path):
    """K below the protocol's depth: with stage1_tail the rankings are the re-ranked top K followed
    by stage I's candidates after rank K (as the CIR table scores its K=20 rows); without, an error."""
    from irkit.cir.protocol import evaluate_rankings
    from irkit.methods.rerank import RerankMethod

    root, ctx = demo
    val = load_cir_splits("cirr", root / "cirr", "val")
    stage1 = [stage1_topk(create_method("image-text-sum"), ctx, s, 50) for s in val]
    model = RerankMethod.build_model(RerankerConfig(embed_dim=128, token_dim=128, num_heads=4, depth=1).to_dict())
    torch.manual_seed(0)
    tail = RerankMethod(model=model.eval(), stage1=stage1, k=5, stage1_tail=True)
    rankings, subsets = tail.rank_split(ctx, val[0])
    reranked = tail.rerank(ctx, val[0]).topk
    for query_id, ids, before in zip(reranked.query_ids, reranked.ids, stage1[0].ids):
        assert rankings[query_id] == list(ids) + list(before[5:])
        assert sorted(ids) == sorted(before[:5])
    expected = evaluate_rankings(val[0], rankings, subset_rankings=subsets)
    assert evaluate_method(tail, ctx, val)["R@10"] == pytest.approx(expected["R@10"])
    with pytest.raises(InputError, match="stage1-tail"):
        evaluate_method(RerankMethod(model=model, stage1=stage1, k=5), ctx, val)
    short = [stage1_topk(create_method("image-text-sum"), ctx, s, 5) for s in val]
    with pytest.raises(InputError, match="needs a stage-I top-50"):
        evaluate_method(RerankMethod(model=model, stage1=short, k=5, stage1_tail=True), ctx, val)
