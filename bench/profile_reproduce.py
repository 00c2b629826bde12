"""Where the time of the traffic reproduce run goes: training steps and one embedding pass.

(a) ``--steps`` training steps of irkit-tiny (random init) with the from-scratch recipe:
batch 128, AdamW (lr 1e-3, weight decay 0.1 on weights, none on gains/biases/logit scale, as
open_clip_train), open_clip's ``ClipLoss``, the irkit train transform
(``LoadedModel.train_transform``) and a DataLoader like open_clip_train's (2 workers, shuffled,
drop_last). Per step: data wait (time blocked on the loader), forward (model + loss), backward,
optimizer step (+ logit-scale clamp), logging (``loss.item()`` and one formatted line). Decode
(PIL open + RGB) and transform per image are measured in a separate single-process pass over
the same images: in the run itself they happen in the loader's workers, hidden behind the
compute unless the data wait says otherwise.

Then the per-step compute cost (forward + backward + optimizer on one preloaded batch) of fp32 vs
bf16 autocast and contiguous vs channels-last, interleaved in the same run (ratios).

(b) One embedding pass over the test gallery with ``irkit.embeddings.encode_image_files`` and
its stage split (decode, transform, forward, worker/IPC overhead; bench/bench_embed.py).

Writes ``<out-dir>/profile_reproduce.json`` and ``profile_reproduce.md`` (atomically) and prints
the table. Stage times are as measured; each table shows their sum against the wall time.

    python bench/profile_reproduce.py                                   # data/demo/traffic
    python bench/profile_reproduce.py --steps 2 --batch-size 8 --compare-steps 1 --images 32   # smoke

Make the data with ``python -m irkit data demo --scale full --datasets traffic --out data/demo``;
run on a quiet machine (``uptime``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import open_clip
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from irkit.data.traffic import load_traffic
from irkit.embeddings import encode_image_files, num_threads
from irkit.errors import InputError
from irkit.io import atomic_write_json, atomic_write_text
from irkit.models import LoadedModel, create_model
from irkit.models.factory import use_channels_last
from irkit.precision import resolve_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import busy_workers, load_average_1min, stage_costs, stage_shares  # noqa: E402

log = logging.getLogger("profile_reproduce")

TRAIN_STAGES = ("data_wait", "forward", "backward", "optimizer", "logging")
MAX_LOGIT_SCALE = math.log(100)  # open_clip_train clamps the logit scale to [0, ln 100]


class CaptionedImages(Dataset):
    """Item i = ``(train_transform(image i) [3, S, S], token ids [context])`` of (path, text) pairs."""

    def __init__(self, pairs: Sequence[tuple[Path, str]], loaded: LoadedModel) -> None:
        self.pairs, self.transform, self.tokenizer = list(pairs), loaded.train_transform, loaded.tokenizer

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, text = self.pairs[index]
        return self.transform(Image.open(path).convert("RGB")), self.tokenizer([text])[0]


def make_optimizer(model: torch.nn.Module, lr: float, wd: float) -> torch.optim.Optimizer:
    """AdamW as open_clip_train builds it: no weight decay on gains, biases, norms, logit scale."""
    exclude = [p for n, p in model.named_parameters()
               if p.requires_grad and (p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n)]
    excluded = {id(p) for p in exclude}
    include = [p for p in model.parameters() if p.requires_grad and id(p) not in excluded]
    return torch.optim.AdamW([{"params": exclude, "weight_decay": 0.0}, {"params": include, "weight_decay": wd}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


def train_step(model: torch.nn.Module, loss_fn: Any, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               texts: torch.Tensor, autocast: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """One training step; returns (loss, seconds of forward / backward / optimizer)."""
    start = time.perf_counter()
    with autocast:
        image_features, text_features, logit_scale = model(images, texts)[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
    forward_end = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    backward_end = time.perf_counter()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    end = time.perf_counter()
    return loss, {"forward": forward_end - start, "backward": backward_end - forward_end,
                  "optimizer": end - backward_end}


def profile_training(loaded: LoadedModel, pairs: Sequence[tuple[Path, str]], steps: int, batch_size: int,
                     workers: int, lr: float, wd: float, seed: int) -> dict[str, Any]:
    """``steps`` timed training steps (after one untimed warm-up step) -> per-step stage seconds."""
    torch.manual_seed(seed)
    model = loaded.model
    model.train()
    loss_fn = open_clip.ClipLoss()
    optimizer = make_optimizer(model, lr, wd)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(CaptionedImages(pairs, loaded), batch_size=batch_size, shuffle=True, num_workers=workers,
                        drop_last=True, persistent_workers=workers > 0, generator=generator)
    if len(loader) < steps + 1:
        raise InputError(f"{len(pairs)} training images give {len(loader)} batches of {batch_size}; expected at "
                         f"least {steps + 1} (--steps plus one warm-up)", field="steps")
    autocast = loaded.autocast()
    per_step: list[dict[str, float]] = []
    batches = iter(loader)
    wall_start = time.perf_counter()
    for step in range(steps + 1):
        if step == 1:  # step 0 (worker start-up, first allocations) is not timed
            wall_start = time.perf_counter()
        start = time.perf_counter()
        images, texts = next(batches)
        wait = time.perf_counter() - start
        loss, seconds = train_step(model, loss_fn, optimizer, images, texts, autocast)
        start = time.perf_counter()
        line = f"step {step}/{steps} loss {loss.item():.4f} logit_scale {model.logit_scale.exp().item():.2f}"
        log.debug(line)
        seconds.update(data_wait=wait, logging=time.perf_counter() - start)
        if step > 0:
            per_step.append(seconds)
    wall = time.perf_counter() - wall_start
    del batches
    model.eval()
    mean = {stage: float(np.mean([s[stage] for s in per_step])) for stage in TRAIN_STAGES}
    return {"steps": steps, "batch_size": batch_size, "workers": workers, "precision": loaded.precision,
            "seconds_per_step": mean, "sum_of_stages_per_step": float(sum(mean.values())),
            "wall_per_step": wall / steps, "per_step": per_step}


def decode_transform_pass(loaded: LoadedModel, paths: Sequence[Path]) -> dict[str, float]:
    """Single-process CPU milliseconds per image of decode (PIL open + RGB) and the train transform."""
    decode = transform = 0.0
    for path in paths:
        start = time.process_time()
        image = Image.open(path).convert("RGB")
        middle = time.process_time()
        loaded.train_transform(image)
        decode, transform = decode + middle - start, transform + time.process_time() - middle
    return {"decode_ms_per_image": decode / len(paths) * 1e3, "transform_ms_per_image": transform / len(paths) * 1e3}


def compare_variants(loaded: LoadedModel, pairs: Sequence[tuple[Path, str]], batch_size: int, steps: int,
                     lr: float, wd: float) -> dict[str, Any]:
    """Per-step compute seconds (forward + backward + optimizer, one preloaded batch, best of
    ``steps`` after a warm-up) of fp32 / bf16 autocast x contiguous / channels-last, interleaved."""
    dataset = CaptionedImages(pairs[:batch_size], loaded)
    items = [dataset[i] for i in range(len(dataset))]
    images, texts = torch.stack([i for i, _ in items]), torch.stack([t for _, t in items])
    variants: dict[str, dict[str, Any]] = {}
    for precision in ("fp32", "bf16"):
        for memory_format in ("contiguous", "channels_last"):
            model = copy.deepcopy(loaded.model).to(memory_format=torch.contiguous_format)
            if memory_format == "channels_last" and not use_channels_last(model):
                continue  # a tower without convolutions: nothing to compare
            model.train()
            variants[f"{precision}/{memory_format}"] = {
                "model": model, "optimizer": make_optimizer(model, lr, wd),
                "autocast": resolve_precision(precision, "cpu").autocast(), "times": []}
    loss_fn = open_clip.ClipLoss()
    for repeat in range(steps + 1):
        for variant in variants.values():
            _, seconds = train_step(variant["model"], loss_fn, variant["optimizer"], images, texts, variant["autocast"])
            if repeat > 0:
                variant["times"].append(sum(seconds.values()))
    best = {name: min(v["times"]) for name, v in variants.items()}
    result: dict[str, Any] = {"batch_size": len(items), "steps": steps, "seconds_per_step_best": best}
    main_format = "channels_last" if "fp32/channels_last" in best else "contiguous"
    result["bf16_over_fp32_time"] = best[f"bf16/{main_format}"] / best[f"fp32/{main_format}"]
    if "fp32/channels_last" in best:
        result["channels_last_speedup_fp32"] = best["fp32/contiguous"] / best["fp32/channels_last"]
        result["channels_last_speedup_bf16"] = best["bf16/contiguous"] / best["bf16/channels_last"]
    return result


def profile_embedding(loaded: LoadedModel, paths: Sequence[Path], batch_size: int, workers: int) -> dict[str, Any]:
    """One ``encode_image_files`` pass over ``paths`` (wall) and its stage split."""
    start = time.perf_counter()
    encode_image_files(loaded, paths, batch_size=batch_size, num_workers=workers, cache_dir=None)
    wall = time.perf_counter() - start
    stages = stage_costs(loaded, paths, batch_size)
    ms_per_image = wall / len(paths) * 1e3
    return {"images": len(paths), "batch_size": batch_size, "workers": workers, "precision": loaded.precision,
            "wall_s": wall, "ms_per_image": ms_per_image, "stages_ms_per_image_1_thread": stages,
            "stage_shares": stage_shares(stages, ms_per_image, busy_workers(len(paths), batch_size, workers))}


def markdown(results: dict[str, Any]) -> str:
    """The report's markdown tables (training step, variants, embedding pass)."""
    train, decode, variants, embed = (results["training"], results["decode_transform"], results["variants"],
                                      results["embedding"])
    wall = train["wall_per_step"]
    batch = train["batch_size"]
    lines = [f"# Profile of the traffic reproduce run ({results['model']}, {results['threads']} threads, "
             f"1-min load {results['load_1min_start']:.2f} -> {results['load_1min_end']:.2f})", "",
             f"## Training: {train['steps']} steps of batch {batch}, {train['precision']}, "
             f"{train['workers']} loader workers", "",
             "| stage | ms per step | share of wall |", "|---|---:|---:|"]
    for stage in TRAIN_STAGES:
        seconds = train["seconds_per_step"][stage]
        lines.append(f"| {stage.replace('_', ' ')} | {seconds * 1e3:.1f} | {100 * seconds / wall:.0f}% |")
    lines += [f"| **sum of stages** | {train['sum_of_stages_per_step'] * 1e3:.1f} | "
              f"{100 * train['sum_of_stages_per_step'] / wall:.0f}% |",
              f"| **wall** | {wall * 1e3:.1f} | 100% |", "",
              f"Decode and transform (single process, in the loader workers during training): decode "
              f"{decode['decode_ms_per_image']:.2f} ms/image, train transform {decode['transform_ms_per_image']:.2f} "
              f"ms/image = {(decode['decode_ms_per_image'] + decode['transform_ms_per_image']) * batch:.0f} ms of "
              f"CPU per batch of {batch}.", "",
              f"## Per-step compute (forward + backward + optimizer), batch {variants['batch_size']}, best of "
              f"{variants['steps']}", "", "| variant | ms per step |", "|---|---:|"]
    for name, seconds in variants["seconds_per_step_best"].items():
        lines.append(f"| {name} | {seconds * 1e3:.1f} |")
    ratios = f"bf16 autocast / fp32 time: {variants['bf16_over_fp32_time']:.2f}x"
    if "channels_last_speedup_fp32" in variants:
        ratios += (f"; channels-last speed-up over contiguous: {variants['channels_last_speedup_fp32']:.2f}x "
                   f"(fp32), {variants['channels_last_speedup_bf16']:.2f}x (bf16)")
    lines += ["", ratios]
    shares, stages = embed["stage_shares"], embed["stages_ms_per_image_1_thread"]
    lines += ["", f"## Embedding pass: {embed['images']} images, {embed['precision']}, {embed['workers']} workers, "
              f"{embed['ms_per_image']:.2f} ms/image wall", "",
              "| stage | ms per image (1 thread) | share of wall |", "|---|---:|---:|"]
    for stage in ("decode", "transform", "forward"):
        lines.append(f"| {stage} | {stages[stage + '_ms']:.2f} | {100 * shares[stage]:.0f}% |")
    lines += [f"| worker/IPC overhead (wall - stages / workers) | | {100 * shares['overhead']:.0f}% |", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("data/demo/traffic"), help="traffic demo root")
    parser.add_argument("--model", default="irkit-tiny")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (plus one warm-up)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (open_clip_train's --workers)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--wd", type=float, default=0.1)
    parser.add_argument("--compare-steps", type=int, default=3, help="timed steps per precision/layout variant")
    parser.add_argument("--images", type=int, default=None, help="embed only the first n test images")
    parser.add_argument("--embed-batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("bench/output"))
    args = parser.parse_args(argv)
    if min(args.steps, args.batch_size, args.compare_steps, args.embed_batch_size) < 1:
        parser.error("--steps, --batch-size, --compare-steps and --embed-batch-size must be positive")
    try:
        return run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """The profile of ``args`` (see :func:`main`); prints the table and writes the files."""
    threads = num_threads()
    torch.set_num_threads(threads)
    random.seed(args.seed)
    load_start = load_average_1min()
    train_split = load_traffic(args.root, "train")
    pairs = [(train_split.image_path(label.image), label.text) for label in train_split.labels]
    loaded = create_model(args.model, random_init=True, precision="fp32", seed=args.seed)
    print(f"1-min load average {load_start:.2f}; {len(pairs)} training images; {threads} threads")
    training = profile_training(loaded, pairs, args.steps, args.batch_size, args.workers, args.lr, args.wd,
                                args.seed)
    used = [pairs[i][0] for i in range(min(len(pairs), (args.steps + 1) * args.batch_size))]
    decode = decode_transform_pass(loaded, used)
    variants = compare_variants(loaded, pairs, args.batch_size, args.compare_steps, args.lr, args.wd)
    test_split = load_traffic(args.root, "test")
    gallery = [test_split.image_path(name) for name in test_split.gallery][: args.images]
    embed_model = create_model(args.model, random_init=True, precision="auto", seed=args.seed)
    embedding = profile_embedding(embed_model, gallery, args.embed_batch_size, threads)
    results = {"model": args.model, "root": str(args.root), "threads": threads, "cpu_count": os.cpu_count(),
               "load_1min_start": load_start, "load_1min_end": load_average_1min(),
               "training": training, "decode_transform": decode, "variants": variants, "embedding": embedding}
    table = markdown(results)
    atomic_write_json(args.out_dir / "profile_reproduce.json", results, indent=2)
    atomic_write_text(args.out_dir / "profile_reproduce.md", table)
    print(table)
    print(f"wrote {args.out_dir / 'profile_reproduce.json'} and {args.out_dir / 'profile_reproduce.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
