"""Demo traffic text-to-image challenge data, in the published layout (``docs/formats.md`` §1).

Writes ``train/``, ``val/`` (``img$attr$text`` labels, random 10-letter image names) and
``test/`` (``test_text.txt`` with vehicle queries first, ``vehicle_0000123.jpg`` /
``person_0000045.jpg`` gallery, plus the local ``test_ground_truth.txt``). Test images come in
groups that share one label text (one text, many images); every group's text is a query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from irkit.data.demo.common import (
    ATTRIBUTES_FILE,
    DatasetResult,
    derive_rng,
    random_letters,
    unique_names,
    weighted_choice,
    write_jsonl,
    write_lines,
)
from irkit.data.demo.config import DemoDifficulty, DemoScale
from irkit.data.demo.jobs import ImageJob, JobRunner
from irkit.data.demo.vocab import (
    flags_to_attr,
    person_sentence,
    person_spec_from_flags,
    sample_person_flags,
    sample_vehicle,
    vehicle_phrase,
    vehicle_vocab,
)

DATASET = "traffic"
PREFIXES = ("This is a ", "A ")
#: Sizes of the groups of test images sharing one text (weights).
#: Like the challenge's test set, one text usually describes several images.
_GROUP_SIZES = {3: 0.1, 4: 0.15, 5: 0.15, 6: 0.15, 7: 0.15, 8: 0.1, 10: 0.1, 12: 0.1}


def vehicle_label(vehicle: dict[str, str], rng: np.random.Generator, cfg: DemoDifficulty,
                  partial: bool, prefix: Optional[str] = None) -> dict[str, Any]:
    """Label fields of a vehicle: ``attr`` phrase, ``text`` sentence, which slots were kept.

    With ``partial`` the label may lack colour and/or type (``cfg.partial_label_prob``) or
    brand, and may name the type by a synonym; ``full_text`` always names all three.
    """
    vocab = vehicle_vocab()
    color: Optional[str] = vehicle["color"]
    brand: Optional[str] = vehicle["brand"]
    type_word: Optional[str] = vehicle["type"]
    if partial:
        if rng.random() < cfg.partial_label_prob:
            drop = weighted_choice(rng, {"color": 0.45, "type": 0.4, "both": 0.15})
            if drop in ("color", "both"):
                color = None
            if drop in ("type", "both"):
                type_word = None
        if rng.random() < cfg.missing_brand_prob and (color or type_word):
            brand = None
        synonyms = vocab.synonyms_of(vehicle["type"])
        if type_word and synonyms and rng.random() < cfg.type_synonym_prob:
            type_word = weighted_choice(rng, synonyms)
    prefix = prefix if prefix is not None else weighted_choice(rng, PREFIXES)
    phrase = vehicle_phrase(color, brand, type_word)
    attr = f"A {phrase}." if partial and rng.random() < cfg.attr_sentence_prob else phrase
    return {
        "attr": attr,
        "text": f"{prefix}{phrase}.",
        "full_text": f"{prefix}{vehicle_phrase(vehicle['color'], vehicle['brand'], vehicle['type'])}.",
        "label_has": {"color": color is not None, "brand": brand is not None, "type": type_word is not None},
    }


def _person_label(flags: dict[str, int]) -> dict[str, Any]:
    text = person_sentence(flags)
    return {"attr": flags_to_attr(flags), "text": text, "full_text": text}


def _item_row(kind: str, attrs: dict[str, Any], label: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Sidecar fields of one image (attributes as generated, before labelling)."""
    row: dict[str, Any] = {"kind": kind}
    if kind == "vehicle":
        row.update(color=attrs["color"], brand=attrs["brand"], type=attrs["type"],
                   label_has=label["label_has"])
    else:
        row.update(flags=attrs, upper_colour=spec["upper"]["colour"], lower_colour=spec["lower"]["colour"])
    row.update(label_attr=label["attr"], label_text=label["text"], full_text=label["full_text"])
    return row


def _labelled_split(root: Path, split: str, n_vehicles: int, n_persons: int, seed: int, rng: np.random.Generator,
                    cfg: DemoDifficulty, taken: set[str]) -> tuple[list[ImageJob], list[dict[str, Any]], list[str]]:
    """Jobs, sidecar rows and label lines of a train/val split (kinds shuffled together)."""
    kinds = ["vehicle"] * n_vehicles + ["person"] * n_persons
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    names = unique_names(rng, len(kinds), lambda r: random_letters(r) + ".jpg", taken)
    jobs, rows, lines = [], [], []
    for index, (kind, name) in enumerate(zip(kinds, names)):
        if kind == "vehicle":
            attrs: dict[str, Any] = sample_vehicle(rng)
            label = vehicle_label(attrs, rng, cfg, partial=True)
            spec = dict(attrs)
        else:
            attrs = sample_person_flags(rng)
            label = _person_label(attrs)
            spec = person_spec_from_flags(attrs, rng)
        relative = f"{split}/{split}_images/{name}"
        jobs.append(ImageJob(kind, spec, (seed, DATASET, split, index), str(root / relative)))
        rows.append({"split": split, "image": relative, **_item_row(kind, attrs, label, spec)})
        lines.append(f"{name}${label['attr']}${label['text']}")
    return jobs, rows, lines


