"""Contrastive CLIP training through ``open_clip_train`` (wrapped, not forked).

open_clip_train already provides the trainer, the run-folder layout (``out.log``,
``params.txt``, ``checkpoints/``, ``tensorboard/``), ``--resume latest``, AMP and DDP, so irkit
only builds its arguments and wraps four things it cannot do on its own:

1. **irkit's model configs** must be registered in the training process
   (``open_clip.add_model_config``) so ``--model irkit-tiny`` resolves.
2. **Square padding at training time**: open_clip's ``--image-resize-mode`` only affects the
   inference transform; the train transform is always RandomResizedCrop. The published
   traffic recipe pads to a square for training too (docs/methods.md §A.3), so the train
   transform returned by ``create_model_and_transforms`` is replaced by irkit's.
3. **Exact resume**: open_clip_train seeds the RNGs once at start-up, so after
   ``--resume latest`` the data order and augmentation of later epochs differ from an
   uninterrupted run. irkit re-seeds every epoch from ``(seed, epoch)`` so a resumed run
   ends with the same weights as an uninterrupted one.
4. **Atomic checkpoints**: open_clip_train writes ``epoch_<n>.pt`` in place; a kill during
   that write would leave a truncated file that ``--resume latest`` then picks. irkit makes
   those writes atomic (temporary file + rename) for the duration of training.

It also validates the CSV files before launching (the most reported open_clip training
error is ``KeyError: 'filepath'`` from a separator mismatch) and mirrors open_clip's
``checkpoints/results.jsonl`` to ``<run>/results.jsonl`` (docs/formats.md §5).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from irkit.errors import InputError
from irkit.io import atomic_path


@dataclass
class ClipTrainConfig:
    """Arguments of one CLIP training run (names follow open_clip_train's flags)."""

    train_csv: Path
    val_csv: Optional[Path] = None
    model: str = "irkit-tiny"
    pretrained: Optional[str] = None        # open_clip tag or a local checkpoint file
    epochs: int = 10
    lr: Optional[float] = None              # None: the recipe's default (see recipe_defaults)
    wd: Optional[float] = None
    warmup: Optional[int] = None
    lr_scheduler: str = "cosine"            # open_clip_train: cosine | const | const-cooldown
    batch_size: Optional[int] = None
    workers: int = 1
    seed: int = 0
    precision: str = "auto"                 # auto: amp on CUDA, fp32 on CPU
    transform: str = "square"               # irkit transform name used for training
    log_dir: Path = Path("log")
    name: Optional[str] = None
    resume: Optional[str] = None            # "latest" or a checkpoint path
    save_frequency: int = 1
    csv_separator: str = "\t"
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    extra_args: list[str] = field(default_factory=list)  # passed through to open_clip_train


def recipe_defaults(model: str, pretrained: Optional[str]) -> dict[str, Any]:
    """Default optimiser settings: the published low-LR fine-tuning recipe for pretrained
    weights (docs/methods.md §A.4: lr 4e-7, wd 0.01, warmup 10000, batch 25), or a from-scratch
    recipe for randomly initialised models such as the embedded ``irkit-tiny``."""
    if pretrained:
        return {"lr": 4e-7, "wd": 0.01, "warmup": 10000, "batch_size": 25}
    return {"lr": 1e-3, "wd": 0.1, "warmup": 50, "batch_size": 128}


def _resolve(config: ClipTrainConfig) -> ClipTrainConfig:
    defaults = recipe_defaults(config.model, config.pretrained)
    resolved = ClipTrainConfig(**asdict(config))
    for key, value in defaults.items():
        if getattr(resolved, key) is None:
            setattr(resolved, key, value)
    if resolved.precision == "auto":
        resolved.precision = "amp" if torch.cuda.is_available() else "fp32"
    return resolved


def default_clip_run_name(config: ClipTrainConfig) -> str:
    from irkit.runs import default_run_name

    return default_run_name(config.model, config.lr, config.batch_size, ep=config.epochs, seed=config.seed)


def open_clip_argv(config: ClipTrainConfig) -> list[str]:
    """The open_clip_train command line for ``config`` (defaults already resolved)."""
    argv = [
        "--train-data", str(config.train_csv),
        "--dataset-type", "csv",
        "--csv-separator", config.csv_separator,
        "--csv-img-key", config.csv_img_key,
        "--csv-caption-key", config.csv_caption_key,
        "--model", config.model,
        "--epochs", str(config.epochs),
        "--lr", str(config.lr),
        "--wd", str(config.wd),
        "--warmup", str(config.warmup),
        "--lr-scheduler", config.lr_scheduler,
        "--batch-size", str(config.batch_size),
        "--workers", str(config.workers),
        "--seed", str(config.seed),
        "--precision", config.precision,
        "--logs", str(config.log_dir),
        "--name", str(config.name),
        "--save-frequency", str(config.save_frequency),
        "--report-to", "tensorboard",
        "--image-resize-mode", "longest" if config.transform == "square" else "shortest",
        "--log-every-n-steps", "10",
    ]
    if config.val_csv is not None:
        argv += ["--val-data", str(config.val_csv)]
    if config.pretrained:
        argv += ["--pretrained", str(config.pretrained)]
    if config.resume:
        argv += ["--resume", str(config.resume)]
    if not torch.cuda.is_available():
        argv += ["--device", "cpu"]
    return argv + list(config.extra_args)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


def _atomic_torch_save(original_save):
    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(f, (str, os.PathLike)):
            with atomic_path(f) as tmp:
                original_save(obj, tmp, *args, **kwargs)
        else:
            original_save(obj, f, *args, **kwargs)

    return save


# open_clip_train messages worth showing on the console while training (everything, the model
# dump, all parameters and open_clip's own long "Train Epoch" lines included, still goes to the
# run's out.log); irkit's "train epoch" lines give loss, step rate and ETA instead.
TRAIN_LINE_PREFIX = "train epoch"
_CONSOLE_PREFIXES = (TRAIN_LINE_PREFIX, "Eval Epoch", "Start epoch", "=> ", "Found latest", "No latest")
#: seconds between two ``train epoch`` lines inside an epoch (the epoch's last step always gets one)
PROGRESS_EVERY_S = 30.0


class TrainingProgress:
    """``train epoch e/E step s/S: loss L (epoch mean M), R step/s, ETA T`` lines, logged (to
    out.log and the console) at most every ``every_s`` seconds and at the end of every epoch.

    Fed by :meth:`step` with each optimizer step's total loss (a detached tensor: it is only
    read, forcing a device sync, when a line is written)."""

    def __init__(self, epochs: int, every_s: float = PROGRESS_EVERY_S) -> None:
        self.epochs = int(epochs)
        self.every_s = every_s
        self.rate: Optional[Any] = None
        self.epoch = 0
        self.steps_per_epoch = 0
        self.step_in_epoch = 0
        self.loss_sum: Any = 0.0
        self.last_line = 0.0

    def start_epoch(self, epoch: int, steps_per_epoch: int) -> None:
        """``epoch`` counts from 0 (open_clip_train's numbering); the first call starts the clock."""
        from irkit.progress import StepRate

        self.epoch, self.steps_per_epoch = int(epoch), max(int(steps_per_epoch), 1)
        self.step_in_epoch, self.loss_sum = 0, 0.0
        if self.rate is None:
            self.rate = StepRate(self.epochs * self.steps_per_epoch, done=self.epoch * self.steps_per_epoch)
            self.last_line = time.perf_counter()

    def step(self, loss: Any) -> None:
        self.step_in_epoch += 1
        self.loss_sum = self.loss_sum + loss
        now = time.perf_counter()
        if self.step_in_epoch >= self.steps_per_epoch or now - self.last_line >= self.every_s:
            self.last_line = now
            done = self.epoch * self.steps_per_epoch + self.step_in_epoch
            logging.info(TRAIN_LINE_PREFIX + " %d/%d step %d/%d: loss %.4f (epoch mean %.4f), %s",
                         self.epoch + 1, self.epochs, self.step_in_epoch, self.steps_per_epoch, float(loss),
                         float(self.loss_sum) / self.step_in_epoch, self.rate.describe(done))


class _LossWithProgress:
    """open_clip_train's loss module, reporting each step's total loss to a :class:`TrainingProgress`
    (with gradient accumulation the loss runs ``accum_freq`` times per optimizer step)."""

    def __init__(self, loss: Any, progress: TrainingProgress, accum_freq: int) -> None:
        self.loss, self.progress, self.accum_freq, self.calls = loss, progress, max(int(accum_freq), 1), 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.loss(*args, **kwargs)
        self.calls += 1
        if self.calls % self.accum_freq == 0:
            total = sum(out.values()) if isinstance(out, dict) else out
            self.progress.step(total.detach())
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loss, name)


