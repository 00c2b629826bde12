"""CLIP backbones: irkit's own model configs (registered with open_clip on import) and the factory.

``create_model("irkit-tiny")`` gives a :class:`LoadedModel`; any ``open_clip.list_models()``
name works too, with a ``pretrained`` tag or a local ``checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import open_clip

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def _register_configs() -> None:
    # open_clip offers add_model_config but no way to ask whether a folder is registered already;
    # its list is read so that a re-import does not register irkit's configs twice.
    if CONFIGS_DIR not in [Path(p) for p in open_clip.factory._MODEL_CONFIG_PATHS]:
        open_clip.add_model_config(CONFIGS_DIR)


_register_configs()

from irkit.models.factory import (  # noqa: E402
    LoadedModel,
    count_truncated,
    create_model,
    load_weights,
    read_state_dict,
    read_weights_metadata,
    save_weights,
    warn_truncated,
)

__all__ = [
    "CONFIGS_DIR", "LoadedModel", "create_model", "load_weights", "read_state_dict",
    "read_weights_metadata", "save_weights", "count_truncated", "warn_truncated",
]
