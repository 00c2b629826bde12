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
5. **Safe checkpoint loading**: open_clip_train's ``--resume`` reads with its own ``torch.load``
   without ``weights_only`` (safe only by torch's default, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``
   turns off); irkit replaces that one call by ``torch.load(weights_only=True)`` for the run.
6. **Several processes** (``torchrun ... -m irkit train clip`` or ``irkit train clip --nproc N``):
   open_clip_train joins the process group itself (gloo on CPU, NCCL on GPU) and wraps the model
   in DistributedDataParallel; irkit passes ``--batch-size`` as the *global* batch (each rank
   gets ``batch / N``) and ``--gather-with-grad --local-loss`` so the contrastive loss sees the
   whole global batch and its gradient equals one process's; open_clip_train's
   ``device_ids=[cpu]`` (refused by DistributedDataParallel for CPU modules) is dropped on CPU.
   On GPU ``--use-bn-sync`` gives BatchNorm towers (ResNets) global-batch statistics; torch's
   SyncBatchNorm has no CPU kernel, so on CPU a BatchNorm tower normalises per rank (a ViT has
   no BatchNorm and matches one process). Rank 0 alone checks and writes the run folder.

Before anything is created it validates every input, so a bad one is one line and leaves no run
folder: the CSV files (the most reported open_clip training error is ``KeyError: 'filepath'``
from a separator mismatch) and that every image path is a file PIL identifies as an image, the
model name, ``--pretrained`` (a tag of that model, or a local file read with
``weights_only=True``), ``--resume`` (read with ``weights_only=True``, with the keys
open_clip_train needs) and, on resume, that the hyper-parameters match the run's params.txt.
A failure after the folder exists marks it ``FAILED`` (:mod:`irkit.runs`). It mirrors
open_clip's ``checkpoints/results.jsonl`` to ``<run>/results.jsonl`` (docs/formats.md §5).
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

from irkit.distributed import launched_rank, launched_world_size
from irkit.errors import InputError, first_line_of
from irkit.io import atomic_path, atomic_write_json
from irkit.precision import PRECISION_FILE, PRECISION_SETTINGS, Precision, resolve_precision


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
    precision: str = "auto"                 # irkit setting (auto | fp32 | bf16 | fp16) or an open_clip_train name
    transform: str = "square"               # irkit transform name used for training
    memory_format: str = "auto"             # auto: channels-last for convolutional image towers
    exif_transpose: bool = True             # apply the images' EXIF orientation (user folders)
    max_image_pixels: int = 64_000_000      # images with more pixels are refused before decoding
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


def resolved_config(config: ClipTrainConfig, precision: Optional[Precision] = None) -> ClipTrainConfig:
    """A copy of ``config`` with the recipe's defaults filled in and ``precision`` as the
    open_clip_train ``--precision`` it resolves to (:func:`clip_precision`, unless the caller
    has resolved it already and passes ``precision``)."""
    defaults = recipe_defaults(config.model, config.pretrained)
    resolved = ClipTrainConfig(**asdict(config))
    for key, value in defaults.items():
        if getattr(resolved, key) is None:
            setattr(resolved, key, value)
    resolved.precision = (precision or clip_precision(resolved.precision)).open_clip_train_precision()
    return resolved


#: open_clip_train's own ``--precision`` names irkit passes through, as the irkit precision name they
#: mean (``amp``: fp16 autocast; ``amp_bf16``: bf16 autocast; ``pure_*``: weights cast). irkit's
#: ``bf16`` / ``fp16`` are autocast (open_clip_train's ``amp_bf16`` / ``amp``), not its low-precision weights.
OPEN_CLIP_TRAIN_PRECISIONS = {"amp": "fp16", "amp_bf16": "bf16", "amp_bfloat16": "bf16",
                              "pure_bf16": "pure_bf16", "pure_fp16": "pure_fp16"}


