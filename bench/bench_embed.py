"""Gallery-embedding throughput: irkit's ``encode_image_files`` vs a plain single-process loop.

The plain loop is how the published inference scripts embed a gallery: for each batch, open
every image with PIL, preprocess it, stack, ``model.encode_image`` under ``torch.no_grad``.
irkit's path decodes in DataLoader worker processes while the main process runs the model
(``torch.inference_mode``, sized thread pool). Both use the same model, the same preprocess,
the same images, the same batch size and the same torch thread count; the bench checks that
they return the same embeddings.

Also measured: a matmul probe (``torch.mm`` of large float32 matrices: the machine's attainable
GFLOP/s) and the model's achieved GFLOP/s = FLOPs per image (``FlopCounterMode``) x images/s.

    python bench/bench_embed.py                      # irkit-tiny, 512 generated JPEGs
    python bench/bench_embed.py --images DIR --checkpoint ckpt.safetensors --batch-size 128

Others sharing the CPU distort every number here: run it on a quiet machine (``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.flop_counter import FlopCounterMode

from irkit.embeddings import collect_image_paths, encode_image_files, num_threads
from irkit.models import LoadedModel, create_model


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
    """The published scripts' way: single process, PIL open + preprocess, encode per batch."""
    rows = []
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = [loaded.preprocess(Image.open(p).convert("RGB")) for p in paths[start:start + batch_size]]
            features = loaded.model.encode_image(torch.stack(batch))
            rows.append((features / features.norm(dim=-1, keepdim=True)).numpy())
    return np.concatenate(rows)


def time_call(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def matmul_probe(size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of ``torch.mm`` on two ``size x size`` float32 matrices."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def flops_per_image(loaded: LoadedModel) -> int:
    """Matmul/conv FLOPs of one image through the image tower (FlopCounterMode).

    Counted with autograd on: under no_grad, nn.MultiheadAttention takes a fused fast path
    whose projections FlopCounterMode does not see (it would under-count by a third).
    """
    pixels = torch.zeros(8, 3, loaded.image_size, loaded.image_size)
    with FlopCounterMode(display=False) as counter, torch.enable_grad():
        loaded.model.encode_image(pixels)
    return counter.get_total_flops() // 8


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="irkit-tiny")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--transform", default="square")
    parser.add_argument("--images", type=Path, default=None, help="image folder or list (default: generate)")
    parser.add_argument("--n", type=int, default=512, help="number of images (generated, or first n)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2, help="irkit's decoding processes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (interleaved; best kept)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    threads = num_threads()
    torch.set_num_threads(threads)
    loaded = create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                          transform=args.transform)
    with tempfile.TemporaryDirectory(prefix="irkit-bench-") as tmp:
        if args.images is None:
            paths = generate_images(Path(tmp), args.n)
        else:
            paths = collect_image_paths(args.images)[: args.n]
        for path in paths:  # page cache warm for both paths
            path.read_bytes()
        load_before = load_average()

        plain_times, irkit_times = [], []
        plain_result = irkit_result = None
        for _ in range(args.repeats):  # interleaved, so background load hits both alike
            seconds, plain_result = time_call(lambda: plain_loop(loaded, paths, args.batch_size))
            plain_times.append(seconds)
            seconds, irkit_result = time_call(lambda: encode_image_files(
                loaded, paths, batch_size=args.batch_size, num_workers=args.num_workers, cache_dir=None))
            irkit_times.append(seconds)
        probe = matmul_probe()
        load_after = load_average()

    max_diff = float(np.abs(plain_result - irkit_result).max())
    flops = flops_per_image(loaded)
    plain_rate = len(paths) / min(plain_times)
    irkit_rate = len(paths) / min(irkit_times)
    model_gflops = flops * irkit_rate / 1e9
    results = {
        "model": loaded.model_name, "weights_id": loaded.weights_id, "images": len(paths),
        "batch_size": args.batch_size, "num_workers": args.num_workers, "torch_threads": threads,
        "cpu_count": os.cpu_count(), "load_before": load_before, "load_after": load_after,
        "plain_images_per_s": plain_rate, "irkit_images_per_s": irkit_rate,
        "plain_images_per_s_median": len(paths) / statistics.median(plain_times),
        "irkit_images_per_s_median": len(paths) / statistics.median(irkit_times),
        "max_abs_diff_plain_vs_irkit": max_diff,
        "gflop_per_image": flops / 1e9, "matmul_probe_gflops": probe, "model_gflops": model_gflops,
        "irkit_plain_throughput_ratio": irkit_rate / plain_rate,
        "model_gflops_share_of_probe": model_gflops / probe,
    }

    print(f"model {loaded.model_name} ({loaded.weights_id}), {len(paths)} images, batch {args.batch_size}, "
          f"{threads} torch threads, {args.num_workers} decode workers, load avg {load_before} -> {load_after}")
    print(f"{'path':<34}{'best img/s':>12}{'median img/s':>14}")
    print(f"{'plain loop (1 process)':<34}{plain_rate:>12.1f}{results['plain_images_per_s_median']:>14.1f}")
    print(f"{'irkit encode_image_files':<34}{irkit_rate:>12.1f}{results['irkit_images_per_s_median']:>14.1f}")
    print(f"max |plain - irkit| embedding difference: {max_diff:.2e}")
    print(f"FLOPs per image: {flops / 1e9:.3f} GFLOP; matmul probe: {probe:.1f} GFLOP/s; "
          f"model achieved: {model_gflops:.1f} GFLOP/s")
    print(f"irkit/plain throughput ratio: {results['irkit_plain_throughput_ratio']:.2f}x (goal >= 2x)")
    print(f"model GFLOP/s share of matmul probe: {100 * results['model_gflops_share_of_probe']:.0f}% "
          "(goal >= 80%)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
