"""Run folders in open_clip_train's layout, for every irkit trainer (docs/formats.md §5).

``log/<run-name>/{out.log, params.txt, checkpoints/epoch_<n>.pt, results.jsonl, tensorboard/}``.
open_clip_train writes this layout for CLIP training itself; irkit's other trainers (phi,
fusion, re-ranker) use :class:`RunFolder` so every run looks the same. A run folder is never
overwritten: creating an existing one fails, resuming continues it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from irkit.errors import InputError
from irkit.io import atomic_path

_CHECKPOINT_RE = re.compile(r"epoch_(\d+)\.pt$")


def default_run_name(model: str, lr: float, batch_size: int, **extra: Any) -> str:
    """``<date-time>-model_<m>-lr_<lr>-b_<bs>[-<key>_<value>...]`` (open_clip_train's scheme)."""
    parts = [time.strftime("%Y_%m_%d-%H_%M_%S"), f"model_{model.replace('/', '-')}", f"lr_{lr}", f"b_{batch_size}"]
    parts += [f"{key}_{value}" for key, value in extra.items()]
    return "-".join(parts)


def new_run_dir(log_dir: Path | str = "log", run_name: Optional[str] = None, kind: str = "run") -> Path:
    """A run folder path that does not exist yet: ``<log_dir>/<run_name>``, default ``<date-time>-<kind>``."""
    path = Path(log_dir) / (run_name or f"{time.strftime('%Y_%m_%d-%H_%M_%S')}-{kind}")
    if path.exists():
        raise InputError("run folder already exists; choose another run_name", path=path)
    return path


def format_params(params: Mapping[str, Any]) -> str:
    """``name: value`` lines sorted by name, as open_clip_train's params.txt."""
    return "".join(f"{name}: {params[name]}\n" for name in sorted(params))


class RunFolder:
    """One training run's folder: logging, params, checkpoints, results and TensorBoard."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints_dir = self.path / "checkpoints"
        self.tensorboard_dir = self.path / "tensorboard"
        self._writer = None
        self.logger = logging.getLogger(f"irkit.run.{self.path.resolve()}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        log_file = str((self.path / "out.log").resolve())
        # Handlers are keyed by this run's own files: other code (pytest, notebooks) may attach
        # handlers of its own to the logger, which must not stop out.log from being written.
        owned = [h for h in self.logger.handlers if getattr(h, "irkit_run", None) == log_file]
        if not owned:
            formatter = logging.Formatter("%(asctime)s | %(levelname)s | %(message)s", "%Y-%m-%d,%H:%M:%S")
            for handler in (logging.FileHandler(log_file), logging.StreamHandler(sys.stderr)):
                handler.setFormatter(formatter)
                handler.irkit_run = log_file
                self.logger.addHandler(handler)

    @classmethod
    def create(cls, log_dir: Path | str, name: str, params: Mapping[str, Any],
               adopt_fresh: bool = False) -> "RunFolder":
        """Make a new run folder; refuse an existing one (never overwrite a run).

        ``adopt_fresh`` accepts a folder that exists but holds no run yet (no ``params.txt``,
        no checkpoints) — e.g. the folder ``irkit batch run`` made for the executed notebook.
        """
        path = Path(log_dir) / name
        fresh = path.is_dir() and not (path / "params.txt").exists() and not any(
            (path / "checkpoints").glob("*.pt"))
        if path.exists() and not (adopt_fresh and fresh):
            raise InputError(
                "run folder already exists; choose another --name, or resume it with --resume latest",
                path=path,
            )
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        (path / "tensorboard").mkdir(exist_ok=True)
        run = cls(path)
        with atomic_path(path / "params.txt") as tmp:
            tmp.write_text(format_params(params))
        run.logger.info("run folder %s", path)
        return run

    @classmethod
    def open_existing(cls, path: Path | str) -> "RunFolder":
        """Re-open a run folder to resume it."""
        path = Path(path)
        if not (path / "params.txt").is_file():
            raise InputError("not an irkit run folder (no params.txt); cannot resume", path=path)
        return cls(path)

    def log(self, message: str, *args: Any) -> None:
        self.logger.info(message, *args)

    def append_results(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to results.jsonl."""
        with open(self.path / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(record), sort_keys=True) + "\n")

    def read_results(self) -> list[dict[str, Any]]:
        return read_results(self.path)

    @property
    def tensorboard(self):
        """A lazily created ``torch.utils.tensorboard.SummaryWriter`` on ``tensorboard/``."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.tensorboard_dir))
        return self._writer

    def save_checkpoint(self, state: Mapping[str, Any], epoch: int, name: Optional[str] = None) -> Path:
        """Atomically save ``state`` (tensors and plain values only) as ``checkpoints/epoch_<n>.pt``."""
        path = self.checkpoints_dir / (name or f"epoch_{epoch}.pt")
        with atomic_path(path) as tmp:
            torch.save(dict(state), tmp)
        return path

    def latest_checkpoint(self) -> Optional[Path]:
        """The ``epoch_<n>.pt`` with the largest n, or None."""
        found = [(int(m.group(1)), p) for p in self.checkpoints_dir.glob("epoch_*.pt")
                 if (m := _CHECKPOINT_RE.search(p.name))]
        return max(found)[1] if found else None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)


def read_results(run_dir: Path | str) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/results.jsonl`` (empty when there is none yet)."""
    results_path = Path(run_dir) / "results.jsonl"
    if not results_path.is_file():
        return []
    return [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load an irkit/open_clip checkpoint safely (``weights_only=True``); clear error if missing."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling/format problem clearly
        raise InputError(f"cannot read checkpoint ({type(e).__name__}: {e}); expected a torch state file", path=path) from None


class _SilentWriter:
    """A TensorBoard writer stand-in that records nothing."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class FollowerRun(RunFolder):
    """The run folder as seen by ranks other than 0 of a multi-process run: it reads the folder
    (checkpoints to resume from) but writes nothing — rank 0 owns ``out.log``, TensorBoard,
    ``results.jsonl`` and the checkpoints, so the layout equals a one-process run's."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.checkpoints_dir = self.path / "checkpoints"
        self.tensorboard_dir = self.path / "tensorboard"
        self._writer = None
        self.logger = logging.getLogger(f"irkit.run.follower.{self.path.resolve()}")
        self.logger.propagate = False
        if not self.logger.handlers:
            self.logger.addHandler(logging.NullHandler())

    def log(self, message: str, *args: Any) -> None:
        pass

    def append_results(self, record: Mapping[str, Any]) -> None:
        pass

    @property
    def tensorboard(self) -> _SilentWriter:
        return _SilentWriter()

    def save_checkpoint(self, state: Mapping[str, Any], epoch: int, name: Optional[str] = None) -> Path:
        """The path rank 0 writes; nothing is written here."""
        return self.checkpoints_dir / (name or f"epoch_{epoch}.pt")

    def close(self) -> None:
        pass
