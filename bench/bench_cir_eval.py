"""Cold vs warm ``irkit cir eval --dataset cirr --method lincir``: what the embedding cache saves.

Each eval is a whole ``python -m irkit cir eval`` subprocess (imports, model creation, data
loading, query encoding, ranking), all with the same ``--cache-dir``: the first run starts from
an empty cache folder (cold: it encodes the gallery images, normalised, the reference images,
unnormalised: LinCIR's phi input, and the queries: phi's pseudo tokens in the prompts); the next
``--warm-repeats`` runs find all three in the cache (warm: the query embeddings are keyed by the
phi file's content). Process start-up and model creation are paid by every run, so the ratio
cold / warm shows what the cache saves above that floor (``imports only`` is printed). The bench
checks that every run prints the same metrics and that the cache holds each kind of entry.

Every subprocess gets ``IRKIT_NUM_THREADS`` and ``OMP_NUM_THREADS`` = ``--threads`` (the
``cir`` commands run all their torch work, text encoding included, on ``$IRKIT_NUM_THREADS``
threads), so cold and warm runs use the same number of cores.

The LinCIR phi is trained here by a short ``irkit cir train-phi --method lincir`` on the demo's
CIRR train captions (text only, no images, no validation: the cache stays empty for the cold
run); its weights do not change the eval's cost.

    python bench/bench_cir_eval.py                    # demo CIRR (full scale), irkit-tiny
    python bench/bench_cir_eval.py --scale small --warm-repeats 5
    python bench/bench_cir_eval.py --demo DEMO_DIR    # reuse a folder from `irkit data demo`

Others sharing the CPU distort every number here: run it on a quiet machine (``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from bench_embed import load_average  # bench/ is on sys.path when this file runs as a script
from irkit.embeddings import num_threads


def python(args: Sequence[Any], what: str, threads: int) -> tuple[float, str]:
    """Run ``python ARGS`` with ``threads`` torch threads -> (wall seconds, stdout);
    a failure exits with its stderr tail."""
    command = [sys.executable, *(str(a) for a in args)]
    env = {**os.environ, "IRKIT_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{what} failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def irkit(args: Sequence[Any], what: str, threads: int) -> tuple[float, str]:
    """:func:`python` of ``-m irkit ARGS``."""
    return python(["-m", "irkit", *args], what, threads)


#: What every ``cir eval`` process imports before it does any work (the floor of a warm run).
IMPORTS = "import irkit.cli, irkit.cli.cir, irkit.methods, irkit.methods.textual_inversion, irkit.methods.lincir"


def cache_entries(cache_dir: Path) -> Counter:
    """``{kind: count}`` of the cache's entries (from their json records)."""
    return Counter(json.loads(p.read_text())["material"]["kind"] for p in cache_dir.glob("*.json"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=None,
                        help="existing `irkit data demo` folder with cirr/ and captions/ (default: generate)")
    parser.add_argument("--scale", default="full", choices=["tiny", "small", "full"], help="generated demo scale")
    parser.add_argument("--split", default="val")
    parser.add_argument("--model", default="irkit-tiny")
    parser.add_argument("--checkpoint", type=Path, default=None, help="backbone checkpoint (default: random init)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2, help="the eval's image workers (CLI default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: $IRKIT_NUM_THREADS or the CPU count)")
    parser.add_argument("--phi-steps", type=int, default=20, help="LinCIR phi training steps")
    parser.add_argument("--warm-repeats", type=int, default=3, help="warm runs after the cold one (median kept)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    threads = args.threads or num_threads()

    model_args = ["--model", args.model] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    encoding = ["--batch-size", args.batch_size, "--num-workers", args.num_workers]
    with tempfile.TemporaryDirectory(prefix="irkit-bench-cir-") as tmp:
        work = Path(tmp)
        demo = args.demo
        if demo is None:
            demo = work / "demo"
            seconds, _ = irkit(["data", "demo", "--out", demo, "--scale", args.scale, "--seed", 0,
                                "--datasets", "cirr", "--no-progress"], "demo data", threads)
            print(f"demo data: CIRR, scale {args.scale}, generated in {seconds:.1f} s")
        seconds, out = irkit(["cir", "train-phi", "--method", "lincir", "--captions",
                              demo / "captions" / "cirr_train.csv", "--steps", args.phi_steps,
                              "--validate-every", args.phi_steps, "--train-batch-size", 32,
                              "--log-dir", work / "log", "--name", "phi", "--cache-dir", "none",
                              *model_args, *encoding], "train-phi", threads)
        phi = json.loads(out.strip().splitlines()[-1])["latest_checkpoint"]
        print(f"LinCIR phi: {args.phi_steps} steps on {demo / 'captions' / 'cirr_train.csv'} in {seconds:.1f} s")

        cache_dir = work / "cache"
        cache_dir.mkdir()
        evaluate = ["cir", "eval", "--dataset", "cirr", "--root", demo / "cirr", "--split", args.split,
                    "--method", "lincir", "--method-checkpoint", phi, "--cache-dir", cache_dir,
                    *model_args, *encoding]
        for path in (demo / "cirr").rglob("*.png"):  # page cache warm for every run alike
            path.read_bytes()
        load_before = load_average()
        cold, cold_out = irkit(evaluate, "cold eval", threads)
        entries = cache_entries(cache_dir)
        warm, outputs = [], [cold_out]
        for _ in range(args.warm_repeats):
            seconds, out = irkit(evaluate, "warm eval", threads)
            warm.append(seconds)
            outputs.append(out)
        imports, _ = python(["-c", IMPORTS], "imports", threads)
        load_after = load_average()
        if cache_entries(cache_dir) != entries:
            sys.exit(f"warm runs wrote new cache entries: {dict(cache_entries(cache_dir))} vs {dict(entries)}")

    metrics = [json.loads(out) for out in outputs]
    same = all(m == metrics[0] for m in metrics)
    raw_cached = entries.get("image_features_raw", 0) > 0  # LinCIR's reference features went through the cache
    warm_median = statistics.median(warm)
    results = {
        "model": args.model, "scale": args.scale if args.demo is None else str(args.demo), "split": args.split,
        "num_queries": metrics[0].get("num_queries"), "batch_size": args.batch_size,
        "num_workers": args.num_workers, "threads": threads,
        "cpu_count": os.cpu_count(), "load_before": load_before, "load_after": load_after,
        "imports_s": imports, "cold_s": cold, "warm_s": warm, "warm_median_s": warm_median,
        "warm_best_s": min(warm), "cache_entries": dict(entries), "raw_features_cached": raw_cached,
        "same_metrics": same,
        "warm_cold_ratio": cold / warm_median, "saved_share_of_cold": 1 - warm_median / cold,
    }

    print(f"model {args.model}, CIRR {args.split}: {results['num_queries']} queries, batch {args.batch_size}, "
          f"{args.num_workers} image workers, {threads} torch threads per process, "
          f"load avg {load_before} -> {load_after}")
    print(f"cache after the cold run: {', '.join(f'{n} {kind}' for kind, n in sorted(entries.items()))} "
          f"(unnormalised reference features cached: {raw_cached})")
    print(f"{'run':<28}{'seconds':>10}")
    print(f"{'cold (empty cache)':<28}{cold:>10.2f}")
    for i, seconds in enumerate(warm, start=1):
        print(f"{f'warm #{i}':<28}{seconds:>10.2f}")
    print(f"{'imports only (every run)':<28}{imports:>10.2f}")
    print(f"same metrics in every run: {same}; the cache saves {100 * results['saved_share_of_cold']:.0f}% "
          "of the cold run")
    print(f"warm/cold cir eval ratio: {results['warm_cold_ratio']:.2f}x (cold / median warm; goal >= 5x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if same and raw_cached else 1


if __name__ == "__main__":
    sys.exit(main())
