"""Demo GeneCIS data in the published layout (``docs/formats.md`` §7).

Worlds (all four task files written, each template a reference, a condition, a target and a
gallery of ``genecis_gallery`` distractors none of which satisfies the condition):

* Object tasks, over COCO-style vehicle scenes (``coco2017/val2017/<id:012d>.jpg``, the CIRR
  scene renderer). A scene holds two "objects": its vehicle type (``bus``) and its place
  (``parking lot``).
  - focus_object: the condition names one object of the reference; the target shares it and
    not the other one; distractors lack it (those sharing the other object come first).
  - change_object: the condition names a new vehicle type or place; the target has it plus the
    reference's other object; distractors have one of the two or neither.
* Attribute tasks, over Visual-Genome-style images of two vehicles each
  (``VG_100K_all/<image_id>.jpg``, each vehicle's ``instance_bbox`` recorded), so templates
  name object crops.
  - focus_attribute: condition ``color``; the target has the reference's colour and another
    type; distractors have other colours (same-type ones first).
  - change_attribute: the condition is a colour word; the target is the reference's type in
    that colour; distractors have the type or the colour but not both, or neither.

Gallery order is random; ``irkit_attributes.jsonl`` (per image / object) and
``irkit_queries.jsonl`` (per template: the rule it follows) are irkit-only sidecars.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from irkit.data.demo.common import (
    ATTRIBUTES_FILE,
    QUERIES_FILE,
    DatasetResult,
    derive_rng,
    write_json,
    write_jsonl,
)
from irkit.data.demo.config import DemoDifficulty, DemoScale
from irkit.data.demo.jobs import ImageJob, JobRunner
from irkit.data.demo.render import encode_image, render_vehicle_crop
from irkit.data.demo.vocab import sample_scene, sample_vehicle, scene_description, type_noun

DATASET = "genecis"
TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")
COCO_DIR = "coco2017/val2017"
VG_DIR = "VG_100K_all"
#: The two objects of a scene: attribute -> how its value is named in a condition.
SCENE_OBJECTS: dict[str, Callable[[str], str]] = {"type": type_noun, "background": str}
OBJECTS_PER_VG_IMAGE = 2


def _place_objects(rng: np.random.Generator, sizes: Sequence[tuple[int, int]]
                   ) -> tuple[tuple[int, int], list[tuple[int, int, int, int]]]:
    """Canvas ``(width, height)`` and one ``[x, y, w, h]`` box per crop size, side by side with margins."""
    x = int(rng.integers(8, 48))
    boxes = []
    tallest = max(h for _, h in sizes)
    for w, h in sizes:
        y = int(rng.integers(8, 40)) + int(rng.integers(0, tallest - h + 1))
        boxes.append((x, y, w, h))
        x += w + int(rng.integers(4, 40))
    width = x + int(rng.integers(8, 48))
    height = max(y + h for _, y, _, h in boxes) + int(rng.integers(8, 48))
    return (width, height), boxes


def _render_vg_image(seed: int, index: int, vehicles: Sequence[dict[str, str]], cfg: DemoDifficulty, path: Path
                     ) -> tuple[tuple[int, int], list[tuple[int, int, int, int]]]:
    """Render vehicle crops, paste them on a plain noisy backdrop, save a JPEG; returns size and boxes."""
    rng = derive_rng(seed, DATASET, "vg", index)
    crops = [render_vehicle_crop(v, derive_rng(seed, DATASET, "vg", index, j), cfg) for j, v in enumerate(vehicles)]
    size, boxes = _place_objects(rng, [c.size for c in crops])
    backdrop = np.asarray(rng.uniform(60, 200, 3), dtype=np.float32)
    pixels = backdrop + rng.normal(0.0, 10.0, (size[1], size[0], 3)).astype(np.float32)
    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    for crop, (x, y, _, _) in zip(crops, boxes):
        canvas.paste(crop, (x, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(canvas, rng, cfg, "jpg"))
    return size, boxes


def _pick(rng: np.random.Generator, pool: Sequence[int]) -> Optional[int]:
    return int(pool[int(rng.integers(len(pool)))]) if len(pool) else None


def _gallery(rng: np.random.Generator, hard: Sequence[int], easy: Sequence[int], size: int) -> Optional[list[int]]:
    """``size`` distractors: hard ones first (random order, at most half), the rest easy; shuffled."""
    hard = [int(i) for i in rng.permutation(np.asarray(hard, dtype=np.int64))][: size // 2]
    easy = [int(i) for i in rng.permutation(np.asarray(easy, dtype=np.int64))][: size - len(hard)]
    chosen = hard + easy
    if len(chosen) < size:
        return None
    return [chosen[int(i)] for i in rng.permutation(len(chosen))]


def _object_template(rng: np.random.Generator, task: str, scenes: Sequence[dict[str, str]], size: int
                     ) -> Optional[dict[str, Any]]:
    """One focus_object / change_object template over scene indices, or None (the caller retries)."""
    n = len(scenes)
    reference = int(rng.integers(n))
    name = list(SCENE_OBJECTS)[int(rng.integers(len(SCENE_OBJECTS)))]
    other = next(a for a in SCENE_OBJECTS if a != name)
    ref = scenes[reference]
    rest = [i for i in range(n) if i != reference]
    if task == "focus_object":
        target = _pick(rng, [i for i in rest if scenes[i][name] == ref[name] and scenes[i][other] != ref[other]])
        value = ref[name]
        has = [i for i in rest if i != target and scenes[i][name] != ref[name]]  # distractors lack it
        hard = [i for i in has if scenes[i][other] == ref[other]]
        easy = [i for i in has if scenes[i][other] != ref[other]]
    else:
        target = _pick(rng, [i for i in rest if scenes[i][name] != ref[name] and scenes[i][other] == ref[other]])
        if target is None:
            return None
        value = scenes[target][name]
        allowed = [i for i in rest if i != target and not (scenes[i][name] == value and scenes[i][other] == ref[other])]
        hard = [i for i in allowed if scenes[i][name] == value or scenes[i][other] == ref[other]]
        easy = [i for i in allowed if not (scenes[i][name] == value or scenes[i][other] == ref[other])]
    if target is None:
        return None
    gallery = _gallery(rng, hard, easy, size)
    if gallery is None:
        return None
    return {"reference": reference, "target": target, "gallery": gallery,
            "condition": SCENE_OBJECTS[name](value), "object": name, "value": value}


def _attribute_template(rng: np.random.Generator, task: str, objects: Sequence[dict[str, Any]], size: int
                        ) -> Optional[dict[str, Any]]:
    """One focus_attribute / change_attribute template over object indices, or None (retry)."""
    n = len(objects)
    reference = int(rng.integers(n))
    ref = objects[reference]
    rest = [i for i in range(n) if objects[i]["image"] != ref["image"]]
    if task == "focus_attribute":
        target = _pick(rng, [i for i in rest
                             if objects[i]["color"] == ref["color"] and objects[i]["type"] != ref["type"]])
        condition = "color"
        allowed = [i for i in rest if i != target and objects[i]["color"] != ref["color"]]
        hard = [i for i in allowed if objects[i]["type"] == ref["type"]]
    else:
        target = _pick(rng, [i for i in rest
                             if objects[i]["type"] == ref["type"] and objects[i]["color"] != ref["color"]])
        if target is None:
            return None
        condition = objects[target]["color"]
        allowed = [i for i in rest if i != target
                   and not (objects[i]["type"] == ref["type"] and objects[i]["color"] == condition)]
        hard = [i for i in allowed if objects[i]["type"] == ref["type"] or objects[i]["color"] == condition]
    if target is None:
        return None
    hard_set = set(hard)
    easy = [i for i in allowed if i not in hard_set]
    gallery = _gallery(rng, hard, easy, size)
    if gallery is None:
        return None
    return {"reference": reference, "target": target, "gallery": gallery, "condition": condition}


def _templates(rng: np.random.Generator, task: str, count: int, make: Callable[..., Optional[dict[str, Any]]],
               items: Sequence[Any], size: int) -> list[dict[str, Any]]:
    templates: list[dict[str, Any]] = []
    attempts = 0
    while len(templates) < count:
        attempts += 1
        if attempts > 200 * (count + 10):
            raise RuntimeError(f"GeneCIS demo: could not build {count} {task} templates from {len(items)} items")
        template = make(rng, task, items, size)
        if template is not None:
            templates.append(template)
    return templates


def generate_genecis(root: Path, seed: int, scale: DemoScale, cfg: DemoDifficulty, runner: JobRunner
                     ) -> DatasetResult:
    """Write the demo GeneCIS dataset (all four tasks) into ``root`` (a fresh folder)."""
    rng = derive_rng(seed, DATASET, "plan")
    size = scale.genecis_gallery

    # object tasks: COCO-style scenes
    scenes = [sample_scene(rng) for _ in range(scale.genecis_coco_images)]
    coco_ids = [int(i) for i in rng.choice(np.arange(1, 582_000), size=len(scenes), replace=False)]
    jobs = [ImageJob("scene", dict(scene), (seed, DATASET, "coco", k), str(root / COCO_DIR / f"{coco_ids[k]:012d}.jpg"))
            for k, scene in enumerate(scenes)]
    coco_sizes = runner.run(jobs, "genecis")

    # attribute tasks: VG-style images of two vehicles each
    vg_ids = [int(i) for i in rng.choice(np.arange(1, 2_420_000), size=scale.genecis_vg_images, replace=False)]
    objects: list[dict[str, Any]] = []
    vg_rows: list[dict[str, Any]] = []
    for k, image_id in enumerate(vg_ids):
        vehicles = [sample_vehicle(rng) for _ in range(OBJECTS_PER_VG_IMAGE)]
        (width, height), boxes = _render_vg_image(seed, k, vehicles, cfg, root / VG_DIR / f"{image_id}.jpg")
        for vehicle, box in zip(vehicles, boxes):
            objects.append({"image": image_id, "bbox": list(box), **vehicle})
        vg_rows.append({"source": "vg", "image_id": image_id, "width": width, "height": height,
                        "objects": [{"instance_bbox": list(b), **v} for v, b in zip(vehicles, boxes)]})

    def scene_ref(i: int) -> dict[str, int]:
        return {"val_image_id": coco_ids[i]}

    def object_ref(i: int) -> dict[str, Any]:
        return {"image_id": objects[i]["image"], "instance_bbox": list(objects[i]["bbox"])}

    query_rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {"images": {"coco": len(scenes), "vg": len(vg_ids), "vg_objects": len(objects)}}
    for task in TASKS:
        attribute = task.endswith("_attribute")
        make = _attribute_template if attribute else _object_template
        items: Sequence[Any] = objects if attribute else scenes
        ref = object_ref if attribute else scene_ref
        planned = _templates(rng, task, scale.genecis_templates, make, items, size)
        entries = [{"condition": t["condition"], "gallery": [ref(i) for i in t["gallery"]],
                    "reference": ref(t["reference"]), "target": ref(t["target"])} for t in planned]
        write_json(root / "genecis" / f"{task}.json", entries, indent=4)
        for index, (t, entry) in enumerate(zip(planned, entries)):
            query_rows.append({"task": task, "index": index, "condition": t["condition"],
                               "reference": entry["reference"], "target": entry["target"],
                               "rule": {"object": t["object"], "value": t["value"]} if not attribute
                               else {"attribute": "color"}})
        counts[task] = {"templates": len(entries), "gallery": size}

    rows = [{"source": "coco", "val_image_id": image_id, **scene, "description": scene_description(scene),
             "width": w, "height": h} for image_id, scene, (w, h) in zip(coco_ids, scenes, coco_sizes)]
    write_jsonl(root / ATTRIBUTES_FILE, rows + vg_rows)
    write_jsonl(root / QUERIES_FILE, query_rows)
    return DatasetResult(counts=counts)
