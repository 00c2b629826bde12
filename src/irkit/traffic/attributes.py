"""Vehicle attribute parsing and the ``car_attribute.json`` vocabulary (docs/methods.md §A.1).

A vehicle label's ``attr`` is a short phrase ``[colour] [brand] [type]`` — any slot may be
missing — optionally wrapped as a sentence (``"A white Audi."``, ``"This is a white Audi."``).
Colours and types come from closed sets (types with synonyms such as ``"Heavy Truck"`` ->
``Truck``), matched case-insensitively as whole words, multi-word phrases included:

* the colour is the longest closed-set colour phrase at the start of the phrase; when
  ``open_colors`` is on (default) a leading all-lowercase word followed by more words is
  also taken as a colour outside the closed set (the real labels write colours in lower
  case and brands capitalised, e.g. ``"pink Style"``);
* the type is the longest type (or synonym) phrase at the end of the phrase;
* whatever remains in between is the brand, spelled as in the label (`BAOJUN` stays `BAOJUN`:
  the vocabulary feeds captions, which must match the queries' text).

``car_attribute.json`` is ``{"Colors": [...], "Types": [...], "Brands": [...]}``; each list
holds the values found in the labels, most frequent first, ties by name (case-insensitive),
so the first entries of a candidate enumeration are the common ones.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from irkit.data.records import TrafficLabel
from irkit.data.validate import expect_object, expect_unique_strings
from irkit.errors import InputError
from irkit.io import atomic_write_json, read_json

# Sentence wrappers seen around attribute phrases and captions, longest first.
SENTENCE_PREFIXES = ("This is an ", "This is a ", "An ", "A ")
CAR_ATTRIBUTE_KEYS = ("Colors", "Types", "Brands")

_LOWERCASE_WORD = re.compile(r"^[a-z]+$")


@dataclass(frozen=True)
class VehicleAttributes:
    """The three slots of a vehicle phrase; ``None`` where the phrase does not say."""

    color: Optional[str] = None
    brand: Optional[str] = None
    type: Optional[str] = None

    def missing(self) -> tuple[str, ...]:
        """Names of the empty slots, in ``("color", "brand", "type")`` order."""
        return tuple(name for name in ("color", "brand", "type") if getattr(self, name) is None)

    def phrase(self) -> str:
        """The filled slots joined by spaces, e.g. ``"white Audi Sedan"``."""
        return " ".join(value for value in (self.color, self.brand, self.type) if value is not None)


@dataclass(frozen=True)
class VehicleVocab:
    """Closed colour / type sets (+ type synonyms) and the brand list."""

    colors: tuple[str, ...]
    types: tuple[str, ...]
    brands: tuple[str, ...]
    type_synonyms: Mapping[str, str] = field(default_factory=dict)  # phrase -> canonical type

    def to_car_attribute(self) -> dict[str, list[str]]:
        return {"Colors": list(self.colors), "Types": list(self.types), "Brands": list(self.brands)}


def default_vocab() -> VehicleVocab:
    """irkit's bundled vocabulary (``resources/traffic_vocab.json``: 11 colours, 6 types, 65 brands)."""
    text = resources.files("irkit").joinpath("resources/traffic_vocab.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return VehicleVocab(colors=tuple(data["colors"]), types=tuple(data["types"]),
                        brands=tuple(data["brands"]), type_synonyms=dict(data.get("type_synonyms", {})))


def load_car_attribute(path: os.PathLike | str, synonyms: Optional[Mapping[str, str]] = None) -> VehicleVocab:
    """Read a ``car_attribute.json`` (``Colors``/``Types``/``Brands`` lists of unique strings).

    Type synonyms are not part of the file; ``synonyms`` (default: the bundled ones) are kept
    for the types the file lists.
    """
    path = Path(path)
    data = expect_object(read_json(path), path, None, 'an object {"Colors": [...], "Types": [...], "Brands": [...]}')
    for key in CAR_ATTRIBUTE_KEYS:
        if key not in data:
            raise InputError(f"no {key!r} list (found keys: {', '.join(map(repr, data)) or 'none'}); expected "
                             f"keys {', '.join(map(repr, CAR_ATTRIBUTE_KEYS))}", path=path, field=key)
    lists = {key: expect_unique_strings(data[key], path, key, f"a list of {key.lower()}")
             for key in CAR_ATTRIBUTE_KEYS}
    for key in ("Colors", "Types"):
        if not lists[key]:
            raise InputError(f"empty {key} list; expected at least one value", path=path, field=key)
    if synonyms is None:
        synonyms = default_vocab().type_synonyms
    types = tuple(lists["Types"])
    kept = {phrase: canonical for phrase, canonical in synonyms.items() if canonical in types}
    return VehicleVocab(colors=tuple(lists["Colors"]), types=types, brands=tuple(lists["Brands"]),
                        type_synonyms=kept)


