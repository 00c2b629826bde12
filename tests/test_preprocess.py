"""Traffic preprocessing: attribute parsing, zero-shot augmentation, training CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from irkit.cli import main as cli_main
from irkit.data.records import TrafficLabel
from irkit.data.traffic import read_label_file
from irkit.errors import InputError
from irkit.traffic.attributes import (
    VehicleAttributes,
    VehicleVocab,
    count_attributes,
    default_vocab,
    load_car_attribute,
    parse_vehicle_attr,
    split_labels,
)
from irkit.traffic.augment import (
    augment_labels,
    augment_labels_detailed,
    candidate_attributes,
    caption_prefix,
    select_best,
)
from irkit.traffic.training_csv import build_training_csv, read_csv_sidecar

PERSON_ATTR = ",".join(["0", "1", "0"] * 7)  # 21 flags

# Real challenge label style: attr "A white Audi." / text "This is a white Audi.".
REAL_STYLE_LINES = [
    "pmitevanhx.jpg$A white Audi.$This is a white Audi.",
    f"qwertyuiop.jpg${PERSON_ATTR}$A female pedestrian wearing a black coat.",
    "asdfghjklz.jpg$Sedan$This is a Sedan.",
    "zxcvbnmlkj.jpg$Balong Heavy Truck$A Balong Heavy Truck.",
    "poiuytrewq.jpg$black Golden Dragon$This is a black Golden Dragon.",
    "lkjhgfdsam.jpg$A red Land Rover SUV.$This is a red Land Rover SUV.",
    "mnbvcxzlkj.jpg$A white Audi.$A white Audi.",
]


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _label(image: str, attr: str, text: str, kind: str = "vehicle", line: int = 1, aug=None) -> TrafficLabel:
    return TrafficLabel(image=image, attr=attr, text=text, kind=kind, line=line, aug=aug)


SMALL_VOCAB = VehicleVocab(colors=("white", "black"), types=("Sedan", "SUV"), brands=("Audi", "BMW"),
                           type_synonyms={"Heavy Truck": "SUV"})


# ------------------------------------------------------------------------------ parsing

@pytest.mark.parametrize("phrase, expected", [
    ("white Audi", ("white", "Audi", None)),
    ("Sedan", (None, None, "Sedan")),
    ("Balong Heavy Truck", (None, "Balong", "Truck")),
    ("black Golden Dragon", ("black", "Golden Dragon", None)),
    ("red Land Rover SUV", ("red", "Land Rover", "SUV")),
    ("A white Audi.", ("white", "Audi", None)),
    ("This is a red Land Rover SUV.", ("red", "Land Rover", "SUV")),
    ("An orange Audi.", ("orange", "Audi", None)),
    ("WHITE audi sedan", ("white", "audi", "Sedan")),        # closed sets canonical; the brand as spelled
    ("BAOJUN SUV", (None, "BAOJUN", "SUV")),                 # a known brand keeps the label's spelling
    ("grey Light Truck", ("grey", None, "Truck")),           # synonym, no brand
    ("pink Style", ("pink", "Style", None)),                 # real colour outside the closed set
    ("Hongyan", (None, "Hongyan", None)),
])
def test_parse_vehicle_attr(phrase: str, expected: tuple) -> None:
    attrs = parse_vehicle_attr(phrase, default_vocab())
    assert (attrs.color, attrs.brand, attrs.type) == expected


def test_parse_closed_colors_only() -> None:
    attrs = parse_vehicle_attr("pink Style", default_vocab(), open_colors=False)
    assert (attrs.color, attrs.brand, attrs.type) == (None, "pink Style", None)


def test_default_vocab_sizes() -> None:
    vocab = default_vocab()
    assert (len(vocab.colors), len(vocab.types), len(vocab.brands)) == (11, 6, 65)


def test_split_and_count_real_style_labels(tmp_path: Path) -> None:
    labels = read_label_file(_write(tmp_path / "train_label.txt", REAL_STYLE_LINES))
    vehicles, persons = split_labels(labels)
    assert [lab.image for lab in persons] == ["qwertyuiop.jpg"]
    assert len(vehicles) == 6
    counts = count_attributes(labels, default_vocab())
    # Hand count: colours white x2, black, red; types Sedan, Truck, SUV; brands Audi x2,
    # Balong, Golden Dragon, Land Rover. Sorted by frequency, then name.
    assert counts.to_car_attribute() == {
        "Colors": ["white", "black", "red"],
        "Types": ["Sedan", "SUV", "Truck"],
        "Brands": ["Audi", "Balong", "Golden Dragon", "Land Rover"],
    }
    assert (counts.num_vehicles, counts.num_persons) == (6, 1)
    assert dict(counts.slot_missing) == {"color": 2, "type": 3, "brand": 1}


def test_cli_attributes_writes_vocab_and_split(tmp_path: Path, capsys) -> None:
    train = _write(tmp_path / "train_label.txt", REAL_STYLE_LINES[:4])
    val = _write(tmp_path / "val_label.txt", REAL_STYLE_LINES[4:])
    out = tmp_path / "car_attribute.json"
    code = cli_main(["preprocess", "attributes", "--labels", str(train), str(val), "--out", str(out),
                     "--split-out", str(tmp_path / "split")])
    assert code == 0
    assert json.loads(out.read_text()) == {
        "Colors": ["white", "black", "red"], "Types": ["Sedan", "SUV", "Truck"],
        "Brands": ["Audi", "Balong", "Golden Dragon", "Land Rover"]}
    vehicle_lines = (tmp_path / "split" / "vehicle_label.txt").read_text().splitlines()
    person_lines = (tmp_path / "split" / "person_label.txt").read_text().splitlines()
    assert vehicle_lines == [line for line in REAL_STYLE_LINES if PERSON_ATTR not in line]
    assert person_lines == [REAL_STYLE_LINES[1]]
    # The vocabulary file reads back as a candidate vocabulary (with the bundled synonyms).
    vocab = load_car_attribute(out)
    assert vocab.colors == ("white", "black", "red") and vocab.type_synonyms["Heavy Truck"] == "Truck"


def test_cli_attributes_keeps_the_labels_brand_spelling(tmp_path: Path) -> None:
    """The vocabulary feeds captions that must match the queries' text: ``BAOJUN`` (as the real
    labels spell it) is not re-cased to the bundled vocabulary's ``Baojun``."""
    train = _write(tmp_path / "train_label.txt", ["a1.jpg$white BAOJUN SUV$This is a white BAOJUN SUV.",
                                                   "a2.jpg$SKODA$This is a SKODA."])
    out = tmp_path / "car_attribute.json"
    assert cli_main(["preprocess", "attributes", "--labels", str(train), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["Brands"] == ["BAOJUN", "SKODA"]


def test_load_car_attribute_rejects_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "car_attribute.json"
    path.write_text(json.dumps({"Colors": ["white"], "Brands": []}))
    with pytest.raises(InputError, match="'Types'"):
        load_car_attribute(path)
    path.write_text(json.dumps({"Colors": ["white", "white"], "Types": ["Sedan"], "Brands": []}))
    with pytest.raises(InputError, match="duplicate"):
        load_car_attribute(path)


# ------------------------------------------------------------------------------ candidates

@pytest.mark.parametrize("attrs, expected_count", [
    (VehicleAttributes(None, "Audi", "Sedan"), 11),          # colour missing
    (VehicleAttributes(None, "Audi", None), 11 * 6),         # colour + type missing
    (VehicleAttributes("white", None, None), 6 * 65),        # brand + type missing, colour present
    (VehicleAttributes(None, None, None), 11 * 6 * 65),      # all missing
    (VehicleAttributes("white", "Audi", None), 6),           # type missing
    (VehicleAttributes(None, None, "Sedan"), 11),            # colour + brand missing: brand stays missing
    (VehicleAttributes("white", None, "Sedan"), 0),          # colour and type known: unchanged
    (VehicleAttributes("white", "Audi", "Sedan"), 0),
])
def test_candidate_counts(attrs: VehicleAttributes, expected_count: int) -> None:
    assert len(candidate_attributes(attrs, default_vocab())) == expected_count


def test_candidates_hand_enumerated() -> None:
    got = [c.phrase() for c in candidate_attributes(VehicleAttributes(None, "Audi", None), SMALL_VOCAB)]
    assert got == ["white Audi Sedan", "white Audi SUV", "black Audi Sedan", "black Audi SUV"]
    got = [c.phrase() for c in candidate_attributes(VehicleAttributes("black", None, None), SMALL_VOCAB)]
    assert got == ["black Audi Sedan", "black Audi SUV", "black BMW Sedan", "black BMW SUV"]
    got = [c.phrase() for c in candidate_attributes(VehicleAttributes(None, None, "SUV"), SMALL_VOCAB)]
    assert got == ["white SUV", "black SUV"]


@pytest.mark.parametrize("text, prefix", [
    ("This is a white Audi.", "This is a "), ("This is an orange Audi.", "This is a "),
    ("A white Audi.", "A "), ("An orange Audi.", "A "), ("white Audi", ""),
])
def test_caption_prefix(text: str, prefix: str) -> None:
    assert caption_prefix(text) == prefix


class _CountingEncoder:
    """Fake text encoder: a caption's embedding is a fixed unit vector from a lookup table."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_select_best_takes_argmax_and_encodes_each_set_once() -> None:
    table = {"a": _unit(1, 0, 0), "b": _unit(0, 1, 0), "c": _unit(0, 0, 1), "d": _unit(1, 1, 0)}
    encoder = _CountingEncoder(table)
    images = np.stack([_unit(0.1, 1, 0), _unit(0, 0.2, 1), _unit(1, 0.9, 0), _unit(1, 0, 0)])
    sets = [["a", "b", "c"], ["a", "b", "c"], ["a", "d"], ["b", "c"]]
    best = select_best(images, sets, encoder, progress=False)
    # Hand: image0 ~ b; image1 ~ c; image2 (1, .9, 0) closest to d = (1,1,0)/sqrt2; image3 = a,
    # not in its set {b, c}: both score 0, the first candidate wins the tie.
    assert best == [1, 2, 1, 0]
    assert sorted(map(tuple, encoder.calls)) == [("a", "b", "c"), ("a", "d"), ("b", "c")]


class _FakeLoaded:
    """Stands in for a LoadedModel: text embeddings from a table, image embeddings patched."""

    weights_id = "fake"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.encode_texts = _CountingEncoder(table)


def _fake_image_encoder(embedding_by_name: dict[str, np.ndarray], calls: list):
    def encode_image_files(loaded, paths, batch_size=64, num_workers=0, cache_dir=None):
        calls.append([Path(p).name for p in paths])
        return np.stack([embedding_by_name[Path(p).name] for p in paths])
    return encode_image_files


def test_augment_labels_with_fake_scores(tmp_path: Path, monkeypatch) -> None:
    images = tmp_path / "images"
    images.mkdir()
    labels = [
        _label("v1.jpg", "Audi", "This is a Audi.", line=1),                 # colour + type missing
        _label("v2.jpg", "A white Audi Sedan.", "A white Audi Sedan.", line=2),  # complete
        _label("p1.jpg", PERSON_ATTR, "A man.", kind="person", line=3),
        _label("v3.jpg", "A black.", "A black.", line=4),                   # brand + type missing
    ]
    for label in labels:
        (images / label.image).write_bytes(b"x")
    # One embedding axis per candidate caption; each image points at the caption that must win.
    captions = ["This is a white Audi Sedan.", "This is a white Audi SUV.", "This is a black Audi Sedan.",
                "This is a black Audi SUV.", "A black Audi Sedan.", "A black Audi SUV.", "A black BMW Sedan.",
                "A black BMW SUV."]
    table = {c: np.eye(len(captions), dtype=np.float32)[i] for i, c in enumerate(captions)}
    image_embeddings = {"v1.jpg": table["This is a black Audi SUV."], "v3.jpg": table["A black BMW Sedan."]}
    calls: list = []
    import irkit.embeddings
    monkeypatch.setattr(irkit.embeddings, "encode_image_files", _fake_image_encoder(image_embeddings, calls))
    loaded = _FakeLoaded(table)
    result = augment_labels_detailed(labels, loaded, images, SMALL_VOCAB, progress=False)
    assert [lab.aug for lab in result.labels] == [
        "This is a black Audi SUV.", "A white Audi Sedan.", "A man.", "A black BMW Sedan."]
    assert calls == [["v1.jpg", "v3.jpg"]]          # only incomplete vehicles are encoded, once
    assert result.summary()["augmented"] == 2
    assert result.summary()["filled"] == {"color": 1, "brand": 1, "type": 2}
    # Everything but aug is unchanged.
    assert [(lab.image, lab.attr, lab.text, lab.line) for lab in result.labels] == \
        [(lab.image, lab.attr, lab.text, lab.line) for lab in labels]
    assert augment_labels(labels, loaded, images, SMALL_VOCAB)[0].aug == "This is a black Audi SUV."


def test_augment_missing_image_names_the_line(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    labels = [_label("gone.jpg", "Audi", "A Audi.", line=7)]
    with pytest.raises(InputError, match="line 7") as info:
        augment_labels(labels, _FakeLoaded({}), images, SMALL_VOCAB, source=tmp_path / "train_label.txt")
    assert info.value.line == 7


# ------------------------------------------------------------------------------ CSV

def _csv_labels(images: Path) -> list[TrafficLabel]:
    images.mkdir(parents=True, exist_ok=True)
    labels = [_label("v1.jpg", "A white Audi.", "This is a white Audi.", line=1, aug="This is a white Audi Sedan."),
              _label("p1.jpg", PERSON_ATTR, "A man, wearing a coat.", kind="person", line=2,
                     aug="A man, wearing a coat.")]
    for label in labels:
        (images / label.image).write_bytes(b"x")
    return labels


@pytest.mark.parametrize("sep", ["\t", ","])
def test_build_training_csv_columns_and_separator(tmp_path: Path, sep: str) -> None:
    import pandas as pd

    images = tmp_path / "images"
    labels = _csv_labels(images)
    out = build_training_csv(labels, images, tmp_path / "train.csv", caption="aug", sep=sep)
    frame = pd.read_csv(out, sep=sep)                       # what open_clip_train does
    assert list(frame.columns) == ["filepath", "title"]
    assert list(frame["filepath"]) == [str((images / "v1.jpg").resolve()), str((images / "p1.jpg").resolve())]
    assert list(frame["title"]) == ["This is a white Audi Sedan.", "A man, wearing a coat."]
    assert out.read_text().splitlines()[0] == f"filepath{sep}title"
    sidecar = read_csv_sidecar(out)
    assert (sidecar["csv_separator"], sidecar["csv_img_key"], sidecar["csv_caption_key"], sidecar["rows"]) == \
        (sep, "filepath", "title", 2)
    text_csv = build_training_csv(labels, images, tmp_path / "text.csv", caption="text", sep=sep)
    assert list(pd.read_csv(text_csv, sep=sep)["title"]) == ["This is a white Audi.", "A man, wearing a coat."]


def test_build_training_csv_errors(tmp_path: Path) -> None:
    images = tmp_path / "images"
    labels = _csv_labels(images)
    (images / "p1.jpg").unlink()
    with pytest.raises(InputError, match=r"line 2 \('p1.jpg'\)") as info:
        build_training_csv(labels, images, tmp_path / "train.csv", source=tmp_path / "train_label.txt")
    assert info.value.line == 2 and not (tmp_path / "train.csv").exists()
    (images / "p1.jpg").write_bytes(b"x")
    unaugmented = [_label("v1.jpg", "A white Audi.", "This is a white Audi.", line=5)]
    with pytest.raises(InputError, match="augment") as info:
        build_training_csv(unaugmented, images, tmp_path / "train.csv")
    assert info.value.line == 5


def test_cli_csv(tmp_path: Path, capsys) -> None:
    images = tmp_path / "train_images"
    labels = _csv_labels(images)
    label_file = _write(tmp_path / "train_label_aug.txt", [f"{lab.image}${lab.attr}${lab.text}${lab.aug}"
                                                           for lab in labels])
    out = tmp_path / "train.csv"
    assert cli_main(["preprocess", "csv", "--labels", str(label_file), "--images", str(images), "--out", str(out),
                     "--sep", "comma"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filepath", "title"] and rows[1][1] == "This is a white Audi Sedan."
    # A label file without the $aug column and the default --caption aug: one clean error, exit 2.
    plain = _write(tmp_path / "train_label.txt", [f"{lab.image}${lab.attr}${lab.text}" for lab in labels])
    assert cli_main(["preprocess", "csv", "--labels", str(plain), "--images", str(images),
                     "--out", str(tmp_path / "x.csv")]) == 2
    assert "augment" in capsys.readouterr().err


# ------------------------------------------------------------------------------ end to end (demo data)

@pytest.fixture(scope="module")
def demo_traffic(tmp_path_factory) -> Path:
    from irkit.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, seed=0, scale="tiny", datasets="traffic", workers=1, progress=False)
    return out / "traffic"


def _sidecar_rows(root: Path, split: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in (root / "irkit_attributes.jsonl").read_text().splitlines() if line]
    return {Path(r["image"]).name: r for r in rows if r["split"] == split}


def test_augment_cli_on_demo_data(demo_traffic: Path, tmp_path: Path, capsys) -> None:
    root = demo_traffic
    vocab_path = tmp_path / "car_attribute.json"
    assert cli_main(["preprocess", "attributes", "--labels", str(root / "train" / "train_label.txt"),
                     "--out", str(vocab_path)]) == 0
    capsys.readouterr()
    out = tmp_path / "train_label_aug.txt"
    assert cli_main(["preprocess", "augment", "--labels", str(root / "train" / "train_label.txt"),
                     "--images", str(root / "train" / "train_images"), "--vocab", str(vocab_path),
                     "--model", "irkit-tiny", "--random-init", "--out", str(out),
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    vocab = load_car_attribute(vocab_path)
    original = read_label_file(root / "train" / "train_label.txt")
    augmented = read_label_file(out)
    rows = _sidecar_rows(root, "train")
    # Which labels lack colour or type comes from the generator's own record (label_has).
    partial = {name for name, r in rows.items() if r["kind"] == "vehicle"
               and not (r["label_has"]["color"] and r["label_has"]["type"])}
    assert partial and summary["augmented"] == len(partial)
    assert [(a.image, a.attr, a.text) for a in augmented] == [(o.image, o.attr, o.text) for o in original]
    for label in augmented:
        if label.image not in partial:
            assert label.aug == label.text
            continue
        known = parse_vehicle_attr(label.attr, vocab)
        filled = parse_vehicle_attr(label.aug, vocab)
        assert label.aug.endswith(".") and label.aug.startswith(("This is a ", "A "))
        assert filled.color in vocab.colors and filled.type in vocab.types
        for slot in ("color", "brand", "type"):          # slots the label names are kept
            if getattr(known, slot) is not None:
                assert getattr(filled, slot) == getattr(known, slot)
    # Fill accuracy is scored against the generator's true attributes.
    scored = summary["fill_accuracy"]
    assert scored["color"]["filled"] == sum(1 for n in partial if not rows[n]["label_has"]["color"])
    assert scored["type"]["filled"] == sum(1 for n in partial if not rows[n]["label_has"]["type"])
    correct_colour = sum(1 for label in augmented if label.image in partial and not rows[label.image]["label_has"]["color"]
                         and parse_vehicle_attr(label.aug, vocab).color == rows[label.image]["color"])
    assert scored["color"]["correct"] == correct_colour
    # The augmented labels build a training CSV.
    csv_path = build_training_csv(augmented, root / "train" / "train_images", tmp_path / "train.csv", source=out)
    assert len(csv_path.read_text().splitlines()) == len(augmented) + 1