class _ProgressOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage().startswith(_CONSOLE_PREFIXES)


@contextlib.contextmanager
def restored_logging() -> Iterator[None]:
    """open_clip_train's setup_logging sets every logger to INFO and adds root handlers; undo that
    afterwards so later library calls are not flooded (e.g. faiss's loader messages).

    setup_logging also turns every placeholder (a parent name such as ``torch._subclasses`` that
    had no logger of its own yet) into a real logger at INFO; those go back to NOTSET, otherwise
    their children log at INFO for the rest of the process (torch's ``FakeTensor cache stats``
    at exit, irkit's own cache messages)."""
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved_levels = {name: logger.level if isinstance(logger, logging.Logger) else logging.NOTSET
                    for name, logger in logging.root.manager.loggerDict.items()}
    root.handlers[:] = []  # open_clip_train installs its own; avoid printing every line twice
    try:
        with warnings.catch_warnings():
            # open_clip_train always asks for pinned memory; harmless without an accelerator.
            warnings.filterwarnings("ignore", message=".*pin_memory.*")
            yield
    finally:
        for handler in root.handlers:
            if handler not in saved_root[1]:
                handler.close()
        root.handlers[:] = saved_root[1]
        root.setLevel(saved_root[0])
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _patched_open_clip_train(config: ClipTrainConfig) -> Iterator[Any]:
    """Install irkit's wrappers around open_clip_train for one run (see module docstring)."""
    import open_clip_train.main as oct_main

    import irkit.models  # noqa: F401  (registers irkit's model configs with open_clip)
    from irkit.transforms import build_transform

    original_create = oct_main.create_model_and_transforms
    original_train_one_epoch = oct_main.train_one_epoch
    original_setup_logging = oct_main.setup_logging
    original_save = torch.save

    def create_model_and_transforms(*args: Any, **kwargs: Any):
        model, preprocess_train, preprocess_val = original_create(*args, **kwargs)
        cfg = model.visual.preprocess_cfg
        image_size = cfg["size"] if isinstance(cfg, dict) else cfg.size
        mean = cfg["mean"] if isinstance(cfg, dict) else cfg.mean
        std = cfg["std"] if isinstance(cfg, dict) else cfg.std
        preprocess_train = build_transform(config.transform, image_size=image_size, mean=mean, std=std,
                                           is_train=True)
        preprocess_val = build_transform(config.transform, image_size=image_size, mean=mean, std=std,
                                         is_train=False)
        return model, preprocess_train, preprocess_val

    def setup_logging(*args: Any, **kwargs: Any):
        original_setup_logging(*args, **kwargs)
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler:
                handler.addFilter(_ProgressOnly())

    progress = TrainingProgress(config.epochs)

    def train_one_epoch(model, data, loss, epoch, *args: Any, **kwargs: Any):
        # Data order, worker seeds and augmentation of this epoch depend only on (seed, epoch).
        _seed_everything(config.seed * 100003 + epoch)
        # open_clip_train's signature: (model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, ...)
        oct_args = kwargs.get("args", args[4] if len(args) > 4 else None)
        accum_freq = int(getattr(oct_args, "accum_freq", 1) or 1)
        progress.start_epoch(epoch, data["train"].dataloader.num_batches // accum_freq)
        return original_train_one_epoch(model, data, _LossWithProgress(loss, progress, accum_freq), epoch,
                                        *args, **kwargs)

    oct_main.create_model_and_transforms = create_model_and_transforms
    oct_main.train_one_epoch = train_one_epoch
    oct_main.setup_logging = setup_logging
    torch.save = _atomic_torch_save(original_save)
    try:
        with restored_logging():
            yield oct_main
    finally:
        oct_main.create_model_and_transforms = original_create
        oct_main.train_one_epoch = original_train_one_epoch
        oct_main.setup_logging = original_setup_logging
        torch.save = original_save


@dataclass
class ClipTrainResult:
    run_dir: Path
    final_checkpoint: Path
    results: list[dict[str, Any]]


def validate_training_csv(path: Path, config: ClipTrainConfig) -> int:
    """Check the CSV the way open_clip_train will read it; return its row count."""
    from irkit.data.captions import load_caption_csv

    records = load_caption_csv(path, sep=config.csv_separator, img_key=config.csv_img_key,
                               caption_key=config.csv_caption_key, check_images=True)
    if not records:
        raise InputError("training CSV has no rows", path=path)
    return len(records)


def train_clip(config: ClipTrainConfig) -> ClipTrainResult:
    """Train (or fine-tune) an open_clip model on caption CSVs; returns the run folder.

    A new run refuses an existing run folder; ``resume="latest"`` continues it.
    """
    config = _resolve(config)
    if config.name is None:
        if config.resume == "latest":
            raise InputError("--resume latest needs --name of the run to continue", field="name")
        config.name = default_clip_run_name(config)
    run_dir = Path(config.log_dir) / config.name
    if config.resume is None and run_dir.exists():
        raise InputError("run folder already exists; pick another --name or pass --resume latest",
                         path=run_dir)
    if config.resume == "latest" and not (run_dir / "checkpoints").is_dir():
        raise InputError("cannot resume: no checkpoints folder in this run", path=run_dir)
    if config.resume not in (None, "latest") and not Path(config.resume).is_file():
        raise InputError("resume checkpoint not found", path=config.resume)
    if config.pretrained and (os.sep in config.pretrained or config.pretrained.endswith(
            (".pt", ".pth", ".bin", ".safetensors"))) and not Path(config.pretrained).is_file():
        raise InputError("pretrained checkpoint file not found", path=config.pretrained)
    for csv_path in filter(None, (config.train_csv, config.val_csv)):
        validate_training_csv(Path(csv_path), config)

    with _patched_open_clip_train(config) as oct_main:
        status = oct_main.main(open_clip_argv(config))
    if status not in (None, 0):
        raise RuntimeError(f"open_clip_train exited with status {status}; see {run_dir / 'out.log'}")

    results_src = run_dir / "checkpoints" / "results.jsonl"
    if results_src.is_file():
        with atomic_path(run_dir / "results.jsonl") as tmp:
            shutil.copyfile(results_src, tmp)
    final = run_dir / "checkpoints" / f"epoch_{config.epochs}.pt"
    if not final.is_file():
        raise RuntimeError(f"training finished without its final checkpoint {final}")
    from irkit.runs import read_results

    return ClipTrainResult(run_dir=run_dir, final_checkpoint=final, results=read_results(run_dir))
