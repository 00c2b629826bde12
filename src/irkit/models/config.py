"""Shared behaviour of the small heads' config dataclasses (fusion, Combiner, re-ranker)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, Mapping, TypeVar

from irkit.errors import InputError

ConfigT = TypeVar("ConfigT", bound="HeadConfig")


class HeadConfig:
    """Mixin for ``@dataclass`` configs stored inside checkpoints as plain dicts."""

    config_name: ClassVar[str] = "model"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
        """Rebuild from :meth:`to_dict`; unknown keys are an :class:`InputError`."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown {cls.config_name} config keys {unknown}; expected some of {sorted(known)}",
                             field="model_config")
        return cls(**values)
