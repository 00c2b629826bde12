"""MagicLens-style fusion (docs/methods.md §D) with the optional vision projector (§E).

* :func:`train_fusion` trains :class:`~irkit.models.fusion.MagicLensFusion` on a benchmark's
  training triplets (CIRR / FashionIQ / demo data) over frozen, cached CLIP features with an
  in-batch contrastive loss: queries ``f(reference, text)`` against targets
  ``f(target, "")`` of the same batch, shared weights, learned temperature.
* ``create_method("magiclens", checkpoint=...)`` evaluates / submits it through the same
  protocols as every method; ``projector=False`` evaluates a projector-trained checkpoint
  with the projector switched off.
* A published MagicLens checkpoint (``magic_lens_clip_{base,large}.pkl``) loads the same way
  (:mod:`irkit.models.magiclens_checkpoint`): it brings its own CLIP towers, which then encode
  the images (``magiclens`` transform) and texts instead of the context's backbone;
  ``mask_zero_ids=False`` swaps the published text mask for open_clip's causal one.
* ``projector="prngkey0"`` puts the published fork's fixed random projector (jax
  ``PRNGKey(0)``, needs ``irkit[jax]``) in front of any fusion model, and
  ``projector=<file.msgpack>`` a published-structure projector from flax parameters.
"""

from __future__ import annotations

from dataclasses import replace
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
from irkit.models.magiclens_checkpoint import load_magiclens_checkpoint, looks_like_magiclens_checkpoint
from irkit.models.projector import VisionProjector
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


def published_projector(spec: str, dim: int) -> VisionProjector:
    """A frozen published-structure projector at width ``dim``: ``spec`` ``"prngkey0"`` (the
    fork's fixed random one, needs ``irkit[jax]``) or a flax msgpack file of ResidualMLP params."""
    from irkit.models.flax_msgpack import read_flax_msgpack
    from irkit.models.projector import load_flax_projector_params, published_prngkey0_projector

    if spec.lower() == "prngkey0":
        return published_prngkey0_projector(dim)
    if not Path(spec).is_file():
        raise InputError(f"projector={spec!r}: expected true, false, prngkey0 or a flax msgpack file of the "
                         "published ResidualMLP", field="projector")
    projector = VisionProjector(dim, style="published", zero_init=False)
    load_flax_projector_params(projector, read_flax_msgpack(spec), spec)
    projector.requires_grad_(False)
    return projector.eval()


@register_method("magiclens")
class MagicLensMethod(TrainedHeadMethod, EmbeddingMethod):
    """Query = fusion(reference image, text); gallery = fusion(image, empty text).

    ``checkpoint``: an irkit fusion checkpoint (``irkit cir train-fusion``), or a published
    MagicLens ``.pkl``, whose CLIP towers then encode images and texts (``mask_zero_ids``: the
    published text mask, default; False: open_clip's causal mask).
    ``projector``: None evaluates the checkpoint as trained; False switches a trained vision
    projector off; True requires one; ``"prngkey0"`` replaces it by the published fork's fixed
    random projector (docs/methods.md §E, needs jax + flax); a ``.msgpack`` path by the published
    structure holding those flax ResidualMLP parameters.
    """

    kind = KIND
    train_command = "train-fusion"

    def __init__(self, checkpoint: Optional[Path | str] = None, model: Optional[MagicLensFusion] = None,
                 include_shared_concept: bool = False, projector: Optional[bool | str] = None,
                 batch_size: int = 1024, mask_zero_ids: bool = True) -> None:
        #: the published checkpoint's CLIP towers (a LoadedModel), None for irkit checkpoints
        self.published_backbone: Optional[Any] = None
        if checkpoint is not None and model is None and looks_like_magiclens_checkpoint(checkpoint):
            published = load_magiclens_checkpoint(checkpoint, mask_zero_ids=mask_zero_ids)
            super().__init__(None, published.fusion, include_shared_concept, batch_size)
            self.checkpoint, self.published_backbone = checkpoint, published.backbone
        else:
            super().__init__(checkpoint, model, include_shared_concept, batch_size)
        if isinstance(projector, str):
            device = next(self._model.parameters()).device
            self._model.projector = published_projector(projector, self._model.config.embed_dim).to(device)
            self._model.use_projector = True
        elif projector is not None:
            if projector and self._model.projector is None:
                raise InputError("projector=True but this fusion model was trained without a vision projector",
                                 field="projector")
            self._model.use_projector = bool(projector)

    @classmethod
    def build_model(cls, model_config: Mapping[str, Any]) -> MagicLensFusion:
        return MagicLensFusion(FusionConfig.from_dict(model_config))

    def features(self, ctx: Any, split: Any, with_gallery: bool = True) -> Any:
        """The split's features; with a published checkpoint, from its own CLIP towers (moved to
        the context's device), cached under their own identity."""
        if self.published_backbone is not None:
            device = str(ctx.loaded.device)
            if self.published_backbone.device != device:
                self.published_backbone.model.to(device)  # the head stays on the CPU, as the features
                self.published_backbone = replace(self.published_backbone, device=device)
            ctx = replace(ctx, loaded=self.published_backbone)
        return super().features(ctx, split, with_gallery)

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
