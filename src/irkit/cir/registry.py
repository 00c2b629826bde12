"""The CIR method registry and the two kinds of method (docs/methods.md).

* :class:`EmbeddingMethod`: queries and gallery into one space, ``query_embeddings`` [Q, D] and
  ``gallery_embeddings`` [G, D] (both L2-normalised); the benchmark's protocol ranks them.
* :class:`RankingMethod`: ranks directly (``rank_split -> (rankings, subset rankings)``, e.g.
  two-stage re-ranking); its rankings are scored by the same protocol.

``create_method(name, **options)`` builds a registered method; :func:`method_options` checks
options against what the method accepts. Methods live in :mod:`irkit.methods`, one module each.
"""

from __future__ import annotations

import abc
import importlib
import inspect
from typing import Any, Callable, ClassVar, Mapping, Optional

import numpy as np

from irkit.cir.context import CIRContext
from irkit.data.records import CIRSplit
from irkit.errors import InputError

_METHODS: dict[str, type] = {}
#: The modules of :mod:`irkit.methods` that register the built-in methods (imported on first use).
BUILTIN_METHOD_MODULES = ("baselines", "searle", "lincir", "fusion", "combiner", "rerank")

Rankings = dict[str, list[str]]


class CIRMethod(abc.ABC):
    """A composed-retrieval method (registered under :attr:`name`)."""

    name: ClassVar[str] = ""


class EmbeddingMethod(CIRMethod):
    """Queries and gallery into one embedding space."""

    @abc.abstractmethod
    def query_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        """[Q, D] L2-normalised embeddings, one per ``split.queries`` entry, in order."""

    def gallery_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        """[G, D] L2-normalised embeddings of ``split.gallery`` (default: plain image embeddings)."""
        return ctx.image_embeddings(split, split.gallery)

    def cache_identity(self) -> Optional[dict[str, Any]]:
        """What, beside the backbone, the queries and their reference images, determines
        :meth:`query_embeddings` (JSON-able; e.g. a trained part's file hash and the options), so
        that :meth:`CIRContext.query_embeddings` may cache them on disk. None (the default): never cached."""
        return None


class RankingMethod(CIRMethod):
    """A method that ranks the gallery itself."""

    @abc.abstractmethod
    def rank_split(self, ctx: CIRContext, split: CIRSplit) -> tuple[Rankings, Optional[Rankings]]:
        """``(rankings, subset rankings or None)``: ``{query_id: [gallery ids, best first]}`` as deep
        as the benchmark's protocol needs."""


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`CIRMethod` subclass under ``name``."""

    def wrap(cls: type) -> type:
        if name in _METHODS:
            raise ValueError(f"method '{name}' is already registered")
        if not issubclass(cls, (EmbeddingMethod, RankingMethod)):
            raise TypeError(f"method '{name}' must subclass EmbeddingMethod or RankingMethod")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def _import_builtin_methods() -> None:
    # The registry sits below the methods (they import it); it loads them by name on first use,
    # as open_clip and timm load their model modules, so no import arrow points back up.
    for module in BUILTIN_METHOD_MODULES:
        importlib.import_module(f"irkit.methods.{module}")


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    _import_builtin_methods()
    return sorted(_METHODS)


def method_class(name: str) -> type:
    """The class registered as method ``name`` (to inspect its options without building it)."""
    _import_builtin_methods()
    if name not in _METHODS:
        raise InputError(f"unknown method {name!r}; registered: {', '.join(sorted(_METHODS))}", field="method")
    return _METHODS[name]


def create_method(name: str, **options: Any) -> CIRMethod:
    """Instantiate the registered method ``name`` with its options."""
    return method_class(name)(**options)


def method_options(name: str, checkpoint: Optional[Any] = None, include_shared_concept: bool = False,
                   extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Keyword options for ``create_method(name, ...)``, checked against what the method accepts.

    ``checkpoint`` is passed as ``checkpoint=``; ``include_shared_concept`` only when True or
    accepted. An option the method does not take raises :class:`InputError` listing those it does.
    """
    accepted = {p for p in inspect.signature(method_class(name).__init__).parameters if p != "self"}
    options: dict[str, Any] = dict(extra or {})
    if checkpoint is not None:
        options["checkpoint"] = checkpoint
    if include_shared_concept or "include_shared_concept" in accepted:
        options["include_shared_concept"] = include_shared_concept
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InputError(f"method {name!r} does not take option(s) {unknown}; it accepts {sorted(accepted) or 'none'}",
                         field="method-option")
    return options
