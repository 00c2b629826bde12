"""The base of the methods whose trained part is a head on frozen CLIP features (fusion,
Combiner, re-ranker): it rebuilds the head from a self-describing checkpoint
(:func:`irkit.cir.training.load_head`), or takes an in-memory one (validation during training),
and checks the backbone it was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional

import numpy as np
import torch

from irkit.cir.features import build_features
from irkit.cir.registry import CIRMethod
from irkit.cir.training import check_backbone, load_head
from irkit.errors import InputError


def batched(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Apply ``fn`` to row chunks of ``tensors`` (no grad) -> concatenated float32 numpy array."""
    out = []
    with torch.no_grad():
        for start in range(0, tensors[0].shape[0], batch_size):
            out.append(fn(*(t[start:start + batch_size] for t in tensors)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


class TrainedHeadMethod(CIRMethod):
    """Base of the methods whose trained part is a head on frozen features.

    Takes either ``checkpoint`` (a file written by :func:`irkit.cir.training.train_head_model`, rebuilt with
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
        """The split's frozen features (:func:`irkit.cir.features.build_features`, memoised)."""
        if self._backbone is not None:
            check_backbone(self._backbone, ctx.loaded, self.checkpoint)
        return build_features(ctx, split, include_shared_concept=self.include_shared_concept,
                              with_gallery=with_gallery)
