"""Measured accuracy of bf16 against fp32: the same weights, encoded in each precision, scored.

Per benchmark: the metric in fp32 and in bf16 (explicit precisions, not ``auto``), their
difference (bf16 - fp32), the mean top-10 overlap of the two rankings (|top10 fp32 & top10 bf16|
/ 10 per query) and the mean cosine between the fp32 and the bf16 embedding of each gallery
image and each query.

* traffic (``--traffic-root``, default data/demo/traffic; ``--checkpoint``, default
  best-result-review/model_fp16.safetensors): test split, official mAP@10 (and standard mAP@10,
  R@K) by irkit's traffic scorer (``irkit.benchmarks.traffic.evaluate_traffic_submission``) of
  the answers of ``irkit.traffic.inference.infer_traffic``; prompt as in the checkpoint
  folder's ``inference.json`` (else ``--prompt``).
* CIRR val (only with ``--cirr-root``; ``--cirr-checkpoint`` defaults to ``--checkpoint``):
  R@1/R@5/R@10 and Rs@1 (Rsubset@1) of the image+text baseline (``image-text-sum``, backbone only).

Writes ``<out-dir>/bench_precision.json`` and ``bench_precision.md`` (atomically) and prints the
table. bf16 is several times slower than fp32 on CPUs without bf16 matrix units; ``--limit N``
keeps the first N queries and gallery images per kind for a smoke run.

    python bench/bench_precision.py
    python bench/bench_precision.py --cirr-root data/demo/cirr --cirr-checkpoint CIR_CKPT
    python bench/bench_precision.py --limit 20          # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from irkit.benchmarks.traffic import evaluate_traffic_submission
from irkit.cir import protocol
from irkit.cir.context import CIRContext
from irkit.cir.evaluate import flatten_metrics, load_cir_splits
from irkit.cir.registry import create_method
from irkit.data.traffic import load_traffic
from irkit.embeddings import encode_image_files, num_threads
from irkit.errors import InputError
from irkit.io import atomic_write_json, atomic_write_text
from irkit.models import create_model
from irkit.models.factory import read_weights_metadata
from irkit.traffic.inference import PROMPT_MODES, count_vehicle_queries, gallery_kind_split, infer_traffic, prompt_text

PRECISIONS = ("fp32", "bf16")
TOP = 10
TRAFFIC_METRICS = ("official_mAP@10", "standard_mAP@10", "R@1", "R@5", "R@10")
CIRR_METRICS = ("R@1", "R@5", "R@10", "Rs@1")          # Rs@1: subset recall (Rsubset@1)


def top_overlap(first: Sequence[Sequence[str]], second: Sequence[Sequence[str]], k: int = TOP) -> float:
    """Mean over queries of |top-k of ``first`` & top-k of ``second``| / k (1.0 = same sets)."""
    if len(first) != len(second) or not first:
        raise ValueError("expected two equally long, non-empty lists of rankings")
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(first, second)]))


def mean_row_cosine(first: np.ndarray, second: np.ndarray) -> float:
    """Mean cosine similarity of corresponding rows of two ``[N, D]`` arrays."""
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    cosine = np.sum(first * second, axis=1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))
    return float(cosine.mean())


def model_name_of(checkpoint: Path, fallback: str) -> str:
    """The model name a ``.safetensors`` file's metadata records, else ``fallback``."""
    return read_weights_metadata(checkpoint).get("model_name") or fallback


def checkpoint_prompt(checkpoint: Path) -> Optional[str]:
    """The prompt mode in the ``inference.json`` beside ``checkpoint``, when there is one."""
    path = checkpoint.parent / "inference.json"
    try:
        prompt = json.loads(path.read_text(encoding="utf-8")).get("prompt")
    except (OSError, ValueError, AttributeError):
        return None
    return prompt if prompt in PROMPT_MODES else None


