"""Demo FashionIQ data in the published layout (``docs/formats.md`` §2).

World: product-style photos of a model wearing one garment; the category (dress, shirt,
toptee) chooses the garment style and its attributes (colour, sleeves, pattern, length/fit/
neckline, hat, bag). Each triplet's candidate (reference) and target differ in 1-2 attributes;
its two captions name the changes (``["is red", "has long sleeves"]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from irkit.data.demo.common import (
    ATTRIBUTES_FILE,
    QUERIES_FILE,
    DatasetResult,
    derive_rng,
    random_asin,
    unique_names,
    weighted_choice,
    write_json,
    write_jsonl,
)
from irkit.data.demo.config import DemoDifficulty, DemoScale
from irkit.data.demo.families import close_pairs, differing, make_families
from irkit.data.demo.jobs import ImageJob, JobRunner
from irkit.data.demo.vocab import indefinite

DATASET = "fashioniq"
CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
FASHION_COLOURS = ("black", "white", "grey", "red", "pink", "orange", "yellow", "green", "blue", "navy",
                   "purple", "beige", "brown", "khaki")
_YES_NO = ("no", "yes")
#: Attribute -> values, per category.
CATEGORY_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "dress": {"color": FASHION_COLOURS, "sleeves": ("sleeveless", "short", "long"),
              "length": ("mini", "knee", "maxi"), "pattern": ("solid", "striped", "dotted", "floral"), "hat": _YES_NO,
              "bag": _YES_NO},
    "shirt": {"color": FASHION_COLOURS, "sleeves": ("short", "long"),
              "pattern": ("solid", "striped", "checked", "dotted"), "fit": ("slim", "loose"), "hat": _YES_NO,
              "bag": _YES_NO},
    "toptee": {"color": FASHION_COLOURS, "sleeves": ("sleeveless", "short", "long"),
               "pattern": ("solid", "striped", "graphic"), "neckline": ("round", "v"), "hat": _YES_NO, "bag": _YES_NO},
}
_DARK = {"black", "navy", "purple", "green", "blue", "red", "grey", "brown"}
_SLEEVE_WORDS = {"sleeveless": "sleeveless", "short": "short-sleeved", "long": "long-sleeved"}
_PATTERN_WORDS = {"solid": "", "striped": "striped ", "dotted": "polka-dot ", "floral": "floral ",
                  "checked": "checked ", "graphic": ""}
_LENGTH_ORDER = ("mini", "knee", "maxi")
_LENGTH_WORDS = {"mini": "mini", "knee": "knee-length", "maxi": "maxi"}


def _sample_garment(category: str) -> Any:
    values = CATEGORY_VALUES[category]

    def sample(rng: np.random.Generator) -> dict[str, str]:
        item = {name: weighted_choice(rng, options) for name, options in values.items()}
        item["hat"] = "yes" if rng.random() < 0.3 else "no"
        item["bag"] = "yes" if rng.random() < 0.3 else "no"
        if rng.random() < 0.4:
            item["pattern"] = "solid"
        return item

    return sample


def garment_description(category: str, item: Mapping[str, str]) -> str:
    """Full caption, e.g. ``a red striped long-sleeved maxi dress, worn with a hat``."""
    colour, pattern = item["color"], _PATTERN_WORDS[item["pattern"]]
    sleeves = _SLEEVE_WORDS[item["sleeves"]]
    if category == "dress":
        text = f"{colour} {pattern}{sleeves} {_LENGTH_WORDS[item['length']]} dress"
    elif category == "shirt":
        text = f"{colour} {pattern}{sleeves} {item['fit']}-fit shirt"
    else:
        neck = "v-neck" if item["neckline"] == "v" else "crew-neck"
        text = f"{colour} {pattern}{sleeves} {neck} top"
        if item["pattern"] == "graphic":
            text += " with a graphic print"
    worn = [w for w, key in (("a hat", "hat"), ("a handbag", "bag")) if item[key] == "yes"]
    return indefinite(text) + (", worn with " + " and ".join(worn) if worn else "")


def garment_spec(category: str, item: Mapping[str, str], rng: np.random.Generator) -> dict[str, Any]:
    """The person renderer's description of a model wearing ``item``."""
    colour = item["color"]
    accent = "white" if colour in _DARK else weighted_choice(rng, ("black", "navy", "red"))
    upper = {"style": {"dress": "dress", "shirt": "shirt", "toptee": "top"}[category],
             "sleeves": {"sleeveless": "none"}.get(item["sleeves"], item["sleeves"]), "colour": colour,
             "pattern": item["pattern"], "pattern_colour": accent, "fit": item.get("fit", "regular"),
             "neckline": item.get("neckline", "round"), "collar": category == "shirt"}
    female = category == "dress" or bool(rng.random() < 0.5)
    if category == "dress":
        lower = {"style": "none", "colour": colour, "length": item["length"]}
    else:
        lower = {"style": "skirt" if female and rng.random() < 0.3 else "trousers",
                 "colour": weighted_choice(rng, ("black", "navy", "grey", "beige", "blue", "khaki")), "length": "knee"}
    return {"female": female, "age": "adult", "facing": "front", "hat": item["hat"] == "yes", "glasses": False,
            "backpack": False, "handbag": item["bag"] == "yes", "upper": upper, "lower": lower}


