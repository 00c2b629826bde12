"""Demo data generator: determinism, published layouts, label semantics, refusal to overwrite.

Everything runs at the ``tiny`` scale (about 400 images, a couple of seconds per run). The
checks recompute facts from the files themselves (label lines, JSON annotations, image sizes)
and from the irkit-only attribute sidecars, never from the generator's return value.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

import irkit.data.demo as demo
from irkit.cli import data as data_cli
from irkit.errors import InputError
from irkit.io import file_sha256

RESOURCES = Path(__file__).resolve().parents[1] / "src" / "irkit" / "resources"
VOCAB = json.loads((RESOURCES / "traffic_vocab.json").read_text("utf-8"))
PERSON = json.loads((RESOURCES / "person_attributes.json").read_text("utf-8"))
FIQ_CATEGORIES = ("dress", "shirt", "toptee")


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "seed0"
    demo.generate_demo(out, seed=0, scale="tiny", workers=2, progress=False)
    return out


# ----------------------------------------------------------------------------------------
# determinism and refusal
# ----------------------------------------------------------------------------------------

def test_same_seed_gives_identical_bytes_regardless_of_workers(tiny, tmp_path):
    again = tmp_path / "again"
    demo.generate_demo(again, seed=0, scale="tiny", workers=1, progress=False)
    first, second = _hashes(tiny), _hashes(again)
    assert len(first) > 300
    assert first == second


def test_different_seed_gives_different_data(tiny, tmp_path):
    other = tmp_path / "seed1"
    demo.generate_demo(other, seed=1, scale="tiny", datasets="traffic,circo", workers=1, progress=False)
    first, second = _hashes(tiny), _hashes(other)
    shared = [name for name in second if name in first and name != "demo_manifest.json"]
    # label/annotation files exist in both and must differ; random image names mostly differ
    for name in ("traffic/train/train_label.txt", "traffic/test/test_text.txt", "circo/annotations/val.json"):
        assert first[name] != second[name], name
    assert sum(first[n] == second[n] for n in shared) < 0.05 * len(shared)


def test_refuses_folder_of_another_seed_or_scale(tiny):
    before = _hashes(tiny)
    with pytest.raises(InputError, match="seed=0"):
        demo.generate_demo(tiny, seed=1, scale="tiny", progress=False)
    with pytest.raises(InputError, match="scale='tiny'"):
        demo.generate_demo(tiny, seed=0, scale="small", progress=False)
    with pytest.raises(InputError, match="difficulty"):
        demo.generate_demo(tiny, seed=0, scale="tiny", difficulty=demo.DemoDifficulty(occlusion_prob=0.5),
                           progress=False)
    assert _hashes(tiny) == before
    # same seed/scale: nothing to do, nothing rewritten
    summary = demo.generate_demo(tiny, seed=0, scale="tiny", progress=False)
    assert summary["generated"] == [] and summary["skipped"] == list(demo.DATASETS)
    assert _hashes(tiny) == before


def test_refuses_non_demo_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="demo_manifest.json"):
        demo.generate_demo(tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_crash_leaves_no_partial_dataset_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "crash"

    def broken(root, *args):
        (root / "cirr").mkdir(parents=True)
        (root / "cirr" / "half.json").write_text("[")
        raise RuntimeError("disk full")

    monkeypatch.setitem(demo._GENERATORS, "cirr", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        demo.generate_demo(out, datasets="cirr,fashioniq", workers=1, progress=False)  # fashioniq runs first
    assert sorted(p.name for p in out.iterdir()) == ["captions", "demo_manifest.json", "fashioniq"]
    manifest = json.loads((out / "demo_manifest.json").read_text())
    assert manifest["datasets"] == ["fashioniq"]
    monkeypatch.undo()
    summary = demo.generate_demo(out, datasets="cirr,fashioniq", workers=1, progress=False)
    assert summary["generated"] == ["cirr"] and summary["skipped"] == ["fashioniq"]
    assert json.loads((out / "demo_manifest.json").read_text())["datasets"] == ["fashioniq", "cirr"]


def test_bad_arguments_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="unknown demo dataset"):
        demo.generate_demo(tmp_path / "a", datasets="traffic,coco", progress=False)
    with pytest.raises(InputError, match="scale"):
        demo.generate_demo(tmp_path / "b", scale="huge", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _run_cli(argv: list[str]) -> int:
    """``irkit data ...`` through this group's own ``register`` (the full CLI imports every group)."""
    parser = argparse.ArgumentParser(prog="irkit")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert _run_cli(["data", "demo", "--out", str(out), "--seed", "5", "--datasets", "circo", "--workers", "1",
                     "--no-progress"]) == 0
    assert "circo: generated" in capsys.readouterr().out
    manifest = json.loads((out / "demo_manifest.json").read_text())
    assert (manifest["seed"], manifest["scale"], manifest["datasets"]) == (5, "tiny", ["circo"])
    assert manifest["irkit_version"]
    with pytest.raises(InputError, match="seed=5"):
        _run_cli(["data", "demo", "--out", str(out), "--seed", "6", "--datasets", "circo"])
    with pytest.raises(SystemExit):
        _run_cli(["data", "demo", "--out", str(out), "--scale", "huge"])


