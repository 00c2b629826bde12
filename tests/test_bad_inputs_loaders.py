"""Every class of bad dataset input raises InputError naming the file, the line/field and the expectation.

Each case starts from a valid hand-made layout (``loader_fixtures``), breaks one thing, and
states the file, the 1-based line or JSON field, and the message text a user should see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from irkit.data import load_dataset
from irkit.data.captions import load_caption_csv
from irkit.data.circo import load_circo
from irkit.data.cirr import load_cirr
from irkit.data.fashioniq import load_fashioniq
from irkit.data.traffic import load_traffic
from irkit.errors import InputError

from loader_fixtures import (
    PERSON_ATTR,
    TRAFFIC_TRAIN_LINES,
    circo_test_entries,
    circo_val_entries,
    cirr_val_entries,
    fashioniq_val_entries,
    make_caption_csv,
    make_circo,
    make_cirr,
    make_fashioniq,
    make_traffic,
    write_json,
    write_lines,
)


@dataclass
class Case:
    """A broken input: ``build(tmp_path)`` returns the call that must fail."""

    build: Callable[[Path], Callable[[], object]]
    file: Optional[str]            # name of the file (or folder) the error must name
    expect: tuple[str, ...]        # substrings of the message
    line: Optional[int] = None
    field: Optional[str] = None


def _traffic_train(lines: list[str], check_images: bool = True):
    def build(tmp: Path):
        root = make_traffic(tmp / "traffic")
        write_lines(root / "train" / "train_label.txt", lines)
        return lambda: load_traffic(root, "train", check_images=check_images)
    return build


def _traffic_train_bytes(data: bytes):
    def build(tmp: Path):
        root = make_traffic(tmp / "traffic")
        (root / "train" / "train_label.txt").write_bytes(data)
        return lambda: load_traffic(root, "train")
    return build


def _traffic_test(file: str, lines: list[str]):
    def build(tmp: Path):
        root = make_traffic(tmp / "traffic")
        write_lines(root / "test" / file, lines)
        return lambda: load_traffic(root, "test")
    return build


def _csv(text: str, **kwargs):
    def build(tmp: Path):
        make_caption_csv(tmp)  # creates the images
        path = tmp / "captions.csv"
        path.write_text(text, encoding="utf-8")
        return lambda: load_caption_csv(path, root=tmp, **kwargs)
    return build


def _csv_relative_to_its_folder(tmp: Path):
    make_caption_csv(tmp)  # images in tmp/img
    path = write_lines(tmp / "captions" / "demo.csv", ["filepath\ttitle", "../img/a.jpg\ta red car"])
    return lambda: load_caption_csv(path)  # root=None: opened from the working directory


def _cirr_val(mutate: Callable[[list], object]):
    def build(tmp: Path):
        root = make_cirr(tmp / "cirr")
        entries = cirr_val_entries()
        mutate(entries)
        write_json(root / "cirr" / "captions" / "cap.rc2.val.json", entries)
        return lambda: load_cirr(root, "val")
    return build


def _cirr_file(relative: str, text: str):
    def build(tmp: Path):
        root = make_cirr(tmp / "cirr")
        (root / relative).write_text(text, encoding="utf-8")
        return lambda: load_dataset("cirr", root, "val")
    return build


def _circo(split: str, entries: list, image_info: bool = True, **kwargs):
    def build(tmp: Path):
        root = make_circo(tmp / "circo", image_info=image_info)
        write_json(root / "annotations" / f"{split}.json", entries, indent=4)
        return lambda: load_circo(root, split, **kwargs)
    return build


def _fashioniq(caption_entries=None, gallery=None, category="dress", bytes_=None):
    def build(tmp: Path):
        root = make_fashioniq(tmp / "fiq")
        if caption_entries is not None:
            write_json(root / "captions" / "cap.dress.val.json", caption_entries, indent=4)
        if gallery is not None:
            write_json(root / "image_splits" / "split.dress.val.json", gallery, indent=4)
        if bytes_ is not None:
            (root / "captions" / "cap.dress.val.json").write_bytes(bytes_)
        return lambda: load_fashioniq(root, "val", category)
    return build


def _with(entries: list, index: int, **changes) -> list:
    entries[index].update(changes)
    return entries


def _without(entries: list, index: int, key: str) -> list:
    del entries[index][key]
    return entries


V0, P0, V1 = TRAFFIC_TRAIN_LINES

CASES = {
    # ---- traffic label files
    "traffic-tab-separated": Case(_traffic_train([V0, "p001.jpg\tBus\tA bus."]), "train_label.txt",
                                  ("expected 'img$attr$text' separated by '$'", "found a tab-separated line"),
                                  line=2),
    "traffic-comma-separated": Case(_traffic_train(["v001.jpg,Bus,A bus."]), "train_label.txt",
                                    ("found a comma-separated line",), line=1),
    "traffic-field-count": Case(_traffic_train([V0, P0, "v002.jpg$A bus."]), "train_label.txt",
                                ("found 2 '$'-separated fields", "expected 3"), line=3),
    "traffic-empty-text": Case(_traffic_train([V0, "p001.jpg$Bus$  "]), "train_label.txt",
                               ("empty text",), line=2, field="text"),
    "traffic-empty-image-name": Case(_traffic_train(["$Bus$A bus."]), "train_label.txt",
                                     ("empty image name",), line=1, field="img"),
    "traffic-person-flag-count": Case(_traffic_train([V0, "p001.jpg$" + PERSON_ATTR[:-2] + "$A man."]),
                                      "train_label.txt", ("has 20 comma-separated flags", "expected 21"),
                                      line=2, field="attr"),
    "traffic-person-flag-value": Case(_traffic_train(["p001.jpg$" + "2" + PERSON_ATTR[1:] + "$A man."]),
                                      "train_label.txt", ("flag '2' is not 0 or 1",), line=1, field="attr"),
    "traffic-duplicate-image": Case(_traffic_train([V0, P0, V0.replace("Audi sedan", "Audi car")]),
                                    "train_label.txt", ("duplicate image name 'v001.jpg'", "first on line 1"),
                                    line=3, field="img"),
    "traffic-missing-image": Case(_traffic_train([V0, "gone.jpg$Bus$A bus."]), "train_label.txt",
                                  ("labelled images not found (1 missing)", "gone.jpg"), line=2),
    "traffic-escaping-path": Case(_traffic_train([V0, "../secret.jpg$Bus$A bus."], check_images=False),
                                  "train_label.txt", ("'../secret.jpg' points outside",), line=2, field="img"),
    "traffic-blank-line-inside": Case(_traffic_train([V0, "", P0]), "train_label.txt",
                                      ("blank line inside the file",), line=2),
    "traffic-non-utf8": Case(_traffic_train_bytes(b"v001.jpg$Bus$A bus.\nv002.jpg$Bus$A b\xe9s.\n"),
                             "train_label.txt", ("not UTF-8", "0xe9"), line=2),
    "traffic-empty-test-text": Case(_traffic_test("test_text.txt", []), "test_text.txt",
                                    ("empty query file", "one text query per line")),
    "traffic-gt-unknown-image": Case(_traffic_test("test_ground_truth.txt", [
        "A white Audi sedan.$vehicle_0009.jpg", "A man in a red coat.$person_0001.jpg"]),
        "test_ground_truth.txt", ("'vehicle_0009.jpg' is not in the test gallery",), line=1),
    "traffic-gt-missing-query": Case(_traffic_test("test_ground_truth.txt", ["A white Audi sedan.$vehicle_0001.jpg"]),
                                     "test_ground_truth.txt", ("line 2 of the query file", "has no ground-truth line")),
    # ---- caption CSV
    "csv-separator-mismatch": Case(_csv("filepath,title\nimg/a.jpg,a red car\n"), "captions.csv",
                                   ("header has 1 column 'filepath,title'", "looks comma-separated",
                                    "separator is '\\t'"), line=1),
    "csv-missing-column": Case(_csv("filepath\tcaption\nimg/a.jpg\ta red car\n"), "captions.csv",
                               ("missing column(s) 'title'", "'filepath', 'caption'"), line=1),
    "csv-empty-caption": Case(_csv("filepath\ttitle\nimg/a.jpg\ta red car\nimg/b.jpg\t \n"), "captions.csv",
                              ("empty caption",), line=3, field="title"),
    "csv-field-count": Case(_csv("filepath\ttitle\nimg/a.jpg\ta red car\textra\n"), "captions.csv",
                            ("found 3 fields; expected 2",), line=2),
    "csv-missing-image": Case(_csv("filepath\ttitle\nimg/a.jpg\tok\nimg/zzz.jpg\ta cat\n"), "captions.csv",
                              ("images not found (1 missing)", "zzz.jpg"), line=3, field="filepath"),
    "csv-paths-relative-to-csv-folder": Case(_csv_relative_to_its_folder, "demo.csv",
                                             ("exist relative to the CSV's folder", "working directory"),
                                             line=2, field="filepath"),
    "csv-escaping-path": Case(_csv("filepath\ttitle\n../../etc/passwd\ta cat\n"), "captions.csv",
                              ("points outside",), line=2, field="filepath"),
    # ---- CIRR
    "cirr-malformed-json": Case(_cirr_file("cirr/captions/cap.rc2.val.json", '[\n  {"pairid": 7,\n  }\n]'),
                                "cap.rc2.val.json", ("malformed JSON",), line=3),
    "cirr-missing-img-set": Case(_cirr_val(lambda e: _without(e, 1, "img_set")), "cap.rc2.val.json",
                                 ("has no 'img_set'", "pairid 9"), field="[1].img_set"),
    "cirr-members-length": Case(_cirr_val(lambda e: e[0]["img_set"].update(members=e[0]["img_set"]["members"][:5])),
                                "cap.rc2.val.json", ("img_set has 5 members", "expected 6"),
                                field="[0].img_set.members"),
    "cirr-target-not-in-subset": Case(_cirr_val(lambda e: _with(e, 0, target_hard="dev-7-0-img1")),
                                      "cap.rc2.val.json", ("target_hard 'dev-7-0-img1'", "not among img_set.members"),
                                      field="[0].img_set.members"),
    "cirr-reference-not-in-split": Case(_cirr_val(lambda e: _with(e, 1, reference="dev-99-0-img0")),
                                        "cap.rc2.val.json", ("'dev-99-0-img0'", "not in split.rc2.val.json"),
                                        field="[1].reference"),
    "cirr-duplicate-pairid": Case(_cirr_val(lambda e: _with(e, 1, pairid=7)), "cap.rc2.val.json",
                                  ("duplicate pairid 7",), field="[1].pairid"),
    "cirr-escaping-split-path": Case(_cirr_file("cirr/image_splits/split.rc2.val.json",
                                                json.dumps({"dev-0-0-img0": "../../outside.png"})),
                                     "split.rc2.val.json", ("points outside",), field="dev-0-0-img0"),
    # ---- CIRCO
    "circo-id-not-index": Case(_circo("val", _with(circo_val_entries(), 1, id=5)), "val.json",
                               ("id is 5 at index 1", "expected id == its index"), field="[1].id"),
    "circo-gt-first-not-target": Case(_circo("val", _with(circo_val_entries(), 0, gt_img_ids=[1000, 57])),
                                      "val.json", ("expected gt_img_ids[0] == target_img_id",),
                                      field="[0].gt_img_ids[0]"),
    "circo-test-extra-keys": Case(_circo("test", _with(circo_test_entries(), 0, target_img_id=57)), "test.json",
                                  ("extra key(s) target_img_id", "is this the val file?"),
                                  field="[0].target_img_id"),
    "circo-reference-not-in-gallery": Case(_circo("val", _with(circo_val_entries(), 1, reference_img_id=777)),
                                           "val.json", ("image id 777", "not in the gallery"),
                                           field="[1].reference_img_id"),
    "circo-no-gallery": Case(_circo("val", circo_val_entries(), image_info=False),
                             "image_info_unlabeled2017.json", ("no gallery_ids given",)),
    # ---- FashionIQ
    "fashioniq-unknown-category": Case(_fashioniq(category="dresses"), "fiq",
                                       ("unknown FashionIQ category 'dresses'", "dress, shirt, toptee"),
                                       field="category"),
    "fashioniq-one-caption": Case(_fashioniq(caption_entries=_with(fashioniq_val_entries(), 1, captions=["x"])),
                                  "cap.dress.val.json", ("found 1 captions; expected 2",), field="[1].captions"),
    "fashioniq-missing-target": Case(_fashioniq(caption_entries=_without(fashioniq_val_entries(), 0, "target")),
                                     "cap.dress.val.json", ("has no 'target'",), field="[0].target"),
    "fashioniq-target-not-in-gallery": Case(
        _fashioniq(caption_entries=_with(fashioniq_val_entries(), 1, target="B000000009")),
        "cap.dress.val.json", ("target 'B000000009' is not in the gallery split.dress.val.json",),
        field="[1].target"),
    "fashioniq-duplicate-gallery": Case(_fashioniq(gallery=["B000000001", "B000000002", "B000000001"]),
                                        "split.dress.val.json", ("duplicate image id 'B000000001'",
                                                                 "first at index 0"), field="[2]"),
    "fashioniq-non-utf8": Case(_fashioniq(bytes_=b'[{"candidate": "B1", "captions": ["caf\xe9", "x"]}]'),
                               "cap.dress.val.json", ("not UTF-8",)),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_explained(tmp_path: Path, case: Case) -> None:
    call = case.build(tmp_path)
    with pytest.raises(InputError) as caught:
        call()
    error, message = caught.value, str(caught.value)
    if case.file is not None:
        assert error.path is not None and Path(error.path).name == case.file, message
        assert case.file in message
    if case.line is not None:
        assert error.line == case.line, message
        assert f"line {case.line}" in message
    if case.field is not None:
        assert error.field == case.field, message
        assert f"field '{case.field}'" in message
    for text in case.expect:
        assert text in message, message


def test_every_case_names_a_line_or_field_or_lists_the_location() -> None:
    """A case without line/field must at least carry the location text in its expectations."""
    for name, case in CASES.items():
        located = case.line is not None or case.field is not None or any("line" in t for t in case.expect)
        assert located or name in {"traffic-empty-test-text", "circo-no-gallery", "fashioniq-non-utf8"}, name


def test_failed_load_of_valid_layout_would_not_raise(tmp_path: Path) -> None:
    """The untouched fixtures load, so each failure above comes from the one thing broken."""
    assert len(load_traffic(make_traffic(tmp_path / "t"), "train").labels) == 3
    assert len(load_caption_csv(make_caption_csv(tmp_path / "c"), root=tmp_path / "c")) == 2
    assert len(load_cirr(make_cirr(tmp_path / "r"), "val").queries) == 2
    assert len(load_circo(make_circo(tmp_path / "o"), "val").queries) == 2
    assert len(load_fashioniq(make_fashioniq(tmp_path / "f"), "val", "dress").queries) == 2
