"""Every traffic stage in order, in one call (scripts, tests); the notebooks call the same
stages one cell each (:mod:`irkit.traffic.stages`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from irkit.traffic.stages import (
    TrafficRunParams,
    infer_galleries,
    load_test_data,
    merge_submissions,
    open_run,
    prepare_captions,
    prepare_data,
    score_quick_review,
    score_reproduction,
    train_model,
)


@dataclass
class PipelineResult:
    """What a whole run left in its folder."""

    run_dir: Path
    metrics: dict[str, Any]             # as written to metrics.json
    submission_path: Optional[Path] = None
    final_checkpoint: Optional[Path] = None
    training_runs: list[Path] = field(default_factory=list)


def reproduce(params: TrafficRunParams, run_dir: Path | str) -> PipelineResult:
    """Data -> captions (warm-up, augmentation) -> training -> inference -> merge -> score, into ``run_dir``."""
    run = open_run(params, run_dir, "reproduce")
    data = prepare_data(run)
    captions = prepare_captions(run, data)
    training = train_model(run, data, captions)
    answers = infer_galleries(run, data.test, training.final_checkpoint)
    submissions = merge_submissions(run, answers)
    metrics = score_reproduction(run, captions, training, answers, submissions)
    return PipelineResult(run_dir=run.path, metrics=metrics, submission_path=submissions.path,
                          final_checkpoint=training.final_checkpoint, training_runs=training.runs)


def quick_review(params: TrafficRunParams, run_dir: Path | str) -> PipelineResult:
    """Checkpoint (or pretrained tag) -> inference -> merge -> score, into ``run_dir``."""
    run = open_run(params, run_dir, "quick-review")
    test = load_test_data(run)
    answers = infer_galleries(run, test)
    submissions = merge_submissions(run, answers)
    metrics = score_quick_review(run, answers, submissions)
    return PipelineResult(run_dir=run.path, metrics=metrics, submission_path=submissions.path)
