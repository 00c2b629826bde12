"""Search at scale: exact search vs the memory / matmul bounds, and the ANN index vs exact, in one run.

On an N x D gallery with cluster structure (a Gaussian mixture: ``--centres`` unit centres,
rows = centre + noise of norm ``--noise``, L2-normalised; uniform random vectors would make ANN
recall meaningless), written as a collection of float32 shards (clip-retrieval layout):

1. stream-read bandwidth (best of several full passes: numpy max, torch amax / sum) -> the
   memory bound of one exact query = gallery bytes / bandwidth;
2. exact single-query latency (``irkit.index.ExactIndex`` built once, in memory) and its share
   of the bound; batched exact queries/s and GFLOP/s vs a ``torch.mm`` probe of the same shapes;
   exact search streamed from the memory-mapped shards (same answers checked);
3. ``irkit index build`` in a child process (build time, index size, child peak RSS), then ANN
   queries/s and recall@10 against exact on held-out queries (rows + noise, another seed);
4. peak RSS of this process.

    python bench/bench_search.py                    # 1,000,000 x 512, 4096 centres (~2 GB of shards)
    python bench/bench_search.py --quick            # small smoke size

The last line is ``ann/exact qps ratio: X at recall@10 Y`` (batched ANN qps / batched exact qps).
Others sharing the CPU distort every number here: run it on a quiet machine (``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from irkit.collection import collection_searcher, open_embedding_shards
from irkit.embeddings import num_threads
from irkit.index import ExactIndex
from irkit.search_index import held_out_queries, recall_at_k


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def write_clustered_collection(folder: Path, n: int, dim: int, centres: int, noise: float, shards: int,
                               seed: int = 0) -> None:
    """Shards ``img_emb/img_emb_<i>.npy`` (float32) + ``metadata/metadata_<i>.parquet``, chunk by chunk."""
    rng = np.random.default_rng(seed)
    centre_rows = rng.standard_normal((centres, dim), dtype=np.float32)
    centre_rows /= np.linalg.norm(centre_rows, axis=1, keepdims=True)
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    bounds = [int(b) for b in np.linspace(0, n, shards + 1)]
    for shard, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        out = np.lib.format.open_memmap(folder / "img_emb" / f"img_emb_{shard}.npy", mode="w+",
                                        dtype=np.float32, shape=(int(hi - lo), dim))
        for start in range(0, hi - lo, 65536):
            m = min(65536, hi - lo - start)
            rows = centre_rows[rng.integers(0, centres, m)]
            rows += rng.standard_normal((m, dim), dtype=np.float32) * (noise / np.sqrt(dim))
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
            out[start:start + m] = rows
        out.flush()
        del out
        pd.DataFrame({"image_path": [f"/gallery/{i}.jpg" for i in range(lo, hi)]}).to_parquet(
            folder / "metadata" / f"metadata_{shard}.parquet", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--centres", type=int, default=4096)
    parser.add_argument("--noise", type=float, default=0.7, help="noise norm per row before normalising")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=1000, help="batched queries (exact and ANN)")
    parser.add_argument("--single", type=int, default=20, help="single queries timed one by one")
    parser.add_argument("--max-memory", default="4G", help="irkit index build --max-memory")
    parser.add_argument("--workdir", type=Path, default=None, help="where the collection goes (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="smoke size: 20000 x 64, 200 centres, 200 queries")
    args = parser.parse_args()
    if args.quick:
        args.n, args.dim, args.centres, args.queries, args.single, args.shards = 20000, 64, 200, 200, 5, 2
    threads = num_threads()
    torch.set_num_threads(threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench_search.", dir=args.workdir))
    report: dict[str, object] = {"n": args.n, "dim": args.dim, "centres": args.centres, "noise": args.noise,
                                 "shards": args.shards, "threads": threads, "load_average": os.getloadavg()}
    try:
        collection = workdir / "collection"
        tic = time.perf_counter()
        write_clustered_collection(collection, args.n, args.dim, args.centres, args.noise, args.shards)
        report["generate_s"] = round(time.perf_counter() - tic, 2)

        shard_paths = sorted((collection / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(p.stem.split("_")[-1]))
        gallery = np.empty((args.n, args.dim), np.float32)
        offset = 0
        for path in shard_paths:  # one copy in memory, filled shard by shard
            shard = np.load(path, mmap_mode="r")
            gallery[offset:offset + len(shard)] = shard
            offset += len(shard)
            del shard
        gbytes = gallery.nbytes
        gallery_t = torch.from_numpy(gallery)
        kernels = {"numpy max": lambda: gallery.max(), "torch amax": lambda: gallery_t.amax(),
                   "torch sum": lambda: gallery_t.sum()}
        bandwidth = {name: gbytes / best_seconds(fn, 5) / 1e9 for name, fn in kernels.items()}
        best_bw = max(bandwidth.values())
        bound_ms = gbytes / (best_bw * 1e9) * 1e3
        report["stream_read_GBps"] = {k: round(v, 2) for k, v in bandwidth.items()}
        report["memory_bound_ms"] = round(bound_ms, 2)

        queries, _ = held_out_queries([gallery], args.queries, seed=12345)
        exact = ExactIndex(gallery)
        singles = []
        for q in queries[:args.single]:
            start = time.perf_counter()
            exact.search(q[None], 10)
            singles.append(time.perf_counter() - start)
        single_ms = statistics.median(singles) * 1e3
        report["exact_single_query_ms"] = {"median": round(single_ms, 2), "best": round(min(singles) * 1e3, 2)}
        report["exact_single_share_of_bound"] = round(bound_ms / single_ms, 3)

        start = time.perf_counter()
        _, truth = exact.search(queries, 10)
        batch_s = time.perf_counter() - start
        exact_qps = len(queries) / batch_s
        flops = 2.0 * args.n * args.dim * len(queries)
        a = torch.randn(min(256, len(queries)), args.dim)
        b = torch.randn(args.dim, min(65536, args.n))
        probe_gflops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1] / best_seconds(lambda: a @ b, 5) / 1e9
        report["exact_batched"] = {"queries": len(queries), "qps": round(exact_qps, 2),
                                   "GFLOPps": round(flops / batch_s / 1e9, 2),
                                   "matmul_probe_GFLOPps": round(probe_gflops, 2),
                                   "share_of_probe": round(flops / batch_s / 1e9 / probe_gflops, 3)}
        del kernels, gallery_t, exact, gallery  # the in-memory copy goes before the mmap'd and ANN runs

        streamed = ExactIndex(open_embedding_shards(collection)[0])  # memory-mapped shards, chunked
        start = time.perf_counter()
        _, streamed_rows = streamed.search(queries, 10)
        report["exact_streamed_mmap_qps"] = round(len(queries) / (time.perf_counter() - start), 2)
        report["exact_streamed_equals_in_memory"] = bool(np.array_equal(streamed_rows, truth))
        del streamed

        start = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        build = subprocess.run([sys.executable, "-m", "irkit", "index", "build", "--collection", str(collection),
                                "--max-memory", args.max_memory, "--queries", str(min(args.queries, 1000))],
                               capture_output=True, text=True)
        build_wall = time.perf_counter() - start
        if build.returncode != 0:
            raise SystemExit(f"index build failed: {build.stderr.strip()}")
        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        infos = json.loads((collection / "index" / "image.json").read_text())
        report["ann_build"] = {"index_key": infos["index_key"], "index_param": infos["index_param"],
                               "index_bytes": infos["size in bytes"], "build_s": infos["build"]["seconds"],
                               "train_s": infos["build"]["train_seconds"], "add_s": infos["build"]["add_seconds"],
                               "command_wall_s": round(build_wall, 2),
                               "recall_at_build": infos["recall"]["value"],
                               "peak_rss_MB": round(max(child_peak, before) / 1024, 1),
                               "peak_rss_note": "includes file-backed pages of the memory-mapped shards"}

        ann = collection_searcher(collection)
        ann.search(queries[:10], 10)  # warm the index pages
        start = time.perf_counter()
        _, found = ann.search(queries, 10)
        ann_qps = len(queries) / (time.perf_counter() - start)
        singles = []
        for q in queries[:args.single]:
            start = time.perf_counter()
            ann.search(q[None], 10)
            singles.append(time.perf_counter() - start)
        recall = recall_at_k(found, truth)
        report["ann_search"] = {"search": ann.description, "qps": round(ann_qps, 2),
                                "single_query_ms": round(statistics.median(singles) * 1e3, 3),
                                "recall_at_10": round(recall, 4)}
        report["peak_rss_MB_bench_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        report["load_average_end"] = os.getloadavg()
        print(json.dumps(report, indent=2))
        print(f"ann/exact qps ratio: {ann_qps / exact_qps:.1f} at recall@10 {recall:.3f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
