"""GeneCIS: loader (real object-task files read unchanged), per-template ranking with ties
against the target, object crops of the attribute tasks, prediction files through ``irkit eval``,
bad inputs, and the demo data.

Expected values are computed here independently of the spec: a template's target rank is
``1 + #(other candidates scoring >= the target)``, so a tie counts against the target.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from irkit import metrics
from irkit.benchmarks import get_benchmark
from irkit.benchmarks.genecis import read_genecis_predictions
from irkit.cli import main as cli_main
from irkit.data import load_dataset
from irkit.data.genecis import crop_box, crop_cache_key, crop_object, load_genecis
from irkit.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
REAL_ROOT = REPO.parent / "shared" / "benchmarks" / "genecis"  # the real annotations (conftest's location)
OBJECT_TASKS = ("focus_object", "change_object")
ATTRIBUTE_TASKS = ("focus_attribute", "change_attribute")
SPEC = get_benchmark("genecis")


# --------------------------------------------------------------------------- helpers


def _irkit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "irkit", *args], capture_output=True, text=True, timeout=300, env=env)


def _one_error_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout[-1000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("irkit: error:"), done.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def _write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    return path


def _target_ranks(templates: list[dict], embedding: dict[str, np.ndarray], queries: np.ndarray, key) -> np.ndarray:
    """Independent: 1 + number of OTHER candidates (gallery entries, a target copy included)
    whose score is >= the target's; scores as float64 element-wise products summed."""
    ranks = []
    for row, template in enumerate(templates):
        q = queries[row].astype(np.float64)
        score = lambda image: float(np.sum(embedding[key(image)].astype(np.float64) * q))  # noqa: E731
        target = score(template["target"])
        ranks.append(1 + sum(score(g) >= target for g in template["gallery"]))
    return np.asarray(ranks)


def _recalls(ranks: np.ndarray) -> dict[str, float]:
    return {f"R@{k}": 100.0 * float(np.mean(ranks <= k)) for k in (1, 2, 3)}


def _coco_key(image: dict) -> str:
    return str(image["val_image_id"])


# --------------------------------------------------------------------------- real object-task files


@pytest.fixture(scope="module")
def real_root() -> Path:
    if not (REAL_ROOT / "genecis").is_dir():
        pytest.skip(f"real GeneCIS annotations not found at {REAL_ROOT} (shared benchmark folder absent)")
    return REAL_ROOT


@pytest.fixture(scope="module")
def real_templates(real_root: Path) -> dict[str, list[dict]]:
    return {task: json.loads((real_root / "genecis" / f"{task}.json").read_text("utf-8")) for task in OBJECT_TASKS}


