"""One registry of datasets: a new benchmark needs only a loader registered here."""

from __future__ import annotations

from typing import Any, Callable

from irkit.errors import InputError

_LOADERS: dict[str, Callable[..., Any]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn(root, split, **kwargs)`` as the loader of dataset ``name``."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _LOADERS:
            raise ValueError(f"dataset '{name}' is already registered")
        _LOADERS[name] = fn
        return fn

    return wrap


def list_datasets() -> list[str]:
    _import_builtin_loaders()
    return sorted(_LOADERS)


def load_dataset(name: str, root: Any, split: str, **kwargs: Any) -> Any:
    """Load split ``split`` of dataset ``name`` from ``root`` with its registered loader."""
    _import_builtin_loaders()
    if name not in _LOADERS:
        raise InputError(f"unknown dataset {name!r}; registered: {', '.join(sorted(_LOADERS))}", field="dataset")
    return _LOADERS[name](root, split, **kwargs)


def _import_builtin_loaders() -> None:
    # Importing the modules runs their @register_dataset decorators.
    from irkit.data import (  # noqa: F401
        circo,
        cirr,
        collection,
        fashioniq,
        genecis,  # noqa: F401
        traffic,
    )