# ----------------------------------------------------------------------------------------
# traffic
# ----------------------------------------------------------------------------------------

def _parse_vehicle_phrase(phrase: str) -> dict:
    """Independent parse of 'colour brand type' (each optional) with the shared vocabulary."""
    types = {t: t for t in VOCAB["types"]} | VOCAB["type_synonyms"]
    words = phrase.split()
    colour = words.pop(0) if words and words[0] in VOCAB["colors"] else None
    vehicle_type = None
    for n in (2, 1):
        if len(words) >= n and " ".join(words[-n:]) in types:
            vehicle_type = types[" ".join(words[-n:])]
            words = words[:-n]
            break
    brand = " ".join(words) or None
    assert brand is None or brand in VOCAB["brands"], phrase
    assert colour or brand or vehicle_type, phrase
    return {"color": colour, "brand": brand, "type": vehicle_type}


def _label_lines(path: Path) -> list[list[str]]:
    lines = path.read_text("utf-8").splitlines()
    assert lines
    return [line.split("$") for line in lines]


def _person_flags_ok(attr: str) -> bool:
    flags = attr.split(",")
    if len(flags) != 21 or set(flags) - {"0", "1"}:
        return False
    named = dict(zip(PERSON["attributes"], (int(f) for f in flags)))
    for group in PERSON["groups"].values():
        total = sum(named[f] for f in group["flags"])
        if total != 1 if group["exactly_one"] else total > 1:
            return False
    return True