@pytest.fixture(scope="module")
def stand_in_coco(real_templates: dict[str, list[dict]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny solid-colour JPEG for every val image id the two object tasks name."""
    folder = tmp_path_factory.mktemp("coco") / "coco2017" / "val2017"
    folder.mkdir(parents=True)
    ids = {_coco_key(image) for templates in real_templates.values() for t in templates
           for image in (t["reference"], t["target"], *t["gallery"])}
    for image_id in ids:
        colour = tuple(int(image_id) // m % 256 for m in (1, 256, 65536))
        Image.new("RGB", (8, 8), colour).save(folder / f"{int(image_id):012d}.jpg", "JPEG")
    return folder


def test_real_object_tasks_read_unchanged(real_root, real_templates, stand_in_coco):
    splits = SPEC.load_parts(real_root, "val", coco_dir=stand_in_coco, check_images=True)
    assert [s.category for s in splits] == list(OBJECT_TASKS)
    for split in splits:
        templates = real_templates[split.category]
        assert split.dataset == "genecis" and split.split == "val"
        assert len(split.queries) == len(templates) == 1960
        for i, (query, template) in enumerate(zip(split.queries, templates)):
            assert query.query_id == str(i)
            assert query.reference == _coco_key(template["reference"])
            assert query.target == _coco_key(template["target"])
            assert query.captions == (template["condition"],)
            assert len(template["gallery"]) == 14
            assert query.candidates == (query.target, *map(_coco_key, template["gallery"]))
        first_seen: dict[str, None] = {}
        for t in templates:
            for image in (t["reference"], t["target"], *t["gallery"]):
                first_seen.setdefault(_coco_key(image), None)
        assert split.gallery == list(first_seen)
        assert all(split.image_paths[i] == stand_in_coco / f"{int(i):012d}.jpg" for i in split.gallery)


def test_real_object_tasks_scored_end_to_end(real_root, real_templates, stand_in_coco, tmp_path):
    splits = SPEC.load_parts(real_root, "val", coco_dir=stand_in_coco)
    rng = np.random.default_rng(7)
    expected: dict[str, dict[str, float]] = {}
    rankings_list, results = [], []
    for split in splits:
        templates = real_templates[split.category]
        embedding = {image_id: rng.normal(size=16).astype(np.float32) for image_id in split.gallery}
        queries = rng.normal(size=(len(templates), 16)).astype(np.float32)
        gallery = np.stack([embedding[i] for i in split.gallery])
        rankings, subsets = SPEC.rank_for_scoring(split, queries, gallery)
        assert subsets is None
        assert all(sorted(map(int, r)) == list(range(15)) for r in rankings.values())
        result = SPEC.score(split, rankings)
        expected[split.category] = _recalls(_target_ranks(templates, embedding, queries, _coco_key))
        for k in (1, 2, 3):
            assert result[f"R@{k}"] == pytest.approx(expected[split.category][f"R@{k}"], abs=1e-9)
            assert 100 * SPEC.per_query(split, rankings, f"R@{k}").mean() == pytest.approx(result[f"R@{k}"])
        rankings_list.append(rankings)
        results.append(result)
    combined = SPEC.combine(splits, results)
    for k in (1, 2, 3):
        assert combined["average"][f"R@{k}"] == pytest.approx(
            np.mean([expected[t][f"R@{k}"] for t in OBJECT_TASKS]), abs=1e-9)
    assert combined["tasks"] == list(OBJECT_TASKS)
    assert combined["skipped_tasks"] == list(ATTRIBUTE_TASKS)
    assert "ties count against the target" in combined["rules"]

    # the same rankings as a predictions file, scored by `irkit eval genecis` in a subprocess
    (path,) = SPEC.write_submission(tmp_path, splits, rankings_list, [None, None])
    done = _irkit("eval", "genecis", "--root", str(real_root), "--predictions", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)  # fractions (the printed unit); the library's results are percent
    assert printed["units"] == "fraction"
    for task in OBJECT_TASKS:
        for k in (1, 2, 3):
            assert printed[task][f"R@{k}"] == pytest.approx(expected[task][f"R@{k}"] / 100, abs=1e-11)
    assert printed["skipped_tasks"] == list(ATTRIBUTE_TASKS)
    assert printed["average"]["R@1"] == pytest.approx(np.mean([expected[t]["R@1"] for t in OBJECT_TASKS]) / 100)


def test_real_target_listed_in_its_own_gallery_is_a_miss(real_root, real_templates, stand_in_coco):
    templates = real_templates["change_object"]
    doubled = [i for i, t in enumerate(templates) if t["target"] in t["gallery"]]
    assert doubled, "the published change_object file lists a target inside its gallery"
    split = load_genecis(real_root, "val", task="change_object", coco_dir=stand_in_coco)
    gallery = np.random.default_rng(3).normal(size=(len(split.gallery), 8))
    queries = np.random.default_rng(4).normal(size=(len(split.queries), 8))
    row = {image_id: i for i, image_id in enumerate(split.gallery)}
    for i in doubled:  # the query IS the target's embedding: the target scores best, tied with its copy
        queries[i] = gallery[row[split.queries[i].target]]
    rankings, _ = SPEC.rank_for_scoring(split, queries, gallery)
    result = SPEC.score(split, rankings)
    assert result["target_in_gallery"] == doubled
    for i in doubled:
        copy = 1 + [_coco_key(g) for g in templates[i]["gallery"]].index(split.queries[i].target)
        assert rankings[str(i)][:2] == [str(copy), "0"]
    assert SPEC.per_query(split, rankings, "R@1")[doubled].tolist() == [0.0] * len(doubled)
    assert SPEC.per_query(split, rankings, "R@2")[doubled].tolist() == [1.0] * len(doubled)

    # every score tied: the target ranks last everywhere, so R@1 = R@2 = R@3 = 0
    ones = np.ones((len(split.gallery), 4))
    tied, _ = SPEC.rank_for_scoring(split, np.ones((len(split.queries), 4)), ones)
    assert all(r == [str(p) for p in range(1, 15)] + ["0"] for r in tied.values())
    assert {k: SPEC.score(split, tied)[k] for k in ("R@1", "R@2", "R@3")} == {"R@1": 0.0, "R@2": 0.0, "R@3": 0.0}


# --------------------------------------------------------------------------- ties (hand-worked)


def _object_root(tmp: Path, tasks: dict[str, list[dict]]) -> Path:
    root = tmp / "genecis_root"
    for task, templates in tasks.items():
        _write_json(root / "genecis" / f"{task}.json", templates)
    return root


def _t(ref: int, target: int, gallery: list[int], condition: str = "wall") -> dict:
    return {"condition": condition, "gallery": [{"val_image_id": g} for g in gallery],
            "reference": {"val_image_id": ref}, "target": {"val_image_id": target}}


def test_ties_count_against_the_target(tmp_path):
    # candidates: target 2 (score .5), gallery 3 (.9), 4 (.5, a different image tied with the target), 5 (.1)
    assert metrics.genecis_order([0.5, 0.9, 0.5, 0.1]) == [1, 2, 0, 3]
    assert metrics.genecis_order([0.2, 0.2, 0.2]) == [1, 2, 0]
    root = _object_root(tmp_path, {"focus_object": [_t(1, 2, [3, 4, 5])]})
    split = load_genecis(root, task="focus_object")
    assert split.gallery == ["1", "2", "3", "4", "5"]
    gallery = np.array([[0.3], [0.5], [0.9], [0.5], [0.1]])
    rankings = SPEC.rank(split, np.array([[1.0]]), gallery, 4)
    assert rankings == {"0": ["1", "2", "0", "3"]}
    result = SPEC.score(split, rankings)
    assert (result["R@1"], result["R@2"], result["R@3"]) == (0.0, 0.0, 100.0)
    assert result["target_in_gallery"] == []


# --------------------------------------------------------------------------- crops


def _coordinate_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Pixel (x, y) = (x, y, 200) in RGB, or x + y in L: every pixel says where it came from."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    if mode == "L":
        return Image.fromarray((xs + ys).astype(np.uint8), "L")
    return Image.fromarray(np.stack([xs, ys, np.full_like(xs, 200)], -1).astype(np.uint8), "RGB")


def test_crop_arithmetic_hand_worked():
    # 100 x 80 image, bbox x=10 y=20 w=30 h=10: left = max(0, 10 - 21) = 0, top = 20 - 7 = 13,
    # right = min(100, 0 + 51) = 51, bottom = min(80, 13 + 17) = 30 -> 51 x 17, padded to 51 x 51
    assert crop_box([10, 20, 30, 10], 100, 80) == (0, 13, 51, 30)
    # half-way values round half-to-even as Pillow's crop of a float box: left 46.5 -> 46, right 55
    assert crop_box([50, 40, 5, 10], 100, 80) == (46, 33, 55, 50)
    assert Image.new("RGB", (100, 80)).crop((46.5, 33, 55, 50)).size == (9, 17)
    # clamped at the right/bottom edge: left 83, top 63, right min(100, 100), bottom min(80, 80)
    assert crop_box([90, 70, 10, 10], 100, 80) == (83, 63, 100, 80)
    # fractional bbox: top = 20.25 - 7 = 13.25 -> 13, bottom = 13.25 + 17 = 30.25 -> 30
    assert crop_box([10.5, 20.25, 30, 10], 100, 80) == (0, 13, 51, 30)

    crop = np.asarray(crop_object(_coordinate_image(100, 80), [10, 20, 30, 10]))
    assert crop.shape == (51, 51, 3)
    offset = (51 - 17) // 2  # 17 black rows above, 17 below
    assert not crop[:offset].any() and not crop[offset + 17:].any()
    band = crop[offset:offset + 17]
    assert (band[..., 0] == np.arange(51)[None, :]).all()           # x = 0..50
    assert (band[..., 1] == np.arange(13, 30)[:, None]).all()       # y = 13..29
    # a tall crop pads left/right; a grayscale crop pads with 0 and stays L
    tall = crop_object(_coordinate_image(100, 80, "L"), [50, 40, 5, 10])  # 9 x 17 -> 17 x 17, 4 columns left
    assert tall.mode == "L" and tall.size == (17, 17)
    pixels = np.asarray(tall).astype(int)
    assert not pixels[:, :4].any() and not pixels[:, 13:].any()
    assert (pixels[:, 4:13] == np.arange(46, 55)[None, :] + np.arange(33, 50)[:, None]).all()


def _attribute_root(tmp: Path, templates: list[dict], images: dict[int, Image.Image],
                    task: str = "focus_attribute") -> Path:
    root = tmp / "attr_root"
    _write_json(root / "genecis" / f"{task}.json", templates)
    (root / "VG_100K_all").mkdir(parents=True, exist_ok=True)
    for image_id, image in images.items():
        image.save(root / "VG_100K_all" / f"{image_id}.jpg", "PNG")  # lossless bytes under the published name
    return root


def _obj(image_id: int, bbox: list) -> dict:
    return {"image_id": image_id, "instance_bbox": bbox}


def test_attribute_task_crops_through_the_loader(tmp_path):
    templates = [{"condition": "color", "reference": _obj(7, [10, 20, 30, 10]), "target": _obj(7, [50, 40, 5, 10]),
                  "gallery": [_obj(8, [0, 0, 4, 4]), _obj(7, [10, 20, 30, 10])]}]
    root = _attribute_root(tmp_path, templates, {7: _coordinate_image(100, 80), 8: _coordinate_image(6, 6)})
    crops = tmp_path / "crops"
    split = load_genecis(root, "val", task="focus_attribute", crop_dir=crops, check_images=True)
    assert split.gallery == ["7@10,20,30,10", "7@50,40,5,10", "8@0,0,4,4"]
    query = split.queries[0]
    assert query.candidates == ("7@50,40,5,10", "8@0,0,4,4", "7@10,20,30,10")
    assert query.captions == ("color",)
    for image_id in split.gallery:
        path = split.image_paths[image_id]
        assert path.parent.parent == crops and path.suffix == ".png"
    with Image.open(split.image_paths["7@10,20,30,10"]) as image:
        crop = np.asarray(image)
    assert crop.shape == (51, 51, 3) and (crop[17:34, :, 0] == np.arange(51)[None, :]).all()
    with Image.open(split.image_paths["8@0,0,4,4"]) as image:  # 6 x 6 image: crop (0, 0, 6, 6), no padding
        assert image.size == (6, 6)
    # reloading reuses the cached crops (same paths, files untouched)
    stamps = {p: p.stat().st_mtime_ns for p in split.image_paths.values()}
    again = load_genecis(root, "val", task="focus_attribute", crop_dir=crops)
    assert again.image_paths == split.image_paths
    assert {p: p.stat().st_mtime_ns for p in again.image_paths.values()} == stamps


def test_crop_key_follows_source_content_not_size_or_mtime(tmp_path):
    templates = [{"condition": "color", "reference": _obj(5, [2, 2, 4, 4]), "target": _obj(5, [10, 2, 4, 4]),
                  "gallery": [_obj(5, [2, 10, 4, 4])]}]
    root = tmp_path / "attr_root"
    _write_json(root / "genecis" / "focus_attribute.json", templates)
    source = root / "VG_100K_all" / "5.jpg"
    source.parent.mkdir(parents=True)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(source, "BMP")   # fixed-size BMP bytes: same length for any colour
    size, stamp = source.stat().st_size, source.stat().st_mtime_ns
    crops = tmp_path / "crops"
    first = load_genecis(root, task="focus_attribute", crop_dir=crops).image_paths["5@2,2,4,4"]
    Image.new("RGB", (16, 16), (0, 0, 255)).save(source, "BMP")
    os.utime(source, ns=(stamp, stamp))
    assert (source.stat().st_size, source.stat().st_mtime_ns) == (size, stamp)
    second = load_genecis(root, task="focus_attribute", crop_dir=crops).image_paths["5@2,2,4,4"]
    assert second != first
    with Image.open(second) as image:
        assert image.getpixel((image.width // 2, image.height // 2)) == (0, 0, 255)
    assert crop_cache_key("a" * 64, [2, 2, 4, 4]) != crop_cache_key("b" * 64, [2, 2, 4, 4])
    assert crop_cache_key("a" * 64, [2, 2, 4, 4]) != crop_cache_key("a" * 64, [2, 2, 4, 5])


# --------------------------------------------------------------------------- prediction files via the CLI


SMALL = [_t(1, 2, [3, 4, 5]), _t(2, 3, [1, 4, 6]), _t(6, 5, [2, 3, 4]), _t(4, 1, [5, 6, 2])]


def test_predictions_scored_by_irkit_eval(tmp_path):
    root = _object_root(tmp_path, {"focus_object": SMALL, "change_object": SMALL})
    # focus_object: the target (position 0) at rank 1, 2, 3, 4 -> R@1 25, R@2 50, R@3 75
    # change_object: always first -> 100 each; average R@1 (25 + 100) / 2 = 62.5, R@2 75, R@3 87.5
    predictions = {"focus_object": {"0": [0, 1, 2, 3], "1": [1, 0, 2], "2": [2, 3, 0], "3": [3, 2, 1, 0]},
                   "change_object": {str(i): [0, 1, 2] for i in range(4)},
                   "focus_attribute": {}}  # a task absent from the root: named as skipped, not scored
    path = _write_json(tmp_path / "preds.json", predictions)
    done = _irkit("eval", "genecis", "--root", str(root), "--predictions", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    # printed as fractions: 25 % -> 0.25
    assert {k: result["focus_object"][k] for k in ("R@1", "R@2", "R@3")} == {"R@1": 0.25, "R@2": 0.5, "R@3": 0.75}
    assert {k: result["change_object"][k] for k in ("R@1", "R@2", "R@3")} == {"R@1": 1.0, "R@2": 1.0, "R@3": 1.0}
    assert result["average"] == {"R@1": 0.625, "R@2": 0.75, "R@3": 0.875}
    assert result["skipped_tasks"] == ["focus_attribute", "change_attribute"]
    assert "focus_attribute" in result["protocol"] and result["units"] == "fraction"
    assert result["focus_object"]["units"] == result["change_object"]["units"] == "fraction"
    assert result["num_queries"] == 8


@pytest.mark.parametrize("change, field, words", [
    (lambda p: p.update({"focus_objects": {}}), "focus_objects", ("unknown task",)),
    (lambda p: p.pop("change_object"), "change_object", ("no predictions",)),
    (lambda p: p["focus_object"].pop("2"), "2", ("no ranking",)),
    (lambda p: p["focus_object"].update({"9": [0, 1, 2]}), "9", ("not in",)),
    (lambda p: p["focus_object"].update({"1": [0, "1", 2]}), "1", ("expected a candidate position",)),
    (lambda p: p["focus_object"].update({"1": [0, True, 2]}), "1", ("expected a candidate position",)),
    (lambda p: p["focus_object"].update({"1": [0, 1, 1]}), "1", ("more than once",)),
    (lambda p: p["focus_object"].update({"1": [0, 4, 2]}), "1", ("out of range",)),
    (lambda p: p["focus_object"].update({"1": [0, 1]}), "1", ("at least 3",)),
])
def test_bad_prediction_files(tmp_path, change, field, words):
    root = _object_root(tmp_path, {"focus_object": SMALL, "change_object": SMALL})
    predictions = {task: {str(i): [0, 1, 2, 3] for i in range(4)} for task in OBJECT_TASKS}
    change(predictions)
    path = _write_json(tmp_path / "preds.json", predictions)
    with pytest.raises(InputError) as error:
        SPEC.score_prediction_files(root, "val", [path])
    message = str(error.value)
    assert str(path) in message and f"field '{field}'" in message and "\n" not in message
    for word in words:
        assert word in message, message


def test_bad_prediction_file_via_cli_is_one_line(tmp_path):
    root = _object_root(tmp_path, {"focus_object": SMALL})
    path = _write_json(tmp_path / "preds.json", {"focus_object": {str(i): [0, 1, 7] for i in range(4)}})
    _one_error_line(_irkit("eval", "genecis", "--root", str(root), "--predictions", str(path)),
                    str(path), "[focus_object]", "field '0'", "out of range")


# --------------------------------------------------------------------------- bad annotation files


def _eval_cli(root: Path, tmp: Path) -> subprocess.CompletedProcess:
    path = _write_json(tmp / "preds.json", {})
    return _irkit("eval", "genecis", "--root", str(root), "--predictions", str(path))


def test_missing_gallery_is_one_line(tmp_path):
    templates = [_t(1, 2, [3, 4]), {k: v for k, v in _t(2, 3, [4]).items() if k != "gallery"}]
    root = _object_root(tmp_path, {"change_object": templates})
    _one_error_line(_eval_cli(root, tmp_path), "change_object.json", "field '[1].gallery'", "no 'gallery'")


@pytest.mark.parametrize("bad", ["12a", 1.5, True])
def test_non_integer_image_id_is_one_line(tmp_path, bad):
    template = _t(1, 2, [3, 4, 5])
    template["gallery"][2]["val_image_id"] = bad
    root = _object_root(tmp_path, {"focus_object": [_t(1, 2, [3]), template]})
    _one_error_line(_eval_cli(root, tmp_path), "focus_object.json", "field '[1].gallery[2].val_image_id'",
                    "expected an integer")


def test_malformed_json_names_the_line(tmp_path):
    path = tmp_path / "genecis_root" / "genecis" / "focus_object.json"
    path.parent.mkdir(parents=True)
    path.write_text('[\n  {"condition": "wall",\n  "gallery": [}\n]\n', encoding="utf-8")
    _one_error_line(_eval_cli(path.parent.parent, tmp_path), "focus_object.json", "line 3", "malformed JSON")


def test_root_without_task_files_is_one_line(tmp_path):
    root = tmp_path / "empty_root"
    root.mkdir()
    _one_error_line(_eval_cli(root, tmp_path), str(root), "none of the GeneCIS task files",
                    "genecis/focus_attribute.json")


@pytest.mark.parametrize("bbox, words", [
    ([100, 10, 5, 5], ("lies outside the 100x80 image",)),
    ([10, -30, 5, 5], ("lies outside",)),
    ([10, 10, 0, 5], ("width or height <= 0",)),
    ([10, 10, 5], ("expected [x, y, w, h]",)),
    ([10, "10", 5, 5], ("expected a finite number",)),
])
def test_bad_bbox(tmp_path, bbox, words):
    templates = [{"condition": "red", "reference": _obj(7, [1, 1, 5, 5]), "target": _obj(7, [20, 20, 5, 5]),
                  "gallery": [_obj(7, [40, 40, 5, 5]), _obj(7, bbox)]}]
    root = _attribute_root(tmp_path, templates, {7: _coordinate_image(100, 80)}, task="change_attribute")
    with pytest.raises(InputError) as error:
        load_genecis(root, task="change_attribute", crop_dir=tmp_path / "crops")
    message = str(error.value)
    assert "change_attribute.json" in message and "field '[0].gallery[1].instance_bbox'" in message
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_bbox_without_extent_is_one_line_via_cli(tmp_path):
    templates = [{"condition": "red", "reference": _obj(7, [1, 1, 5, 5]), "target": _obj(7, [20, 20, -5, 5]),
                  "gallery": [_obj(7, [40, 40, 5, 5])]}]
    root = _attribute_root(tmp_path, templates, {}, task="change_attribute")
    _one_error_line(_eval_cli(root, tmp_path), "change_attribute.json", "field '[0].target.instance_bbox'",
                    "width or height <= 0")


def test_split_and_task_choices(tmp_path):
    root = _object_root(tmp_path, {"focus_object": SMALL})
    with pytest.raises(InputError, match="GeneCIS split .* expected one of: val"):
        load_genecis(root, "test", task="focus_object")
    with pytest.raises(InputError, match="needs a task"):
        load_genecis(root, "val")
    with pytest.raises(InputError, match="unknown GeneCIS task 'focus'"):
        load_dataset("genecis", root, "val", task="focus")
    with pytest.raises(InputError, match="file not found"):
        load_genecis(root, "val", task="change_object")
    assert SPEC.dataset_root(root) == root and SPEC.has_layout(root)


def test_missing_images_are_reported_when_checked(tmp_path):
    root = _object_root(tmp_path, {"focus_object": SMALL})
    with pytest.raises(InputError, match="GeneCIS COCO val2017 images not found .*000000000001.jpg"):
        load_genecis(root, task="focus_object", check_images=True)
    templates = [{"condition": "red", "reference": _obj(7, [1, 1, 5, 5]), "target": _obj(9, [2, 2, 5, 5]),
                  "gallery": [_obj(7, [40, 40, 5, 5])]}]
    root = _attribute_root(tmp_path, templates, {7: _coordinate_image(100, 80)})
    with pytest.raises(InputError, match=r"Visual Genome images not found \(1 missing\).*9.jpg"):
        load_genecis(root, task="focus_attribute", crop_dir=tmp_path / "crops", check_images=True)
    unchecked = load_genecis(root, task="focus_attribute", crop_dir=tmp_path / "crops")
    assert unchecked.image_paths["9@2,2,5,5"] == root / "VG_100K_all" / "9.jpg"  # absent: a reader names it


# --------------------------------------------------------------------------- demo data


def _sidecar(root: Path) -> tuple[dict, dict]:
    scenes, objects = {}, {}
    for line in (root / "irkit_attributes.jsonl").read_text("utf-8").splitlines():
        row = json.loads(line)
        if row["source"] == "coco":
            scenes[str(row["val_image_id"])] = row
        else:
            for obj in row["objects"]:
                objects[f"{row['image_id']}@" + ",".join(map(str, obj["instance_bbox"]))] = obj
    return scenes, objects


def test_demo_genecis_generates_and_loads_all_tasks(tmp_path):
    out = tmp_path / "demo"
    assert cli_main(["data", "demo", "--out", str(out), "--datasets", "genecis", "--workers", "1",
                     "--no-progress"]) == 0
    root = SPEC.dataset_root(out)
    assert root == out / "genecis"
    for task in ("focus_attribute", "change_attribute", "focus_object", "change_object"):
        assert (root / "genecis" / f"{task}.json").is_file()
    splits = SPEC.load_parts(root, "val", crop_dir=tmp_path / "crops", check_images=True)
    assert [s.category for s in splits] == ["focus_attribute", "change_attribute", "focus_object", "change_object"]
    scenes, objects = _sidecar(root)
    type_words = {"Bus": "bus", "Microbus": "microbus", "Minivan": "minivan", "SUV": "SUV", "Sedan": "sedan",
                  "Truck": "truck"}
    for split in splits:
        assert len(split.queries) == 12
        for query in split.queries:
            assert len(query.candidates) == 1 + 8 and query.reference not in query.candidates
            assert len(set(query.candidates)) == len(query.candidates)
            assert all(split.image_paths[i].is_file() for i in (query.reference, *query.candidates))
            condition = query.captions[0]
            if split.category in ("focus_object", "change_object"):
                names = {i: {type_words[scenes[i]["type"]], scenes[i]["background"]}
                         for i in (query.reference, *query.candidates)}
                ref, target, gallery = names[query.reference], names[query.target], query.candidates[1:]
                assert condition in names[query.target]
                if split.category == "focus_object":  # target shares the named object; distractors lack it
                    assert condition in ref and all(condition not in names[g] for g in gallery)
                else:  # target adds the named object to the reference's other one; no distractor has both
                    kept = (ref - {condition}) & target
                    assert condition not in ref and kept
                    assert all(not (condition in names[g] and kept <= names[g]) for g in gallery)
            else:
                ref, target = objects[query.reference], objects[query.target]
                gallery = [objects[g] for g in query.candidates[1:]]
                if split.category == "focus_attribute":
                    assert condition == "color" and target["color"] == ref["color"]
                    assert all(g["color"] != ref["color"] for g in gallery)
                else:
                    assert target["color"] == condition != ref["color"] and target["type"] == ref["type"]
                    assert all(not (g["color"] == condition and g["type"] == ref["type"]) for g in gallery)
                with Image.open(split.image_paths[query.target]) as image:
                    assert image.width == image.height
    rng = np.random.default_rng(0)
    results = []
    for split in splits:
        rankings, _ = SPEC.rank_for_scoring(split, rng.normal(size=(12, 4)), rng.normal(size=(len(split.gallery), 4)))
        results.append(SPEC.score(split, rankings))
    combined = SPEC.combine(splits, results)
    assert combined["tasks"] == [s.category for s in splits] and combined["skipped_tasks"] == []
    assert combined["average"]["R@1"] == pytest.approx(np.mean([r["R@1"] for r in results]))
    # the predictions file the spec writes reads back unchanged
    (path,) = SPEC.write_submission(tmp_path, splits, [SPEC.rank_for_scoring(
        s, np.ones((12, 2)), np.ones((len(s.gallery), 2)))[0] for s in splits], [None] * 4)
    read = read_genecis_predictions(path, {s.category: s for s in splits})
    assert all(r == [str(p) for p in range(1, 9)] + ["0"] for task in read.values() for r in task.values())
