"""Rendering jobs: each image is a pure function of its job, so worker count never matters."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from tqdm import tqdm

from irkit.data.demo.common import derive_rng
from irkit.data.demo.config import DemoDifficulty
from irkit.data.demo.render import RENDERERS, encode_image

#: Below this many images a pool costs more than it saves.
_MIN_PARALLEL_JOBS = 48


@dataclass(frozen=True)
class ImageJob:
    """One image to render: ``RENDERERS[kind](spec, rng)`` saved as ``fmt`` at ``path``.

    ``seed`` is ``(seed, dataset, split, index)``; the image's RNG is derived from it alone.
    """

    kind: str
    spec: dict[str, Any]
    seed: tuple[Any, ...]
    path: str
    fmt: str = "jpg"


def render_job(job: ImageJob, difficulty: DemoDifficulty) -> tuple[int, int]:
    """Render and write one job; returns the image ``(width, height)`` in pixels."""
    rng = derive_rng(*job.seed)
    image = RENDERERS[job.kind](job.spec, rng, difficulty)
    data = encode_image(image, rng, difficulty, job.fmt)
    with open(job.path, "wb") as f:
        f.write(data)
    return image.size


_WORKER_DIFFICULTY: Optional[DemoDifficulty] = None


def _init_worker(difficulty: DemoDifficulty) -> None:
    global _WORKER_DIFFICULTY
    _WORKER_DIFFICULTY = difficulty


def _render_in_worker(job: ImageJob) -> tuple[int, int]:
    assert _WORKER_DIFFICULTY is not None
    return render_job(job, _WORKER_DIFFICULTY)


def default_workers() -> int:
    """Worker processes used when none are asked for: the CPUs this process may use (max 2)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        available = os.cpu_count() or 1
    return max(1, min(2, available))


class JobRunner:
    """Renders batches of :class:`ImageJob` serially or on a process pool (created on first use)."""

    def __init__(self, difficulty: DemoDifficulty, workers: int, progress: bool = True) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.difficulty = difficulty
        self.workers = workers
        self.progress = progress
        self._pool: Any = None

    def __enter__(self) -> "JobRunner":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(abort=exc_type is not None)

    def close(self, abort: bool = False) -> None:
        """Stop the pool: wait for idle workers, or kill them at once when ``abort``."""
        if self._pool is not None:
            if abort:
                self._pool.terminate()
            else:
                self._pool.close()
            self._pool.join()
            self._pool = None

    def _get_pool(self) -> Any:
        if self._pool is None:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            self._pool = context.Pool(self.workers, initializer=_init_worker, initargs=(self.difficulty,))
        return self._pool

    def run(self, jobs: Sequence[ImageJob], description: str) -> list[tuple[int, int]]:
        """Render ``jobs``; returns their ``(width, height)`` in job order."""
        for folder in sorted({str(Path(job.path).parent) for job in jobs}):
            Path(folder).mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(jobs), desc=description, unit="img", disable=not self.progress, leave=False)
        sizes: list[tuple[int, int]] = []
        try:
            if self.workers == 1 or len(jobs) < _MIN_PARALLEL_JOBS:
                for job in jobs:
                    sizes.append(render_job(job, self.difficulty))
                    bar.update(1)
            else:
                chunk = max(1, min(32, len(jobs) // (self.workers * 8)))
                for size in self._get_pool().imap(_render_in_worker, jobs, chunksize=chunk):
                    sizes.append(size)
                    bar.update(1)
        finally:
            bar.close()
        return sizes
