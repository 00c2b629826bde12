"""Run folders in open_clip_train's layout, for every irkit trainer (docs/formats.md §5).

``log/<run-name>/{out.log, params.txt, checkpoints/epoch_<n>.pt, results.jsonl, tensorboard/}``.
open_clip_train writes this layout for CLIP training itself; irkit's other trainers (phi,
fusion, re-ranker) use :class:`RunFolder` so every run looks the same. A run folder is never
overwritten: creating an existing one fails, resuming continues it.

Run folder states (docs/formats.md §5): a run that fails after its folder exists gets a
``FAILED`` file (the error line, then the traceback). A rerun with the same name moves a failed
run that holds no checkpoint aside to ``<name>.failed-<n>`` and starts afresh; a failed run with
checkpoints is continued with ``--resume latest``. Resuming with hyper-parameters that differ
from ``params.txt`` is refused (one line naming the changed keys) unless explicitly allowed;
then the previous ``params.txt`` is kept as ``params_before_resume_<n>.txt``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch

from irkit.errors import InputError, RunFailed, first_line_of
from irkit.io import atomic_path, atomic_write_text, make_dirs

_CHECKPOINT_RE = re.compile(r"epoch_(\d+)\.pt$")
#: Written into a run folder whose training raised: the error line, then the traceback.
FAILED_MARKER = "FAILED"
#: Flag (and its wording) that lets a resume continue with changed hyper-parameters.
ALLOW_PARAM_CHANGE_FLAG = "--allow-param-change"


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


def read_params(run_dir: Path | str) -> dict[str, str]:
    """``<run_dir>/params.txt`` as ``{name: value text}`` (empty when there is none)."""
    path = Path(run_dir) / "params.txt"
    if not path.is_file():
        return {}
    params = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            params[name] = value
        elif line.endswith(":"):  # an empty value
            params[line[:-1]] = ""
    return params


def changed_params(saved: Mapping[str, str], params: Mapping[str, Any]) -> list[str]:
    """``name: old -> new`` for every parameter whose text differs (added or removed ones too)."""
    changes = []
    for name in sorted(set(saved) | set(params)):
        old = saved.get(name, "<absent>")
        new = str(params[name]) if name in params else "<absent>"
        if old != new:
            changes.append(f"{name}: {old} -> {new}")
    return changes


def check_resume_params(run_dir: Path | str, params: Mapping[str, Any], allow_change: bool = False,
                        compared: Optional[Sequence[str]] = None, free: Sequence[str] = ()) -> list[str]:
    """Refuse to resume ``run_dir`` with ``params`` that differ from its ``params.txt`` (one
    :class:`InputError` line listing the changes), unless ``allow_change`` or every changed name
    is in ``free`` (e.g. a longer training); a change that is let through keeps the old file as
    ``params_before_resume_<n>.txt``. ``compared`` limits the check to those names.
    Returns the changes."""
    run_dir = Path(run_dir)
    saved = read_params(run_dir)
    if compared is not None:
        saved = {k: v for k, v in saved.items() if k in compared}
        params = {k: v for k, v in params.items() if k in compared}
    changes = changed_params(saved, params)
    if not changes:
        return []
    strict = [change for change in changes if change.split(": ", 1)[0] not in free]
    if strict and not allow_change:
        shown = "; ".join(strict[:8]) + (f"; (+{len(strict) - 8} more)" if len(strict) > 8 else "")
        raise InputError(f"resuming with changed hyper-parameters ({shown}); expected the run's own values, "
                         f"or pass {ALLOW_PARAM_CHANGE_FLAG} to continue with the new ones (the old params.txt "
                         "is then kept as params_before_resume_<n>.txt)", path=run_dir / "params.txt")
    n = 1
    while (run_dir / f"params_before_resume_{n}.txt").exists():
        n += 1
    with atomic_path(run_dir / f"params_before_resume_{n}.txt") as tmp:
        shutil.copyfile(run_dir / "params.txt", tmp)
    return changes


def latest_checkpoint(checkpoints_dir: Path | str) -> Optional[Path]:
    """The ``epoch_<n>.pt`` in ``checkpoints_dir`` with the largest n, or None."""
    found = [(int(m.group(1)), p) for p in Path(checkpoints_dir).glob("epoch_*.pt")
             if (m := _CHECKPOINT_RE.search(p.name))]
    return max(found)[1] if found else None


def has_checkpoints(run_dir: Path | str) -> bool:
    """Whether ``<run_dir>/checkpoints`` holds any ``.pt`` file."""
    return any((Path(run_dir) / "checkpoints").glob("*.pt"))


def mark_failed(run_dir: Path | str, error: BaseException) -> Path:
    """Record in ``<run_dir>/FAILED`` that the run raised ``error`` (first line: the error; then
    the traceback); returns the marker's path."""
    marker = Path(run_dir) / FAILED_MARKER
    head = f"{type(error).__name__}: {error}".splitlines()[0] if str(error) else type(error).__name__
    body = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    atomic_write_text(marker, f"{head}\n\n{body}")
    return marker


def failure_of(run_dir: Path | str) -> Optional[str]:
    """The first line of ``<run_dir>/FAILED``, or None for a run not marked failed."""
    marker = Path(run_dir) / FAILED_MARKER
    if not marker.is_file():
        return None
    return (marker.read_text(encoding="utf-8", errors="replace").splitlines() or [""])[0]


