"""What the content-keyed embedding cache costs: hashing the image files vs decoding them.

The embedding cache key holds a BLAKE2b-128 digest of every image file's bytes
(``irkit.embeddings.file_fingerprints``), so every call reads each file once more. This bench
measures, in one run on the same files, the whole fingerprinting step (stat + read + hash) and
what a cache miss spends before the model even runs: decoding each image with irkit's reader
and applying the model's transform. The printed ratio is hashing time / decoding time.

    python bench/bench_cache_hash.py                         # traffic demo images (tiny scale)
    python bench/bench_cache_hash.py --scale small           # more demo images
    python bench/bench_cache_hash.py --images DIR            # your own folder

Both are timed single-threaded, files in the page cache (each step runs ``--repeat`` times,
the fastest run counts). Others sharing the CPU inflate both numbers alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from irkit.embeddings import collect_image_paths, file_fingerprints
from irkit.transforms import USER_FOLDER_READER, build_transform


def best_seconds(step: Callable[[], object], repeat: int) -> float:
    """The fastest wall time of ``repeat`` runs of ``step``."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return min(times)


def demo_images(folder: Path, scale: str) -> list[Path]:
    """The traffic demo's gallery and training images at ``scale``, generated under ``folder``."""
    from irkit.data.demo import generate_demo

    generate_demo(folder, seed=0, scale=scale, datasets="traffic", progress=False)
    return collect_image_paths(folder / "traffic")


def measure(paths: Sequence[Path], image_size: int, repeat: int) -> dict[str, float]:
    """Seconds per image of fingerprinting and of decode + transform, and their ratio."""
    preprocess = build_transform("square", image_size=image_size)

    def decode() -> None:
        for path in paths:
            preprocess(USER_FOLDER_READER.open(path))

    decode_s = best_seconds(decode, repeat)  # also warms the page cache for both steps
    hash_s = best_seconds(lambda: file_fingerprints(paths), repeat)
    total_bytes = sum(p.stat().st_size for p in paths)
    return {
        "images": len(paths), "mean_file_kb": round(total_bytes / len(paths) / 1024, 1),
        "hash_ms_per_image": round(1000 * hash_s / len(paths), 4),
        "decode_transform_ms_per_image": round(1000 * decode_s / len(paths), 4),
        "hash_mb_per_s": round(total_bytes / hash_s / 1e6, 1),
        "ratio_hash_to_decode": round(hash_s / decode_s, 4),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None, help="image folder or list file (default: demo images)")
    parser.add_argument("--scale", default="tiny", choices=["tiny", "small", "full"], help="demo scale")
    parser.add_argument("--image-size", type=int, default=224, help="model input side of the transform")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="irkit-bench-hash-") as tmp:
        paths = collect_image_paths(args.images) if args.images else demo_images(Path(tmp), args.scale)
        result = measure(paths, args.image_size, max(1, args.repeat))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
