"""The traffic text->image challenge pipeline as library calls (methods.md §A).

``reproduce``: (demo data) -> parse attributes -> [warm-up training] -> zero-shot augmentation
-> CSV -> open_clip training -> inference (vehicle / person galleries) -> merge -> score.
``quick_review``: checkpoint -> inference -> merge -> score.

Both write into one run folder (``log/<run>/``): ``params.txt``, ``out.log``,
``metrics.json``, ``submission.json``, the per-gallery result files, and the open_clip
training runs as sub-folders (``warmup/``, ``train/``), each in open_clip_train's layout.

Zero-shot augmentation scores candidate captions with "the current model". A user's
pretrained model (e.g. ViT-bigG-14) does that directly, as published. The embedded default
starts from random weights, so irkit first trains it for ``warmup_epochs`` on the raw labels
(the same model then augments its own training labels — self-enhancement) and continues
training on the augmented captions. With ``augment=False`` the same two-stage schedule runs
on the raw captions, so the ablation compares equal compute.

Inference prompt: ``prompt="auto"`` (default) chooses suffix / strip / none on the labelled
val split (``irkit.traffic.inference.select_prompt``) for the trained weights and, separately, for
the weights before training; the other variants are scored on test as the prompt ablation.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from irkit.errors import InputError
from irkit.io import atomic_write_json
from irkit.runs import RunFolder

PROMPT_VARIANTS = ("suffix", "strip", "none")
#: ``prompt="auto"``: the variant is chosen on the labelled val split (traffic.inference.select_prompt).
PROMPT_AUTO = "auto"


@dataclass
class TrafficRunParams:
    """Parameters of a reproduce / quick-review run (the notebooks' ``parameters`` cell)."""

    data_root: str = "data/demo"       # demo root (traffic under <root>/traffic) or a challenge root
    scale: str = "full"                # demo scale generated when data_root holds no data
    seed: int = 0
    model: str = "irkit-tiny"          # any open_clip model name
    pretrained: Optional[str] = None   # open_clip tag or local file: fine-tune instead of from scratch
    checkpoint: Optional[str] = None   # quick-review: weights to evaluate; reproduce: start weights
    epochs: int = 6                    # total training epochs (warm-up included)
    warmup_epochs: int = 2             # from-scratch only: epochs before the model augments labels
    lr: Optional[float] = None         # None: recipe default (4e-7 fine-tuning, 1e-3 from scratch)
    wd: Optional[float] = None
    batch_size: Optional[int] = None
    prompt: str = "auto"               # inference prompt: suffix | strip | none | auto (best on val)
    augment: bool = True
    workers: int = 2
    cache_dir: str = ".cache/irkit"

    def starts_from_pretrained(self) -> bool:
        return bool(self.pretrained or self.checkpoint)


@dataclass
class PipelineResult:
    run_dir: Path
    metrics: dict[str, Any]
    submission_path: Optional[Path] = None
    final_checkpoint: Optional[Path] = None
    training_runs: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def traffic_root(data_root: Path | str) -> Path:
    """``<data_root>/traffic`` for a demo root, or ``data_root`` itself for a challenge root."""
    data_root = Path(data_root)
    for candidate in (data_root / "traffic", data_root):
        if (candidate / "train" / "train_label.txt").is_file() or (candidate / "test" / "test_text.txt").is_file():
            return candidate
    return data_root / "traffic"


def ensure_demo_data(data_root: Path | str, scale: str, seed: int) -> Path:
    """Generate the traffic demo dataset under ``data_root`` unless data is already there."""
    root = traffic_root(data_root)
    if not (root / "test" / "test_text.txt").is_file():
        from irkit.data.demo import generate_demo

        generate_demo(Path(data_root), seed=seed, scale=scale, datasets=("traffic",))
        root = traffic_root(data_root)
    return root


# --------------------------------------------------------------------------- stages


def _train_stage(params: TrafficRunParams, run: RunFolder, name: str, train_csv: Path, val_csv: Optional[Path],
                 epochs: int, start_weights: Optional[str], from_scratch_recipe: bool,
                 lr_scheduler: str = "cosine") -> Path:
    from irkit.train.clip import ClipTrainConfig, recipe_defaults, train_clip

    recipe = recipe_defaults(params.model, None if from_scratch_recipe else "pretrained")
    config = ClipTrainConfig(
        train_csv=train_csv, val_csv=val_csv, model=params.model, pretrained=start_weights,
        epochs=epochs, lr=params.lr or recipe["lr"], wd=params.wd or recipe["wd"],
        warmup=recipe["warmup"], lr_scheduler=lr_scheduler, batch_size=params.batch_size or recipe["batch_size"],
        workers=params.workers, seed=params.seed, log_dir=run.path, name=name,
    )
    started = time.time()
    run.log("training stage '%s': %d epochs from %s", name, epochs, start_weights or "random init")
    result = train_clip(config)
    run.log("training stage '%s' done in %.0f s; last val results: %s", name, time.time() - started,
            result.results[-1] if result.results else None)
    return result.final_checkpoint


def _score_inference(split: Any, loaded: Any, prompt: str, out_dir: Optional[Path], cache_dir: str,
                     workers: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Infer both galleries, merge in test_text.txt order, score; returns (metrics, submission)."""
    from irkit.eval.protocols import evaluate_traffic_submission
    from irkit.traffic.inference import infer_traffic
    from irkit.traffic.merge import merge_results

    inference = infer_traffic(split, loaded, prompt=prompt, out_dir=out_dir, cache_dir=cache_dir,
                              num_workers=workers)
    if out_dir is not None:
        submission = merge_results(inference.outputs["vehicle"], inference.outputs["person"],
                                   split.root / "test" / "test_text.txt", out_dir / "submission.json")
    else:  # vehicle queries lead test_text.txt (infer_traffic checks it): concatenation is the merge
        submission = {"results": inference.vehicle.to_json()["results"] + inference.person.to_json()["results"]}
    metrics = evaluate_traffic_submission(submission, split.ground_truth, queries=split.queries)
    metrics["rank_statistics"] = inference.summary()["rank_statistics"]
    metrics["prompt"] = prompt
    return metrics, submission


def resolve_prompt(params: TrafficRunParams, loaded: Any, root: Path, run: RunFolder
                   ) -> tuple[str, Optional[dict[str, Any]]]:
    """``(prompt variant, selection report or None)``: ``params.prompt`` itself, or for
    ``"auto"`` the variant with the best official mAP@10 on the labelled val split."""
    if params.prompt != PROMPT_AUTO:
        return params.prompt, None
    from irkit.traffic.inference import select_prompt_on_val

    selection = select_prompt_on_val(root, loaded, cache_dir=params.cache_dir, num_workers=params.workers)
    run.log("prompt chosen on val (%d queries): %s; official mAP@10 per variant: %s", selection.num_queries,
            selection.chosen, {v: round(m["official_mAP@10"], 4) for v, m in selection.metrics.items()})
    return selection.chosen, selection.to_json()


@dataclass
class CheckpointEvaluation:
    """Test metrics of one set of weights per prompt variant; ``prompt`` is the headline one."""

    prompt: str
    results: dict[str, dict[str, Any]]
    selection: Optional[dict[str, Any]] = None

    @property
    def headline(self) -> dict[str, Any]:
        return self.results[self.prompt]


def evaluate_checkpoint(params: TrafficRunParams, split: Any, checkpoint: Optional[str],
                        pretrained: Optional[str], out_dir: Optional[Path], run: RunFolder,
                        all_prompts: bool = True) -> CheckpointEvaluation:
    """Metrics of one set of weights for the resolved prompt (outputs written for it) and,
    with ``all_prompts``, every other variant as an ablation."""
    from irkit.models import create_model

    loaded = create_model(params.model, pretrained=pretrained, checkpoint=checkpoint, seed=params.seed)
    prompt, selection = resolve_prompt(params, loaded, split.root, run)
    prompts = _prompt_order(prompt) if all_prompts else (prompt,)
    results = {}
    for i, variant in enumerate(prompts):
        metrics, _ = _score_inference(split, loaded, variant, out_dir if i == 0 else None, params.cache_dir,
                                      params.workers)
        run.log("weights %s, prompt %s: official mAP@10 %.4f, standard mAP@10 %.4f, R@1 %.4f",
                loaded.weights_id[:24], variant, metrics["official_mAP@10"], metrics["standard_mAP@10"],
                metrics["R@1"])
        results[variant] = metrics
    return CheckpointEvaluation(prompt=prompt, results=results, selection=selection)


def _open_run(run_dir: Path | str, params: TrafficRunParams, kind: str) -> RunFolder:
    run_dir = Path(run_dir)
    return RunFolder.create(run_dir.parent, run_dir.name, {"pipeline": kind, **asdict(params)}, adopt_fresh=True)


def check_prompt(prompt: str) -> str:
    """``prompt`` if it is a variant or ``"auto"``; otherwise a clear error."""
    if prompt not in (*PROMPT_VARIANTS, PROMPT_AUTO):
        raise InputError(f"unknown prompt variant {prompt!r}; expected one of "
                         f"{', '.join((*PROMPT_VARIANTS, PROMPT_AUTO))}", field="prompt")
    return prompt


def _prompt_order(prompt: str) -> tuple[str, ...]:
    return (prompt, *(p for p in PROMPT_VARIANTS if p != prompt))


def reproduce(params: TrafficRunParams, run_dir: Path | str) -> PipelineResult:
    """The full pipeline (module docstring) into ``run_dir``; returns metrics and paths."""
    from irkit.data.traffic import load_traffic, read_label_file, write_label_file
    from irkit.models import create_model
    from irkit.traffic.attributes import count_attributes, load_car_attribute, write_car_attribute
    from irkit.traffic.augment import (augment_labels_detailed, default_truth_path, fill_accuracy,
                                       read_attribute_truth)
    from irkit.traffic.training_csv import build_training_csv

    check_prompt(params.prompt)
    run = _open_run(run_dir, params, "reproduce")
    timings: dict[str, float] = {}
    started = time.time()
    root = ensure_demo_data(params.data_root, params.scale, params.seed)
    timings["data"] = time.time() - started
    run.log("traffic data at %s", root)

    train_labels_path = root / "train" / "train_label.txt"
    train_images = root / "train" / "train_images"
    train_labels = read_label_file(train_labels_path, train_images)
    val_labels = read_label_file(root / "val" / "val_label.txt", root / "val" / "val_images")
    counts = count_attributes(train_labels)
    car_attribute_path = run.path / "car_attribute.json"
    write_car_attribute(car_attribute_path, counts)
    run.log("parsed %d vehicle / %d person labels; missing slots: %s", counts.num_vehicles, counts.num_persons,
            dict(counts.slot_missing))
    val_csv = build_training_csv(val_labels, root / "val" / "val_images", run.path / "val.csv", caption="text",
                                 source=root / "val" / "val_label.txt")

    training_runs: list[Path] = []
    start_weights = params.checkpoint or params.pretrained
    from_scratch = not params.starts_from_pretrained()
    main_epochs = params.epochs
    started = time.time()
    if from_scratch and params.warmup_epochs > 0:
        raw_csv = build_training_csv(train_labels, train_images, run.path / "train_raw.csv", caption="text",
                                     source=train_labels_path)
        # constant LR after the linear warm-up: the LR decays once, at the end of the final stage
        # (a cosine here would anneal to 0 and then restart at the peak LR for the main stage)
        start_weights = str(_train_stage(params, run, "warmup", raw_csv, None, params.warmup_epochs, None,
                                         from_scratch_recipe=True, lr_scheduler="const"))
        training_runs.append(run.path / "warmup")
        main_epochs = params.epochs - params.warmup_epochs
    timings["warmup_training"] = time.time() - started

    augmentation: dict[str, Any] = {"enabled": params.augment}
    started = time.time()
    if params.augment:
        # the warm-up checkpoint, the user's start weights (tag or file), or random init
        scorer = create_model(params.model, pretrained=start_weights, seed=params.seed)
        result = augment_labels_detailed(train_labels, scorer, train_images, load_car_attribute(car_attribute_path),
                                         cache_dir=params.cache_dir, num_workers=params.workers,
                                         source=train_labels_path)
        augmentation.update(result.summary())
        truth_path = default_truth_path(train_images)
        if truth_path is not None:  # demo data ships the true attributes: how good were the fills?
            augmentation["fill_accuracy"] = fill_accuracy(result, read_attribute_truth(truth_path), train_images)
        write_label_file(run.path / "train_label_aug.txt", result.labels)
        train_csv = build_training_csv(result.labels, train_images, run.path / "train.csv", caption="aug",
                                       source=run.path / "train_label_aug.txt")
        run.log("augmentation: %s", augmentation)
    else:
        train_csv = build_training_csv(train_labels, train_images, run.path / "train.csv", caption="text",
                                       source=train_labels_path)
    timings["augmentation"] = time.time() - started

    started = time.time()
    final_checkpoint = _train_stage(params, run, "train", train_csv, val_csv, main_epochs, start_weights,
                                    from_scratch_recipe=from_scratch)
    training_runs.append(run.path / "train")
    timings["training"] = time.time() - started

    started = time.time()
    test_split = load_traffic(root, "test")
    if not test_split.ground_truth:
        raise InputError("no ground truth for local scoring (expected test/test_ground_truth.txt)", path=root)
    trained = evaluate_checkpoint(params, test_split, str(final_checkpoint), None, run.path, run)
    before = evaluate_checkpoint(params, test_split, params.checkpoint, params.pretrained, None, run,
                                 all_prompts=False)
    timings["inference"] = time.time() - started

    metrics = {
        "protocol": trained.headline["protocol"],
        "trained": trained.headline,
        "before_training": before.headline,
        "prompt_selection": {"trained": trained.selection, "before_training": before.selection},
        "prompt_ablation": {p: _headline(m) for p, m in trained.results.items()},
        "augmentation": augmentation,
        "training": {"epochs": params.epochs, "warmup_epochs": params.warmup_epochs if from_scratch else 0,
                     "final_checkpoint": str(final_checkpoint),
                     "val": _last_val(run.path / "train")},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    atomic_write_json(run.path / "metrics.json", metrics, indent=2)
    run.log("metrics: %s", json.dumps({k: metrics[k] for k in ("prompt_ablation",)}))
    run.close()
    return PipelineResult(run_dir=run.path, metrics=metrics, submission_path=run.path / "submission.json",
                          final_checkpoint=final_checkpoint, training_runs=training_runs)


def quick_review(params: TrafficRunParams, run_dir: Path | str) -> PipelineResult:
    """Checkpoint (or pretrained tag) -> inference -> merge -> score, into ``run_dir``."""
    from irkit.data.traffic import load_traffic

    check_prompt(params.prompt)
    run = _open_run(run_dir, params, "quick-review")
    root = ensure_demo_data(params.data_root, params.scale, params.seed)
    test_split = load_traffic(root, "test")
    if not test_split.ground_truth:
        raise InputError("no ground truth for local scoring (expected test/test_ground_truth.txt)", path=root)
    evaluation = evaluate_checkpoint(params, test_split, params.checkpoint, params.pretrained, run.path, run)
    metrics = {
        "protocol": evaluation.headline["protocol"],
        "trained": evaluation.headline,
        "prompt_selection": evaluation.selection,
        "prompt_ablation": {p: _headline(m) for p, m in evaluation.results.items()},
        "weights": params.checkpoint or params.pretrained or "random-init",
    }
    atomic_write_json(run.path / "metrics.json", metrics, indent=2)
    run.close()
    return PipelineResult(run_dir=run.path, metrics=metrics, submission_path=run.path / "submission.json")


# --------------------------------------------------------------------------- reporting helpers

HEADLINE_KEYS = ("official_mAP@10", "standard_mAP@10", "R@1", "R@5", "R@10")


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in HEADLINE_KEYS}


def _last_val(train_run: Path) -> Optional[dict[str, Any]]:
    from irkit.runs import read_results

    results = read_results(train_run)
    return results[-1] if results else None


def training_loss_series(training_runs: list[Path]) -> dict[str, list[tuple[int, float]]]:
    """``train/loss`` of each open_clip run folder (steps offset so stages follow each other)."""
    from irkit.viz import read_scalars

    series: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    for run_dir in training_runs:
        points = read_scalars(run_dir / "tensorboard", "train/loss")
        series[run_dir.name] = [(step + offset, value) for step, value in points]
        if points:
            offset += points[-1][0] + 1
    return series


def new_run_dir(log_dir: Path | str = "log", run_name: Optional[str] = None, kind: str = "reproduce") -> Path:
    """A run folder path that does not exist yet (``<date-time>-<kind>`` unless named)."""
    path = Path(log_dir) / (run_name or f"{time.strftime('%Y_%m_%d-%H_%M_%S')}-{kind}")
    if path.exists():
        raise InputError("run folder already exists; choose another run_name", path=path)
    return path


def metrics_table(metrics: dict[str, Any]) -> str:
    """Markdown table of the headline metrics: trained / before training / prompt variants."""
    from irkit.notebook import markdown_table

    rows = []
    if "trained" in metrics:
        rows.append({"weights": "trained", "prompt": metrics["trained"]["prompt"], **_headline(metrics["trained"])})
    if "before_training" in metrics:
        rows.append({"weights": "before training", "prompt": metrics["before_training"]["prompt"],
                     **_headline(metrics["before_training"])})
    for prompt, values in metrics.get("prompt_ablation", {}).items():
        rows.append({"weights": "trained", "prompt": f"ablation: {prompt}", **values})
    return markdown_table(rows, ["weights", "prompt", *HEADLINE_KEYS])


def traffic_result_grid(run_dir: Path | str, data_root: Path | str, num_queries: int = 6, k: int = 5):
    """Figure: sample queries (half vehicle, half person) with their top-k images, hits marked."""
    from irkit.data.traffic import load_traffic
    from irkit.viz import retrieval_grid

    split = load_traffic(traffic_root(data_root), "test")
    submission = json.loads((Path(run_dir) / "submission.json").read_text())["results"]
    from irkit.traffic.inference import count_vehicle_queries

    person_first = count_vehicle_queries(split.queries)
    vehicles, persons = submission[:person_first], submission[person_first:]
    half = num_queries // 2
    picked = vehicles[:: max(1, len(vehicles) // max(1, half))][:half] + \
        persons[:: max(1, len(persons) // max(1, num_queries - half))][: num_queries - half]
    image_dir = split.image_dir
    ground_truth = split.ground_truth or {}
    return retrieval_grid(
        [entry["text"] for entry in picked],
        [[image_dir / name for name in entry["image_names"][:k]] for entry in picked],
        relevant=[{image_dir / name for name in ground_truth.get(entry["text"], ())} for entry in picked],
        k=k,
    )


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
