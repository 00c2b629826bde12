"""Gallery-embedding throughput: irkit's ``encode_image_files`` (precision ``auto``) against the
published scripts' plain fp32 loop, with matmul probes and, where a goal is missed, stage costs.

One run reports, per model (default irkit-tiny and ViT-B-32, random weights: timing only):

* the fp32 and bf16 ``torch.mm`` probes (GFLOP/s), and which one is this machine's ceiling;
* irkit (``irkit.embeddings.encode_image_files``, model loaded at precision ``auto``; what auto
  resolved to and why is printed) against the plain loop (PIL open, preprocess, stack,
  ``encode_image`` under ``no_grad``, fp32, contiguous memory format, one process with all
  torch threads): images/s of both, interleaved in the same run, and their ratio (goal >= 2x);
* irkit's achieved GFLOP/s = FLOPs per image (``FlopCounterMode`` on ``encode_image``) x irkit
  images/s, as a share of the bf16 probe (goal >= 50 % for ViT-B-32) and of the best probe;
* that both return the same embeddings (fp32: max abs diff <= 1e-4; bf16: cosine >= 0.99);
* when a goal is missed: per-image decode, transform, forward (resolved precision and fp32)
  and worker/IPC overhead as shares of irkit's per-image time.

The last lines, one per model, read ``<model>: irkit/plain ratio X.XXx, share of bf16 probe YY%``.

    python bench/bench_embed.py                         # 512 generated JPEGs, both models
    python bench/bench_embed.py --images 32 --repeats 1 --models irkit-tiny   # smoke run
    python bench/bench_embed.py --image-dir DIR --json bench/output/bench_embed.json

Others sharing the CPU distort every number here: check ``uptime`` first (the 1-minute load
average is printed at the start and the end); ratios are measured within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.flop_counter import FlopCounterMode

from irkit.embeddings import collect_image_paths, encode_image_files, num_threads, torch_threads
from irkit.errors import InputError
from irkit.io import atomic_write_json
from irkit.models import LoadedModel, create_model
from irkit.models.factory import has_convolutions
from irkit.precision import resolve_precision

DEFAULT_MODELS = ("irkit-tiny", "ViT-B-32")
RATIO_GOAL = 2.0                                  # irkit images/s over the plain loop's
SHARE_GOALS = {"ViT-B-32": 0.50}                  # achieved GFLOP/s over the bf16 probe
FP32_TOLERANCE = 1e-4                             # max abs embedding difference, fp32 vs fp32
COSINE_TOLERANCE = 0.99                           # min cosine when irkit runs in bf16/fp16


def generate_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of 100-200 px per side with photo-like content (gradients, shapes, noise)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        width, height = (int(v) for v in rng.integers(100, 201, size=2))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = rng.uniform(0, 255, size=3)
        slope = rng.uniform(-1.0, 1.0, size=(3, 2))
        pixels = np.stack([base[c] + slope[c, 0] * xx + slope[c, 1] * yy for c in range(3)], -1)
        pixels += rng.normal(0, 8, size=pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
            x1, y1 = x0 + int(rng.integers(5, width // 2)), y0 + int(rng.integers(5, height // 2))
            draw.rectangle([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        path = folder / f"img_{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def plain_loop(loaded: LoadedModel, paths: Sequence[Path], batch_size: int) -> np.ndarray:
    """The published scripts' way -> ``[N, D]`` L2-normalised: one process, PIL open +
    preprocess, stack, ``encode_image`` under ``no_grad`` in the model's own dtype (fp32)."""
    rows = []
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = [loaded.preprocess(Image.open(p).convert("RGB")) for p in paths[start:start + batch_size]]
            features = loaded.model.encode_image(torch.stack(batch))
            rows.append((features / features.norm(dim=-1, keepdim=True)).numpy())
    return np.concatenate(rows)


