"""CLIP4Cir Combiner as an irkit method (docs/methods.md §F).

* :func:`train_combiner` trains :class:`~irkit.models.combiner.Combiner` on frozen, cached
  CLIP features of training triplets: ``logits = 100 * combine(ref, text) . normalise(target)^T``
  over the batch's targets, cross-entropy against the diagonal (duplicate targets masked).
  Published: Adam lr 2e-5 (``weight_decay=0``), P 2560 / H 5120 for d 640.
* ``create_method("combiner", checkpoint=...)``: query = the combined feature, gallery =
  L2-normalised image embeddings.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from irkit import distributed
from irkit.cir.context import CIRContext, l2_normalize
from irkit.cir.features import in_batch_contrastive_loss
from irkit.cir.registry import EmbeddingMethod, register_method
from irkit.cir.training import TrainingConfig, Validator, train_on_triplets
from irkit.data.records import CIRSplit
from irkit.errors import InputError
from irkit.methods.heads import TrainedHeadMethod, batched
from irkit.models.combiner import Combiner, CombinerConfig
from irkit.runs import RunFolder
from irkit.train.loop import TrainResult

KIND = "combiner"


def combiner_loss(model: Combiner, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """CLIP4Cir's loss: CE of the scaled combined-query vs batch-target logits.

    Several processes: each rank combines its rows of the global batch against all targets
    (targets are frozen features, so no gathering is needed)."""
    rows = distributed.local_rows(len(batch["target_index"]))
    return in_batch_contrastive_loss(model(batch["reference"][rows], batch["text"][rows], batch["target"]),
                                     batch["target_index"], rows=rows)


@register_method("combiner")
class CombinerMethod(TrainedHeadMethod, EmbeddingMethod):
    """Query = Combiner(reference image features, text features); gallery = image embeddings."""

    kind = KIND
    train_command = "train-combiner"

    @classmethod
    def build_model(cls, model_config: Mapping[str, Any]) -> Combiner:
        return Combiner(CombinerConfig.from_dict(model_config))

    def query_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        features = self.features(ctx, split)
        return batched(self._model.combine_features, features.reference, features.text, batch_size=self.batch_size)

    def gallery_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        return l2_normalize(self.features(ctx, split).gallery.numpy())


def train_combiner(ctx: CIRContext, train_splits: Sequence[CIRSplit], run: RunFolder,
                   config: TrainingConfig, model_config: Optional[CombinerConfig] = None,
                   val_splits: Sequence[CIRSplit] = (), metric: Optional[str] = None,
                   resume: Optional[str] = None) -> TrainResult:
    """Train a Combiner (default sizes: P = 4d, H = 8d, i.e. the published 2560/5120 at d 640)."""
    model_config = model_config or CombinerConfig.scaled(ctx.loaded.embed_dim)
    if model_config.clip_feature_dim != ctx.loaded.embed_dim:
        raise InputError(f"Combiner clip_feature_dim {model_config.clip_feature_dim} differs from the "
                         f"backbone's {ctx.loaded.embed_dim}", field="clip_feature_dim")
    validator = None
    if val_splits:
        validator = Validator(ctx, val_splits, lambda m: CombinerMethod(
            model=m, include_shared_concept=config.include_shared_concept), config.include_shared_concept, metric)
    return train_on_triplets(ctx, train_splits, run, config, lambda: Combiner(model_config), combiner_loss, KIND,
                             model_config.to_dict(), validator=validator, resume=resume)
