"""Base class, context and registry for composed-image-retrieval methods."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import numpy as np

from irkit.data.records import CIRQuery, CIRSplit

_METHODS: dict[str, Callable[..., "CIRMethod"]] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`CIRMethod` subclass under ``name``."""

    def wrap(cls: type) -> type:
        if name in _METHODS:
            raise ValueError(f"method '{name}' is already registered")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def _import_builtin_methods() -> None:
    import importlib

    for module in ("baselines", "searle", "lincir", "fusion", "combiner", "rerank"):
        try:
            importlib.import_module(f"irkit.methods.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"irkit.methods.{module}":
                raise


def list_methods() -> list[str]:
    _import_builtin_methods()
    return sorted(_METHODS)


def method_class(name: str) -> type:
    """The class registered as method ``name`` (to inspect its options without building it)."""
    _import_builtin_methods()
    if name not in _METHODS:
        raise ValueError(f"unknown method '{name}'; registered: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def create_method(name: str, **options: Any) -> "CIRMethod":
    """Instantiate the registered method ``name`` with its options."""
    return method_class(name)(**options)


@dataclass
class CIRContext:
    """What every method needs: the backbone (a ``irkit.models.LoadedModel``) and the cache."""

    loaded: Any  # irkit.models.LoadedModel (kept untyped to avoid importing torch here)
    cache_dir: Optional[Path] = None
    batch_size: int = 64
    num_workers: int = 2

    def image_embeddings(self, split: CIRSplit, image_ids: Sequence[str]) -> np.ndarray:
        """[N, D] float32 L2-normalised image embeddings of ``image_ids`` (cached on disk)."""
        from irkit.embeddings import encode_image_files

        paths = [split.image_path(i) for i in image_ids]
        return encode_image_files(
            self.loaded, paths, batch_size=self.batch_size, num_workers=self.num_workers,
            cache_dir=self.cache_dir,
        )

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """[N, D] float32 L2-normalised text embeddings."""
        return self.loaded.encode_texts(list(texts))


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def query_text(query: CIRQuery, dataset: str, include_shared_concept: bool = False) -> str:
    """The modification text of one query as the common template-free baselines use it.

    FashionIQ: the two captions joined with " and " (MagicLens's template); CIRCO: the
    relative caption, optionally prefixed ``find {shared_concept} but`` (a named option:
    published methods differ, metrics.md); CIRR: the caption.
    """
    if dataset == "fashioniq":
        return " and ".join(c.strip(" .?,") for c in query.captions)
    caption = query.captions[0]
    if dataset == "circo" and include_shared_concept and query.shared_concept:
        return f"find {query.shared_concept} but {caption}"
    return caption


class CIRMethod(abc.ABC):
    """A composed-retrieval method: queries and gallery into one embedding space."""

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def query_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        """[Q, D] L2-normalised embeddings, one per ``split.queries`` entry, in order."""

    def gallery_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        """[G, D] L2-normalised embeddings of ``split.gallery`` (default: plain image embeddings)."""
        return ctx.image_embeddings(split, split.gallery)
