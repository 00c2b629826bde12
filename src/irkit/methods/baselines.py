"""Zero-shot baselines every CIR method is compared with: image-only, text-only, sum."""

from __future__ import annotations

from typing import Any

import numpy as np

from irkit.benchmarks import benchmark_of
from irkit.cir.context import CIRContext, l2_normalize
from irkit.cir.registry import EmbeddingMethod, register_method
from irkit.data.records import CIRSplit


class _BaselineMethod(EmbeddingMethod):
    def __init__(self, include_shared_concept: bool = False) -> None:
        self.include_shared_concept = include_shared_concept

    def cache_identity(self) -> dict[str, Any]:
        return {"include_shared_concept": self.include_shared_concept}

    def _reference_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        return ctx.image_embeddings(split, [q.reference for q in split.queries])

    def _text_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        benchmark = benchmark_of(split)
        texts = [benchmark.query_text(q, self.include_shared_concept) for q in split.queries]
        return ctx.text_embeddings(texts)


@register_method("image-only")
class ImageOnly(_BaselineMethod):
    """Query = the reference image embedding."""

    def query_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        return self._reference_embeddings(ctx, split)


@register_method("text-only")
class TextOnly(_BaselineMethod):
    """Query = the modification text embedding."""

    def query_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        return self._text_embeddings(ctx, split)


@register_method("image-text-sum")
class ImageTextSum(_BaselineMethod):
    """Query = normalise(normalised image embedding + normalised text embedding)."""

    def query_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        return l2_normalize(self._reference_embeddings(ctx, split) + self._text_embeddings(ctx, split))
