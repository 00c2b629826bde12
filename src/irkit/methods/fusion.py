"""MagicLens-style fusion (docs/methods.md §D) with the optional vision projector (§E).

* :func:`train_fusion` trains :class:`~irkit.models.fusion.MagicLensFusion` on a benchmark's
  training triplets (CIRR / FashionIQ / demo data) over frozen, cached CLIP features with an
  in-batch contrastive loss: queries ``f(reference, text)`` against targets
  ``f(target, "")`` of the same batch, shared weights, learned temperature.
* ``create_method("magiclens", checkpoint=...)`` evaluates / submits it through the same
  protocols as every method; ``projector=False`` evaluates a projector-trained checkpoint
  with the projector switched off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from irkit import distributed
from irkit.cir.context import CIRContext
from irkit.cir.features import in_batch_contrastive_loss
from irkit.cir.registry import EmbeddingMethod, register_method
from irkit.cir.training import TrainingConfig, Validator, train_on_triplets
from irkit.data.records import CIRSplit
from irkit.errors import InputError
from irkit.methods.heads import TrainedHeadMethod, batched
from irkit.models.fusion import FusionConfig, MagicLensFusion
from irkit.runs import RunFolder
from irkit.train.loop import TrainResult

KIND = "magiclens"
MAX_LOGIT_SCALE = 100.0


def fusion_loss(model: MagicLensFusion, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """In-batch contrastive loss of fused queries against fused (empty-instruction) targets.

    Several processes: each rank fuses its rows of the global batch; the targets of all ranks
    are gathered (with gradient) so every query still sees the whole batch's targets."""
    rows = distributed.local_rows(len(batch["target_index"]))
    queries = model(batch["reference"][rows], batch["text"][rows])
    targets = distributed.gather_rows(model.encode_targets(batch["target"][rows], batch["empty_text"]))
    scale = model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    loss = in_batch_contrastive_loss(scale * queries @ targets.T, batch["target_index"], rows=rows)
    return loss, {"logit_scale": scale.detach().item()}


@register_method("magiclens")
class MagicLensMethod(TrainedHeadMethod, EmbeddingMethod):
    """Query = fusion(reference image, text); gallery = fusion(image, empty text).

    ``projector``: None evaluates the checkpoint as trained; False switches a trained vision
    projector off; True requires one.
    """

    kind = KIND
    train_command = "train-fusion"

    def __init__(self, checkpoint: Optional[Path | str] = None, model: Optional[MagicLensFusion] = None,
                 include_shared_concept: bool = False, projector: Optional[bool] = None,
                 batch_size: int = 1024) -> None:
        super().__init__(checkpoint, model, include_shared_concept, batch_size)
        if projector is not None:
            if projector and self._model.projector is None:
                raise InputError("projector=True but this fusion model was trained without a vision projector",
                                 field="projector")
            self._model.use_projector = bool(projector)

    @classmethod
    def build_model(cls, model_config: Mapping[str, Any]) -> MagicLensFusion:
        return MagicLensFusion(FusionConfig.from_dict(model_config))

    def query_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        features = self.features(ctx, split)
        return batched(self._model, features.reference, features.text, batch_size=self.batch_size)

    def gallery_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        features = self.features(ctx, split)
        empty = features.empty_text.reshape(1, -1)
        return batched(lambda g: self._model.encode_targets(g, empty), features.gallery, batch_size=self.batch_size)


def train_fusion(ctx: CIRContext, train_splits: Sequence[CIRSplit], run: RunFolder,
                 config: TrainingConfig, model_config: Optional[FusionConfig] = None,
                 val_splits: Sequence[CIRSplit] = (), metric: Optional[str] = None,
                 resume: Optional[str] = None) -> TrainResult:
    """Train a MagicLens fusion head (with the projector when ``model_config.projector``).

    ``model_config`` defaults to MagicLens's structure at the backbone's width.
    ``config.include_shared_concept`` picks CIRCO's query template (and validation's).
    Returns the loop's result; the best checkpoint is ``run/checkpoints/best.pt``.
    """
    model_config = model_config or FusionConfig(embed_dim=ctx.loaded.embed_dim)
    if model_config.embed_dim != ctx.loaded.embed_dim:
        raise InputError(f"fusion embed_dim {model_config.embed_dim} differs from the backbone's "
                         f"{ctx.loaded.embed_dim}", field="embed_dim")
    validator = None
    if val_splits:
        validator = Validator(ctx, val_splits, lambda m: MagicLensMethod(
            model=m, include_shared_concept=config.include_shared_concept), config.include_shared_concept, metric)
    return train_on_triplets(ctx, train_splits, run, config, lambda: MagicLensFusion(model_config), fusion_loss, KIND,
                             model_config.to_dict(), validator=validator, resume=resume)
