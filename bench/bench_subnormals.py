"""Training-step cost with subnormal floats flushed to zero (irkit's default) against kept (IEEE).

Each measurement is a fresh process (``IRKIT_FLUSH_DENORMAL=1`` or ``0``): the CPU's FTZ/DAZ
mode is per thread and inherited by torch's worker threads when they start, so it cannot be
switched inside one process. The processes alternate, ``--repeats`` times each, so drift of the
machine's load falls on both. Each runs one untimed step and ``--steps`` timed ones of the
traffic recipe (batch 128, AdamW as open_clip_train builds it, open_clip's ``ClipLoss``, fp32,
channels-last) on the first training images of the demo, for two sets of weights:

* ``trained``: the committed demo-trained model (``best-result-review/model_fp16.safetensors``)
  -- what the reproduce's main training stage runs on after its warm-up;
* ``random``: random initialisation -- what the warm-up starts from.

Prints one line per set of weights, ``<weights>: flushed X ms/step, kept Y ms/step, kept/flushed
Z.ZZx``, and writes ``<out-dir>/bench_subnormals.json`` and ``.md`` (atomically).

    python bench/bench_subnormals.py                                  # data/demo/traffic
    python bench/bench_subnormals.py --steps 1 --repeats 1 --batch-size 8   # smoke

Make the data with ``python -m irkit data demo --scale full --datasets traffic --out data/demo``;
run on a quiet machine (``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "best-result-review" / "model_fp16.safetensors"
WEIGHTS = ("trained", "random")
MODES = {"flushed": "1", "kept": "0"}


def child(args: argparse.Namespace) -> int:
    """One process: time ``args.steps`` training steps and print one JSON line."""
    import irkit.precision  # noqa: F401  # first: the FTZ/DAZ mode must precede torch's threads

    import contextlib

    import open_clip
    import torch
    from PIL import Image

    from irkit.data.traffic import load_traffic
    from irkit.embeddings import num_threads
    from irkit.models import create_model
    from irkit.models.factory import has_convolutions
    from irkit.precision import cpu_subnormals

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from profile_reproduce import make_optimizer, train_step

    torch.set_num_threads(num_threads())
    torch.manual_seed(0)
    if args.weights == "trained":
        loaded = create_model(args.model, checkpoint=args.checkpoint, precision="fp32")
    else:
        loaded = create_model(args.model, random_init=True, precision="fp32", seed=0)
    model = loaded.model.float().train()
    split = load_traffic(args.root, "train")
    labels = split.labels[: args.batch_size]
    images = torch.stack([loaded.train_transform(Image.open(split.image_path(label.image)).convert("RGB"))
                          for label in labels])
    if has_convolutions(model.visual):  # create_model put the tower in channels-last
        images = images.contiguous(memory_format=torch.channels_last)
    texts = loaded.tokenizer([label.text for label in labels])
    optimizer = make_optimizer(model, args.lr, 0.1)
    loss_fn = open_clip.ClipLoss()

    def step() -> float:
        loss, _ = train_step(model, loss_fn, optimizer, images, texts, contextlib.nullcontext())
        return float(loss)

    step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    seconds = (time.perf_counter() - start) / args.steps
    print(json.dumps({"subnormals": cpu_subnormals(), "ms_per_step": 1000 * seconds, "loss": loss,
                      "threads": torch.get_num_threads()}))
    return 0


def measure(args: argparse.Namespace, weights: str, mode: str) -> dict[str, Any]:
    """One child process of ``weights`` under ``mode`` (flushed | kept)."""
    command = [sys.executable, __file__, "--child", "--weights", weights, "--model", args.model,
               "--checkpoint", str(args.checkpoint), "--root", str(args.root), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    env = {**os.environ, "IRKIT_FLUSH_DENORMAL": MODES[mode]}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"error: the {weights}/{mode} measurement failed: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["subnormals"] != mode:
        raise SystemExit(f"error: the {weights}/{mode} process ran with subnormals {result['subnormals']}")
    return result


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, float]]:
    """Median ms/step per weights and mode, and the kept/flushed ratio."""
    summary = {}
    for weights, modes in runs.items():
        flushed = statistics.median(r["ms_per_step"] for r in modes["flushed"])
        kept = statistics.median(r["ms_per_step"] for r in modes["kept"])
        summary[weights] = {"flushed_ms": flushed, "kept_ms": kept, "kept_over_flushed": kept / flushed}
    return summary


def lines(summary: dict[str, dict[str, float]]) -> list[str]:
    return [f"{weights}: flushed {s['flushed_ms']:.0f} ms/step, kept {s['kept_ms']:.0f} ms/step, "
            f"kept/flushed {s['kept_over_flushed']:.2f}x" for weights, s in summary.items()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("data/demo/traffic"), help="traffic demo root")
    parser.add_argument("--model", default="irkit-tiny")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the trained weights")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (plus one untimed)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per weights and mode, alternating")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--out-dir", type=Path, default=Path("bench/output"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--weights", choices=WEIGHTS, default="trained", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.steps, args.repeats, args.batch_size) < 1:
        parser.error("--steps, --repeats and --batch-size must be positive")
    if args.child:
        return child(args)
    if not (args.root / "train" / "train_label.txt").is_file():
        print(f"error: {args.root / 'train' / 'train_label.txt'}: no traffic training labels (make the demo "
              "data: python -m irkit data demo --scale full --datasets traffic --out data/demo)", file=sys.stderr)
        return 2
    load_start = os.getloadavg()[0]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {w: {m: [] for m in MODES} for w in WEIGHTS}
    for repeat in range(args.repeats):
        for weights in WEIGHTS:
            for mode in MODES:
                result = measure(args, weights, mode)
                runs[weights][mode].append(result)
                print(f"[{repeat + 1}/{args.repeats}] {weights} {mode}: {result['ms_per_step']:.0f} ms/step",
                      flush=True)
    summary = summarise(runs)
    results = {"model": args.model, "checkpoint": str(args.checkpoint), "batch_size": args.batch_size,
               "steps": args.steps, "repeats": args.repeats, "load_1min_start": load_start,
               "load_1min_end": os.getloadavg()[0], "runs": runs, "summary": summary}
    from irkit.io import atomic_write_json, atomic_write_text

    table = "\n".join([
        f"# Training step, subnormals flushed vs kept ({args.model}, batch {args.batch_size}, "
        f"median of {args.repeats} processes x {args.steps} steps; 1-min load {load_start:.2f} -> "
        f"{results['load_1min_end']:.2f})", "",
        "| weights | flushed (ms/step) | kept (ms/step) | kept / flushed |", "|---|---:|---:|---:|",
        *[f"| {w} | {s['flushed_ms']:.0f} | {s['kept_ms']:.0f} | {s['kept_over_flushed']:.2f}x |"
          for w, s in summary.items()], ""])
    atomic_write_json(args.out_dir / "bench_subnormals.json", results, indent=2)
    atomic_write_text(args.out_dir / "bench_subnormals.md", table)
    print("\n".join(lines(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