def change_phrase(attribute: str, old: str, new: str, rng: np.random.Generator) -> str:
    """A caption asking to go from ``old`` to ``new`` in ``attribute``."""
    if attribute == "color":
        options = [f"is {new}", f"make it {new}", f"is {new} in color", f"change the color to {new}", f"{new} instead"]
    elif attribute == "sleeves":
        options = {"sleeveless": ["is sleeveless", "has no sleeves", "remove the sleeves"],
                   "short": ["has short sleeves", "is short-sleeved", "shorter sleeves"],
                   "long": ["has long sleeves", "is long-sleeved", "add long sleeves"]}[new]
    elif attribute == "length":
        longer = _LENGTH_ORDER.index(new) > _LENGTH_ORDER.index(old)
        options = ["is longer", "make it longer"] if longer else ["is shorter", "make it shorter"]
        options.append(f"is {indefinite(_LENGTH_WORDS[new])} dress")
    elif attribute == "pattern":
        options = {"solid": ["is plain", "is a solid color", "has no pattern"],
                   "striped": ["has stripes", "is striped"], "dotted": ["has polka dots", "is dotted"],
                   "floral": ["has a floral print", "is floral"], "checked": ["is checked", "has a plaid pattern"],
                   "graphic": ["has a graphic print", "has a logo on the front"]}[new]
    elif attribute == "fit":
        options = ["is more fitted", "is slim fit"] if new == "slim" else ["is looser", "is a loose fit"]
    elif attribute == "neckline":
        options = ["has a v-neck", "has a v neckline"] if new == "v" else ["has a round neck", "has a crew neck"]
    elif attribute == "hat":
        options = ["same but with a hat", "add a hat", "the model wears a hat"] if new == "yes" \
            else ["without the hat", "remove the hat", "no hat"]
    elif attribute == "bag":
        options = ["add a handbag", "same but with a bag", "the model carries a bag"] if new == "yes" \
            else ["without the bag", "remove the bag", "no bag"]
    else:  # pragma: no cover - CATEGORY_VALUES is closed
        raise ValueError(f"unknown FashionIQ attribute {attribute!r}")
    return options[int(rng.integers(len(options)))]


def _kept_phrase(attribute: str, value: str, rng: np.random.Generator) -> str:
    """A second caption restating an attribute that did not change."""
    if attribute == "color":
        options = [f"is also {value}", "same color"]
    elif attribute == "sleeves":
        options = ["same sleeves", f"still {_SLEEVE_WORDS[value]}"]
    elif attribute == "pattern":
        options = ["same pattern"] + ([f"is also {_PATTERN_WORDS[value].strip()}"] if _PATTERN_WORDS[value] else [])
    elif attribute in ("hat", "bag"):
        noun = "a hat" if attribute == "hat" else "a bag"
        options = [f"still with {noun}"] if value == "yes" else [f"no {noun[2:]} either"]
    else:  # length, fit, neckline
        options = [f"same {attribute}"]
    return options[int(rng.integers(len(options)))]