def time_call(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def matmul_probe(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 3) -> float:
    """Best GFLOP/s of ``torch.mm`` on two ``size x size`` matrices of ``dtype`` (2 n^3 FLOPs)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def count_flops(fn: Callable[..., Any], *inputs: Any) -> int:
    """FLOPs (multiply-add = 2) that ``FlopCounterMode`` counts for ``fn(*inputs)``.

    Counted with autograd on: under no_grad, nn.MultiheadAttention takes a fused fast path
    whose projections FlopCounterMode does not see (it would under-count by a third).
    """
    with FlopCounterMode(display=False) as counter, torch.enable_grad():
        fn(*inputs)
    return int(counter.get_total_flops())


def flops_per_image(loaded: LoadedModel, batch: int = 4) -> int:
    """FLOPs of one ``[3, S, S]`` image through ``loaded.model.encode_image``."""
    pixels = torch.zeros(batch, 3, loaded.image_size, loaded.image_size)
    return count_flops(loaded.model.encode_image, pixels) // batch


def stage_costs(loaded: LoadedModel, paths: Sequence[Path], batch_size: int, threads: int = 1) -> dict[str, float]:
    """Per-image milliseconds of irkit's stages on ``paths`` (at most 2 batches' worth).

    ``decode_ms`` (PIL open + RGB) and ``transform_ms`` (the model's preprocess) in CPU seconds
    of this process (robust to other load); ``forward_ms`` (``encode_images`` in the model's
    precision, under its autocast) and ``forward_fp32_ms`` (no autocast) in wall seconds on a
    preloaded batch with ``threads`` torch threads (1 = what each irkit CPU worker uses).
    """
    sample = list(paths[: max(1, min(len(paths), 2 * batch_size))])
    start = time.process_time()
    images = [Image.open(p).convert("RGB") for p in sample]
    decode_ms = (time.process_time() - start) / len(sample) * 1e3
    start = time.process_time()
    pixels = torch.stack([loaded.preprocess(image) for image in images])
    transform_ms = (time.process_time() - start) / len(sample) * 1e3

    def forward(autocast: bool) -> float:
        context = loaded.autocast() if autocast else torch.autocast("cpu", enabled=False)
        with torch_threads(threads), torch.inference_mode(), context:
            loaded.model.encode_image(pixels[:batch_size])  # warm-up
            start = time.perf_counter()
            for begin in range(0, len(sample), batch_size):
                loaded.model.encode_image(pixels[begin:begin + batch_size])
            return (time.perf_counter() - start) / len(sample) * 1e3

    return {"decode_ms": decode_ms, "transform_ms": transform_ms, "forward_ms": forward(True),
            "forward_fp32_ms": forward(False)}


def stage_shares(stages: dict[str, float], irkit_ms_per_image: float, workers: int) -> dict[str, float]:
    """Each stage's share of irkit's per-image wall time when ``workers`` processes run it in
    parallel (stage ms / workers / irkit ms); ``overhead`` = what the stages leave unexplained
    (worker start-up, IPC, scheduling, other load)."""
    parallel = max(1, workers)
    shares = {name: stages[f"{name}_ms"] / parallel / irkit_ms_per_image
              for name in ("decode", "transform", "forward")}
    shares["overhead"] = 1.0 - sum(shares.values())
    return shares


def compare_embeddings(reference: np.ndarray, other: np.ndarray, fp32: bool) -> dict[str, Any]:
    """Equality check of two ``[N, D]`` normalised embedding sets: fp32 -> max abs difference
    <= :data:`FP32_TOLERANCE`; reduced precision -> min row cosine >= :data:`COSINE_TOLERANCE`."""
    max_diff = float(np.abs(reference - other).max())
    cosine = np.sum(reference * other, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1))
    min_cosine = float(cosine.min())
    if fp32:
        return {"criterion": f"max abs diff <= {FP32_TOLERANCE:g}", "max_abs_diff": max_diff,
                "min_cosine": min_cosine, "equal": max_diff <= FP32_TOLERANCE}
    return {"criterion": f"cosine >= {COSINE_TOLERANCE} (irkit runs in reduced precision)",
            "max_abs_diff": max_diff, "min_cosine": min_cosine, "equal": min_cosine >= COSINE_TOLERANCE}


def busy_workers(images: int, batch_size: int, workers: int) -> int:
    """How many of ``workers`` processes get a batch of ``images`` (at least 1: the main process)."""
    return max(1, min(workers, -(-images // batch_size)))


def load_average_1min() -> float:
    """The 1-minute load average (NaN where unknown)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return float("nan")


def bench_model(name: str, paths: Sequence[Path], args: argparse.Namespace, workers: int,
                probes: dict[str, float]) -> dict[str, Any]:
    """Time the plain loop and irkit on ``paths`` for model ``name``; the per-model results."""
    irkit_model = create_model(name, random_init=True, precision="auto")
    plain_model = create_model(name, random_init=True, precision="fp32", memory_format="contiguous")
    batch = args.batch_size
    runs = {
        "plain": lambda: plain_loop(plain_model, paths, batch),
        "irkit": lambda: encode_image_files(irkit_model, paths, batch_size=batch, num_workers=workers,
                                            cache_dir=None),
    }
    warm = paths[: min(len(paths), batch)]
    plain_loop(plain_model, warm, batch)  # first-call allocations, lazy inits
    encode_image_files(irkit_model, warm, batch_size=batch, num_workers=workers)
    times: dict[str, list[float]] = {run: [] for run in runs}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        for run, fn in runs.items():
            seconds, outputs[run] = time_call(fn)
            times[run].append(seconds)
    best = {run: len(paths) / min(t) for run, t in times.items()}
    median = {run: len(paths) / statistics.median(t) for run, t in times.items()}
    flops = flops_per_image(plain_model)
    achieved = flops * best["irkit"] / 1e9
    ratio = best["irkit"] / best["plain"]
    share_bf16 = achieved / probes["bf16"]
    share_best = achieved / max(probes.values())
    goals = {"ratio": ratio >= RATIO_GOAL}
    if name in SHARE_GOALS:
        goals["share_of_bf16_probe"] = share_bf16 >= SHARE_GOALS[name]
    result: dict[str, Any] = {
        "model": name, "image_size": irkit_model.image_size,
        "precision": resolve_precision("auto", "cpu").to_json(),
        "channels_last": has_convolutions(irkit_model.model.visual),
        "plain_images_per_s": best["plain"], "irkit_images_per_s": best["irkit"],
        "plain_images_per_s_median": median["plain"], "irkit_images_per_s_median": median["irkit"],
        "seconds": times,
        "irkit_plain_ratio": ratio, "ratio_goal": RATIO_GOAL,
        "gflop_per_image": flops / 1e9, "achieved_gflops": achieved,
        "share_of_bf16_probe": share_bf16, "share_of_best_probe": share_best,
        "share_goal": SHARE_GOALS.get(name),
        "equality": compare_embeddings(outputs["plain"], outputs["irkit"], irkit_model.precision == "fp32"),
        "goals_met": goals,
    }
    if not all(goals.values()) or args.stages:
        stages = stage_costs(irkit_model, paths, batch)
        irkit_ms = 1e3 / best["irkit"]
        result["stages_ms_per_image_1_thread"] = stages
        result["irkit_ms_per_image"] = irkit_ms
        result["plain_ms_per_image"] = 1e3 / best["plain"]
        result["stage_shares_of_irkit"] = stage_shares(stages, irkit_ms, busy_workers(len(paths), batch, workers))
    return result


def print_model(result: dict[str, Any], workers: int) -> None:
    """The human-readable block of one model (not its final summary line)."""
    name = result["model"]
    print(f"\n== {name} ({result['image_size']} px, {result['gflop_per_image']:.3f} GFLOP/image; irkit "
          f"{result['precision']['name']}{', channels-last' if result['channels_last'] else ''}; "
          f"plain fp32, contiguous)")
    print(f"{'path':<40}{'best img/s':>12}{'median img/s':>14}")
    print(f"{'plain loop (1 process, all threads)':<40}{result['plain_images_per_s']:>12.1f}"
          f"{result['plain_images_per_s_median']:>14.1f}")
    print(f"{f'irkit encode_image_files ({workers} workers)':<40}{result['irkit_images_per_s']:>12.1f}"
          f"{result['irkit_images_per_s_median']:>14.1f}")
    eq = result["equality"]
    print(f"embeddings irkit vs plain: max abs diff {eq['max_abs_diff']:.2e}, min cosine {eq['min_cosine']:.6f} "
          f"-> {'EQUAL' if eq['equal'] else 'DIFFERENT'} ({eq['criterion']})")
    print(f"irkit achieved {result['achieved_gflops']:.1f} GFLOP/s = {100 * result['share_of_bf16_probe']:.0f}% "
          f"of the bf16 probe, {100 * result['share_of_best_probe']:.0f}% of the best probe")
    missed = [goal for goal, met in result["goals_met"].items() if not met]
    goal_text = f"ratio >= {RATIO_GOAL:g}x" + (f", share of bf16 probe >= {100 * result['share_goal']:.0f}%"
                                               if result["share_goal"] else "")
    print(f"goals ({goal_text}): {'met' if not missed else 'MISSED: ' + ', '.join(missed)}")
    if "stage_shares_of_irkit" in result:
        stages, shares = result["stages_ms_per_image_1_thread"], result["stage_shares_of_irkit"]
        print(f"stage costs (ms per image on 1 thread; share of irkit's {result['irkit_ms_per_image']:.2f} ms/image "
              f"wall with {workers} workers in parallel; plain loop: {result['plain_ms_per_image']:.2f} ms/image):")
        for stage, label in (("decode", "decode (PIL open + RGB)"), ("transform", "transform (preprocess)"),
                             ("forward", f"forward ({result['precision']['name']}, preloaded batch)")):
            print(f"  {label:<38}{stages[stage + '_ms']:>9.2f} ms {100 * shares[stage]:>6.0f}%")
        print(f"  {'forward in fp32 (for comparison)':<38}{stages['forward_fp32_ms']:>9.2f} ms")
        print(f"  {'worker/IPC overhead (wall - stages)':<38}{'':>12}{100 * shares['overhead']:>6.0f}%  "
              "(includes any other load on the CPU)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated open_clip model names (random weights)")
    parser.add_argument("--images", type=int, default=512, help="number of images (generated, or the first n)")
    parser.add_argument("--image-dir", type=Path, default=None, help="image folder or list (default: generate)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=None,
                        help="irkit's worker processes (default: $IRKIT_NUM_THREADS or the CPU count)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (interleaved; best kept)")
    parser.add_argument("--probe-size", type=int, default=2048, help="side of the probe matrices")
    parser.add_argument("--stages", action="store_true", help="print stage costs even when the goals are met")
    parser.add_argument("--json", type=Path, default=None, help="also write every number here (JSON)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--images, --batch-size and --repeats must be positive")

    threads = num_threads()
    torch.set_num_threads(threads)
    workers = args.num_workers if args.num_workers is not None else threads
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    load_start = load_average_1min()
    print(f"1-min load average at start: {load_start:.2f} on {os.cpu_count()} CPUs (check `uptime`: "
          "others sharing the CPU distort every number)")
    auto = resolve_precision("auto", "cpu")
    print(f"irkit path: {auto.describe()}")
    probes = {"fp32": matmul_probe(torch.float32, args.probe_size),
              "bf16": matmul_probe(torch.bfloat16, args.probe_size)}
    ceiling = max(probes, key=probes.get)
    print(f"matmul probes ({args.probe_size}^2, {threads} threads): fp32 {probes['fp32']:.1f} GFLOP/s, "
          f"bf16 {probes['bf16']:.1f} GFLOP/s -> this machine's ceiling is the {ceiling} probe"
          + ("" if ceiling == "bf16" else " (bf16 is slower here: no bf16 matrix units)"))

    results = []
    with tempfile.TemporaryDirectory(prefix="irkit-bench-") as tmp:
        if args.image_dir is None:
            paths = generate_images(Path(tmp), args.images)
        else:
            try:
                paths = collect_image_paths(args.image_dir)[: args.images]
            except InputError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        for path in paths:  # page cache warm for both paths
            path.read_bytes()
        print(f"{len(paths)} images, batch {args.batch_size}, {threads} torch threads (plain), "
              f"{workers} irkit workers")
        for name in models:
            result = bench_model(name, paths, args, workers, probes)
            print_model(result, workers)
            results.append(result)
    load_end = load_average_1min()
    print(f"\n1-min load average at end: {load_end:.2f}")
    if args.json:
        atomic_write_json(args.json, {
            "images": len(paths), "batch_size": args.batch_size, "torch_threads": threads, "num_workers": workers,
            "cpu_count": os.cpu_count(), "load_1min_start": load_start, "load_1min_end": load_end,
            "precision_auto": auto.to_json(), "probes_gflops": probes, "ceiling_probe": ceiling,
            "models": results,
        }, indent=2)
    for result in results:
        print(f"{result['model']}: irkit/plain ratio {result['irkit_plain_ratio']:.2f}x, "
              f"share of bf16 probe {100 * result['share_of_bf16_probe']:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