def training_device() -> str:
    """The device open_clip_train trains on here: ``cuda`` when available, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def clip_precision(setting: str) -> Precision:
    """The :class:`irkit.precision.Precision` of a CLIP training run: an irkit setting (``auto |
    fp32 | bf16 | fp16``, resolved for :func:`training_device`) or one of open_clip_train's names
    (:data:`OPEN_CLIP_TRAIN_PRECISIONS`, taken as asked). ``.open_clip_train_precision()`` is the
    ``--precision`` open_clip_train gets; an unknown name raises InputError listing both kinds."""
    device = training_device()
    if setting in OPEN_CLIP_TRAIN_PRECISIONS:
        return Precision(setting, OPEN_CLIP_TRAIN_PRECISIONS[setting], device, "open_clip_train name, asked for")
    if setting not in PRECISION_SETTINGS:
        raise InputError(f"unknown precision '{setting}' (expected one of: "
                         f"{', '.join((*PRECISION_SETTINGS, *OPEN_CLIP_TRAIN_PRECISIONS))})", field="precision")
    return resolve_precision(setting, device)


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
        "--batch-size", str(_per_rank_batch(config.batch_size)),
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
    if launched_world_size() > 1:
        argv += ["--gather-with-grad", "--local-loss"]  # in-batch negatives over the global batch
        if torch.cuda.is_available():
            argv += ["--use-bn-sync"]  # BatchNorm towers (ResNets) use global-batch statistics
    return argv + list(config.extra_args)


def _per_rank_batch(batch_size: int) -> int:
    """open_clip_train's ``--batch-size`` is per process; irkit's is the global batch."""
    size = launched_world_size()
    if batch_size % size:
        raise InputError(f"--batch-size {batch_size} is the global batch and must be divisible by the "
                         f"{size} processes", field="batch_size")
    return batch_size // size


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
#: the line naming the run's resolved precision (out.log and the console)
PRECISION_LINE_PREFIX = "train clip: precision"
_CONSOLE_PREFIXES = (TRAIN_LINE_PREFIX, PRECISION_LINE_PREFIX, "Eval Epoch", "Start epoch", "=> ", "Found latest",
                     "No latest")
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
def _patched_open_clip_train(config: ClipTrainConfig, precision: Optional[Precision] = None) -> Iterator[Any]:
    """Install irkit's wrappers around open_clip_train for one run (see module docstring);
    ``precision``'s :meth:`~irkit.precision.Precision.describe` line is logged once logging is set up."""
    import open_clip_train.main as oct_main

    import irkit.models  # noqa: F401  (registers irkit's model configs with open_clip)
    from irkit.models.factory import use_channels_last
    from irkit.transforms import ImageReader, build_transform
    from torchvision.transforms import Compose

    original_create = oct_main.create_model_and_transforms
    original_train_one_epoch = oct_main.train_one_epoch
    original_setup_logging = oct_main.setup_logging
    original_pt_load = oct_main.pt_load
    original_save = torch.save
    original_ddp = torch.nn.parallel.DistributedDataParallel

    class DistributedDataParallel(original_ddp):
        """open_clip_train passes ``device_ids=[device]`` even on CPU, which DDP refuses."""

        def __init__(self, module: torch.nn.Module, device_ids: Any = None, *args: Any, **kwargs: Any) -> None:
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    def create_model_and_transforms(*args: Any, **kwargs: Any):
        model, preprocess_train, preprocess_val = original_create(*args, **kwargs)
        if config.memory_format == "auto" and use_channels_last(model):
            logging.getLogger(__name__).info("image tower in channels-last memory layout (convolutional)")
        cfg = model.visual.preprocess_cfg
        image_size = cfg["size"] if isinstance(cfg, dict) else cfg.size
        mean = cfg["mean"] if isinstance(cfg, dict) else cfg.mean
        std = cfg["std"] if isinstance(cfg, dict) else cfg.std
        # open_clip_train opens each file with PIL and hands the (not yet decoded) image over: the
        # reader's pixel limit and EXIF orientation come first, as for every other irkit reader
        reader = ImageReader(exif_transpose=bool(config.exif_transpose), max_pixels=int(config.max_image_pixels))
        preprocess_train = Compose([reader.prepare, build_transform(config.transform, image_size=image_size,
                                                                    mean=mean, std=std, is_train=True)])
        preprocess_val = Compose([reader.prepare, build_transform(config.transform, image_size=image_size,
                                                                  mean=mean, std=std, is_train=False)])
        return model, preprocess_train, preprocess_val

    def setup_logging(*args: Any, **kwargs: Any):
        original_setup_logging(*args, **kwargs)
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler:
                handler.addFilter(_ProgressOnly())
        if precision is not None:
            logging.info("train clip: %s; open_clip_train --precision %s", precision.describe(),
                         precision.open_clip_train_precision())

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
    oct_main.pt_load = load_resume_checkpoint  # the --resume read, weights_only=True whatever the environment
    torch.save = _atomic_torch_save(original_save)
    torch.nn.parallel.DistributedDataParallel = DistributedDataParallel
    try:
        with restored_logging():
            yield oct_main
    finally:
        oct_main.create_model_and_transforms = original_create
        oct_main.train_one_epoch = original_train_one_epoch
        oct_main.setup_logging = original_setup_logging
        oct_main.pt_load = original_pt_load
        torch.save = original_save
        torch.nn.parallel.DistributedDataParallel = original_ddp


#: The run folder's record of how training images were read (EXIF orientation, pixel limit).
IMAGE_READER_FILE = "image_reader.json"


@dataclass
class ClipTrainResult:
    run_dir: Path
    final_checkpoint: Path
    results: list[dict[str, Any]]
    precision: str = "fp32"  # resolved: fp32 | bf16 | fp16 | pure_bf16 | pure_fp16