def triplet_captions(candidate: Mapping[str, str], target: Mapping[str, str], names: list[str],
                     rng: np.random.Generator) -> list[str]:
    """Two captions: one per changed attribute, or the change plus a paraphrase/kept fact."""
    changed = differing(candidate, target, names)
    captions = [change_phrase(a, candidate[a], target[a], rng) for a in changed]
    if len(captions) == 1:
        if rng.random() < 0.5:
            kept = [a for a in names if a not in changed]
            attribute = kept[int(rng.integers(len(kept)))]
            captions.append(_kept_phrase(attribute, target[attribute], rng))
        else:
            for _ in range(10):
                second = change_phrase(changed[0], candidate[changed[0]], target[changed[0]], rng)
                if second != captions[0]:
                    break
            captions.append(second)
    order = rng.permutation(2)
    return [captions[int(i)] for i in order]


def generate_fashioniq(root: Path, seed: int, scale: DemoScale, cfg: DemoDifficulty, runner: JobRunner
                       ) -> DatasetResult:
    """Write the demo FashionIQ dataset into ``root`` (a fresh folder)."""
    rng = derive_rng(seed, DATASET, "plan")
    taken: set[str] = set()
    jobs: list[ImageJob] = []
    image_rows: list[dict[str, Any]] = []
    query_rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    annotation_files: list[tuple[Path, Any]] = []
    for split in SPLITS:
        counts[split] = {"images": 0, "queries": 0}
        for category in CATEGORIES:
            values = CATEGORY_VALUES[category]
            names = list(values)
            families = make_families(rng, scale.fashioniq_images[split], _sample_garment(category), values, (3, 6))
            asins = unique_names(rng, sum(len(f) for f in families), random_asin, taken)
            asin_iter = iter(asins)
            family_asins: list[list[str]] = []
            for family in families:
                family_asins.append([])
                for item in family:
                    asin = next(asin_iter)
                    family_asins[-1].append(asin)
                    spec = garment_spec(category, item, rng)
                    jobs.append(ImageJob("garment", spec, (seed, DATASET, split, len(jobs)),
                                         str(root / "images" / f"{asin}.jpg")))
                    image_rows.append({"image": asin, "path": f"images/{asin}.jpg", "category": category,
                                       "split": split, **item, "description": garment_description(category, item)})
            gallery = [asin for family in family_asins for asin in family]
            gallery = [gallery[int(i)] for i in rng.permutation(len(gallery))]
            pairs = [(f, i, j) for f, family in enumerate(families) for i, j in close_pairs(family, names)]
            pair_order = rng.permutation(len(pairs))  # distinct pairs first, repeats only if too few
            entries = []
            for number in range(scale.fashioniq_queries[split]):
                f, i, j = pairs[int(pair_order[number % len(pairs)])]
                candidate, target = families[f][i], families[f][j]
                captions = triplet_captions(candidate, target, names, rng)
                entry: dict[str, Any] = {"target": family_asins[f][j], "candidate": family_asins[f][i],
                                         "captions": captions}
                if split == "test":
                    del entry["target"]
                entries.append(entry)
                query_rows.append({"category": category, "split": split, "index": number,
                                   "candidate": family_asins[f][i], "target": family_asins[f][j],
                                   "changed": {a: target[a] for a in differing(candidate, target, names)}})
            annotation_files.append((root / "captions" / f"cap.{category}.{split}.json", entries))
            annotation_files.append((root / "image_splits" / f"split.{category}.{split}.json", gallery))
            counts[split]["images"] += len(gallery)
            counts[split]["queries"] += len(entries)
            counts[split][f"{category}_images"] = len(gallery)
            counts[split][f"{category}_queries"] = len(entries)
    sizes = runner.run(jobs, "fashioniq")
    for row, (width, height) in zip(image_rows, sizes):
        row.update(width=width, height=height)
    for path, obj in annotation_files:
        write_json(path, obj, indent=4)
    write_jsonl(root / ATTRIBUTES_FILE, image_rows)
    write_jsonl(root / QUERIES_FILE, query_rows)
    captions = {f"fashioniq_{split}": [(row["path"], row["description"]) for row in image_rows if row["split"] == split]
                for split in ("train", "val")}
    return DatasetResult(counts=counts, captions=captions)
