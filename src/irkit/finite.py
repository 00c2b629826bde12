"""One check for non-finite numbers (NaN / Inf) in embeddings and weights.

A NaN embedding compares false with everything, so a ranking built from it silently keeps
the gallery order and scores as "perfect"; every place that produces or loads embeddings
calls :func:`require_finite` instead.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np

from irkit.errors import InputError


def count_non_finite(values: Any) -> int:
    """Number of NaN / +-Inf entries of an array-like (numpy array or torch tensor)."""
    if hasattr(values, "detach"):  # a torch tensor: count on its device, no copy of the whole array
        import torch

        return int((~torch.isfinite(values.detach())).sum().item())
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def require_finite(values: Any, what: str, source: str,
                   path: Optional[Union[str, os.PathLike]] = None) -> Any:
    """``values`` unchanged when every entry is finite; else one :class:`InputError`:
    ``<path>: <what> hold N non-finite values (NaN/Inf) of M, produced by <source>; ...``."""
    bad = count_non_finite(values)
    if bad:
        total = int(values.numel()) if hasattr(values, "numel") else int(np.asarray(values).size)
        raise InputError(f"{what} hold {bad} non-finite values (NaN/Inf) of {total}, from {source}; expected "
                         "finite numbers (damaged or diverged weights, or an overflow in this precision)",
                         path=path)
    return values