def limited_traffic_split(root: Path, limit: Optional[int]) -> tuple[Any, int]:
    """The test split (first ``limit`` queries and gallery images per kind) and its vehicle query count."""
    split = load_traffic(root, "test")
    vehicles = count_vehicle_queries(split.queries, source=root / "test" / "test_text.txt")
    if limit is None:
        return split, vehicles
    galleries = gallery_kind_split(split.gallery, source=split.image_dir)
    keep = max(limit, TOP)
    gallery = sorted(galleries["vehicle"][:keep] + galleries["person"][:keep])
    queries = split.queries[:vehicles][:limit] + split.queries[vehicles:][:limit]
    return dataclasses.replace(split, queries=queries, gallery=gallery), min(vehicles, limit)


def traffic_precisions(root: Path, checkpoint: Path, model: str, prompt: str, limit: Optional[int],
                       batch_size: int, workers: int) -> dict[str, Any]:
    """fp32 and bf16 traffic test scores, rankings overlap and embedding cosines."""
    split, vehicles = limited_traffic_split(root, limit)
    if split.ground_truth is None:
        raise InputError("the test split has no ground truth; expected test/test_ground_truth.txt", path=root)
    galleries = gallery_kind_split(split.gallery, source=split.image_dir)
    kinds = {"vehicle": split.queries[:vehicles], "person": split.queries[vehicles:]}
    runs: dict[str, dict[str, Any]] = {}
    for precision in PRECISIONS:
        loaded = create_model(model, checkpoint=checkpoint, precision=precision)
        with tempfile.TemporaryDirectory(prefix="irkit-precision-") as cache:  # the gallery is encoded once
            inference = infer_traffic(split, loaded, prompt=prompt, batch_size=batch_size, num_workers=workers,
                                      cache_dir=cache, num_vehicle_queries=vehicles)
            images = np.concatenate([encode_image_files(loaded, [split.image_dir / n for n in galleries[kind]],
                                                        batch_size=batch_size, num_workers=workers, cache_dir=cache)
                                     for kind in ("vehicle", "person")])
        metrics = evaluate_traffic_submission(inference.submission(), split.ground_truth, queries=split.queries)
        texts = loaded.encode_texts([prompt_text(q, kind, prompt) for kind in ("vehicle", "person")
                                     for q in kinds[kind]])
        runs[precision] = {"metrics": metrics, "images": images, "texts": texts,
                           "rankings": inference.vehicle.rankings + inference.person.rankings}
    return summarise("traffic test", runs, TRAFFIC_METRICS, "official_mAP@10", "fraction", {
        "root": str(root), "checkpoint": str(checkpoint), "model": model, "prompt": prompt,
        "queries": len(split.queries), "gallery": len(split.gallery), "limit": limit})


def cirr_precisions(root: Path, checkpoint: Path, model: str, limit: Optional[int], batch_size: int,
                    workers: int) -> dict[str, Any]:
    """fp32 and bf16 CIRR val scores of the image+text baseline, overlap and cosines."""
    (split,) = load_cir_splits("cirr", root, "val")
    if limit is not None:
        split = dataclasses.replace(split, queries=split.queries[:limit])
    method = create_method("image-text-sum")
    runs: dict[str, dict[str, Any]] = {}
    for precision in PRECISIONS:
        ctx = CIRContext(create_model(model, checkpoint=checkpoint, precision=precision), cache_dir=None,
                         batch_size=batch_size, num_workers=workers)
        queries = ctx.query_embeddings(method, split)
        gallery = method.gallery_embeddings(ctx, split)
        rankings, subsets = protocol.rank_for_scoring(split, queries, gallery)
        metrics = flatten_metrics(protocol.evaluate_rankings(split, rankings, subset_rankings=subsets))
        runs[precision] = {"metrics": metrics, "images": gallery, "texts": queries,
                           "rankings": [rankings[q.query_id] for q in split.queries]}
    return summarise("CIRR val (image-text-sum)", runs, CIRR_METRICS, "R@1", "percent", {
        "root": str(root), "checkpoint": str(checkpoint), "model": model, "method": method.name,
        "queries": len(split.queries), "gallery": len(split.gallery), "limit": limit})


