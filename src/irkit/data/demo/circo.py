"""Demo CIRCO data in the published layout (``docs/formats.md`` §4).

World: the vehicle scenes of the CIRR demo. The gallery (shared by val and test, as in
CIRCO) holds prototypes repeated 1-4 times with different renderings, so a query can have
several ground truths. A query fixes the target's values of a set of attributes: the
``shared_concept`` (the vehicle type, or ``a vehicle``) plus the attributes its
``relative_caption`` names; the reference shares the concept and differs in every named
attribute. ``gt_img_ids`` = the target first, then every other gallery image with those
values (recomputable from ``irkit_attributes.jsonl`` + ``irkit_queries.jsonl``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from irkit.data.demo.common import (
    ATTRIBUTES_FILE,
    QUERIES_FILE,
    DatasetResult,
    derive_rng,
    weighted_choice,
    write_json,
    write_jsonl,
)
from irkit.data.demo.config import DemoDifficulty, DemoScale
from irkit.data.demo.jobs import ImageJob, JobRunner
from irkit.data.demo.vocab import (
    indefinite,
    join_phrases,
    modification_phrase,
    sample_scene,
    scene_attribute_values,
    scene_description,
    type_noun,
)

DATASET = "circo"
SPLITS = ("val", "test")
GALLERY_DIR = "COCO2017_unlabeled/unlabeled2017"
IMAGE_INFO = "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"
#: How many renderings of one prototype the gallery holds (weights).
_COPIES = {"1": 0.45, "2": 0.25, "3": 0.18, "4": 0.12}
#: The CIRCO semantic aspect that a change of each attribute stands for.
SEMANTIC_ASPECTS = {"color": "direct_addressing", "type": "compare_change", "background": "spatial_relations_background",
                    "time": "compare_change", "count": "cardinality", "direction": "viewpoint", "view": "viewpoint"}
VEHICLE_CONCEPT = "a vehicle"


def concept_of(vehicle_type: Optional[str]) -> str:
    """``shared_concept`` text: ``a sedan`` for a type, ``a vehicle`` for none."""
    return VEHICLE_CONCEPT if vehicle_type is None else indefinite(type_noun(vehicle_type))


class _Gallery:
    """Gallery attributes as an integer matrix (rows: images, columns: attributes) for fast matching."""

    def __init__(self, items: Sequence[dict[str, str]], names: Sequence[str]) -> None:
        self.items = items
        self.columns = {name: c for c, name in enumerate(names)}
        codes: dict[str, dict[str, int]] = {name: {} for name in names}
        self.matrix = np.asarray([[codes[n].setdefault(item[n], len(codes[n])) for n in names] for item in items],
                                 dtype=np.int32)

    def match(self, target: int, attributes: Sequence[str]) -> np.ndarray:
        """Indices of images equal to image ``target`` on every attribute in ``attributes``."""
        cols = [self.columns[a] for a in attributes]
        return np.flatnonzero(np.all(self.matrix[:, cols] == self.matrix[target, cols], axis=1))

    def differ_all(self, target: int, attributes: Sequence[str]) -> np.ndarray:
        """Boolean mask of images differing from ``target`` on every attribute in ``attributes``."""
        cols = [self.columns[a] for a in attributes]
        return np.all(self.matrix[:, cols] != self.matrix[target, cols], axis=1)


def _plan_query(rng: np.random.Generator, gallery: _Gallery, names: list[str], max_gt: int,
                target_pool: Sequence[int], single: bool) -> Optional[dict[str, Any]]:
    """One query, or None when this draw finds no valid reference (the caller retries)."""
    target = int(target_pool[int(rng.integers(len(target_pool)))])
    item = gallery.items[target]
    by_type = bool(rng.random() < 0.75)  # concept = the type; else "a vehicle" and the caption names the type
    mentioned: list[str] = [] if by_type else ["type"]
    cap = 1 if single else max_gt
    want = int(rng.integers(1, 3))
    remaining = [names[int(i)] for i in rng.permutation(len(names)) if names[int(i)] != "type"]
    while remaining:
        count = len(gallery.match(target, ["type"] + mentioned))
        if len(mentioned) >= want and count <= cap:
            break
        if count > cap and rng.random() < 0.7:  # usually the most discriminative attribute: short captions
            sizes = [len(gallery.match(target, ["type"] + mentioned + [a])) for a in remaining]
            name = remaining[int(np.argmin(sizes))]
        else:
            name = remaining[0]
        remaining.remove(name)
        mentioned.append(name)
    constrained = ["type"] + [a for a in mentioned if a != "type"]
    ground_truth = [int(k) for k in gallery.match(target, constrained)]
    if len(ground_truth) > cap:
        return None
    same_type = gallery.matrix[:, gallery.columns["type"]] == gallery.matrix[target, gallery.columns["type"]]
    candidates = gallery.differ_all(target, mentioned) & (same_type if by_type else ~same_type)
    references = np.flatnonzero(candidates)
    if len(references) == 0:
        return None
    reference = int(references[int(rng.integers(len(references)))])
    ordered = [target] + [k for k in ground_truth if k != target]
    return {"reference": reference, "target": target, "mentioned": mentioned,
            "constraints": {a: item[a] for a in constrained}, "ground_truth": ordered,
            "concept": concept_of(item["type"] if by_type else None)}


def generate_circo(root: Path, seed: int, scale: DemoScale, cfg: DemoDifficulty, runner: JobRunner
                   ) -> DatasetResult:
    """Write the demo CIRCO dataset into ``root`` (a fresh folder)."""
    rng = derive_rng(seed, DATASET, "plan")
    names = list(scene_attribute_values())
    gallery: list[dict[str, str]] = []
    while len(gallery) < scale.circo_gallery:
        prototype = sample_scene(rng)
        copies = int(weighted_choice(rng, _COPIES))
        gallery += [dict(prototype) for _ in range(min(copies, scale.circo_gallery - len(gallery)))]
    gallery = [gallery[int(i)] for i in rng.permutation(len(gallery))]
    ids = [int(i) for i in rng.choice(np.arange(1, 600_000), size=len(gallery), replace=False)]
    file_names = [f"{image_id:012d}.jpg" for image_id in ids]
    jobs = [ImageJob("scene", dict(item), (seed, DATASET, "gallery", k), str(root / GALLERY_DIR / file_names[k]))
            for k, item in enumerate(gallery)]

    table = _Gallery(gallery, names)
    keys = [tuple(item[n] for n in names) for item in gallery]
    copies_of = Counter(keys)
    repeated = [k for k, key in enumerate(keys) if copies_of[key] > 1]
    unique = [k for k, key in enumerate(keys) if copies_of[key] == 1]
    annotations: dict[str, list[dict[str, Any]]] = {}
    query_rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {"gallery": {"images": len(gallery)}}
    for split in SPLITS:
        entries: list[dict[str, Any]] = []
        attempts = 0
        while len(entries) < scale.circo_queries[split]:
            attempts += 1
            if attempts > 1000 * (scale.circo_queries[split] + 10):
                raise RuntimeError("CIRCO demo: could not build enough valid queries for this gallery")
            index = len(entries)
            # the first query of a split has several ground truths, the second exactly one
            single = (index == 1 or rng.random() < 0.12) and bool(unique)
            pool = repeated if index == 0 and repeated else (unique if single else range(len(gallery)))
            plan = _plan_query(rng, table, names, scale.circo_max_ground_truths, pool, single)
            if plan is None:
                continue
            changed = plan["mentioned"]
            order = [changed[int(i)] for i in rng.permutation(len(changed))]
            caption = join_phrases([modification_phrase(a, gallery[plan["target"]][a], rng, "circo") for a in order])
            aspects = list(dict.fromkeys(SEMANTIC_ASPECTS[a] for a in order))
            if len(order) > 1:
                aspects.append("statement_with_conjunction")
            gt_ids = [ids[k] for k in plan["ground_truth"]]
            if split == "val":
                entries.append({"reference_img_id": ids[plan["reference"]], "target_img_id": ids[plan["target"]],
                                "relative_caption": caption, "shared_concept": plan["concept"], "gt_img_ids": gt_ids,
                                "id": index, "semantic_aspects": aspects})
            else:
                entries.append({"reference_img_id": ids[plan["reference"]], "relative_caption": caption,
                                "shared_concept": plan["concept"], "id": index})
            query_rows.append({"split": split, "id": index, "reference_img_id": ids[plan["reference"]],
                               "target_img_id": ids[plan["target"]], "constraints": plan["constraints"],
                               "mentioned": order, "gt_img_ids": gt_ids})
        annotations[split] = entries
        counts[split] = {"queries": len(entries)}
        if split == "val":
            counts[split]["ground_truths"] = sum(len(e["gt_img_ids"]) for e in entries)

    sizes = runner.run(jobs, "circo")
    write_json(root / "annotations" / "val.json", annotations["val"], indent=4)
    write_json(root / "annotations" / "test.json", annotations["test"], indent=4)
    write_json(root / IMAGE_INFO, {"images": [{"id": image_id, "file_name": file_name, "width": w, "height": h}
                                              for image_id, file_name, (w, h) in zip(ids, file_names, sizes)]})
    rows = [{"id": image_id, "file_name": file_name, **item, "description": scene_description(item),
             "width": w, "height": h} for image_id, file_name, item, (w, h) in zip(ids, file_names, gallery, sizes)]
    write_jsonl(root / ATTRIBUTES_FILE, rows)
    write_jsonl(root / QUERIES_FILE, query_rows)
    captions = {"circo_gallery": [(f"{GALLERY_DIR}/{row['file_name']}", row["description"]) for row in rows]}
    return DatasetResult(counts=counts, captions=captions)
