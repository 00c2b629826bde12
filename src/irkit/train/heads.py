"""Shared glue for the heads trained on frozen CIR features (fusion, Combiner, re-ranker).

* :func:`train_on_triplets` encodes a benchmark's training triplets
  (:mod:`irkit.train.features`), builds the head from a seed and calls :func:`train_head`:
  :func:`irkit.train.loop.train` with AdamW, validation every N steps and ``best.pt`` kept
  by the benchmark's selection metric. Checkpoints are self-describing
  (``extra = {"kind", "model_config", "backbone", "training"}``).
* :class:`TrainedHeadMethod` is the base of the ``magiclens`` / ``combiner`` / ``rerank``
  methods: it rebuilds the head from such a checkpoint (:func:`load_head`), or takes an
  in-memory one (validation during training), and checks the backbone it was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import numpy as np
import torch

from irkit.errors import InputError
from irkit.methods.base import CIRMethod
from irkit.runs import RunFolder
from irkit.train import loop

log = logging.getLogger(__name__)


@dataclass
class HeadTrainingConfig:
    """Hyper-parameters common to the head trainers (AdamW; ``weight_decay=0`` is Adam)."""

    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 0                 # linear warm-up steps, then constant (open_clip_train's const_lr)
    validate_every: int = 100
    seed: int = 0
    include_shared_concept: bool = False
    grad_clip_norm: Optional[float] = None  # the published trainers do not clip

    def to_params(self) -> dict[str, Any]:
        return asdict(self)


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
    """A checkpoint of head ``kind`` written by :func:`train_head` (``model``, ``extra``, ...)."""
    state = loop.load_trained_state(path)
    found = state["extra"].get("kind")
    if found != kind:
        raise InputError(f"checkpoint holds a {found!r} head; expected a {kind!r} head", path=path)
    return state


def batched(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Apply ``fn`` to row chunks of ``tensors`` (no grad) -> concatenated float32 numpy array."""
    out = []
    with torch.no_grad():
        for start in range(0, tensors[0].shape[0], batch_size):
            out.append(fn(*(t[start:start + batch_size] for t in tensors)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def make_validator(ctx: Any, val_splits: Sequence[Any], method_factory: Callable[[torch.nn.Module], Any],
                   include_shared_concept: bool = False, metric: Optional[str] = None) -> Any:
    """``model -> {metric: value}`` scoring ``method_factory(model)`` on the validation split(s)
    with :func:`irkit.methods.textual_inversion.evaluate_method`; ``.metric`` is the benchmark's
    selection metric (``(R@5+Rs@1)/2`` CIRR, ``R@10`` FashionIQ, ``mAP@10`` CIRCO) unless given."""
    from irkit.methods.textual_inversion import PhiValidator

    return PhiValidator(ctx, val_splits, method_factory, include_shared_concept=include_shared_concept,
                        metric=metric)


def open_run(log_dir: Path | str, name: Optional[str], params: Mapping[str, Any],
             resume: Optional[str] = None) -> RunFolder:
    """A new run folder ``log_dir/<name>``, or the existing one when resuming (formats.md §5)."""
    from irkit.methods.textual_inversion import open_phi_run

    return open_phi_run(log_dir, name, params, resume)


def train_head(
    model: torch.nn.Module,
    loss_fn: Callable[[Any], Any],
    batches: Callable[[int], Any],
    run: RunFolder,
    config: HeadTrainingConfig,
    kind: str,
    model_config: Mapping[str, Any],
    loaded: Any,
    validator: Optional[Callable[[torch.nn.Module], Mapping[str, float]]] = None,
    metric: Optional[str] = None,
    resume: Optional[str] = None,
) -> loop.TrainResult:
    """Train ``model`` (its trainable parameters) with AdamW for ``config.steps`` steps."""
    from open_clip_train.scheduler import const_lr

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = const_lr(optimizer, config.learning_rate, config.warmup, config.steps) if config.warmup else None
    extra = {"kind": kind, "model_config": dict(model_config), "backbone": backbone_identity(loaded),
             "training": config.to_params()}
    run.log("training %s head: %d trainable parameters", kind, sum(p.numel() for p in parameters))
    return loop.train(
        model, loss_fn, optimizer, batches, run, config.steps,
        val_fn=validator, val_every=config.validate_every if validator is not None else 0,
        best_metric=metric if validator is not None else None, best_mode="max",
        extra_state=extra, resume=resume, seed=config.seed, lr_schedule=schedule,
        grad_clip_norm=config.grad_clip_norm, log_every=max(1, min(50, config.validate_every or 50)),
    )


def train_on_triplets(
    ctx: Any,
    train_splits: Sequence[Any],
    run: RunFolder,
    config: HeadTrainingConfig,
    build_model: Callable[[], torch.nn.Module],
    loss: Callable[[torch.nn.Module, dict[str, torch.Tensor]], Any],
    kind: str,
    model_config: Mapping[str, Any],
    validator: Optional[Any] = None,
    resume: Optional[str] = None,
    with_tokens: bool = False,
    negatives: Sequence[Any] = (),
    negative_pool: Optional[int] = None,
    num_negatives: int = 0,
) -> loop.TrainResult:
    """Encode the training triplets of ``train_splits`` (frozen, cached features), build the
    model from ``config.seed`` and train it with ``loss(model, batch)`` (:func:`train_head`).

    ``validator`` (``model -> metrics`` with a ``.metric`` attribute) selects ``best.pt``;
    ``with_tokens`` adds the targets' patch tokens to each batch (re-ranker);
    ``negatives`` (one stage-I top-K per training split), ``negative_pool`` and
    ``num_negatives`` add hard negatives to each batch (:class:`~irkit.train.features.TripletBatches`).
    """
    from irkit.train.features import TripletBatches, build_training_features

    features = build_training_features(ctx, train_splits, include_shared_concept=config.include_shared_concept,
                                       with_tokens=with_tokens, negatives=negatives, negative_pool=negative_pool)
    loop.seed_everything(config.seed)
    model = build_model()
    batches = TripletBatches(features, config.batch_size, config.seed, with_tokens=with_tokens,
                             num_negatives=num_negatives)
    return train_head(model, lambda batch: loss(model, batch), batches, run, config, kind, model_config,
                      ctx.loaded, validator=validator, metric=getattr(validator, "metric", None), resume=resume)


class TrainedHeadMethod(CIRMethod):
    """Base of the methods whose trained part is a head on frozen features.

    Takes either ``checkpoint`` (a file written by :func:`train_head`, rebuilt with
    :meth:`build_model` from its stored config) or an in-memory ``model`` (validation).
    """

    kind: ClassVar[str] = ""
    train_command: ClassVar[str] = ""

    def __init__(self, checkpoint: Optional[Path | str] = None, model: Optional[torch.nn.Module] = None,
                 include_shared_concept: bool = False, batch_size: int = 1024) -> None:
        if (checkpoint is None) == (model is None):
            raise InputError(f"{self.name} needs a trained {self.kind} checkpoint (--method-checkpoint PATH "
                             f"from `irkit cir {self.train_command}`)", field="checkpoint")
        self.checkpoint, self._model = checkpoint, model
        self.include_shared_concept, self.batch_size = include_shared_concept, batch_size
        self._backbone: Optional[dict[str, Any]] = None
        if checkpoint is not None:
            state = load_head(checkpoint, self.kind)
            self._model = self.build_model(state["extra"]["model_config"])
            try:
                self._model.load_state_dict(state["model"])
            except RuntimeError as e:
                raise InputError(f"the {self.kind} weights do not fit its stored config ({str(e).splitlines()[0]})",
                                 path=checkpoint) from None
            self._model.eval()
            self._backbone = state["extra"]["backbone"]

    @classmethod
    def build_model(cls, model_config: Mapping[str, Any]) -> torch.nn.Module:
        """The head from its stored config."""
        raise NotImplementedError

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    def features(self, ctx: Any, split: Any, with_gallery: bool = True) -> Any:
        """The split's frozen features (:func:`irkit.train.features.build_features`, memoised)."""
        from irkit.train.features import build_features

        if self._backbone is not None:
            check_backbone(self._backbone, ctx.loaded, self.checkpoint)
        return build_features(ctx, split, include_shared_concept=self.include_shared_concept,
                              with_gallery=with_gallery)
