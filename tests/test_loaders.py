"""Dataset loaders on the real published annotation files and on small hand-made layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from irkit.data import load_dataset
from irkit.data.captions import load_caption_csv, write_caption_csv
from irkit.data.circo import load_circo
from irkit.data.cirr import load_cirr
from irkit.data.fashioniq import load_fashioniq, load_fashioniq_all
from irkit.data.records import CaptionRecord, TrafficLabel
from irkit.data.traffic import load_traffic, read_label_file, read_traffic_ground_truth, write_label_file
from irkit.errors import InputError

from loader_fixtures import (
    CIRCO_IMAGE_INFO,
    CIRR_TEST_IMAGES,
    CIRR_VAL_IMAGES,
    FIQ_GALLERY,
    PERSON_ATTR,
    TRAFFIC_QUERIES,
    make_caption_csv,
    make_circo,
    make_cirr,
    make_fashioniq,
    make_traffic,
    write_lines,
)


# ---------------------------------------------------------------- real published annotations

@pytest.mark.parametrize("split, n_queries, n_images", [("val", 4181, 2297), ("test1", 4148, 2315)])
def test_real_cirr_sizes_and_fields(real_benchmarks: Path, split: str, n_queries: int, n_images: int) -> None:
    root = real_benchmarks / "cirr"
    data = load_dataset("cirr", root, split)
    assert len(data.queries) == n_queries
    assert len(data.gallery) == n_images == len(data.image_paths)
    raw = json.loads((root / "cirr" / "captions" / f"cap.rc2.{split}.json").read_text())
    first, last = data.queries[0], data.queries[-1]
    assert first.query_id == str(raw[0]["pairid"]) and last.query_id == str(raw[-1]["pairid"])
    assert first.reference == raw[0]["reference"] and first.captions == (raw[0]["caption"],)
    assert first.subset == tuple(raw[0]["img_set"]["members"]) and len(first.subset) == 6
    folder = "dev" if split == "val" else "test1"
    assert data.image_path(first.reference) == (root / folder / f"{first.reference}.png").absolute()
    if split == "val":
        assert first.target == raw[0]["target_hard"] == "dev-1028-1-img1"
        assert all(q.ground_truths == (q.target,) for q in data.queries)
    else:
        assert all(q.target is None and q.ground_truths == () for q in data.queries)
    # the published test1 file holds one blank caption (pairid 27098); it must survive unchanged
    if split == "test1":
        assert {q.query_id: q.captions for q in data.queries}["27098"] == (" ",)


@pytest.mark.parametrize("category, n_gallery, n_queries", [("dress", 3817, 2017), ("shirt", 6346, 2038),
                                                            ("toptee", 5373, 1961)])
def test_real_fashioniq_val_sizes(real_benchmarks: Path, category: str, n_gallery: int, n_queries: int) -> None:
    root = real_benchmarks / "fashioniq"
    data = load_fashioniq(root, "val", category)
    assert (len(data.gallery), len(data.queries)) == (n_gallery, n_queries)
    raw = json.loads((root / "captions" / f"cap.{category}.val.json").read_text())
    for index in (0, len(raw) - 1):
        query = data.queries[index]
        assert query.query_id == str(index)
        assert (query.reference, query.target) == (raw[index]["candidate"], raw[index]["target"])
        assert query.captions == tuple(raw[index]["captions"]) and query.category == category
    assert data.image_path(data.gallery[0]) == (root / "images" / f"{data.gallery[0]}.jpg").absolute()


def test_real_fashioniq_all_splits(real_benchmarks: Path) -> None:
    root = real_benchmarks / "fashioniq"
    for split in ("train", "test"):
        by_category = load_fashioniq_all(root, split)
        assert sorted(by_category) == ["dress", "shirt", "toptee"]
        for category, data in by_category.items():
            raw = json.loads((root / "captions" / f"cap.{category}.{split}.json").read_text())
            gallery = json.loads((root / "image_splits" / f"split.{category}.{split}.json").read_text())
            assert len(data.queries) == len(raw) and data.gallery == gallery
            if split == "test":
                assert all(q.target is None and q.ground_truths == () for q in data.queries)
    # the published shirt val file has an empty first caption at index 1928: kept as published
    assert load_fashioniq(root, "val", "shirt").queries[1928].captions[0] == ""


def _circo_ids_in_annotations(root: Path) -> list[int]:
    ids: set[int] = set()
    for split in ("val", "test"):
        for entry in json.loads((root / "annotations" / f"{split}.json").read_text()):
            ids.add(entry["reference_img_id"])
            ids.update(entry.get("gt_img_ids", []))
    return sorted(ids)


def test_real_circo_with_stand_in_gallery(real_benchmarks: Path) -> None:
    root = real_benchmarks / "circo"
    stand_in = _circo_ids_in_annotations(root)
    val = load_circo(root, "val", gallery_ids=stand_in)
    assert len(val.queries) == 220
    gt_counts = [len(q.ground_truths) for q in val.queries]
    assert min(gt_counts) == 1 and max(gt_counts) == 14
    assert val.queries[0].ground_truths == ("355099", "528417", "534704")
    assert val.queries[0].reference == "271520" and val.queries[0].target == "355099"
    assert val.gallery == [str(i) for i in stand_in]
    assert val.image_path("271520").name == "000000271520.jpg"
    test = load_dataset("circo", root, "test", gallery_ids=stand_in)
    assert len(test.queries) == 800 and [q.query_id for q in test.queries] == [str(i) for i in range(800)]
    assert all(q.target is None and q.ground_truths == () for q in test.queries)


def test_real_circo_without_gallery_is_explained(real_benchmarks: Path) -> None:
    with pytest.raises(InputError, match="gallery_ids"):
        load_circo(real_benchmarks / "circo", "val")


# ---------------------------------------------------------------- hand-made traffic layout

def test_traffic_train_val_labels(tmp_path: Path) -> None:
    root = make_traffic(tmp_path / "traffic")
    train = load_traffic(root, "train")
    assert [lab.image for lab in train.labels] == ["v001.jpg", "p001.jpg", "v002.jpg"]
    assert [lab.kind for lab in train.labels] == ["vehicle", "person", "vehicle"]
    assert [lab.line for lab in train.labels] == [1, 2, 3]
    assert train.labels[1].attr == PERSON_ATTR and train.labels[0].aug is None
    assert train.image_path("v001.jpg") == root / "train" / "train_images" / "v001.jpg"
    val = load_dataset("traffic", root, "val")
    assert val.labels[0] == TrafficLabel(image="v101.jpg", attr="A red BYD SUV.", text="A red SUV made by BYD.",
                                         kind="vehicle", line=1, aug="A crimson BYD sport utility vehicle.")


def test_traffic_label_file_round_trip(tmp_path: Path) -> None:
    root = make_traffic(tmp_path / "traffic")
    labels = read_label_file(root / "val" / "val_label.txt")
    out = tmp_path / "aug" / "val_label.txt"
    write_label_file(out, labels)
    assert out.read_text(encoding="utf-8") == (root / "val" / "val_label.txt").read_text(encoding="utf-8")
    mixed = [labels[0], TrafficLabel("x.jpg", "Bus", "A bus.", "vehicle", 2)]
    write_label_file(out, mixed)
    assert out.read_text(encoding="utf-8").splitlines()[1] == "x.jpg$Bus$A bus."
    assert [lab.aug for lab in read_label_file(out)] == [labels[0].aug, None]
    before = out.read_text(encoding="utf-8")
    with pytest.raises(InputError, match=r"'\$' or line break"):
        write_label_file(out, [TrafficLabel("y.jpg", "Bus", "costs $5", "vehicle", 1)])
    assert out.read_text(encoding="utf-8") == before  # atomic: nothing half-written


def test_traffic_test_split(tmp_path: Path) -> None:
    root = make_traffic(tmp_path / "traffic")
    test = load_traffic(root, "test")
    assert test.queries == TRAFFIC_QUERIES
    assert test.gallery == ["person_0001.jpg", "vehicle_0001.jpg", "vehicle_0002.jpg"]  # sorted, .txt skipped
    assert test.ground_truth == {"A white Audi sedan.": ["vehicle_0001.jpg", "vehicle_0002.jpg"],
                                 "A man in a red coat.": ["person_0001.jpg"]}
    assert read_traffic_ground_truth(root / "test" / "test_ground_truth.txt") == test.ground_truth
    no_gt = load_traffic(make_traffic(tmp_path / "no_gt", ground_truth=False), "test")
    assert no_gt.ground_truth is None


def test_traffic_trailing_blank_lines_and_crlf_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "label.txt"
    path.write_bytes(b"a.jpg$Bus$A bus.\r\nb.jpg$Car$A car.\r\n\r\n\n")
    labels = read_label_file(path)
    assert [(lab.image, lab.text, lab.line) for lab in labels] == [("a.jpg", "A bus.", 1), ("b.jpg", "A car.", 2)]


def test_traffic_without_image_check(tmp_path: Path) -> None:
    root = make_traffic(tmp_path / "traffic")
    write_lines(root / "train" / "train_label.txt", ["absent.jpg$Bus$A bus."])
    assert [lab.image for lab in load_traffic(root, "train", check_images=False).labels] == ["absent.jpg"]
    with pytest.raises(InputError, match=r"labelled images not found \(1 missing\)"):
        load_traffic(root, "train")


# ---------------------------------------------------------------- hand-made CIR layouts

def test_cirr_small_layout_with_images(tmp_path: Path) -> None:
    root = make_cirr(tmp_path / "cirr")
    val = load_cirr(root, "val", check_images=True)
    assert [q.query_id for q in val.queries] == ["7", "9"]
    assert val.gallery == CIRR_VAL_IMAGES
    assert val.queries[1].target == CIRR_VAL_IMAGES[5] and val.queries[1].reference == CIRR_VAL_IMAGES[2]
    assert val.image_path(CIRR_VAL_IMAGES[7]) == (root / "dev" / f"{CIRR_VAL_IMAGES[7]}.png").absolute()
    test = load_cirr(root, "test1", check_images=True)
    assert test.gallery == CIRR_TEST_IMAGES and test.queries[0].target is None
    (root / "dev" / f"{CIRR_VAL_IMAGES[4]}.png").unlink()
    with pytest.raises(InputError, match=r"CIRR images not found \(1 missing\)"):
        load_cirr(root, "val", check_images=True)


def test_cirr_symlinked_image_folder_is_accepted(tmp_path: Path) -> None:
    root = make_cirr(tmp_path / "cirr")
    (root / "dev").rename(tmp_path / "elsewhere")
    (root / "dev").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert len(load_cirr(root, "val", check_images=True).gallery) == len(CIRR_VAL_IMAGES)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_fashioniq_small_layout(tmp_path: Path, suffix: str) -> None:
    root = make_fashioniq(tmp_path / "fiq", suffix=suffix)
    val = load_fashioniq(root, "val", "dress", check_images=True)
    assert val.gallery == FIQ_GALLERY and val.category == "dress"
    assert [(q.query_id, q.reference, q.target) for q in val.queries] == [
        ("0", "B000000001", "B000000002"), ("1", "B000000003", "B000000004")]
    assert val.queries[1].captions == ("", "is longer")
    assert val.image_path("B000000004").name == "B000000004" + suffix
    test = load_dataset("fashioniq", root, "test", category="dress")
    assert test.queries[0].target is None and test.gallery == FIQ_GALLERY[:2]


def test_circo_small_layout_with_image_info(tmp_path: Path) -> None:
    root = make_circo(tmp_path / "circo")
    val = load_circo(root, "val", check_images=True)
    assert val.gallery == [str(i["id"]) for i in CIRCO_IMAGE_INFO]  # file order, not sorted
    assert val.queries[0].ground_truths == ("57", "1000") and val.queries[1].shared_concept == "a cat"
    expected_path = (root / "COCO2017_unlabeled" / "unlabeled2017" / "000000000139.jpg").absolute()
    assert val.image_path("139") == expected_path
    override = load_circo(root, "test", gallery_ids=["1000", 139])
    assert override.gallery == ["1000", "139"] and override.queries[0].reference == "1000"


# ---------------------------------------------------------------- caption CSV

def test_caption_csv_load(tmp_path: Path) -> None:
    path = make_caption_csv(tmp_path)
    records = load_caption_csv(path, root=tmp_path)
    assert records == [CaptionRecord((tmp_path / "img" / "a.jpg").absolute(), "a red car", 2),
                       CaptionRecord((tmp_path / "img" / "b.jpg").absolute(), "a person walking", 3)]
    comma = make_caption_csv(tmp_path / "comma", sep=",")
    assert [r.title for r in load_caption_csv(comma, sep=",", check_images=False)] == ["a red car",
                                                                                        "a person walking"]


def test_caption_csv_write_round_trip_matches_pandas(tmp_path: Path) -> None:
    pairs = [("img/a.jpg", 'a "quoted"\tcaption'), ("img/b.jpg", "two\nlines"), ("img/c.jpg", "plain")]
    out = tmp_path / "out.csv"
    assert write_caption_csv(out, pairs) == 3
    frame = pd.read_csv(out, sep="\t")  # what open_clip's CsvDataset does
    assert list(zip(frame["filepath"], frame["title"])) == pairs
    records = load_caption_csv(out, check_images=False)
    assert [(str(r.filepath), r.title) for r in records] == pairs
    assert [r.line for r in records] == [2, 3, 5]  # the second row spans lines 3-4
    write_caption_csv(tmp_path / "again.csv", records)
    assert (tmp_path / "again.csv").read_bytes() == out.read_bytes()


# ---------------------------------------------------------------- the generated demo data

def test_every_dataset_of_a_tiny_demo_loads(tmp_path: Path) -> None:
    """The demo generator writes the published layouts: every loader reads them, with images."""
    from irkit.data.demo import generate_demo

    out = tmp_path / "demo"
    counts = generate_demo(out, 0, "tiny", workers=1, progress=False)["counts"]

    traffic = counts["traffic"]
    for split in ("train", "val"):
        labels = load_traffic(out / "traffic", split).labels
        assert len(labels) == traffic[split]["images"]
        assert sum(lab.kind == "person" for lab in labels) == traffic[split]["persons"]
        assert sum(lab.kind == "vehicle" for lab in labels) == traffic[split]["vehicles"]
    test = load_traffic(out / "traffic", "test")
    assert (len(test.queries), len(test.gallery)) == (traffic["test"]["queries"], traffic["test"]["images"])
    assert test.ground_truth is not None and set(test.ground_truth) == set(test.queries)

    for split in ("train", "val", "test"):
        for category, data in load_fashioniq_all(out / "fashioniq", split, check_images=True).items():
            assert len(data.queries) == counts["fashioniq"][split][f"{category}_queries"]
            assert len(data.gallery) == counts["fashioniq"][split][f"{category}_images"]
    for split in ("train", "val", "test1"):
        cirr = load_cirr(out / "cirr", split, check_images=True)
        assert (len(cirr.queries), len(cirr.gallery)) == (counts["cirr"][split]["queries"],
                                                          counts["cirr"][split]["images"])
    for split in ("val", "test"):
        circo = load_circo(out / "circo", split, check_images=True)
        assert len(circo.queries) == counts["circo"][split]["queries"]
        assert len(circo.gallery) == counts["circo"]["gallery"]["images"]
    assert sum(len(q.ground_truths) for q in load_circo(out / "circo", "val").queries) == \
        counts["circo"]["val"]["ground_truths"]

    csv_files = sorted((out / "captions").glob("*.csv"))
    assert csv_files
    for csv_path in csv_files:
        records = load_caption_csv(csv_path, check_images=False)
        assert records and all(r.title.strip() for r in records)
        # paths are absolute or relative to the CSV's folder; either way the image is there
        assert all((csv_path.parent / r.filepath).is_file() for r in records), csv_path
