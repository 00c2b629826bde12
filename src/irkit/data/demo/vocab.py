"""Attribute vocabularies of the demo worlds and the words/sentences that describe them.

* Vehicles (traffic crops, CIRR/CIRCO scenes): colours, types and brands from
  ``irkit/resources/traffic_vocab.json``; each brand has a small emblem code
  (glyph shape x colour x position) and a set of plausible body types.
* Persons (traffic crops): the 21 flags of ``irkit/resources/person_attributes.json``.
* Clothing colours (persons, FashionIQ garments) and scene attributes (CIRR/CIRCO).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from irkit.data.demo.common import weighted_choice

# ----------------------------------------------------------------------------------------
# vehicles
# ----------------------------------------------------------------------------------------

#: Base RGB of each vehicle colour word; grey/silver/white are close on purpose.
VEHICLE_COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "white": (228, 228, 226), "black": (28, 28, 30), "grey": (120, 122, 125),
    "silver": (172, 176, 181), "red": (176, 32, 30), "blue": (34, 66, 160),
    "yellow": (222, 192, 46), "green": (46, 122, 64), "brown": (110, 72, 44),
    "orange": (222, 116, 34), "purple": (104, 52, 130),
}
#: How often each colour occurs (white/black/grey/silver dominate real traffic).
VEHICLE_COLOUR_WEIGHTS: dict[str, float] = {
    "white": 0.22, "black": 0.16, "grey": 0.12, "silver": 0.12, "red": 0.09, "blue": 0.09,
    "yellow": 0.04, "green": 0.05, "brown": 0.04, "orange": 0.03, "purple": 0.04,
}
VEHICLE_TYPE_WEIGHTS: dict[str, float] = {
    "Sedan": 0.34, "SUV": 0.24, "Minivan": 0.1, "Microbus": 0.1, "Bus": 0.08, "Truck": 0.14,
}
#: Lower-case nouns (singular, plural) used in captions.
VEHICLE_TYPE_NOUNS: dict[str, tuple[str, str]] = {
    "Bus": ("bus", "buses"), "Microbus": ("microbus", "microbuses"), "Minivan": ("minivan", "minivans"),
    "SUV": ("SUV", "SUVs"), "Sedan": ("sedan", "sedans"), "Truck": ("truck", "trucks"),
}

_CAR_TYPES = ("Sedan", "SUV", "Minivan")
#: Plausible body types per brand (brands not listed make passenger cars).
_BRAND_TYPES: dict[str, tuple[str, ...]] = {
    **{b: ("Bus",) for b in ("Golden Dragon", "Yutong", "King Long", "Higer", "Zhongtong", "Ankai")},
    **{b: ("Truck",) for b in ("Balong", "Shacman", "Sinotruk", "Dayun", "Hongyan", "Jiefang", "Howo")},
    "Foton": ("Truck", "Microbus", "Bus"), "JAC": ("Truck", "SUV", "Minivan"), "Isuzu": ("Truck", "SUV"),
    "Iveco": ("Microbus", "Truck"), "Dongfeng": ("Truck", "SUV", "Sedan"), "Jinbei": ("Microbus", "Minivan"),
    "Wuling": ("Minivan", "Microbus"), "Changan": ("Sedan", "SUV", "Minivan", "Microbus"),
    "Hafei": ("Microbus", "Minivan"), "Changhe": ("Microbus", "Minivan"), "Jianghuai": ("Truck", "Minivan"),
    "FAW": ("Truck", "Sedan", "SUV"), "Great Wall": ("SUV", "Truck"), "Baojun": ("Minivan", "SUV", "Sedan"),
    "Toyota": ("Sedan", "SUV", "Minivan", "Microbus"), "Ford": ("Sedan", "SUV", "Truck", "Microbus"),
    "Mercedes-Benz": ("Sedan", "SUV", "Microbus"), "Nissan": ("Sedan", "SUV", "Truck"),
    "Jeep": ("SUV",), "Land Rover": ("SUV",), "Haval": ("SUV",), "Porsche": ("Sedan", "SUV"),
}

#: Brand emblem glyphs, colours and positions; brand i gets (i % 7, (i // 7) % 5, i // 35).
EMBLEM_SHAPES = ("circle", "square", "triangle", "diamond", "plus", "ring", "bar")
EMBLEM_COLOURS: tuple[tuple[int, int, int], ...] = (
    (205, 207, 212), (212, 170, 50), (200, 24, 24), (24, 64, 205), (14, 14, 16))
EMBLEM_POSITIONS = ("front", "rear")


@dataclass(frozen=True)
class VehicleVocab:
    """The traffic vehicle vocabulary (``traffic_vocab.json``)."""

    colors: tuple[str, ...]
    types: tuple[str, ...]
    brands: tuple[str, ...]
    type_synonyms: Mapping[str, str]

    def brand_types(self, brand: str) -> tuple[str, ...]:
        """Body types a brand plausibly makes (restricted to :attr:`types`)."""
        return tuple(t for t in _BRAND_TYPES.get(brand, _CAR_TYPES) if t in self.types)

    def brands_for_type(self, vehicle_type: str) -> tuple[str, ...]:
        return tuple(b for b in self.brands if vehicle_type in self.brand_types(b))

    def synonyms_of(self, vehicle_type: str) -> tuple[str, ...]:
        return tuple(sorted(s for s, t in self.type_synonyms.items() if t == vehicle_type))


@lru_cache(maxsize=1)
def vehicle_vocab() -> VehicleVocab:
    """Load ``irkit/resources/traffic_vocab.json`` (checked against the renderer's palette)."""
    data = json.loads(resources.files("irkit").joinpath("resources/traffic_vocab.json").read_text("utf-8"))
    vocab = VehicleVocab(colors=tuple(data["colors"]), types=tuple(data["types"]), brands=tuple(data["brands"]),
                         type_synonyms=dict(data.get("type_synonyms", {})))
    missing = [c for c in vocab.colors if c not in VEHICLE_COLOUR_RGB]
    missing += [t for t in vocab.types if t not in VEHICLE_TYPE_NOUNS]
    if missing:
        raise ValueError(f"traffic_vocab.json names {missing}, which the demo renderer cannot draw")
    if len(vocab.brands) > len(EMBLEM_SHAPES) * len(EMBLEM_COLOURS) * len(EMBLEM_POSITIONS):
        raise ValueError("more brands than distinct emblem codes")
    for vehicle_type in vocab.types:
        if not vocab.brands_for_type(vehicle_type):
            raise ValueError(f"no brand in traffic_vocab.json makes type {vehicle_type!r}")
    return vocab


def emblem_code(brand: str) -> tuple[str, tuple[int, int, int], str]:
    """``(glyph shape, RGB, position)`` of a brand's emblem; distinct for every brand."""
    index = vehicle_vocab().brands.index(brand)
    return (EMBLEM_SHAPES[index % len(EMBLEM_SHAPES)],
            EMBLEM_COLOURS[(index // len(EMBLEM_SHAPES)) % len(EMBLEM_COLOURS)],
            EMBLEM_POSITIONS[index // (len(EMBLEM_SHAPES) * len(EMBLEM_COLOURS))])


#: Brand popularity follows a Zipf law over the vocabulary order (a few makers dominate the
#: roads, as in real traffic data): frequent brands are learnable, the long tail stays hard.
BRAND_ZIPF_EXPONENT = 1.1


def sample_vehicle(rng: np.random.Generator) -> dict[str, str]:
    """A plausible ``{"color", "type", "brand"}`` (type by frequency, brand among its makers)."""
    vocab = vehicle_vocab()
    vehicle_type = weighted_choice(rng, {t: VEHICLE_TYPE_WEIGHTS.get(t, 0.1) for t in vocab.types})
    color = weighted_choice(rng, {c: VEHICLE_COLOUR_WEIGHTS.get(c, 0.05) for c in vocab.colors})
    brand = weighted_choice(rng, {b: (vocab.brands.index(b) + 1) ** -BRAND_ZIPF_EXPONENT
                                  for b in vocab.brands_for_type(vehicle_type)})
    return {"color": color, "type": vehicle_type, "brand": brand}


def vehicle_phrase(color: Optional[str], brand: Optional[str], vehicle_type: Optional[str]) -> str:
    """``"white Audi Sedan"``, skipping missing slots (colour, brand, type order)."""
    return " ".join(p for p in (color, brand, vehicle_type) if p)


def indefinite(noun_phrase: str) -> str:
    """``"a sedan"`` / ``"an SUV"``."""
    vowel_sound = noun_phrase[:1].lower() in "aeio" or noun_phrase.startswith(("SUV", "MPV"))
    return ("an " if vowel_sound else "a ") + noun_phrase


# ----------------------------------------------------------------------------------------
# persons
# ----------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def person_attribute_names() -> tuple[str, ...]:
    """The 21 person flags in label order (``irkit/resources/person_attributes.json``)."""
    data = json.loads(resources.files("irkit").joinpath("resources/person_attributes.json").read_text("utf-8"))
    names = tuple(data["attributes"])
    if len(names) != 21 or len(set(names)) != 21:
        raise ValueError("person_attributes.json must list 21 distinct flag names")
    return names


#: Clothing colours: base RGB per word (persons and FashionIQ garments).
CLOTHING_RGB: dict[str, tuple[int, int, int]] = {
    "black": (26, 26, 28), "white": (232, 232, 228), "grey": (128, 128, 130), "red": (190, 30, 36),
    "pink": (232, 140, 170), "orange": (232, 120, 40), "yellow": (230, 200, 50), "green": (48, 130, 60),
    "blue": (44, 84, 180), "navy": (26, 36, 82), "purple": (110, 56, 140), "beige": (212, 192, 160),
    "brown": (112, 74, 46), "khaki": (170, 156, 110),
}
#: Upper-body colours that have no flag (the text then names no colour).
PERSON_UPPER_OTHER = ("blue", "green", "yellow", "grey", "brown", "pink", "purple", "orange", "navy")
PERSON_LOWER_OTHER = ("grey", "brown", "khaki", "white", "beige")


def sample_person_flags(rng: np.random.Generator) -> dict[str, int]:
    """Plausible 21 person flags (one age band, one facing, one lower garment)."""
    flags = {name: 0 for name in person_attribute_names()}
    female = rng.random() < 0.45
    flags["female"] = int(female)
    flags[weighted_choice(rng, {"age_child": 0.1, "age_adult": 0.75, "age_elderly": 0.15})] = 1
    flags[weighted_choice(rng, {"facing_front": 0.4, "facing_side": 0.25, "facing_back": 0.35})] = 1
    for name, p in (("hat", 0.15), ("glasses", 0.18), ("backpack", 0.25), ("handbag", 0.2 + 0.15 * female)):
        flags[name] = int(rng.random() < p)
    if rng.random() < 0.12:
        flags["long_coat"] = 1
    elif rng.random() < 0.45:
        flags["short_sleeves"] = 1
    lower = weighted_choice(rng, {"trousers": 0.6, "shorts": 0.15, "skirt": 0.35 if female else 0.0})
    flags[lower] = 1
    upper = weighted_choice(rng, {"upper_black": 0.25, "upper_white": 0.2, "upper_red": 0.1, "": 0.45})
    if upper:
        flags[upper] = 1
    lower_colour = weighted_choice(rng, {"lower_black": 0.4, "lower_blue": 0.25, "": 0.35})
    if lower_colour:
        flags[lower_colour] = 1
    return flags


def flags_to_attr(flags: Mapping[str, int]) -> str:
    """The label ``attr`` field: 21 comma-separated 0/1 flags in resource order."""
    return ",".join(str(int(flags[name])) for name in person_attribute_names())


def _one_of(flags: Mapping[str, int], prefix: str, names: Sequence[str]) -> Optional[str]:
    for name in names:
        if flags.get(prefix + name):
            return name
    return None


def person_colour_words(flags: Mapping[str, int]) -> tuple[Optional[str], Optional[str]]:
    """``(upper colour word or None, lower colour word or None)`` named by the flags."""
    return (_one_of(flags, "upper_", ("black", "white", "red")), _one_of(flags, "lower_", ("black", "blue")))


def person_sentence(flags: Mapping[str, int]) -> str:
    """A sentence naming every flag, e.g. ``A female pedestrian with a hat, wearing a red
    short-sleeved top and black trousers, carrying a backpack.`` Distinct flags give
    distinct sentences."""
    age = _one_of(flags, "age_", ("child", "adult", "elderly"))
    age_word = {"child": "young ", "elderly": "elderly ", "adult": ""}[age or "adult"]
    gender = "female" if flags["female"] else "male"
    subject = indefinite(f"{age_word}{gender} pedestrian")
    facing = _one_of(flags, "facing_", ("front", "side", "back"))
    subject += {"front": " facing the camera", "side": " seen from the side", "back": " seen from behind",
                None: ""}[facing]
    worn = [w for w, f in (("a hat", "hat"), ("glasses", "glasses")) if flags[f]]
    if worn:
        subject += " with " + " and ".join(worn)
    upper_colour, lower_colour = person_colour_words(flags)
    upper_colour = f"{upper_colour} " if upper_colour else ""
    if flags["long_coat"]:
        upper = f"a {upper_colour}long coat"
    elif flags["short_sleeves"]:
        upper = f"a {upper_colour}short-sleeved top"
    else:
        upper = f"a {upper_colour}long-sleeved top"
    upper = indefinite(upper[2:])
    lower_colour = f"{lower_colour} " if lower_colour else ""
    lower_kind = _one_of(flags, "", ("trousers", "shorts", "skirt"))
    lower = f"a {lower_colour}skirt" if lower_kind == "skirt" else f"{lower_colour}{lower_kind}"
    sentence = f"{subject}, wearing {upper} and {lower}"
    carried = [w for w, f in (("a backpack", "backpack"), ("a handbag", "handbag")) if flags[f]]
    if carried:
        sentence += ", carrying " + " and ".join(carried)
    return sentence[0].upper() + sentence[1:] + "."


def person_spec_from_flags(flags: Mapping[str, int], rng: np.random.Generator) -> dict[str, Any]:
    """The renderer's person description for traffic flags (colours without flags drawn here)."""
    upper_colour, lower_colour = person_colour_words(flags)
    sleeves = "long" if flags["long_coat"] else ("short" if flags["short_sleeves"] else "long")
    lower_style = _one_of(flags, "", ("trousers", "shorts", "skirt")) or "trousers"
    return {
        "female": bool(flags["female"]),
        "age": _one_of(flags, "age_", ("child", "adult", "elderly")) or "adult",
        "facing": _one_of(flags, "facing_", ("front", "side", "back")) or "front",
        "hat": bool(flags["hat"]), "glasses": bool(flags["glasses"]),
        "backpack": bool(flags["backpack"]), "handbag": bool(flags["handbag"]),
        "upper": {"style": "coat" if flags["long_coat"] else "top", "sleeves": sleeves,
                  "colour": upper_colour or weighted_choice(rng, PERSON_UPPER_OTHER), "pattern": "solid"},
        "lower": {"style": lower_style, "colour": lower_colour or weighted_choice(rng, PERSON_LOWER_OTHER),
                  "length": "knee"},
    }


# ----------------------------------------------------------------------------------------
# vehicle scenes (CIRR, CIRCO)
# ----------------------------------------------------------------------------------------

SCENE_BACKGROUNDS = ("city street", "highway", "parking lot", "countryside", "snowy road")
#: Attribute -> values of a vehicle scene (type and colour come from the traffic vocabulary).
SCENE_ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "background": SCENE_BACKGROUNDS,
    "time": ("day", "night"),
    "count": ("1", "2", "3"),
    "direction": ("left", "right"),
    "view": ("close-up", "distant"),
}
_BACKGROUND_PHRASES = {"city street": "on a city street", "highway": "on a highway",
                       "parking lot": "in a parking lot", "countryside": "in the countryside",
                       "snowy road": "on a snowy road"}
_COUNT_WORDS = {"1": "one", "2": "two", "3": "three"}


def scene_attribute_values() -> dict[str, tuple[str, ...]]:
    """Every scene attribute and its values, in a fixed order."""
    vocab = vehicle_vocab()
    return {"type": vocab.types, "color": vocab.colors, **SCENE_ATTRIBUTE_VALUES}


def sample_scene(rng: np.random.Generator) -> dict[str, str]:
    """Random scene attributes (type/colour by real-traffic frequency)."""
    vehicle = sample_vehicle(rng)
    scene = {"type": vehicle["type"], "color": vehicle["color"]}
    for name, values in SCENE_ATTRIBUTE_VALUES.items():
        scene[name] = weighted_choice(rng, values)
    return scene


def scene_description(scene: Mapping[str, str]) -> str:
    """A full caption: ``two red sedans facing left on a snowy road at night, close-up``."""
    singular, plural = VEHICLE_TYPE_NOUNS[scene["type"]]
    if scene["count"] == "1":
        subject = indefinite(f"{scene['color']} {singular}")
    else:
        subject = f"{_COUNT_WORDS[scene['count']]} {scene['color']} {plural}"
    when = "at night" if scene["time"] == "night" else "during the day"
    view = "close-up view" if scene["view"] == "close-up" else "seen from a distance"
    return f"{subject} facing {scene['direction']} {_BACKGROUND_PHRASES[scene['background']]} {when}, {view}"


def type_noun(vehicle_type: str) -> str:
    return VEHICLE_TYPE_NOUNS[vehicle_type][0]


def modification_phrase(attribute: str, value: str, rng: np.random.Generator, style: str) -> str:
    """Words asking for ``attribute = value``; ``style`` is ``"cirr"`` (imperative) or
    ``"circo"`` (a relative clause like ``is red``)."""
    if style == "circo":
        options = {
            "color": [f"is {value}", f"is {value} in color"],
            "type": [f"is {indefinite(type_noun(value))}" if value in VEHICLE_TYPE_NOUNS else ""],
            "background": [f"is {_BACKGROUND_PHRASES.get(value, '')}",
                           f"is photographed {_BACKGROUND_PHRASES.get(value, '')}"],
            "time": ["is at night", "is photographed at night"] if value == "night"
            else ["is during the day", "is in daylight"],
            "count": {"1": ["shows only one of them", "has a single vehicle"],
                      "2": ["shows two of them", "has two vehicles"],
                      "3": ["shows three of them", "has three vehicles"]}.get(value, []),
            "direction": [f"faces {value}", f"is facing {value}"],
            "view": ["is a close-up", "is seen up close"] if value == "close-up"
            else ["is seen from far away", "is shot from a distance"],
        }[attribute]
    else:
        noun = indefinite(type_noun(value)) if attribute == "type" else ""
        options = {
            "color": [f"make it {value}", f"change the color to {value}", f"{value} instead", f"paint it {value}"],
            "type": [f"same but {noun}", f"make it {noun}", f"turn it into {noun}", f"{noun} instead"],
            "background": [f"put it {_BACKGROUND_PHRASES.get(value, '')}", f"show it {_BACKGROUND_PHRASES.get(value, '')}",
                           f"{_BACKGROUND_PHRASES.get(value, '')} instead"],
            "time": ["at night", "make it night time", "show it at night"] if value == "night"
            else ["during the day", "make it daytime", "in daylight"],
            "count": {"1": ["only one vehicle", "show a single one"],
                      "2": ["show two of them", "two vehicles instead"],
                      "3": ["show three of them", "three vehicles instead"]}.get(value, []),
            "direction": [f"facing {value}", f"turn it to face {value}"],
            "view": ["closer view", "zoom in on it", "a close-up shot"] if value == "close-up"
            else ["from farther away", "zoom out", "show it from a distance"],
        }[attribute]
    options = [o for o in options if o and not o.endswith(" ")]
    if not options:
        raise ValueError(f"no phrase for scene attribute {attribute}={value!r}")
    return options[int(rng.integers(len(options)))]


def join_phrases(phrases: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]