def set_aside_failed_run(path: Path | str) -> Optional[Path]:
    """Move a failed run folder without checkpoints to ``<name>.failed-<n>`` so its name can be
    used again; returns the new location (None when ``path`` is no such run)."""
    path = Path(path)
    if not path.is_dir() or failure_of(path) is None or has_checkpoints(path):
        return None
    n = 1
    while (aside := path.with_name(f"{path.name}.failed-{n}")).exists():
        n += 1
    os.rename(path, aside)
    return aside


def run_failed(run_dir: Path | str, error: BaseException) -> RunFailed:
    """The one-line :class:`RunFailed` for ``error`` raised by the run in ``run_dir`` (marked FAILED)."""
    first = (str(error).splitlines() or [""])[0]
    return RunFailed(f"training failed ({type(error).__name__}: {first}); the run folder {run_dir} is marked "
                     f"{FAILED_MARKER} (traceback inside): rerun with the same --name to start again, or "
                     "--resume latest when it holds checkpoints", run_dir=run_dir)


def existing_run_error(path: Path) -> InputError:
    """The one-line refusal of an existing run folder (a failed one says so)."""
    failure = failure_of(path)
    if failure is not None:
        return InputError(f"this run failed earlier ({failure}) after writing checkpoints; continue it with "
                          "--resume latest, or choose another --name", path=path)
    return InputError("run folder already exists; choose another --name, or resume it with --resume latest",
                      path=path)


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
        A failed run without checkpoints (``FAILED``) is moved aside to ``<name>.failed-<n>``.
        """
        path = Path(log_dir) / name
        aside = set_aside_failed_run(path)
        fresh = path.is_dir() and not (path / "params.txt").exists() and not has_checkpoints(path)
        if path.exists() and not (adopt_fresh and fresh):
            raise existing_run_error(path)
        created = not path.exists()
        make_dirs(path / "checkpoints")
        run = None
        try:
            (path / "tensorboard").mkdir(exist_ok=True)
            run = cls(path)
            with atomic_path(path / "params.txt") as tmp:
                tmp.write_text(format_params(params))
        except BaseException:  # e.g. a full disk: leave no half-made folder that blocks the name
            if run is not None:
                run.close()
            if created:
                shutil.rmtree(path, ignore_errors=True)
            raise
        run.logger.info("run folder %s", path)
        if aside is not None:
            run.logger.info("an earlier failed attempt under this name was moved to %s", aside)
        return run

    @classmethod
    def open_existing(cls, path: Path | str, params: Optional[Mapping[str, Any]] = None,
                      allow_param_change: bool = False, free: Sequence[str] = ()) -> "RunFolder":
        """Re-open a run folder to resume it. With ``params``, changed hyper-parameters are refused
        unless ``allow_param_change`` or only names in ``free`` changed (:func:`check_resume_params`;
        then params.txt is rewritten, the old one kept and the change logged in out.log)."""
        path = Path(path)
        if not (path / "params.txt").is_file():
            raise InputError("not an irkit run folder (no params.txt); cannot resume", path=path)
        changes = check_resume_params(path, params, allow_param_change, free=free) if params is not None else []
        run = cls(path)
        if changes:
            with atomic_path(path / "params.txt") as tmp:
                tmp.write_text(format_params(params))
            run.logger.info("resumed with changed hyper-parameters: %s", "; ".join(changes))
        failure = failure_of(path)
        if failure is not None:
            (path / FAILED_MARKER).unlink()
            run.logger.info("resuming a run that had failed: %s", failure)
        return run

    @contextlib.contextmanager
    def failure_recorded(self) -> Iterator["RunFolder"]:
        """``with run.failure_recorded(): train...``: an exception marks the folder ``FAILED``
        (:func:`mark_failed`, noted in out.log) and is re-raised, an unexpected one as the one-line
        :class:`~irkit.errors.RunFailed`; the run is closed either way."""
        try:
            yield self
        except BaseException as error:
            mark_failed(self.path, error)
            record = self.logger.makeRecord(self.logger.name, logging.ERROR, __file__, 0,
                                            "run failed: %s (traceback in %s)",
                                            (first_line_of(error), self.path / FAILED_MARKER), None)
            for handler in self.logger.handlers:  # out.log only: the console gets the command's one line
                if isinstance(handler, logging.FileHandler):
                    handler.handle(record)
            if isinstance(error, Exception) and not isinstance(error, InputError):
                raise run_failed(self.path, error) from error
            raise
        finally:
            self.close()

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
        return latest_checkpoint(self.checkpoints_dir)

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
        raise InputError(f"cannot read checkpoint with torch.load(weights_only=True) ({type(e).__name__}: "
                         f"{first_line_of(e)}); expected a torch state file of tensors and plain values",
                         path=path) from None


class _SilentWriter:
    """A TensorBoard writer stand-in that records nothing."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    @contextlib.contextmanager
    def failure_recorded(self) -> Iterator["RunFolder"]:
        """Rank 0 records a failure; here the error only propagates."""
        yield self

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

    @contextlib.contextmanager
    def failure_recorded(self) -> Iterator["RunFolder"]:
        """Rank 0 records a failure; here the error only propagates."""
        yield self

    def close(self) -> None:
        pass