def summarise(name: str, runs: dict[str, dict[str, Any]], metric_names: Sequence[str], headline: str,
              units: str, setup: dict[str, Any]) -> dict[str, Any]:
    """One benchmark's record: metrics per precision, differences, top-10 overlap, cosines."""
    fp32, bf16 = runs["fp32"], runs["bf16"]
    metrics = {m: {"fp32": float(fp32["metrics"][m]), "bf16": float(bf16["metrics"][m]),
                   "difference": float(bf16["metrics"][m]) - float(fp32["metrics"][m])}
               for m in metric_names if m in fp32["metrics"]}
    return {"benchmark": name, "headline": headline, **setup, "metrics": metrics,
            "units": units,
            "top10_overlap": top_overlap(fp32["rankings"], bf16["rankings"]),
            "gallery_cosine": mean_row_cosine(fp32["images"], bf16["images"]),
            "query_cosine": mean_row_cosine(fp32["texts"], bf16["texts"])}


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """The markdown table: one row per benchmark and metric."""
    lines = ["| benchmark | metric | fp32 | bf16 | bf16 - fp32 | top-10 overlap | cosine gallery / queries |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for result in results:
        for metric, values in result["metrics"].items():
            lines.append(f"| {result['benchmark']} | {metric} | {values['fp32']:.4f} | {values['bf16']:.4f} | "
                         f"{values['difference']:+.4f} | {result['top10_overlap']:.3f} | "
                         f"{result['gallery_cosine']:.5f} / {result['query_cosine']:.5f} |")
    units = "; ".join(f"{r['benchmark']}: {r['units']}, {r['queries']} queries, {r['gallery']} gallery images"
                      + (f" (--limit {r['limit']})" if r["limit"] else "") for r in results)
    return "\n".join(lines) + f"\n\n{units}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traffic-root", type=Path, default=Path("data/demo/traffic"))
    parser.add_argument("--checkpoint", type=Path, default=Path("best-result-review/model_fp16.safetensors"))
    parser.add_argument("--model", default="irkit-tiny", help="model name when the checkpoint's metadata has none")
    parser.add_argument("--prompt", choices=PROMPT_MODES, default=None,
                        help="traffic prompt mode (default: the checkpoint folder's inference.json, else suffix)")
    parser.add_argument("--no-traffic", action="store_true", help="skip the traffic benchmark")
    parser.add_argument("--cirr-root", type=Path, default=None, help="CIRR root (its val split is scored)")
    parser.add_argument("--cirr-checkpoint", type=Path, default=None, help="default: --checkpoint")
    parser.add_argument("--limit", type=int, default=None, help="first N queries / gallery images per kind")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=None, help="default: $IRKIT_NUM_THREADS or the CPUs")
    parser.add_argument("--out-dir", type=Path, default=Path("bench/output"))
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be positive")
    workers = num_threads() if args.num_workers is None else args.num_workers
    results = []
    try:
        if not args.no_traffic:
            prompt = args.prompt or checkpoint_prompt(args.checkpoint) or "suffix"
            results.append(traffic_precisions(args.traffic_root, args.checkpoint,
                                              model_name_of(args.checkpoint, args.model), prompt, args.limit,
                                              args.batch_size, workers))
        if args.cirr_root is not None:
            checkpoint = args.cirr_checkpoint or args.checkpoint
            results.append(cirr_precisions(args.cirr_root, checkpoint, model_name_of(checkpoint, args.model),
                                           args.limit, args.batch_size, workers))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not results:
        parser.error("nothing to measure: give --cirr-root or drop --no-traffic")
    table = markdown(results)
    atomic_write_json(args.out_dir / "bench_precision.json", {"benchmarks": results}, indent=2)
    atomic_write_text(args.out_dir / "bench_precision.md", table)
    print(table)
    print(f"wrote {args.out_dir / 'bench_precision.json'} and {args.out_dir / 'bench_precision.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
