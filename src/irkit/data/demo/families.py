"""Families of similar images (a base and variants 1-2 attributes away) and query pairs in them.

Composed-retrieval queries need a reference and a target that differ in a few attributes;
building galleries from such families guarantees those pairs exist at every scale.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np

Attributes = dict[str, str]


def attribute_key(item: Mapping[str, str], names: Sequence[str]) -> tuple[str, ...]:
    return tuple(item[n] for n in names)


def differing(a: Mapping[str, str], b: Mapping[str, str], names: Sequence[str]) -> list[str]:
    """Attribute names (in ``names`` order) whose values differ between ``a`` and ``b``."""
    return [n for n in names if a[n] != b[n]]


def mutate(rng: np.random.Generator, item: Mapping[str, str], values: Mapping[str, Sequence[str]],
           n_changes: int) -> Attributes:
    """A copy of ``item`` with ``n_changes`` attributes set to other values."""
    changeable = [n for n, v in values.items() if len(v) > 1]
    changed = dict(item)
    for name in rng.choice(changeable, size=min(n_changes, len(changeable)), replace=False):
        options = [v for v in values[name] if v != item[name]]
        changed[str(name)] = options[int(rng.integers(len(options)))]
    return changed


def make_families(rng: np.random.Generator, n_images: int, sample_base: Callable[[np.random.Generator], Attributes],
                  values: Mapping[str, Sequence[str]], size_range: tuple[int, int],
                  used: Optional[set[tuple[str, ...]]] = None, require_unique: bool = False,
                  max_tries: int = 200) -> list[list[Attributes]]:
    """Families totalling ``n_images`` items; each is a base plus variants 1-2 attributes away.

    ``size_range`` is inclusive (the last family may be cut short). Items avoid keys already
    in ``used`` (updated) when possible; with ``require_unique`` a repeat raises instead.
    """
    names = list(values)
    used = set() if used is None else used
    families: list[list[Attributes]] = []
    total = 0

    def fresh(make: Callable[[], Attributes]) -> Attributes:
        for _ in range(max_tries):
            candidate = make()
            if attribute_key(candidate, names) not in used:
                break
        else:
            if require_unique:
                raise ValueError("attribute space exhausted: cannot make more distinct images")
        used.add(attribute_key(candidate, names))
        return candidate

    while total < n_images:
        size = min(int(rng.integers(size_range[0], size_range[1] + 1)), n_images - total)
        base = fresh(lambda: sample_base(rng))
        family = [base]
        while len(family) < size:
            family.append(fresh(lambda: mutate(rng, base, values, int(rng.integers(1, 3)))))
        families.append(family)
        total += size
    return families


def close_pairs(members: Sequence[Mapping[str, str]], names: Sequence[str], max_changes: int = 2
                ) -> list[tuple[int, int]]:
    """Ordered ``(reference, target)`` index pairs differing in 1..``max_changes`` attributes."""
    return [(i, j) for i in range(len(members)) for j in range(len(members))
            if i != j and 1 <= len(differing(members[i], members[j], names)) <= max_changes]
