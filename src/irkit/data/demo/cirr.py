"""Demo CIRR data in the published layout (``docs/formats.md`` §3).

World: vehicle scenes (type, colour, background, time of day, count, direction, view). Each
``img_set`` is a family of 6 scenes (a base and variants 1-2 attributes away, all distinct
within the split); queries pair two members that differ in 1-2 attributes and the caption
names the target's values (``"make it blue and show it at night"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from irkit.data.demo.common import (
    ATTRIBUTES_FILE,
    QUERIES_FILE,
    DatasetResult,
    derive_rng,
    unique_names,
    write_json,
    write_jsonl,
)
from irkit.data.demo.config import DemoDifficulty, DemoScale
from irkit.data.demo.families import close_pairs, differing, make_families
from irkit.data.demo.jobs import ImageJob, JobRunner
from irkit.data.demo.vocab import (
    join_phrases,
    modification_phrase,
    sample_scene,
    scene_attribute_values,
    scene_description,
)

DATASET = "cirr"
#: (annotation split, image folder / name prefix)
SPLITS = (("train", "train"), ("val", "dev"), ("test1", "test1"))
SET_SIZE = 6


def scene_caption(reference: dict[str, str], target: dict[str, str], names: list[str],
                  rng: np.random.Generator, style: str) -> str:
    """Relative caption naming the target's value of every attribute that differs."""
    changed = differing(reference, target, names)
    changed = [changed[int(i)] for i in rng.permutation(len(changed))]
    return join_phrases([modification_phrase(a, target[a], rng, style) for a in changed])


def generate_cirr(root: Path, seed: int, scale: DemoScale, cfg: DemoDifficulty, runner: JobRunner
                  ) -> DatasetResult:
    """Write the demo CIRR dataset into ``root`` (a fresh folder)."""
    rng = derive_rng(seed, DATASET, "plan")
    values = scene_attribute_values()
    attribute_names = list(values)
    taken: set[str] = set()
    pairid = int(rng.integers(10_000, 13_000))
    jobs: list[ImageJob] = []
    image_rows: list[dict[str, Any]] = []
    query_rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    annotation_files: list[tuple[Path, Any]] = []
    for split, folder in SPLITS:
        families = make_families(rng, SET_SIZE * scale.cirr_sets[split], sample_scene, values, (SET_SIZE, SET_SIZE),
                                 require_unique=True)
        entries: list[dict[str, Any]] = []
        split_paths: dict[str, str] = {}
        for set_id, family in enumerate(families):
            names = unique_names(
                rng, SET_SIZE,
                lambda r: f"{folder}-{int(r.integers(0, 20_000))}-{int(r.integers(0, 4))}-img{int(r.integers(0, 2))}",
                taken)
            ranks = [int(r) for r in rng.permutation(SET_SIZE)]       # hidden order of the set
            members = [names[int(k)] for k in rng.permutation(SET_SIZE)]  # listing order
            for name, item in zip(names, family):
                relative = (f"train/{set_id % scale.cirr_train_buckets}/{name}.png" if split == "train"
                            else f"{folder}/{name}.png")
                split_paths[name] = f"./{relative}"
                jobs.append(ImageJob("scene", dict(item), (seed, DATASET, split, len(jobs)), str(root / relative), "png"))
                image_rows.append({"image": name, "split": split, "path": relative, "img_set": set_id, **item,
                                   "description": scene_description(item)})
            pairs = close_pairs(family, attribute_names)
            for pair_index in rng.permutation(len(pairs))[: scale.cirr_queries_per_set]:
                i, j = pairs[int(pair_index)]
                caption = scene_caption(family[i], family[j], attribute_names, rng, "cirr")
                pairid += 1 + int(rng.integers(0, 3))
                img_set: dict[str, Any] = {"id": set_id, "members": members, "reference_rank": ranks[i]}
                if split == "test1":
                    entry: dict[str, Any] = {"pairid": pairid, "reference": names[i], "caption": caption,
                                             "img_set": img_set}
                else:
                    img_set["target_rank"] = ranks[j]
                    entry = {"pairid": pairid, "reference": names[i], "target_hard": names[j],
                             "target_soft": {names[j]: 1.0}, "caption": caption, "img_set": img_set}
                entries.append(entry)
                query_rows.append({"split": split, "pairid": pairid, "reference": names[i], "target": names[j],
                                   "changed": {a: family[j][a] for a in differing(family[i], family[j], attribute_names)}})
        annotation_files.append((root / "cirr" / "captions" / f"cap.rc2.{split}.json", entries))
        annotation_files.append((root / "cirr" / "image_splits" / f"split.rc2.{split}.json", split_paths))
        counts[split] = {"images": len(split_paths), "queries": len(entries), "sets": len(families)}
    sizes = runner.run(jobs, "cirr")
    for row, (width, height) in zip(image_rows, sizes):
        row.update(width=width, height=height)
    for path, obj in annotation_files:
        write_json(path, obj)
    write_jsonl(root / ATTRIBUTES_FILE, image_rows)
    write_jsonl(root / QUERIES_FILE, query_rows)
    captions = {f"cirr_{split}": [(row["path"], row["description"]) for row in image_rows if row["split"] == split]
                for split in ("train", "val")}
    return DatasetResult(counts=counts, captions=captions)
