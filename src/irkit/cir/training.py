"""One training set-up for every trainable CIR part: phi (SEARLE, LinCIR), the fusion and
Combiner heads and the re-ranker (docs/methods.md).

* :class:`TrainingConfig`: the hyper-parameters they share;
* :class:`Validator`: ``model -> {metric: value}`` on a validation split, selecting ``best.pt``
  by the benchmark's selection metric;
* :func:`open_run`: the run folder (``log/<name>/``, open_clip_train's layout), new or resumed;
* :func:`train_with_validation`: :func:`irkit.train.loop.train` with AdamW, optional warm-up,
  validation every N steps and the best checkpoint kept;
* :func:`train_on_triplets`: frozen features of a benchmark's training triplets -> a head.

Checkpoints of heads are self-describing (``extra = {"kind", "model_config", "backbone",
"training"}``), so :func:`load_head` rebuilds a head from the file alone.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from irkit.benchmarks import benchmark_of
from irkit.cir.context import CIRContext
from irkit.cir.evaluate import evaluate_method, flatten_metrics, load_cir_splits
from irkit.cir.registry import CIRMethod
from irkit.data.records import CIRSplit
from irkit.errors import InputError
from irkit.runs import RunFolder, default_run_name
from irkit.train import loop

log = logging.getLogger(__name__)


@dataclass
class TrainingConfig:
    """Hyper-parameters of every CIR trainer (AdamW; ``weight_decay=0`` is Adam)."""

    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 0                 # linear warm-up steps, then constant (open_clip_train's const_lr)
    validate_every: int = 100
    seed: int = 0
    include_shared_concept: bool = False
    grad_clip_norm: Optional[float] = None  # the published trainers do not clip
    dropout: float = 0.5            # phi networks (SEARLE, LinCIR) only
    precision: str = "auto"         # irkit.precision setting of the forward passes; weights stay float32

    def to_params(self) -> dict[str, Any]:
        return asdict(self)


class Validator:
    """``model -> {metric: value}`` scoring ``method_factory(model)`` on validation split(s).

    :attr:`metric` (the one ``best.pt`` is kept by) is the benchmark's selection metric unless
    given. Reference and gallery embeddings are cached by the context, so each validation costs
    the trained part plus the text encoder over the split's queries.
    """

    def __init__(self, ctx: CIRContext, splits: Sequence[CIRSplit],
                 method_factory: Callable[[torch.nn.Module], CIRMethod],
                 include_shared_concept: bool = False, metric: Optional[str] = None) -> None:
        if not splits:
            raise InputError("no validation split given")
        self.ctx, self.splits, self.method_factory = ctx, list(splits), method_factory
        self.include_shared_concept = include_shared_concept
        self.benchmark = benchmark_of(self.splits[0])
        self.metric = metric or self.benchmark.selection_metric

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        result = evaluate_method(self.method_factory(model), self.ctx, self.splits,
                                 self.benchmark.shared_concept(self.include_shared_concept))
        metrics = flatten_metrics(result)
        if self.metric not in metrics:
            raise InputError(f"validation metric {self.metric!r} is not among {sorted(metrics)}",
                             field="val-metric")
        return metrics


def phi_validator(ctx: CIRContext, method: str, dataset: str, root: Path | str, split: str = "val",
                   include_shared_concept: bool = False, metric: Optional[str] = None,
                   **loader_options: Any) -> Validator:
    """A :class:`Validator` scoring registered method ``method`` built around the model being
    trained (``create_method(method, phi=model)``) on ``dataset``/``split``."""
    from irkit.cir.registry import create_method

    splits = load_cir_splits(dataset, root, split, **loader_options)
    return Validator(ctx, splits, lambda model: create_method(method, phi=model,
                                                              include_shared_concept=include_shared_concept),
                     include_shared_concept=include_shared_concept, metric=metric)


#: Parameters a resume may change without ``allow_param_change``: training longer (``steps``)
#: alters nothing already done, since the loop's LR is constant after the warm-up. The change
#: is still recorded (params.txt rewritten, the old one kept, a line in out.log).
RESUME_MAY_CHANGE = ("steps",)


def open_run(log_dir: Path | str, name: Optional[str], params: Mapping[str, Any],
             resume: Optional[str] = None, allow_param_change: bool = False) -> RunFolder:
    """The run folder of a training: a new ``log_dir/<name>`` (default name from the params),
    or, with ``resume``, the existing one (``resume="latest"`` needs ``name``). Resuming with
    ``params`` that differ from the run's params.txt is refused unless ``allow_param_change``
    (changes of :data:`RESUME_MAY_CHANGE` are let through and recorded).

    Under torchrun rank 0 opens it (``params`` gain ``processes``) and the other ranks get a
    :class:`irkit.runs.FollowerRun` of the same folder, which writes nothing."""
    from irkit import distributed
    from irkit.runs import FollowerRun

    if not distributed.init_process_group():
        return open_run_folder(log_dir, name, params, resume, allow_param_change)
    opened: list[RunFolder] = []

    def open_on_main() -> str:
        opened.append(open_run_folder(log_dir, name, {**params, "processes": distributed.world_size()}, resume,
                                      allow_param_change))
        return str(opened[0].path)

    path = distributed.run_on_main(open_on_main)
    return opened[0] if opened else FollowerRun(path)


def open_run_folder(log_dir: Path | str, name: Optional[str], params: Mapping[str, Any],
                    resume: Optional[str] = None, allow_param_change: bool = False) -> RunFolder:
    """:func:`open_run` in this process alone."""
    if resume is not None:
        if name is None:
            raise InputError("--resume needs --name (the run folder to continue)", field="resume")
        path = Path(log_dir) / name
        if path.exists():
            return RunFolder.open_existing(path, params, allow_param_change, free=RESUME_MAY_CHANGE)
    run_name = name or default_run_name(str(params.get("model", "model")), params.get("learning_rate", 0),
                                        params.get("batch_size", 0), method=params.get("method", "phi"))
    return RunFolder.create(log_dir, run_name, params)


def train_with_validation(model: torch.nn.Module, loss_fn: Callable[[Any], Any], batches: Callable[[int], Any],
                          run: RunFolder, config: TrainingConfig, validator: Optional[Callable[..., Any]] = None,
                          metric: Optional[str] = None, resume: Optional[str] = None,
                          extra_state: Optional[Mapping[str, Any]] = None) -> loop.TrainResult:
    """Train ``model``'s trainable parameters with AdamW for ``config.steps`` steps (linear warm-up
    then constant LR when ``config.warmup``), validating every ``config.validate_every`` steps and
    keeping ``best.pt`` by ``metric`` (default: the validator's ``.metric``); forward passes under
    ``config.precision``'s autocast (:func:`irkit.train.loop.train`)."""
    from open_clip_train.scheduler import const_lr

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = const_lr(optimizer, config.learning_rate, config.warmup, config.steps) if config.warmup else None
    metric = metric or getattr(validator, "metric", None)
    return loop.train(
        model, loss_fn, optimizer, batches, run, config.steps,
        val_fn=validator, val_every=config.validate_every if validator is not None else 0,
        best_metric=metric if validator is not None else None, best_mode="max",
        extra_state=extra_state, resume=resume, seed=config.seed, lr_schedule=schedule,
        grad_clip_norm=config.grad_clip_norm, log_every=max(1, min(50, config.validate_every or 50)),
        precision=config.precision,
    )


# --------------------------------------------------------------------------- heads on frozen features


def backbone_identity(loaded: Any) -> dict[str, Any]:
    """What identifies the frozen features a head was trained on."""
    return {"model_name": loaded.model_name, "weights_id": loaded.weights_id, "embed_dim": int(loaded.embed_dim),
            "transform": loaded.transform_name}


def check_backbone(saved: Mapping[str, Any], loaded: Any, path: Optional[Path | str] = None) -> None:
    """Refuse a head trained on another embedding width; warn when the backbone weights differ."""
    if int(saved.get("embed_dim", loaded.embed_dim)) != int(loaded.embed_dim):
        raise InputError(f"this head was trained on {saved.get('model_name')} features of width "
                         f"{saved.get('embed_dim')}, but the loaded backbone {loaded.model_name} gives width "
                         f"{loaded.embed_dim}; load the backbone it was trained with", path=path)
    if saved.get("model_name") != loaded.model_name or saved.get("weights_id") != loaded.weights_id:
        log.warning("head %s was trained on backbone %s (%s) but %s (%s) is loaded; results will not match",
                    path, saved.get("model_name"), saved.get("weights_id"), loaded.model_name, loaded.weights_id)


def load_head(path: Path | str, kind: str) -> dict[str, Any]:
    """A checkpoint of head ``kind`` written by :func:`train_head_model` (``model``, ``extra``, ...)."""
    state = loop.load_trained_state(path)
    found = state["extra"].get("kind")
    if found != kind:
        raise InputError(f"checkpoint holds a {found!r} head; expected a {kind!r} head", path=path)
    return state


def train_head_model(model: torch.nn.Module, loss_fn: Callable[[Any], Any], batches: Callable[[int], Any],
               run: RunFolder, config: TrainingConfig, kind: str, model_config: Mapping[str, Any], loaded: Any,
               validator: Optional[Callable[[torch.nn.Module], Mapping[str, float]]] = None,
               metric: Optional[str] = None, resume: Optional[str] = None) -> loop.TrainResult:
    """Train a head (:func:`train_with_validation`) into a self-describing checkpoint."""
    extra = {"kind": kind, "model_config": dict(model_config), "backbone": backbone_identity(loaded),
             "training": config.to_params()}
    run.log("training %s head: %d trainable parameters", kind,
            sum(p.numel() for p in model.parameters() if p.requires_grad))
    return train_with_validation(model, loss_fn, batches, run, config, validator, metric, resume, extra)


def train_on_triplets(ctx: CIRContext, train_splits: Sequence[CIRSplit], run: RunFolder, config: TrainingConfig,
                      build_model: Callable[[], torch.nn.Module],
                      loss: Callable[[torch.nn.Module, dict[str, torch.Tensor]], Any], kind: str,
                      model_config: Mapping[str, Any], validator: Optional[Any] = None,
                      resume: Optional[str] = None, with_tokens: bool = False, negatives: Sequence[Any] = (),
                      negative_pool: Optional[int] = None, num_negatives: int = 0) -> loop.TrainResult:
    """Encode the training triplets of ``train_splits`` (frozen, cached features), build the
    model from ``config.seed`` and train it with ``loss(model, batch)`` (:func:`train_head_model`).

    ``validator`` (``model -> metrics`` with a ``.metric`` attribute) selects ``best.pt``;
    ``with_tokens`` adds the targets' patch tokens to each batch (re-ranker);
    ``negatives`` (one stage-I top-K per training split), ``negative_pool`` and
    ``num_negatives`` add hard negatives to each batch (:class:`~irkit.cir.features.TripletBatches`).
    """
    from irkit.cir.features import TripletBatches, build_training_features

    features = build_training_features(ctx, train_splits, include_shared_concept=config.include_shared_concept,
                                       with_tokens=with_tokens, negatives=negatives, negative_pool=negative_pool)
    loop.seed_everything(config.seed)
    model = build_model()
    batches = TripletBatches(features, config.batch_size, config.seed, with_tokens=with_tokens,
                             num_negatives=num_negatives)
    return train_head_model(model, lambda batch: loss(model, batch), batches, run, config, kind, model_config,
                      ctx.loaded, validator=validator, metric=getattr(validator, "metric", None), resume=resume)