def _test_groups(kind: str, n_images: int, rng: np.random.Generator, cfg: DemoDifficulty
                 ) -> list[tuple[dict[str, Any], dict[str, Any], int]]:
    """``(attributes, label, size)`` of test groups with distinct texts, ``n_images`` in all."""
    groups = []
    seen: set[str] = set()
    remaining = n_images
    while remaining > 0:
        if kind == "vehicle":
            attrs: dict[str, Any] = sample_vehicle(rng)
            key = vehicle_phrase(attrs["color"], attrs["brand"], attrs["type"])
        else:
            attrs = sample_person_flags(rng)
            key = flags_to_attr(attrs)
        if key in seen:
            continue
        seen.add(key)
        label = vehicle_label(attrs, rng, cfg, partial=False) if kind == "vehicle" else _person_label(attrs)
        size = min(remaining, int(weighted_choice(rng, {str(k): v for k, v in _GROUP_SIZES.items()})))
        groups.append((attrs, label, size))
        remaining -= size
    return groups


def _test_split(root: Path, scale: DemoScale, seed: int, rng: np.random.Generator, cfg: DemoDifficulty
                ) -> tuple[list[ImageJob], list[dict[str, Any]], list[str], list[str], dict[str, int]]:
    jobs: list[ImageJob] = []
    rows: list[dict[str, Any]] = []
    queries: list[str] = []
    truth_lines: list[str] = []
    query_counts = {}
    for kind, n_images in (("vehicle", scale.traffic_test_vehicles), ("person", scale.traffic_test_persons)):
        groups = _test_groups(kind, n_images, rng, cfg)
        numbers = iter(rng.permutation(n_images))
        query_counts[kind] = len(groups)
        for attrs, label, size in groups:
            names = sorted(f"{kind}_{int(next(numbers)):07d}.jpg" for _ in range(size))
            queries.append(label["text"])
            truth_lines.append("$".join([label["text"]] + names))
            for name in names:
                spec = dict(attrs) if kind == "vehicle" else person_spec_from_flags(attrs, rng)
                relative = f"test/test_images/{name}"
                jobs.append(ImageJob(kind, spec, (seed, DATASET, "test", len(jobs)), str(root / relative)))
                rows.append({"split": "test", "image": relative, **_item_row(kind, attrs, label, spec),
                             "query": label["text"]})
    counts = {"images": len(jobs), "queries": len(queries), "vehicle_queries": query_counts["vehicle"],
              "person_queries": query_counts["person"], "vehicles": scale.traffic_test_vehicles,
              "persons": scale.traffic_test_persons}
    return jobs, rows, queries, truth_lines, counts


def generate_traffic(root: Path, seed: int, scale: DemoScale, cfg: DemoDifficulty, runner: JobRunner
                     ) -> DatasetResult:
    """Write the demo traffic challenge dataset into ``root`` (a fresh folder)."""
    rng = derive_rng(seed, DATASET, "plan")
    taken: set[str] = set()
    all_rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    captions: dict[str, list[tuple[str, str]]] = {}
    for split, n_vehicles, n_persons in (("train", scale.traffic_train_vehicles, scale.traffic_train_persons),
                                         ("val", scale.traffic_val_vehicles, scale.traffic_val_persons)):
        jobs, rows, lines = _labelled_split(root, split, n_vehicles, n_persons, seed, rng, cfg, taken)
        sizes = runner.run(jobs, f"traffic/{split}")
        for row, (width, height) in zip(rows, sizes):
            row.update(width=width, height=height)
        write_lines(root / split / f"{split}_label.txt", lines)
        all_rows += rows
        counts[split] = {"images": len(jobs), "vehicles": n_vehicles, "persons": n_persons,
                         "partial_vehicle_labels": sum(
                             1 for r in rows if r["kind"] == "vehicle"
                             and not (r["label_has"]["color"] and r["label_has"]["type"]))}
        captions[f"traffic_{split}"] = [(r["image"], r["full_text"]) for r in rows]
    jobs, rows, queries, truth_lines, counts["test"] = _test_split(root, scale, seed, rng, cfg)
    sizes = runner.run(jobs, "traffic/test")
    for row, (width, height) in zip(rows, sizes):
        row.update(width=width, height=height)
    write_lines(root / "test" / "test_text.txt", queries)
    write_lines(root / "test" / "test_ground_truth.txt", truth_lines)
    all_rows += rows
    write_jsonl(root / ATTRIBUTES_FILE, all_rows)
    return DatasetResult(counts=counts, captions=captions)
