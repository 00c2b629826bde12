"""Small hand-made dataset folders in the published layouts, for the loader tests.

Each ``make_*`` writes a valid, minimal dataset under ``root`` (placeholder image files, the
loaders never decode images) and returns the values the tests check against.
"""

from __future__ import annotations

import json
from pathlib import Path

PERSON_ATTR = ",".join(["1", "0"] * 10 + ["1"])  # 21 flags

TRAFFIC_TRAIN_LINES = [
    "v001.jpg$A white Audi.$This is a white Audi sedan.",
    f"p001.jpg${PERSON_ATTR}$A man in a red coat carrying a bag.",
    "v002.jpg$Truck$A black truck on the road.",
]
TRAFFIC_VAL_LINES = [
    "v101.jpg$A red BYD SUV.$A red SUV made by BYD.$A crimson BYD sport utility vehicle.",
    f"p101.jpg${PERSON_ATTR}$A woman with glasses.$A lady wearing glasses.",
]
TRAFFIC_QUERIES = ["A white Audi sedan.", "A man in a red coat."]
TRAFFIC_TEST_IMAGES = ["vehicle_0002.jpg", "person_0001.jpg", "vehicle_0001.jpg"]
TRAFFIC_GT_LINES = ["A white Audi sedan.$vehicle_0001.jpg$vehicle_0002.jpg",
                    "A man in a red coat.$person_0001.jpg"]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def touch_images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"\x89PNG placeholder")


def make_traffic(root: Path, ground_truth: bool = True) -> Path:
    """Traffic challenge layout: 3 train labels, 2 val labels (with $aug), 2 test queries."""
    write_lines(root / "train" / "train_label.txt", TRAFFIC_TRAIN_LINES)
    touch_images(root / "train" / "train_images", [line.split("$")[0] for line in TRAFFIC_TRAIN_LINES])
    write_lines(root / "val" / "val_label.txt", TRAFFIC_VAL_LINES)
    touch_images(root / "val" / "val_images", [line.split("$")[0] for line in TRAFFIC_VAL_LINES])
    write_lines(root / "test" / "test_text.txt", TRAFFIC_QUERIES)
    touch_images(root / "test" / "test_images", TRAFFIC_TEST_IMAGES)
    (root / "test" / "test_images" / "notes.txt").write_text("not an image")
    if ground_truth:
        write_lines(root / "test" / "test_ground_truth.txt", TRAFFIC_GT_LINES)
    return root


def write_json(path: Path, obj, indent: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent), encoding="utf-8")
    return path


CIRR_VAL_IMAGES = [f"dev-{i}-0-img{i % 2}" for i in range(8)]
CIRR_TEST_IMAGES = [f"test1-{i}-1-img0" for i in range(6)]


def cirr_val_entries() -> list[dict]:
    members = CIRR_VAL_IMAGES[:6]
    return [
        {"pairid": 7, "reference": members[0], "target_hard": members[3],
         "target_soft": {members[3]: 1.0}, "caption": "show two dogs",
         "img_set": {"id": 1, "members": members, "reference_rank": 0, "target_rank": 3}},
        {"pairid": 9, "reference": members[2], "target_hard": members[5],
         "target_soft": {members[5]: 1.0, members[1]: -1.0}, "caption": "make it night",
         "img_set": {"id": 1, "members": members, "reference_rank": 2, "target_rank": 5}},
    ]


def cirr_test_entries() -> list[dict]:
    return [{"pairid": 30, "reference": CIRR_TEST_IMAGES[1], "caption": "add a cat",
             "img_set": {"id": 4, "members": CIRR_TEST_IMAGES, "reference_rank": 1}}]


def make_cirr(root: Path) -> Path:
    """CIRR layout with a val split (8 images, 2 queries) and a test1 split (6 images, 1 query)."""
    for split, folder, names, entries in (("val", "dev", CIRR_VAL_IMAGES, cirr_val_entries()),
                                          ("test1", "test1", CIRR_TEST_IMAGES, cirr_test_entries())):
        write_json(root / "cirr" / "image_splits" / f"split.rc2.{split}.json",
                   {name: f"./{folder}/{name}.png" for name in names})
        write_json(root / "cirr" / "captions" / f"cap.rc2.{split}.json", entries)
        touch_images(root / folder, [f"{name}.png" for name in names])
    return root


FIQ_GALLERY = ["B000000001", "B000000002", "B000000003", "B000000004"]


def fashioniq_val_entries() -> list[dict]:
    return [
        {"target": "B000000002", "candidate": "B000000001", "captions": ["is red", "has no sleeves"]},
        {"target": "B000000004", "candidate": "B000000003", "captions": ["", "is longer"]},
    ]


def make_fashioniq(root: Path, suffix: str = ".jpg") -> Path:
    """FashionIQ layout: dress val (4 images, 2 queries) and dress test (1 query)."""
    write_json(root / "image_splits" / "split.dress.val.json", FIQ_GALLERY, indent=4)
    write_json(root / "captions" / "cap.dress.val.json", fashioniq_val_entries(), indent=4)
    write_json(root / "image_splits" / "split.dress.test.json", FIQ_GALLERY[:2], indent=4)
    write_json(root / "captions" / "cap.dress.test.json",
               [{"candidate": "B000000002", "captions": ["is blue", "is shorter"]}], indent=4)
    touch_images(root / "images", [asin + suffix for asin in FIQ_GALLERY])
    return root


CIRCO_IMAGE_INFO = [{"id": 139, "file_name": "000000000139.jpg"}, {"id": 57, "file_name": "000000000057.jpg"},
                    {"id": 1000, "file_name": "000000001000.jpg"}, {"id": 42, "file_name": "000000000042.jpg"}]


def circo_val_entries() -> list[dict]:
    return [
        {"reference_img_id": 139, "target_img_id": 57, "relative_caption": "is at night",
         "shared_concept": "a dog", "gt_img_ids": [57, 1000], "id": 0, "semantic_aspects": ["addition"]},
        {"reference_img_id": 57, "target_img_id": 42, "relative_caption": "has two of them",
         "shared_concept": "a cat", "gt_img_ids": [42], "id": 1, "semantic_aspects": []},
    ]


def circo_test_entries() -> list[dict]:
    return [{"reference_img_id": 1000, "relative_caption": "is red", "shared_concept": "a car", "id": 0}]


def make_circo(root: Path, image_info: bool = True) -> Path:
    """CIRCO layout: 2 val queries, 1 test query and (optionally) a 4-image COCO image-info file."""
    write_json(root / "annotations" / "val.json", circo_val_entries(), indent=4)
    write_json(root / "annotations" / "test.json", circo_test_entries(), indent=4)
    if image_info:
        write_json(root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json",
                   {"info": {}, "images": CIRCO_IMAGE_INFO})
        touch_images(root / "COCO2017_unlabeled" / "unlabeled2017", [i["file_name"] for i in CIRCO_IMAGE_INFO])
    return root


def make_caption_csv(root: Path, sep: str = "\t") -> Path:
    """A caption CSV with two rows whose images exist under ``root/img``."""
    touch_images(root / "img", ["a.jpg", "b.jpg"])
    return write_lines(root / "captions.csv", [f"filepath{sep}title", f"img/a.jpg{sep}a red car",
                                               f"img/b.jpg{sep}a person walking"])
