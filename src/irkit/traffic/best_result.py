"""Pick the best reproduce run and copy it for review (``irkit batch best``, ``script/best_result.sh``)."""

from __future__ import annotations

from pathlib import Path

from irkit.errors import InputError
from irkit.io import atomic_write_json, make_dirs, read_json

BEST_RESULT_FILES = ("params.txt", "out.log", "metrics.json", "submission.json", "reproduce.ipynb",
                     "car_attribute.json", "inference.json")
MAX_REVIEW_CHECKPOINT_BYTES = 25 * 1024 * 1024


def _read_metrics(path: Path) -> dict:
    """A run's metrics.json as a dict (malformed JSON names the line; a non-object is refused)."""
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise InputError(f"holds a JSON {type(metrics).__name__}; expected an object of metrics", path=path)
    return metrics


def find_runs(folders: list[Path | str]) -> list[Path]:
    """Every reproduce run folder (``metrics.json`` with trained metrics) below ``folders``."""
    runs = []
    for folder in folders:
        for metrics_path in sorted(Path(folder).rglob("metrics.json")):
            metrics = _read_metrics(metrics_path)
            if "trained" in metrics and "training" in metrics:
                runs.append(metrics_path.parent)
    return runs


def _metric_value(run: Path, metric: str) -> float:
    """The trained ``metric`` of ``run``; an unknown metric lists the available ones."""
    path = run / "metrics.json"
    trained = _read_metrics(path)["trained"]
    if not isinstance(trained, dict):
        raise InputError(f"holds a {type(trained).__name__}; expected an object of metric values", path=path,
                         field="trained")
    if metric not in trained:
        available = sorted(k for k, v in trained.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise InputError(f"no metric {metric!r}; expected one of: {', '.join(available) or 'none'} "
                         "(--metric)", path=path, field="trained")
    value = trained[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"metric {metric!r} is {value!r}; expected a number", path=path, field=f"trained.{metric}")
    return float(value)


def export_best_result(folders: list[Path | str], out_dir: Path | str = "best-result-review",
                       metric: str = "official_mAP@10") -> Path:
    """Copy the best run (highest trained ``metric``) into ``out_dir``, checkpoint as fp16
    safetensors when it fits in 25 MB; returns the chosen run folder."""
    import shutil

    import torch

    from irkit.io import atomic_path
    from irkit.models import create_model, save_weights
    from irkit.runs import read_params

    runs = find_runs(folders)
    if not runs:
        raise InputError("no reproduce runs (metrics.json with trained metrics) found", path=", ".join(map(str, folders)))
    values = {run: _metric_value(run, metric) for run in runs}  # every run checked before anything is written
    best = max(runs, key=values.__getitem__)
    metrics = _read_metrics(best / "metrics.json")
    training = metrics["training"]
    if not isinstance(training, dict) or not isinstance(training.get("final_checkpoint"), str):
        raise InputError("expected an object with the string 'final_checkpoint'", path=best / "metrics.json",
                         field="training")
    out_dir = make_dirs(out_dir)
    for name in BEST_RESULT_FILES:
        if (best / name).is_file():
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(best / name, tmp)
    params = read_params(best)
    checkpoint = Path(training["final_checkpoint"])
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