def test_traffic_layout_and_labels(tiny):
    root = tiny / "traffic"
    assert len(PERSON["attributes"]) == 21
    partial = 0
    for split in ("train", "val"):
        lines = _label_lines(root / split / f"{split}_label.txt")
        images = {p.name for p in (root / split / f"{split}_images").iterdir()}
        assert {f[0] for f in lines} == images and len(lines) == len(images)
        kinds = Counter()
        for fields in lines:
            assert len(fields) == 3, fields
            name, attr, text = fields
            assert re.fullmatch(r"[a-z]{10}\.jpg", name)
            if "," in attr:
                kinds["person"] += 1
                assert _person_flags_ok(attr), attr
                assert "pedestrian" in text and text.endswith(".")
            else:
                kinds["vehicle"] += 1
                phrase = attr[2:-1] if attr.startswith("A ") and attr.endswith(".") else attr
                parsed = _parse_vehicle_phrase(phrase)
                assert text in (f"This is a {phrase}.", f"A {phrase}."), (attr, text)
                partial += split == "train" and not (parsed["color"] and parsed["type"])
        assert kinds["vehicle"] > 0 and kinds["person"] > 0
    assert partial >= 1  # the zero-shot augmentation stage has work to do

    queries = (root / "test" / "test_text.txt").read_text("utf-8").splitlines()
    truth = [line.split("$") for line in (root / "test" / "test_ground_truth.txt").read_text("utf-8").splitlines()]
    gallery = {p.name for p in (root / "test" / "test_images").iterdir()}
    assert all(re.fullmatch(r"(vehicle|person)_\d{7}\.jpg", name) for name in gallery)
    assert len(set(queries)) == len(queries)
    assert [t[0] for t in truth] == queries
    named = [name for t in truth for name in t[1:]]
    assert sorted(named) == sorted(gallery)  # every image relevant to exactly one query
    kinds = [{n.split("_")[0] for n in t[1:]} for t in truth]
    assert all(len(k) == 1 for k in kinds)
    order = [k.pop() for k in kinds]
    assert order == sorted(order, key=lambda k: k != "vehicle")  # vehicle queries first
    assert "vehicle" in order and "person" in order
    assert any(len(t) > 2 for t in truth)  # one text, many images
    # every vehicle test query is a complete label whose images carry exactly those attributes
    rows = {r["image"].split("/")[-1]: r for r in _jsonl(root / "irkit_attributes.jsonl") if r["split"] == "test"}
    for query, *names in truth:
        if names[0].startswith("vehicle"):
            parsed = _parse_vehicle_phrase(re.sub(r"^(This is a |A )|\.$", "", query))
            assert all(parsed.values()), query
            assert all({k: rows[n][k] for k in parsed} == parsed for n in names), query
        else:
            assert len({rows[n]["label_attr"] for n in names}) == 1


def test_traffic_aspect_ratios_and_sizes(tiny):
    root = tiny / "traffic"
    labels = {}
    for split in ("train", "val"):
        for name, attr, _ in _label_lines(root / split / f"{split}_label.txt"):
            labels[root / split / f"{split}_images" / name] = "person" if "," in attr else "vehicle"
    for path in (root / "test" / "test_images").iterdir():
        labels[path] = path.name.split("_")[0]
    for path, kind in labels.items():
        with Image.open(path) as image:
            assert image.format == "JPEG"
            width, height = image.size
        if kind == "vehicle":
            assert 96 <= width <= 160 and 1.38 <= width / height <= 2.22, (path, image.size)
        else:
            assert 48 <= width <= 64 and 0.34 <= width / height <= 0.51, (path, image.size)


