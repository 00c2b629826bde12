"""Every registered CIR method runs on demo GeneCIS through the one engine (irkit.cir).

Embedding methods are checked against an independent computation from their own embeddings
(rank of the target = 1 + the candidates scoring at least as high, ties counting against the
target); the ranking method (two-stage re-ranking) against its own rankings, which must be
permutations of each template's candidate positions. The CLI `irkit cir eval --dataset genecis`
gives the library's numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from irkit.cir import CIRContext, EmbeddingMethod, RankingMethod, create_method, list_methods, run_method
from irkit.cir.evaluate import load_cir_splits
from irkit.data.demo import generate_demo
from irkit.models import create_model
from irkit.models.combiner import CombinerConfig
from irkit.models.fusion import FusionConfig
from irkit.models.reranker import RerankerConfig

TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("genecis_methods")
    generate_demo(root / "data", seed=0, scale="tiny", datasets=("genecis",), workers=1, progress=False)
    loaded = create_model("irkit-tiny", seed=0, random_init=True)
    ctx = CIRContext(loaded, cache_dir=root / "cache", num_workers=0)
    splits = load_cir_splits("genecis", root / "data" / "genecis", "val", crop_dir=root / "crops")
    return root, ctx, splits


def _methods(ctx: CIRContext) -> dict[str, object]:
    """One instance of every registered method (untrained parts: the code path is under test)."""
    from irkit.cir.training import TrainingConfig
    from irkit.methods.combiner import CombinerMethod
    from irkit.methods.fusion import MagicLensMethod
    from irkit.methods.rerank import RerankMethod
    from irkit.methods.textual_inversion import new_phi
    from irkit.models.pseudo_token import embed_dim, token_width

    d, w = embed_dim(ctx.loaded.model), token_width(ctx.loaded.model)
    torch.manual_seed(0)
    return {
        "image-only": create_method("image-only"),
        "text-only": create_method("text-only"),
        "image-text-sum": create_method("image-text-sum"),
        "searle": create_method("searle", phi=new_phi(d, w, TrainingConfig(seed=0)).eval()),
        "lincir": create_method("lincir", phi=new_phi(d, w, TrainingConfig(seed=1)).eval()),
        "searle-oti": create_method("searle-oti", steps=2, batch_size=8),
        "magiclens": MagicLensMethod(model=MagicLensMethod.build_model(
            FusionConfig(embed_dim=ctx.loaded.embed_dim, depth=1, num_heads=2).to_dict()).eval()),
        "combiner": CombinerMethod(model=CombinerMethod.build_model(
            CombinerConfig.scaled(ctx.loaded.embed_dim).to_dict()).eval()),
        "rerank": RerankMethod(model=RerankMethod.build_model(
            RerankerConfig(embed_dim=ctx.loaded.embed_dim, token_dim=ctx.loaded.embed_dim, depth=1,
                           num_heads=2).to_dict()).eval(), stage1="image-text-sum"),
    }


def _target_rank(scores: np.ndarray) -> int:
    """1-based rank of candidate 0 (the target): every other candidate scoring >= it ranks ahead."""
    return 1 + int((scores[1:] >= scores[0]).sum())


def test_every_registered_method_runs_on_genecis(demo):
    _, ctx, splits = demo
    assert [s.category for s in splits] == list(TASKS)
    methods = _methods(ctx)
    assert sorted(methods) == list_methods()  # every registered method is exercised
    for name, method in methods.items():
        ran = run_method(method, ctx, splits)
        result = ran.metrics
        assert result["method"] == name and result["tasks"] == list(TASKS) and result["skipped_tasks"] == []
        for split, rankings in zip(splits, ran.rankings):
            got = result[split.category]
            for query in split.queries:  # each ranking: unique positions of the template's own candidates
                ranked = rankings[query.query_id]
                assert len(set(ranked)) == len(ranked)
                assert set(ranked) <= {str(p) for p in range(len(query.candidates))}
            if isinstance(method, EmbeddingMethod):
                q, g = method.query_embeddings(ctx, split), method.gallery_embeddings(ctx, split)
                row = {image_id: i for i, image_id in enumerate(split.gallery)}
                ranks = np.array([_target_rank(g[[row[c] for c in query.candidates]].astype(np.float64) @ q[i])
                                  for i, query in enumerate(split.queries)])
            else:
                assert isinstance(method, RankingMethod)
                ranks = np.array([rankings[query.query_id].index("0") + 1 for query in split.queries])
            for k in (1, 2, 3):
                assert got[f"R@{k}"] == pytest.approx(100.0 * np.mean(ranks <= k), abs=1e-9), (name, split.category, k)
            assert ran.per_query("R@1").shape == (sum(len(s.queries) for s in splits),)
        expected_average = np.mean([result[t]["R@1"] for t in TASKS])
        assert result["average"]["R@1"] == pytest.approx(expected_average, abs=1e-9)


def test_cir_eval_cli_on_genecis_equals_the_library(demo):
    root, ctx, splits = demo
    argv = [sys.executable, "-m", "irkit", "cir", "eval", "--dataset", "genecis", "--root",
            str(root / "data" / "genecis"), "--method", "image-text-sum", "--cache-dir", str(root / "cache"),
            "--num-workers", "0", "--random-init"]
    env = {**os.environ, "IRKIT_CACHE_DIR": str(root / "cli-cache")}  # the crops go there, not under ~
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)  # fractions; the library's metrics are percent
    library = run_method(create_method("image-text-sum"), ctx, splits).metrics
    for task in TASKS:
        for k in (1, 2, 3):
            assert printed[task][f"R@{k}"] == pytest.approx(library[task][f"R@{k}"] / 100, abs=1e-11)
    assert printed["average"]["R@1"] == pytest.approx(library["average"]["R@1"] / 100, abs=1e-11)
