"""A small, generic, step-based trainer with exact resume.

Why irkit has its own loop: ``open_clip_train`` trains CLIP image-text contrastive models
end to end (its ``main`` builds the CLIP model, its data pipeline reads image-caption
CSV/webdataset shards and its loss is the CLIP loss); irkit uses it for exactly that
(:mod:`irkit.train.clip`). The other irkit models — SEARLE/LinCIR's phi, the MagicLens
fusion head, the vision projector, the CLIP4Cir Combiner, the re-ranking cross-encoder —
are small heads trained on *frozen, cached* CLIP features with their own losses, which
that trainer cannot express. This loop gives them what open_clip_train gives CLIP runs:
the same run-folder layout (:class:`irkit.runs.RunFolder`), TensorBoard and ``out.log``
logging, periodic validation with the best checkpoint kept, ``epoch_<n>.pt`` checkpoints
and ``--resume latest``. It reuses open_clip_train's step-indexed LR schedules
(``open_clip_train.scheduler.cosine_lr`` etc.) through ``lr_schedule``.

Exact resume: a checkpoint holds the model, optimizer, step, epoch, position inside the
epoch and the torch / numpy / Python RNG states. ``train_batches`` must produce the batch
order of an epoch from the epoch index alone (e.g. a generator seeded with
``(seed, epoch)``), never from the global RNG; the resumed run then re-creates the
interrupted epoch, skips the batches already used, restores the RNG states and ends with
the same weights as an uninterrupted run.

Precision (:mod:`irkit.precision`): ``precision`` (default ``auto``) is resolved once for the
device of the model's parameters; each step's forward pass and loss run under its autocast
(bf16 / fp16), the backward pass and the optimizer update outside it, so the trained weights and
the optimizer state stay float32 (fp16 adds a gradient scaler). Validation runs as evaluation
does (the backbone in its loaded model's precision, the trained part in float32). The resolved
precision is logged to ``out.log``, written to ``<run>/precision.json`` and returned in
:class:`TrainResult`; checkpoints record it, and resuming in another precision is logged. Exact
resume holds within one precision (the test suite pins ``IRKIT_PRECISION=fp32``).

Several processes (``torchrun --nproc_per_node N -m irkit cir train-... ``): every rank draws
the same global batches; the loss function computes its rank's rows
(:func:`irkit.distributed.local_rows`, scaled by :func:`irkit.distributed.local_share`, with
in-batch negatives gathered by :func:`irkit.distributed.gather_rows`) and is run through
DistributedDataParallel, which averages the gradients: the update equals one process's with
the same global batch. Rank 0 alone validates and writes the run folder and checkpoints
(others see it as a :class:`irkit.runs.FollowerRun`); the logged loss is the mean over ranks,
i.e. the global-batch loss.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np
import torch
from tqdm import tqdm

from irkit import distributed
from irkit.errors import InputError
from irkit.io import atomic_write_json
from irkit.precision import PRECISION_FILE, Precision, resolve_training_precision
from irkit.progress import StepRate
from irkit.runs import FollowerRun, RunFolder, load_checkpoint

#: ``loss_fn(batch)`` returns the loss, or ``(loss, {name: float-like})`` extra values to log.
LossOutput = Union[torch.Tensor, tuple[torch.Tensor, Mapping[str, Any]]]
LATEST_NAME = "latest.pt"
BEST_NAME = "best.pt"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainResult:
    """What a finished :func:`train` call reports."""

    step: int
    epoch: int
    best_value: Optional[float]
    best_step: Optional[int]
    last_metrics: dict[str, float] = field(default_factory=dict)
    latest_checkpoint: Optional[Path] = None
    best_checkpoint: Optional[Path] = None
    precision: str = "fp32"        # resolved: fp32 | bf16 | fp16


def _epoch_batches(train_batches: Any, epoch: int) -> Iterable[Any]:
    """The batches of ``epoch``: ``train_batches(epoch)``, or ``set_epoch(epoch)`` then iterate."""
    if hasattr(train_batches, "set_epoch"):
        train_batches.set_epoch(epoch)
        return train_batches
    if callable(train_batches):
        return train_batches(epoch)
    raise TypeError("train_batches must be callable(epoch) -> batches, or have set_epoch(epoch) and __iter__")


class LossModule(torch.nn.Module):
    """``forward(batch) = loss_fn(batch)`` over ``model``'s parameters: the module
    DistributedDataParallel wraps so that its gradient averaging covers whatever the loss calls."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[[Any], LossOutput]) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any) -> LossOutput:
        return self.loss_fn(batch)


