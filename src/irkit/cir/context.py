"""What every CIR method needs: the backbone, the embedding cache and its encoders.

:class:`CIRContext` wraps a ``irkit.models.LoadedModel`` with the on-disk embedding cache
(:mod:`irkit.embeddings`): L2-normalised image embeddings for retrieval, UNnormalised ones for
phi / the trained heads, text embeddings. Shapes: N items, d = the joint embedding width.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from irkit.data.records import CIRSplit
from irkit.finite import require_finite
from irkit.io import stable_hash
from irkit.transforms import BENCHMARK_READER, ImageReader

#: Version of the query-embedding cache entries (bump when their meaning changes).
QUERY_CACHE_FORMAT = 1


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x`` with unit L2 norm along ``axis`` (float32; zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Temporarily set ``requires_grad=False`` on every parameter of the CLIP model
    (pseudo tokens / phi get gradients through it; its own weights never do)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def encode_token_ids(model: torch.nn.Module, token_ids: torch.Tensor, batch_size: int = 256,
                     precision: str = "fp32") -> torch.Tensor:
    """Plain text features [N, d] (unnormalised, float32, CPU) of token ids [N, L], no grad, under
    the autocast of ``precision`` (:mod:`irkit.precision`; a loaded model's ``.precision``)."""
    from irkit.precision import autocast_for

    out = []
    device = model_device(model)
    with torch.no_grad(), autocast_for(precision, device):
        for start in range(0, token_ids.shape[0], batch_size):
            out.append(model.encode_text(token_ids[start:start + batch_size].to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def raw_image_embeddings(loaded: Any, paths: Sequence[Path | str], batch_size: int = 64, num_workers: int = 2,
                         cache_dir: Optional[Path | str] = None, reader: ImageReader = BENCHMARK_READER) -> np.ndarray:
    """[N, d] float32 UNnormalised image embeddings (phi's and the heads' input) of image files, in
    order, through :func:`irkit.embeddings.encode_image_files`' on-disk cache. ``reader``: how the
    files are read (default: the benchmark reader, no EXIF orientation, as published)."""
    from irkit.embeddings import encode_image_files

    return encode_image_files(loaded, paths, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir,
                              normalize=False, reader=reader)


@dataclass
class CIRContext:
    """What every method needs: the backbone (a ``irkit.models.LoadedModel``) and the cache.

    ``reader``: how image files are read; default the published benchmarks' way (plain PIL
    open + RGB, no EXIF orientation; :data:`irkit.transforms.BENCHMARK_READER`).
    """

    loaded: Any  # irkit.models.LoadedModel (kept untyped to avoid importing the factory here)
    cache_dir: Optional[Path] = None
    batch_size: int = 64
    num_workers: int = 2
    reader: ImageReader = BENCHMARK_READER

    def image_embeddings(self, split: CIRSplit, image_ids: Sequence[str]) -> np.ndarray:
        """[N, d] float32 L2-normalised image embeddings of ``image_ids`` (cached on disk)."""
        from irkit.embeddings import encode_image_files

        paths = [split.image_path(i) for i in image_ids]
        return encode_image_files(
            self.loaded, paths, batch_size=self.batch_size, num_workers=self.num_workers,
            cache_dir=self.cache_dir, reader=self.reader,
        )

    def raw_image_embeddings(self, split: CIRSplit, image_ids: Sequence[str]) -> np.ndarray:
        """[N, d] float32 UNnormalised image embeddings of ``image_ids`` of ``split``."""
        return raw_image_embeddings(self.loaded, [split.image_path(i) for i in image_ids], self.batch_size,
                                    self.num_workers, self.cache_dir, self.reader)

    def query_embeddings(self, method: Any, split: CIRSplit) -> np.ndarray:
        """[Q, d] ``method.query_embeddings(self, split)`` of an embedding method, cached on disk
        (``<cache_dir>/<key>.npy``) when the method states its identity (``cache_identity()``): the
        key holds that identity, the backbone, every query's id, reference, captions, shared concept
        and part, and the reference images' file fingerprints."""
        from irkit.embeddings import file_fingerprints, image_cache_material, load_cached_array, save_cached_array

        identity = method.cache_identity() if self.cache_dir is not None else None
        if identity is None:
            return self._finite_queries(method, method.query_embeddings(self, split))
        references = list(dict.fromkeys(q.reference for q in split.queries))
        # the backbone's identity and the reference files, as the image cache states them
        material = image_cache_material(self.loaded, file_fingerprints([split.image_path(i) for i in references]),
                                        reader=self.reader)
        material.update(json.loads(json.dumps({
            "query_cache_format": QUERY_CACHE_FORMAT, "kind": "cir_query_embeddings", "method": method.name,
            "identity": identity, "device": str(self.loaded.device), "dataset": split.dataset,
            "queries": [[q.query_id, q.reference, list(q.captions), q.shared_concept, q.category]
                        for q in split.queries],
        })))
        key = stable_hash(material)
        cached = load_cached_array(Path(self.cache_dir), key, material, num_rows=len(split.queries))
        if cached is not None:
            return cached.astype(np.float32, copy=False)
        embeddings = self._finite_queries(method, method.query_embeddings(self, split))
        save_cached_array(Path(self.cache_dir), key, material, np.asarray(embeddings, np.float32))
        return embeddings

    def _finite_queries(self, method: Any, embeddings: Any) -> Any:
        source = getattr(self.loaded, "weights_source", "") or getattr(self.loaded, "weights_id", "")
        return require_finite(embeddings, f"query embeddings of method '{method.name}'",
                              f"that method on model '{getattr(self.loaded, 'model_name', '?')}' ({source}) "
                              "— check the method's checkpoint and the backbone's weights")

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """[N, d] float32 L2-normalised text embeddings."""
        return self.loaded.encode_texts(list(texts))
