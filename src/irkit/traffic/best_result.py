"""Pick the best reproduce run and copy it for review (``irkit batch best``, ``script/best_result.sh``)."""

from __future__ import annotations

import json
from pathlib import Path

from irkit.errors import InputError
from irkit.io import atomic_write_json

BEST_RESULT_FILES = ("params.txt", "out.log", "metrics.json", "submission.json", "reproduce.ipynb",
                     "car_attribute.json", "inference.json")
MAX_REVIEW_CHECKPOINT_BYTES = 25 * 1024 * 1024


def find_runs(folders: list[Path | str]) -> list[Path]:
    """Every reproduce run folder (``metrics.json`` with trained metrics) below ``folders``."""
    runs = []
    for folder in folders:
        for metrics_path in sorted(Path(folder).rglob("metrics.json")):
            metrics = json.loads(metrics_path.read_text())
            if "trained" in metrics and "training" in metrics:
                runs.append(metrics_path.parent)
    return runs


def export_best_result(folders: list[Path | str], out_dir: Path | str = "best-result-review",
                       metric: str = "official_mAP@10") -> Path:
    """Copy the best run (highest trained ``metric``) into ``out_dir``, checkpoint as fp16
    safetensors when it fits in 25 MB; returns the chosen run folder."""
    import shutil

    import torch

    from irkit.io import atomic_path
    from irkit.models import create_model, save_weights

    runs = find_runs(folders)
    if not runs:
        raise InputError("no reproduce runs (metrics.json with trained metrics) found", path=", ".join(map(str, folders)))
    best = max(runs, key=lambda run: json.loads((run / "metrics.json").read_text())["trained"][metric])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in BEST_RESULT_FILES:
        if (best / name).is_file():
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(best / name, tmp)
    metrics = json.loads((best / "metrics.json").read_text())
    params = dict(line.split(": ", 1) for line in (best / "params.txt").read_text().splitlines() if ": " in line)
    checkpoint = Path(metrics["training"]["final_checkpoint"])
    note = {"source_run": str(best), "metric": metric, "value": metrics["trained"][metric]}
    if checkpoint.is_file():
        loaded = create_model(params.get("model", "irkit-tiny"), checkpoint=checkpoint)
        target = out_dir / "model_fp16.safetensors"
        save_weights(loaded, target, dtype=torch.float16)
        if target.stat().st_size > MAX_REVIEW_CHECKPOINT_BYTES:
            target.unlink()
            note["checkpoint"] = f"not copied: over 25 MB ({checkpoint})"
        else:
            note["checkpoint"] = target.name
    atomic_write_json(out_dir / "SOURCE.json", note, indent=2)
    return best