def strip_sentence(phrase: str) -> str:
    """Remove surrounding whitespace, a leading ``A``/``An``/``This is a(n)`` and trailing dots."""
    phrase = phrase.strip()
    for prefix in SENTENCE_PREFIXES:
        if phrase[: len(prefix)].lower() == prefix.lower():
            phrase = phrase[len(prefix):]
            break
    return phrase.rstrip(". ").strip()


def _phrase_table(canonical_by_phrase: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Lower-cased word tuples -> canonical value."""
    return {tuple(phrase.lower().split()): canonical for phrase, canonical in canonical_by_phrase.items()}


def _longest_match(words: Sequence[str], table: Mapping[tuple[str, ...], str], at_end: bool
                   ) -> tuple[Optional[str], int]:
    """Longest table phrase at the start (or end) of ``words``: ``(canonical, word count)``."""
    lowered = [w.lower() for w in words]
    for size in range(len(words), 0, -1):
        key = tuple(lowered[-size:] if at_end else lowered[:size])
        if key in table:
            return table[key], size
    return None, 0


def parse_vehicle_attr(phrase: str, vocab: Optional[VehicleVocab] = None, open_colors: bool = True
                       ) -> VehicleAttributes:
    """Parse a vehicle phrase into (colour, brand, type); see the module docstring for the rules.

    >>> parse_vehicle_attr("Balong Heavy Truck")
    VehicleAttributes(color=None, brand='Balong', type='Truck')
    """
    vocab = vocab or default_vocab()
    words = strip_sentence(phrase).split()
    color_table = _phrase_table({c: c for c in vocab.colors})
    type_table = _phrase_table({**{t: t for t in vocab.types}, **dict(vocab.type_synonyms)})

    color, color_size = _longest_match(words, color_table, at_end=False)
    if color is None and open_colors and len(words) >= 2 and _LOWERCASE_WORD.match(words[0]):
        color, color_size = words[0], 1
    words = words[color_size:]
    vehicle_type, type_size = _longest_match(words, type_table, at_end=True)
    brand_words = words[: len(words) - type_size]
    brand = " ".join(brand_words) or None  # spelled as in the label (captions must match the queries' text)
    return VehicleAttributes(color=color, brand=brand, type=vehicle_type)


def split_labels(labels: Iterable[TrafficLabel]) -> tuple[list[TrafficLabel], list[TrafficLabel]]:
    """``(vehicle_labels, person_labels)`` in input order (kind decided by the label loader)."""
    vehicles: list[TrafficLabel] = []
    persons: list[TrafficLabel] = []
    for label in labels:
        (persons if label.kind == "person" else vehicles).append(label)
    return vehicles, persons


@dataclass
class AttributeCounts:
    """How often each colour / type / brand occurs in a set of vehicle labels."""

    colors: Counter = field(default_factory=Counter)
    types: Counter = field(default_factory=Counter)
    brands: Counter = field(default_factory=Counter)
    num_vehicles: int = 0
    num_persons: int = 0
    slot_missing: Counter = field(default_factory=Counter)  # slot name -> labels lacking it

    def to_car_attribute(self) -> dict[str, list[str]]:
        """``{"Colors", "Types", "Brands"}``, each most frequent first, ties by name."""
        return {key: _by_frequency(counter)
                for key, counter in zip(CAR_ATTRIBUTE_KEYS, (self.colors, self.types, self.brands))}


def _by_frequency(counter: Counter) -> list[str]:
    return sorted(counter, key=lambda name: (-counter[name], name.casefold(), name))


def count_attributes(labels: Iterable[TrafficLabel], vocab: Optional[VehicleVocab] = None,
                     open_colors: bool = True) -> AttributeCounts:
    """Parse every vehicle label's ``attr`` and count the values of each slot."""
    vocab = vocab or default_vocab()
    counts = AttributeCounts()
    for label in labels:
        if label.kind == "person":
            counts.num_persons += 1
            continue
        counts.num_vehicles += 1
        attrs = parse_vehicle_attr(label.attr, vocab, open_colors=open_colors)
        for slot, counter in (("color", counts.colors), ("brand", counts.brands), ("type", counts.types)):
            value = getattr(attrs, slot)
            if value is None:
                counts.slot_missing[slot] += 1
            else:
                counter[value] += 1
    return counts


def write_car_attribute(path: os.PathLike | str, counts: AttributeCounts) -> dict[str, list[str]]:
    """Write ``car_attribute.json`` atomically; returns what was written."""
    data = counts.to_car_attribute()
    if not data["Colors"] or not data["Types"]:
        raise InputError(
            f"no {'colours' if not data['Colors'] else 'types'} found in {counts.num_vehicles} vehicle "
            f"labels; expected vehicle attribute phrases like 'white Audi Sedan'", path=path)
    atomic_write_json(path, data, indent=None)
    return data