def sync_rng_from_main() -> None:
    """Give every rank rank 0's global RNG states (CPU torch, NumPy, Python, current CUDA device)."""
    if not distributed.is_distributed():
        return
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    state = distributed.broadcast_object(state)
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _split_loss(output: LossOutput) -> tuple[torch.Tensor, dict[str, float]]:
    if isinstance(output, tuple):
        loss, logs = output
        return loss, {name: float(value) for name, value in logs.items()}
    return output, {}


def _is_better(value: float, best: Optional[float], mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def resolve_resume(run: RunFolder, resume: Optional[str | Path]) -> Optional[Path]:
    """The checkpoint to resume from: ``"latest"`` (``latest.pt``, else the newest
    ``epoch_<n>.pt``, else None for a fresh start), an explicit path, or None."""
    if resume is None:
        return None
    if str(resume) == "latest":
        latest = run.checkpoints_dir / LATEST_NAME
        return latest if latest.is_file() else run.latest_checkpoint()
    path = Path(resume)
    if not path.is_file():
        raise InputError("resume checkpoint not found; expected 'latest' or an existing checkpoint file", path=path)
    return path


def train(
    model: torch.nn.Module,
    loss_fn: Callable[[Any], LossOutput],
    optimizer: torch.optim.Optimizer,
    train_batches: Any,
    run: RunFolder,
    max_steps: int,
    *,
    val_fn: Optional[Callable[[torch.nn.Module], Mapping[str, float]]] = None,
    val_every: int = 0,
    best_metric: Optional[str] = None,
    best_mode: str = "max",
    extra_state: Optional[Mapping[str, Any]] = None,
    resume: Optional[str | Path] = None,
    seed: int = 0,
    lr_schedule: Optional[Callable[[int], Any]] = None,
    checkpoint_every: int = 0,
    log_every: int = 10,
    grad_clip_norm: Optional[float] = None,
    progress: bool = True,
    precision: Union[str, Precision] = "auto",
) -> TrainResult:
    """Train ``model`` for ``max_steps`` optimizer steps; log, validate, checkpoint, resume.

    Args:
        model: the trainable module (put in train mode for steps, eval mode for validation).
        loss_fn: ``batch -> loss`` or ``(loss, logs)``; called inside the step.
        optimizer: over the trainable parameters.
        train_batches: ``epoch -> iterable of batches`` (callable) or an iterable with
            ``set_epoch(epoch)``; the order must depend only on the epoch (exact resume).
        run: the run folder receiving ``out.log``, TensorBoard, ``results.jsonl`` and
            ``checkpoints/{epoch_<n>.pt, latest.pt, best.pt}``.
        max_steps: total optimizer steps of the run (a resumed run continues up to it).
        val_fn: ``model -> {metric: value}`` run every ``val_every`` steps and at the end
            (under ``torch.no_grad()`` in eval mode); results go to ``results.jsonl``.
        best_metric / best_mode: the metric (and ``"max"``/``"min"``) that selects ``best.pt``.
        extra_state: plain values saved in every checkpoint (model config, backbone, options).
        resume: ``"latest"``, a checkpoint path, or None (fresh start).
        seed: seeds the global RNGs at a fresh start (dropout etc.).
        lr_schedule: ``step -> lr`` setter called before each step (open_clip_train's schedulers).
        checkpoint_every: also write ``latest.pt`` every N steps (0: only at epoch ends / the end).
        log_every: log the loss every N steps.
        grad_clip_norm: clip the gradient norm when given.
        precision: ``auto | fp32 | bf16 | fp16`` (or ``pure_*``, meaning autocast of that dtype):
            the autocast of each step's forward pass and loss (:func:`irkit.precision.resolve_training_precision`
            for the device of ``model``'s parameters); weights and optimizer state stay float32.

    Returns:
        :class:`TrainResult`; ``best_checkpoint`` is ``best.pt`` when validation ran.
    """
    if max_steps <= 0:
        raise InputError(f"max_steps is {max_steps}; expected a positive number of steps", field="max_steps")
    if best_mode not in ("max", "min"):
        raise InputError(f"best_mode is {best_mode!r}; expected 'max' or 'min'", field="best_mode")
    extra = dict(extra_state or {})
    distributed.init_process_group()
    if not distributed.is_main() and not isinstance(run, FollowerRun):
        run = FollowerRun(run.path)  # rank 0 alone writes the run folder
    resolved = resolve_training_precision(precision, parameter_device(model))
    run.log("training %s", resolved.describe())
    if not isinstance(run, FollowerRun):
        atomic_write_json(run.path / PRECISION_FILE, resolved.to_json(), indent=2)
    scaler = torch.amp.GradScaler(resolved.device_type, enabled=resolved.name == "fp16")
    step, epoch, batch_in_epoch = 0, 0, 0
    best_value: Optional[float] = None
    best_step: Optional[int] = None
    last_metrics: dict[str, float] = {}
    saved_rng: Optional[Mapping[str, Any]] = None

    resume_path = resolve_resume(run, resume)
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise InputError(f"checkpoint does not match the model being trained ({str(e).splitlines()[0]}); "
                             "resume with the options the run was started with", path=resume_path) from None
        step, epoch, batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        best_value, best_step = state["best"]["value"], state["best"]["step"]
        last_metrics = dict(state.get("metrics") or {})
        saved_rng = state["rng"]
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        run.log("resumed from %s at step %d (epoch %d, batch %d)", resume_path, step, epoch, batch_in_epoch)
        if state.get("precision", resolved.name) != resolved.name:
            run.log("warning: the run trained in %s until step %d and continues in %s (not an exact resume)",
                    state["precision"], step, resolved.name)
    else:
        if resume is not None:
            run.log("nothing to resume in %s; starting a fresh run", run.checkpoints_dir)
        seed_everything(seed)

    def checkpoint_state() -> dict[str, Any]:
        return {
            "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
            "best": {"metric": best_metric, "mode": best_mode, "value": best_value, "step": best_step},
            "metrics": dict(last_metrics), "extra": extra, "precision": resolved.name,
            **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
        }

    def validate() -> None:
        nonlocal best_value, best_step, last_metrics
        model.eval()

        def evaluate() -> dict[str, float]:
            with torch.no_grad():
                return {name: float(value) for name, value in val_fn(model).items()}

        metrics = distributed.run_on_main(evaluate)  # rank 0 validates; the others wait for its metrics
        sync_rng_from_main()
        model.train()
        last_metrics = metrics
        for name, value in metrics.items():
            run.tensorboard.add_scalar(f"val/{name}", value, step)
        run.append_results({"step": step, "epoch": epoch, **metrics})
        run.log("step %d validation: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        if best_metric is None:
            return
        if best_metric not in metrics:
            raise InputError(f"best metric {best_metric!r} is not among the validation metrics "
                             f"{sorted(metrics)}", field="best_metric")
        if _is_better(metrics[best_metric], best_value, best_mode):
            best_value, best_step = metrics[best_metric], step
            run.save_checkpoint(checkpoint_state(), epoch, name=BEST_NAME)
            run.log("new best %s=%.4f at step %d", best_metric, best_value, step)

    latest_path: Optional[Path] = None
    compute_loss = distributed.wrap_for_training(LossModule(model, loss_fn))
    model.train()
    rate = StepRate(max_steps, done=step)  # step rate and ETA of the log lines, from this session's steps
    bar = tqdm(total=max_steps, initial=min(step, max_steps), desc="train", unit="step",
               disable=not progress or not distributed.is_main())
    try:
        while step < max_steps:
            batches_seen = 0
            finished_epoch = True
            for batch in _epoch_batches(train_batches, epoch):
                batches_seen += 1
                if batches_seen <= batch_in_epoch:
                    continue  # resuming: these batches were used before the interruption
                if saved_rng is not None:
                    set_rng_state(saved_rng)
                    saved_rng = None
                if lr_schedule is not None:
                    lr_schedule(step)
                with resolved.autocast():  # forward pass and loss; backward and update outside
                    loss, logs = _split_loss(compute_loss(batch))
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step} ({resolved.name}); lower the "
                                             "learning rate" + ("" if resolved.name == "fp32" else " or use fp32"))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss.float()).backward()
                if grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                batch_in_epoch += 1
                bar.update(1)
                if step % max(log_every, 1) == 0 or step == max_steps:
                    lr = optimizer.param_groups[0]["lr"]
                    loss_value = distributed.mean_over_ranks(loss.item())  # the global-batch loss
                    logs = {name: distributed.mean_over_ranks(value) for name, value in logs.items()}
                    run.tensorboard.add_scalar("train/loss", loss_value, step)
                    run.tensorboard.add_scalar("train/lr", lr, step)
                    for name, value in logs.items():
                        run.tensorboard.add_scalar(f"train/{name}", value, step)
                    run.log("step %d/%d epoch %d loss %.5f lr %.3g%s, %s", step, max_steps, epoch, loss_value, lr,
                            "".join(f" {k} {v:.4g}" for k, v in logs.items()), rate.describe(step))
                if val_fn is not None and ((val_every and step % val_every == 0) or step == max_steps):
                    validate()
                if (checkpoint_every and step % checkpoint_every == 0) or step == max_steps:
                    latest_path = run.save_checkpoint(checkpoint_state(), epoch, name=LATEST_NAME)
                if step >= max_steps:
                    finished_epoch = False
                    break
            if saved_rng is not None:  # resumed exactly at the end of an epoch
                set_rng_state(saved_rng)
                saved_rng = None
            if batches_seen == 0:
                raise InputError(f"epoch {epoch} produced no training batches; expected at least one "
                                 "(is the training set smaller than the batch size?)", field="train_batches")
            if finished_epoch:
                epoch += 1
                batch_in_epoch = 0
                state = checkpoint_state()
                run.save_checkpoint(state, epoch)
                latest_path = run.save_checkpoint(state, epoch, name=LATEST_NAME)
    finally:
        bar.close()
        run.tensorboard.flush()
    distributed.barrier()  # rank 0's last checkpoint is on disk before any rank returns
    best_path = run.checkpoints_dir / BEST_NAME
    return TrainResult(step=step, epoch=epoch, best_value=best_value, best_step=best_step,
                       last_metrics=last_metrics, latest_checkpoint=latest_path,
                       best_checkpoint=best_path if best_path.is_file() else None, precision=resolved.name)


def parameter_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a module without parameters)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def load_trained_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`train`: ``{"model", "extra", "step", "metrics", ...}``."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state or "extra" not in state:
        raise InputError("not an irkit head checkpoint; expected keys 'model' and 'extra' "
                         "(written by irkit.train.loop.train)", path=path)
    return state


def index_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """One epoch of shuffled index batches, a function of (seed, epoch) only (exact resume).

    The last partial batch is dropped when there is at least one full batch (as the
    published trainers' ``drop_last=True``); a set smaller than a batch is one batch.
    """
    if num_items <= 0:
        raise InputError("no training items; expected at least one")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_items, generator=generator)
    if num_items < batch_size:
        return [order]
    return [order[i:i + batch_size] for i in range(0, num_items - batch_size + 1, batch_size)]
