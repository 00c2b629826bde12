"""Cost of two-stage re-ranking per query: stage I alone vs stage I + stage II, at two K.

Stage I = a registered method's query embeddings (reference + text) and the exact top-K
search over the cached gallery embeddings (:func:`irkit.methods.rerank.stage1_topk`).
Stage II = the cross-encoder over each query's K candidates with their cached patch tokens
(:func:`irkit.methods.rerank.rerank_split`). Gallery embeddings and patch tokens are cached
(and warmed before timing), as in the published system; what is timed is the per-query
work. Reported: ms/query of stage I, of stage II, of both, and the ratio (both / stage I),
median over ``--repeats`` runs.

    python bench/bench_rerank.py                         # demo CIRR (small scale), irkit-tiny, K 10 and 50
    python bench/bench_rerank.py --root data/cirr --split val --model ViT-B-32 --pretrained openai \\
        --reranker log/rr/checkpoints/best.pt --k 50 100

The re-ranker's weights do not change its cost: without ``--reranker`` an untrained one of
the default size is timed. Others sharing the CPU distort every number (check ``uptime``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from irkit.cir.context import CIRContext
from irkit.cir.evaluate import load_cir_splits
from irkit.cir.features import build_features
from irkit.cir.registry import create_method
from irkit.cir.topk import stage1_topk
from irkit.cir.training import load_head
from irkit.data.demo import generate_demo
from irkit.embeddings import num_threads
from irkit.methods.rerank import rerank_split
from irkit.models import create_model
from irkit.models.reranker import CrossEncoderReranker, RerankerConfig


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cirr", choices=["cirr", "fashioniq", "circo"])
    parser.add_argument("--root", type=Path, default=None, help="dataset root (default: generated demo data)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--category", default="dress", help="FashionIQ category")
    parser.add_argument("--demo-scale", default="small", choices=["tiny", "small", "full"])
    parser.add_argument("--model", default="irkit-tiny")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--checkpoint", default=None, help="backbone checkpoint")
    parser.add_argument("--random-init", action="store_true", help="random weights on purpose (timing only)")
    parser.add_argument("--stage1", default="image-text-sum", help="stage-I method (registered name)")
    parser.add_argument("--stage1-checkpoint", default=None, help="checkpoint of a trained stage-I head "
                                                                   "(e.g. magiclens best.pt)")
    parser.add_argument("--reranker", type=Path, default=None, help="re-ranker checkpoint (default: untrained)")
    parser.add_argument("--k", type=int, nargs=2, default=[10, 50], help="two candidate-set sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/irkit"))
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()

    torch.set_num_threads(num_threads())
    root = args.root
    if root is None:
        demo = Path(tempfile.gettempdir()) / f"irkit-bench-demo-{args.demo_scale}"
        generate_demo(demo, seed=0, scale=args.demo_scale, datasets=(args.dataset,), progress=False)
        root = demo / args.dataset
    options = {"category": args.category} if args.dataset == "fashioniq" else {}
    (split,) = load_cir_splits(args.dataset, root, args.split, **options)
    loaded = create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                          random_init=args.random_init)
    ctx = CIRContext(loaded, cache_dir=args.cache_dir, batch_size=64, num_workers=0)
    stage1_method = create_method(args.stage1, **({"checkpoint": args.stage1_checkpoint}
                                                   if args.stage1_checkpoint else {}))
    if args.reranker is not None:
        state = load_head(args.reranker, "reranker")
        model = CrossEncoderReranker(RerankerConfig.from_dict(state["extra"]["model_config"]))
        model.load_state_dict(state["model"])
    else:
        model = CrossEncoderReranker(RerankerConfig(embed_dim=loaded.embed_dim, token_dim=loaded.embed_dim))
    model.eval()

    num_queries = len(split.queries)
    max_k = max(args.k)
    features = build_features(ctx, split)
    # Warm-up: gallery embeddings and every candidate's patch tokens into the caches.
    warm = stage1_topk(stage1_method, ctx, split, max_k)
    rerank_split(model, ctx, split, warm, features, k=warm.k)

    rows = []
    for k in sorted(args.k):
        stage1_s = _median_seconds(lambda: stage1_topk(stage1_method, ctx, split, k), args.repeats)
        topk = stage1_topk(stage1_method, ctx, split, k)
        stage2_s = _median_seconds(lambda: rerank_split(model, ctx, split, topk, features, k=k), args.repeats)
        candidates = sum(len(ids) for ids in topk.ids) / num_queries
        row = {
            "K": k, "candidates_per_query": candidates,
            "stage1_ms_per_query": 1000 * stage1_s / num_queries,
            "stage2_ms_per_query": 1000 * stage2_s / num_queries,
            "two_stage_ms_per_query": 1000 * (stage1_s + stage2_s) / num_queries,
        }
        row["ratio_two_stage_vs_stage1"] = row["two_stage_ms_per_query"] / row["stage1_ms_per_query"]
        rows.append(row)

    result = {"dataset": f"{split.dataset}-{split.split}" + (f"/{split.category}" if split.category else ""),
              "queries": num_queries, "gallery": len(split.gallery), "model": loaded.model_name,
              "stage1": args.stage1, "stage1_checkpoint": args.stage1_checkpoint,
              "reranker": str(args.reranker or "untrained (default size)"),
              "torch_threads": torch.get_num_threads(), "repeats": args.repeats, "rows": rows}
    print(f"{result['dataset']}: {num_queries} queries, gallery {len(split.gallery)}, model {loaded.model_name}, "
          f"stage I {args.stage1}, {torch.get_num_threads()} threads")
    print(f"{'K':>5} {'cand/q':>7} {'stage I ms/q':>13} {'stage II ms/q':>14} {'both ms/q':>10} {'ratio':>7}")
    for row in rows:
        print(f"{row['K']:>5} {row['candidates_per_query']:>7.1f} {row['stage1_ms_per_query']:>13.3f} "
              f"{row['stage2_ms_per_query']:>14.3f} {row['two_stage_ms_per_query']:>10.3f} "
              f"{row['ratio_two_stage_vs_stage1']:>7.1f}")
    if args.out is not None:
        from irkit.io import atomic_write_json

        atomic_write_json(args.out, result, indent=2)


if __name__ == "__main__":
    main()