def load_resume_checkpoint(file_path: str | os.PathLike, map_location: Any = None) -> Any:
    """open_clip_train's ``pt_load`` for local files, read with ``torch.load(weights_only=True)``
    (an explicit ``weights_only=True`` is not overridden by ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``)."""
    path = Path(file_path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/format problem is one clear line
        raise InputError(f"cannot read checkpoint with torch.load(weights_only=True) ({type(e).__name__}: "
                         f"{first_line_of(e)}); expected an open_clip_train checkpoint or a state dict of tensors",
                         path=path) from None


def check_resume_checkpoint(path: Path) -> None:
    """``--resume`` file: readable with ``weights_only=True`` and holding what open_clip_train
    reads: ``epoch``, ``state_dict`` and ``optimizer`` (a training checkpoint) or a bare state dict."""
    if not path.is_file():
        raise InputError("resume checkpoint not found (expected an open_clip_train epoch_<n>.pt)", path=path)
    checkpoint = load_resume_checkpoint(path, map_location="cpu")
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise InputError(f"checkpoint holds {type(checkpoint).__name__}; expected a dict (an open_clip_train "
                         "checkpoint or a state dict)", path=path)
    if "epoch" in checkpoint:
        missing = [key for key in ("state_dict", "optimizer") if key not in checkpoint]
        if missing:
            raise InputError(f"training checkpoint lacks {', '.join(missing)}; expected the keys epoch, "
                             "state_dict and optimizer (as open_clip_train writes)", path=path)
        if not isinstance(checkpoint["state_dict"], dict) or not checkpoint["state_dict"]:
            raise InputError("'state_dict' is empty or not a dict; expected parameter name -> tensor",
                             path=path, field="state_dict")
    elif not all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        raise InputError("checkpoint has no 'epoch' and is not a state dict of tensors; expected an "
                         "open_clip_train checkpoint (epoch, state_dict, optimizer) or a state dict", path=path)


_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _is_weights_file(value: str) -> bool:
    """Whether ``--pretrained`` names a local file rather than an open_clip tag."""
    return os.sep in value or "/" in value or value.endswith(_WEIGHT_SUFFIXES) or os.path.exists(value)


def check_model_and_weights(config: ClipTrainConfig) -> None:
    """The model name is an open_clip or irkit config; ``pretrained`` is a tag of that model or a
    local weights file readable with ``weights_only=True`` (or safetensors)."""
    import open_clip

    import irkit.models  # noqa: F401  (registers irkit's model configs with open_clip)
    from irkit.models.factory import check_model_name, read_state_dict

    schema, name = check_model_name(config.model)
    if not config.pretrained:
        return
    if _is_weights_file(config.pretrained):
        if not Path(config.pretrained).is_file():
            raise InputError("pretrained checkpoint file not found", path=config.pretrained, field="pretrained")
        read_state_dict(config.pretrained)  # weights_only=True / safetensors; tensors only
    elif schema is None and not open_clip.get_pretrained_cfg(name, config.pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise InputError(f"'{config.pretrained}' is neither a pretrained tag of model '{name}' nor an existing "
                         f"file (tags: {', '.join(tags) if tags else 'none'})", field="pretrained")


def validate_training_csv(path: Path, config: ClipTrainConfig) -> int:
    """Check the CSV the way open_clip_train will read it and that every image path is a file PIL
    identifies as an image within the pixel limit (headers only: no pixel decoding); return its
    row count."""
    from irkit.data.captions import load_caption_csv
    from irkit.transforms import ImageReader

    records = load_caption_csv(path, sep=config.csv_separator, img_key=config.csv_img_key,
                               caption_key=config.csv_caption_key, check_images=True)
    if not records:
        raise InputError("training CSV has no rows", path=path)
    reader = ImageReader(exif_transpose=bool(config.exif_transpose), max_pixels=int(config.max_image_pixels))
    for record in records:
        try:
            reader.check_header(record.filepath)
        except InputError as e:
            raise InputError(f"{record.filepath}: {e.detail}", path=path, line=record.line,
                             field=config.csv_img_key) from None
        except Exception as e:  # noqa: BLE001 - any unreadable file is one clear line
            target = f" (a link to {os.path.realpath(record.filepath)})" if os.path.islink(record.filepath) else ""
            detail = (str(e).splitlines() or [type(e).__name__])[0]
            raise InputError(f"{record.filepath}{target} is not an image file ({detail}); expected an image "
                             "PIL can read (JPEG, PNG, ...)", path=path, line=record.line,
                             field=config.csv_img_key) from None
    return len(records)


#: open_clip_train parameters that do not change the trained weights (not compared on resume).
_NOT_HYPER_PARAMETERS = {"resume", "name", "logs", "device", "workers", "log_every_n_steps", "report_to",
                         "save_frequency"}


def open_clip_params(config: ClipTrainConfig) -> dict[str, Any]:
    """The hyper-parameters irkit passes, as open_clip_train parses them and writes to params.txt."""
    from open_clip_train.params import parse_args

    argv = open_clip_argv(config)
    names = {token[2:].replace("-", "_") for token in argv if token.startswith("--")}
    parsed = vars(parse_args(argv))
    return {name: parsed[name] for name in sorted(names - _NOT_HYPER_PARAMETERS) if name in parsed}


def _prepare_run_dir(config: ClipTrainConfig, run_dir: Path, allow_param_change: bool) -> None:
    """Refuse what cannot be run into ``run_dir``; set a failed attempt aside; check resume params."""
    from irkit.runs import (
        FAILED_MARKER,
        check_resume_params,
        existing_run_error,
        latest_checkpoint,
        set_aside_failed_run,
    )

    if config.resume is None:
        if run_dir.exists() and set_aside_failed_run(run_dir) is None:
            raise existing_run_error(run_dir)
        return
    if config.resume == "latest":
        latest = latest_checkpoint(run_dir / "checkpoints")
        if latest is None:
            raise InputError("cannot resume: no checkpoints/epoch_<n>.pt in this run", path=run_dir)
        check_resume_checkpoint(latest)
    else:
        if run_dir.exists():
            raise InputError("resuming from a checkpoint file starts a new run folder, and this one exists; "
                             "choose another --name, or continue this run with --resume latest", path=run_dir)
        check_resume_checkpoint(Path(config.resume))
        return
    check_resume_params(run_dir, open_clip_params(config), allow_param_change,
                        compared=list(open_clip_params(config)))
    (run_dir / FAILED_MARKER).unlink(missing_ok=True)  # this attempt decides the run's state now


def train_clip(config: ClipTrainConfig, allow_param_change: bool = False) -> ClipTrainResult:
    """Train (or fine-tune) an open_clip model on caption CSVs; returns the run folder.

    A new run refuses an existing run folder (a failed one without checkpoints is set aside);
    ``resume="latest"`` continues it, refusing changed hyper-parameters unless
    ``allow_param_change``. Every input is checked before the folder is created; a failure
    afterwards marks the folder ``FAILED`` and raises :class:`~irkit.errors.RunFailed`.
    """
    from irkit.runs import mark_failed, run_failed

    precision = clip_precision(config.precision)
    config = resolved_config(config, precision)
    if config.name is None:
        if config.resume == "latest":
            raise InputError("--resume latest needs --name of the run to continue", field="name")
        config.name = default_clip_run_name(config)
    run_dir = Path(config.log_dir) / config.name
    check_model_and_weights(config)
    main_rank = launched_rank() == 0  # under torchrun rank 0 alone creates and checks the run folder
    _per_rank_batch(config.batch_size)
    for csv_path in filter(None, (config.train_csv, config.val_csv)):
        validate_training_csv(Path(csv_path), config)
    if main_rank:
        _prepare_run_dir(config, run_dir, allow_param_change)

    try:
        with _patched_open_clip_train(config, precision) as oct_main:
            status = oct_main.main(open_clip_argv(config))
        if status not in (None, 0):
            raise RuntimeError(f"open_clip_train exited with status {status}")
        final = run_dir / "checkpoints" / f"epoch_{config.epochs}.pt"
        if not main_rank:
            return ClipTrainResult(run_dir=run_dir, final_checkpoint=final, results=[], precision=precision.name)
        if not final.is_file():
            raise RuntimeError(f"training finished without its final checkpoint {final}")
    except BaseException as error:
        if not run_dir.is_dir() or not main_rank:
            raise
        mark_failed(run_dir, error)
        if isinstance(error, Exception):
            raise run_failed(run_dir, error) from error
        raise

    # how the training images were read (EXIF orientation, pixel limit): open_clip_train's params.txt
    # cannot hold irkit's own options
    atomic_write_json(run_dir / IMAGE_READER_FILE, {"exif_transpose": bool(config.exif_transpose),
                                                    "max_pixels": int(config.max_image_pixels)}, indent=2)
    # the resolved precision and why (auto's choice depends on the machine); params.txt has open_clip_train's name
    atomic_write_json(run_dir / PRECISION_FILE, {**precision.to_json(),
                                                 "open_clip_train": config.precision}, indent=2)
    results_src = run_dir / "checkpoints" / "results.jsonl"
    if results_src.is_file():
        with atomic_path(run_dir / "results.jsonl") as tmp:
            shutil.copyfile(results_src, tmp)
    from irkit.runs import read_results

    return ClipTrainResult(run_dir=run_dir, final_checkpoint=final, results=read_results(run_dir),
                           precision=precision.name)