def test_caption_csvs_resolve_relative_to_their_folder(tiny):
    folder = tiny / "captions"
    expected = {"traffic_train", "traffic_val", "fashioniq_train", "fashioniq_val", "cirr_train", "cirr_val",
                "circo_gallery"}
    assert {p.stem for p in folder.glob("*.csv")} == expected
    train_labels = len(_label_lines(tiny / "traffic" / "train" / "train_label.txt"))
    for path in folder.glob("*.csv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        assert rows[0] == ["filepath", "title"]
        assert all(len(r) == 2 and r[1].strip() for r in rows[1:])
        assert all((folder / r[0]).is_file() for r in rows[1:]), path
        if path.stem == "traffic_train":
            assert len(rows) - 1 == train_labels


# ----------------------------------------------------------------------------------------
# FashionIQ
# ----------------------------------------------------------------------------------------

def test_fashioniq_layout(tiny):
    root = tiny / "fashioniq"
    attrs = {r["image"]: r for r in _jsonl(root / "irkit_attributes.jsonl")}
    for category in FIQ_CATEGORIES:
        for split in ("train", "val", "test"):
            gallery = json.loads((root / "image_splits" / f"split.{category}.{split}.json").read_text())
            entries = json.loads((root / "captions" / f"cap.{category}.{split}.json").read_text())
            assert isinstance(gallery, list) and len(set(gallery)) == len(gallery) > 0
            assert all(re.fullmatch(r"B[A-Z0-9]{9}", asin) for asin in gallery)
            assert all((root / "images" / f"{asin}.jpg").is_file() for asin in gallery)
            assert all(attrs[asin]["category"] == category for asin in gallery)
            assert entries
            for entry in entries:
                keys = {"candidate", "captions"} | ({"target"} if split != "test" else set())
                assert set(entry) == keys
                assert isinstance(entry["captions"], list) and len(entry["captions"]) == 2
                assert all(isinstance(c, str) and c.strip() for c in entry["captions"])
                assert entry["candidate"] in gallery
                if split != "test":
                    assert entry["target"] in gallery and entry["target"] != entry["candidate"]
                    candidate, target = attrs[entry["candidate"]], attrs[entry["target"]]
                    changed = [k for k in candidate if k not in ("image", "path", "description", "width", "height")
                               and candidate[k] != target[k]]
                    assert 1 <= len(changed) <= 2, (candidate, target)


# ----------------------------------------------------------------------------------------
# CIRR
# ----------------------------------------------------------------------------------------

def test_cirr_layout(tiny):
    root = tiny / "cirr"
    folder_of = {"train": "train", "val": "dev", "test1": "test1"}
    pairids = []
    for split, folder in folder_of.items():
        paths = json.loads((root / "cirr" / "image_splits" / f"split.rc2.{split}.json").read_text())
        entries = json.loads((root / "cirr" / "captions" / f"cap.rc2.{split}.json").read_text())
        assert isinstance(paths, dict) and paths and entries
        for name, relative in paths.items():
            assert re.fullmatch(rf"{folder}-\d+-\d+-img\d", name)
            pattern = rf"\./train/\d+/{name}\.png" if split == "train" else rf"\./{folder}/{name}\.png"
            assert re.fullmatch(pattern, relative), relative
            assert (root / relative).is_file()
        members_of = {}
        for entry in entries:
            img_set = entry["img_set"]
            pairids.append(entry["pairid"])
            assert isinstance(entry["pairid"], int) and isinstance(entry["caption"], str) and entry["caption"]
            members = img_set["members"]
            assert len(members) == 6 == len(set(members)) and all(m in paths for m in members)
            assert entry["reference"] in members
            assert members_of.setdefault(img_set["id"], members) == members
            if split == "test1":
                assert set(entry) == {"pairid", "reference", "caption", "img_set"}
                assert set(img_set) == {"id", "members", "reference_rank"}
            else:
                assert set(entry) == {"pairid", "reference", "target_hard", "target_soft", "caption", "img_set"}
                assert set(img_set) == {"id", "members", "reference_rank", "target_rank"}
                assert entry["target_hard"] in members and entry["target_hard"] != entry["reference"]
                assert entry["target_soft"] == {entry["target_hard"]: 1.0}
                assert img_set["target_rank"] != img_set["reference_rank"]
                assert 0 <= img_set["target_rank"] < 6
            assert 0 <= img_set["reference_rank"] < 6
    assert len(set(pairids)) == len(pairids)


# ----------------------------------------------------------------------------------------
# CIRCO
# ----------------------------------------------------------------------------------------

#: Words a caption (or the shared concept, for the type) must contain for a constrained value.
def _value_words(attribute: str, value: str) -> tuple[str, ...]:
    if attribute in ("color", "direction"):
        return (value,)
    if attribute == "background":
        return (value.split()[0],)
    if attribute == "time":
        return ("night",) if value == "night" else ("day",)
    if attribute == "count":
        return {"1": ("one", "single"), "2": ("two",), "3": ("three",)}[value]
    if attribute == "view":
        return ("close",) if value == "close-up" else ("far", "distance")
    assert attribute == "type", attribute
    return ({"Bus": "bus", "Microbus": "microbus", "Minivan": "minivan", "SUV": "SUV", "Sedan": "sedan",
             "Truck": "truck"}[value],)


def test_circo_layout_and_ground_truths(tiny):
    root = tiny / "circo"
    info = json.loads((root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json").read_text())
    images = info["images"]
    assert images and all(isinstance(i["id"], int) and isinstance(i["file_name"], str) for i in images)
    assert all((root / "COCO2017_unlabeled" / "unlabeled2017" / i["file_name"]).is_file() for i in images)
    ids = {i["id"] for i in images}
    assert len(ids) == len(images)

    val = json.loads((root / "annotations" / "val.json").read_text())
    test = json.loads((root / "annotations" / "test.json").read_text())
    assert val and test
    for index, entry in enumerate(test):
        assert set(entry) == {"id", "reference_img_id", "relative_caption", "shared_concept"}
        assert entry["id"] == index and entry["reference_img_id"] in ids

    gallery = {r["id"]: r for r in _jsonl(root / "irkit_attributes.jsonl")}
    assert set(gallery) == ids
    hidden = {(q["split"], q["id"]): q for q in _jsonl(root / "irkit_queries.jsonl")}
    gt_sizes = []
    for index, entry in enumerate(val):
        assert set(entry) == {"id", "reference_img_id", "target_img_id", "relative_caption", "shared_concept",
                              "gt_img_ids", "semantic_aspects"}
        assert entry["id"] == index
        gt = entry["gt_img_ids"]
        assert gt[0] == entry["target_img_id"] and len(set(gt)) == len(gt) and set(gt) <= ids
        assert entry["reference_img_id"] in ids and entry["reference_img_id"] not in gt
        assert entry["semantic_aspects"] and all(isinstance(a, str) for a in entry["semantic_aspects"])
        # recompute the ground truths: every gallery image with the constrained values
        constraints = hidden[("val", index)]["constraints"]
        satisfying = {i for i, row in gallery.items() if all(row[a] == v for a, v in constraints.items())}
        assert satisfying == set(gt), (entry, constraints)
        # ... and the constraints are exactly what the caption and shared concept say
        text = entry["relative_caption"] + " | " + entry["shared_concept"]
        for attribute, value in constraints.items():
            assert any(word in text for word in _value_words(attribute, value)), (attribute, value, text)
        reference, target = gallery[entry["reference_img_id"]], gallery[entry["target_img_id"]]
        if entry["shared_concept"] != "a vehicle":
            assert reference["type"] == target["type"]
            assert _value_words("type", target["type"])[0] in entry["shared_concept"]
        for attribute in set(constraints) - ({"type"} if entry["shared_concept"] != "a vehicle" else set()):
            assert reference[attribute] != target[attribute], attribute
        gt_sizes.append(len(gt))
    assert min(gt_sizes) == 1 and max(gt_sizes) > 1


def test_every_image_decodes(tiny):
    count = 0
    for path in tiny.rglob("*"):
        if path.suffix in (".jpg", ".png"):
            with Image.open(path) as image:
                image.load()
                assert image.mode == "RGB"
            count += 1
    manifest = json.loads((tiny / "demo_manifest.json").read_text())
    assert count == demo.SCALES["tiny"].image_count()
    assert manifest["datasets"] == list(demo.DATASETS) and manifest["seed"] == 0 and manifest["scale"] == "tiny"
    per_dataset = defaultdict(int)
    for path in tiny.rglob("*"):
        if path.suffix in (".jpg", ".png"):
            per_dataset[path.relative_to(tiny).parts[0]] += 1
    counts = manifest["counts"]
    assert per_dataset["traffic"] == sum(counts["traffic"][s]["images"] for s in ("train", "val", "test"))
    assert per_dataset["cirr"] == sum(counts["cirr"][s]["images"] for s in ("train", "val", "test1"))
    assert per_dataset["circo"] == counts["circo"]["gallery"]["images"]
