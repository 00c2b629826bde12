"""Traffic inference: query kinds and order, prompt variants, merge, end-to-end on demo data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from irkit.cli import main as cli_main
from irkit.errors import InputError
from irkit.traffic.inference import (
    PROMPT_SUFFIX,
    count_vehicle_queries,
    first_relevant_statistics,
    gallery_kind_split,
    prompt_text,
    query_kind,
    rank_gallery,
)
from irkit.traffic.merge import merge_results

VEHICLE_QUERIES = ["This is a white Audi.", "A black Golden Dragon Bus.", "An orange SUV.",
                   "This is an orange Land Rover SUV."]
PERSON_QUERIES = ["A female pedestrian wearing a red coat and black trousers.",
                  "A man with glasses, carrying a backpack.",
                  "An elderly male pedestrian seen from behind, wearing a white top and blue jeans."]


# ------------------------------------------------------------------------------ prompts

@pytest.mark.parametrize("text, kind, mode, expected", [
    ("This is a white Audi.", "vehicle", "suffix", "This is a white Audi image taken by traffic surveillance cameras"),
    ("This is a white Audi.", "vehicle", "strip", "white Audi"),
    ("This is an orange Audi.", "vehicle", "strip", "orange Audi"),
    ("An orange SUV.", "vehicle", "strip", "orange SUV"),
    ("A white Audi Sedan.", "vehicle", "strip", "white Audi Sedan"),
    ("Audi without period", "vehicle", "strip", "Audi without period"),
    ("This is a white Audi.", "vehicle", "none", "This is a white Audi."),
    ("A man in a red coat.", "person", "suffix", "A man in a red coat"),
    ("A man in a red coat.", "person", "strip", "A man in a red coat"),
    ("A man in a red coat.", "person", "none", "A man in a red coat."),
])
def test_prompt_variants(text: str, kind: str, mode: str, expected: str) -> None:
    assert prompt_text(text, kind, mode) == expected


def test_prompt_suffix_is_the_published_one() -> None:
    assert PROMPT_SUFFIX == " image taken by traffic surveillance cameras"
    with pytest.raises(InputError, match="prompt"):
        prompt_text("A car.", "vehicle", "loud")


# ------------------------------------------------------------------------------ query kinds

def test_query_kind_on_hand_examples() -> None:
    assert [query_kind(q) for q in VEHICLE_QUERIES] == ["vehicle"] * 4
    assert [query_kind(q) for q in PERSON_QUERIES] == ["person"] * 3
    assert query_kind("This is a white MAN Truck.") == "vehicle"   # 'MAN' the truck brand


def test_count_vehicle_queries() -> None:
    assert count_vehicle_queries(VEHICLE_QUERIES + PERSON_QUERIES) == 4
    assert count_vehicle_queries(VEHICLE_QUERIES) == 4
    assert count_vehicle_queries(PERSON_QUERIES) == 0
    assert count_vehicle_queries(VEHICLE_QUERIES + PERSON_QUERIES, num_vehicle_queries=2) == 2
    with pytest.raises(InputError, match="outside"):
        count_vehicle_queries(VEHICLE_QUERIES, num_vehicle_queries=9)


def test_count_vehicle_queries_rejects_wrong_order() -> None:
    queries = VEHICLE_QUERIES[:2] + PERSON_QUERIES[:1] + VEHICLE_QUERIES[2:] + PERSON_QUERIES[1:]
    with pytest.raises(InputError, match="vehicles first") as info:
        count_vehicle_queries(queries, source="test_text.txt")
    assert info.value.line == 3                     # the person query among the vehicle queries
    with pytest.raises(InputError, match="vehicles first"):
        count_vehicle_queries(PERSON_QUERIES + VEHICLE_QUERIES)


def test_gallery_kind_split() -> None:
    galleries = gallery_kind_split(["person_2.jpg", "vehicle_1.jpg", "person_1.jpg"])
    assert galleries == {"vehicle": ["vehicle_1.jpg"], "person": ["person_2.jpg", "person_1.jpg"]}
    with pytest.raises(InputError, match="neither"):
        gallery_kind_split(["vehicle_1.jpg", "cat.jpg"])


def test_rank_gallery_and_first_relevant_statistics() -> None:
    gallery = ["g0", "g1", "g2", "g3"]
    gallery_embeddings = np.eye(4, dtype=np.float32)
    queries = ["q0", "q1"]
    query_embeddings = np.array([[0.1, 0.9, 0.3, 0.0], [0.5, 0.0, 0.0, 0.7]], np.float32)
    assert rank_gallery(query_embeddings, gallery_embeddings, gallery, k=3) == [["g1", "g2", "g0"],
                                                                                 ["g3", "g0", "g1"]]
    # q0: relevant g0 -> rank 3; q1: relevant g0 -> rank 2; q2 has none in this gallery.
    stats = first_relevant_statistics(query_embeddings, gallery_embeddings, gallery, queries,
                                      {"q0": ["g0"], "q1": ["g0", "other.jpg"]})
    assert stats["mean_rank"] == pytest.approx(2.5)
    assert stats["queries_without_relevant_in_gallery"] == 0
    stats = first_relevant_statistics(query_embeddings, gallery_embeddings, gallery, queries,
                                      {"q0": ["g0"], "q1": ["elsewhere.jpg"]})
    assert stats["mean_rank"] == pytest.approx(3.0) and stats["queries_without_relevant_in_gallery"] == 1


# ------------------------------------------------------------------------------ merge

def _names(prefix: str, seed: int) -> list[str]:
    return [f"{prefix}_{seed:03d}_{i}.jpg" for i in range(10)]


def _write_results(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"results": entries}), encoding="utf-8")
    return path


def _merge_inputs(tmp_path: Path, shuffle: bool = True):
    test_text = tmp_path / "test_text.txt"
    test_text.write_text("".join(q + "\n" for q in VEHICLE_QUERIES + PERSON_QUERIES), encoding="utf-8")
    vehicle = [{"text": q, "image_names": _names("vehicle", i)} for i, q in enumerate(VEHICLE_QUERIES)]
    person = [{"text": q, "image_names": _names("person", i)} for i, q in enumerate(PERSON_QUERIES)]
    if shuffle:
        random.Random(3).shuffle(vehicle)
        random.Random(4).shuffle(person)
    return test_text, vehicle, person


def test_merge_orders_by_test_text(tmp_path: Path) -> None:
    test_text, vehicle, person = _merge_inputs(tmp_path)
    assert [e["text"] for e in vehicle] != VEHICLE_QUERIES          # really shuffled
    out = tmp_path / "submission.json"
    submission = merge_results(_write_results(tmp_path / "v.json", vehicle), _write_results(tmp_path / "p.json", person),
                               test_text, out)
    written = json.loads(out.read_text())
    assert written == submission
    assert [e["text"] for e in written["results"]] == VEHICLE_QUERIES + PERSON_QUERIES
    expected_names = [_names("vehicle", i) for i in range(4)] + [_names("person", i) for i in range(3)]
    assert [e["image_names"] for e in written["results"]] == expected_names


def test_merge_repeated_query_text(tmp_path: Path) -> None:
    test_text = tmp_path / "test_text.txt"
    queries = ["A white Audi.", "A white Audi.", "A man."]
    test_text.write_text("".join(q + "\n" for q in queries))
    vehicle = [{"text": "A white Audi.", "image_names": _names("vehicle", i)} for i in range(2)]
    person = [{"text": "A man.", "image_names": _names("person", 0)}]
    submission = merge_results(_write_results(tmp_path / "v.json", vehicle),
                               _write_results(tmp_path / "p.json", person), test_text)
    assert [e["image_names"] for e in submission["results"]] == [_names("vehicle", 0), _names("vehicle", 1),
                                                                  _names("person", 0)]


def test_merge_validation_errors(tmp_path: Path) -> None:
    test_text, vehicle, person = _merge_inputs(tmp_path, shuffle=False)
    out = tmp_path / "submission.json"
    v, p = tmp_path / "v.json", tmp_path / "p.json"

    _write_results(v, vehicle[:-1])                                    # a query without an answer
    _write_results(p, person)
    with pytest.raises(InputError, match="no answer") as info:
        merge_results(v, p, test_text, out)
    assert info.value.line == 4 and not out.exists()

    _write_results(v, vehicle + [{"text": "A purple BMW.", "image_names": _names("vehicle", 9)}])
    with pytest.raises(InputError, match="do not match"):              # an answer without a query
        merge_results(v, p, test_text, out)

    _write_results(v, [dict(vehicle[0], image_names=vehicle[0]["image_names"][:9])] + vehicle[1:])
    with pytest.raises(InputError, match="expected exactly 10"):
        merge_results(v, p, test_text, out)

    names = vehicle[0]["image_names"][:9] + vehicle[0]["image_names"][:1]
    _write_results(v, [dict(vehicle[0], image_names=names)] + vehicle[1:])
    with pytest.raises(InputError, match="more than once"):
        merge_results(v, p, test_text, out)

    _write_results(v, vehicle)
    with pytest.raises(InputError, match="swapped"):                  # --vehicle / --person swapped
        merge_results(p, v, test_text, out)

    v.write_text('{"results": [}')
    with pytest.raises(InputError, match="malformed JSON"):
        merge_results(v, p, test_text, out)
    assert not out.exists()


def test_cli_merge(tmp_path: Path, capsys) -> None:
    test_text, vehicle, person = _merge_inputs(tmp_path)
    v, p = _write_results(tmp_path / "v.json", vehicle), _write_results(tmp_path / "p.json", person)
    out = tmp_path / "submission.json"
    args = ["infer", "merge", "--vehicle", str(v), "--person", str(p), "--test-text", str(test_text), "--out", str(out)]
    assert cli_main(args) == 0
    assert [e["text"] for e in json.loads(out.read_text())["results"]] == VEHICLE_QUERIES + PERSON_QUERIES
    _write_results(p, person[1:])
    out.unlink()
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("irkit: error:") and "no answer" in err and not out.exists()


# ------------------------------------------------------------------------------ end to end (demo data)

@pytest.fixture(scope="module")
def demo_traffic(tmp_path_factory) -> Path:
    from irkit.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, seed=0, scale="tiny", datasets="traffic", workers=1, progress=False)
    return out / "traffic"


def test_infer_and_merge_on_demo_data(demo_traffic: Path, tmp_path: Path) -> None:
    from irkit.data.traffic import load_traffic
    from irkit.embeddings import encode_image_files
    from irkit.models import create_model
    from irkit.traffic.inference import infer_traffic

    root = demo_traffic
    split = load_traffic(root, "test")
    loaded = create_model("irkit-tiny", random_init=True)
    out = tmp_path / "infer"
    inference = infer_traffic(split, loaded, prompt="suffix", out_dir=out, cache_dir=tmp_path / "cache")
    queries = (root / "test" / "test_text.txt").read_text().splitlines()
    # Vehicle queries are those whose ground-truth images are vehicle_* (independent of the classifier).
    truth_lines = [line.split("$") for line in (root / "test" / "test_ground_truth.txt").read_text().splitlines()]
    num_vehicle = sum(1 for parts in truth_lines if parts[1].startswith("vehicle_"))
    assert inference.vehicle.queries == queries[:num_vehicle] and inference.person.queries == queries[num_vehicle:]
    assert inference.vehicle.encoded_texts[0] == queries[0].rstrip(".") + " image taken by traffic surveillance cameras"

    # Independent ranking: embeddings + numpy stable argsort over the vehicle gallery.
    vehicle_gallery = sorted(p.name for p in (root / "test" / "test_images").glob("vehicle_*"))
    gallery_embeddings = encode_image_files(loaded, [root / "test" / "test_images" / n for n in vehicle_gallery],
                                            batch_size=16, num_workers=0)
    text_embeddings = loaded.encode_texts(inference.vehicle.encoded_texts)
    scores = text_embeddings @ gallery_embeddings.T
    expected = [[vehicle_gallery[j] for j in np.argsort(-row, kind="stable")[:10]] for row in scores]
    assert inference.vehicle.rankings == expected
    assert inference.vehicle.rank_statistics["num_queries"] == num_vehicle

    submission = merge_results(out / "vehicle_results.json", out / "person_results.json",
                               root / "test" / "test_text.txt", tmp_path / "submission.json")
    written = json.loads((tmp_path / "submission.json").read_text())
    assert written == submission
    assert [e["text"] for e in written["results"]] == queries
    gallery = set(split.gallery)
    for i, entry in enumerate(written["results"]):
        prefix = "vehicle_" if i < num_vehicle else "person_"
        names = entry["image_names"]
        assert len(names) == 10 == len(set(names))
        assert all(n.startswith(prefix) and n in gallery for n in names)


def test_cli_infer_strip_with_submission(demo_traffic: Path, tmp_path: Path, capsys) -> None:
    out, submission = tmp_path / "infer", tmp_path / "submission.json"
    assert cli_main(["infer", "traffic", "--root", str(demo_traffic), "--prompt", "strip", "--out", str(out),
                     "--submission", str(submission), "--batch-size", "16", "--random-init"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["prompt"] == "strip" and summary["submission"] == str(submission)
    queries = (demo_traffic / "test" / "test_text.txt").read_text().splitlines()
    assert [e["text"] for e in json.loads(submission.read_text())["results"]] == queries


def test_cli_infer_auto_prompt_uses_the_val_choice(demo_traffic: Path, tmp_path: Path, capsys) -> None:
    """--prompt auto answers with the variant whose val official mAP@10 is highest (first on ties),
    and its result files equal a run with that variant named explicitly."""
    assert cli_main(["infer", "traffic", "--root", str(demo_traffic), "--prompt", "auto", "--out",
                     str(tmp_path / "auto"), "--batch-size", "16", "--random-init"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    val_scores = {v: m["official_mAP@10"] for v, m in summary["prompt_selection"]["metrics"].items()}
    chosen = next(v for v in ("suffix", "strip", "none") if val_scores[v] == max(val_scores.values()))
    assert summary["prompt"] == summary["prompt_selection"]["chosen"] == chosen
    assert cli_main(["infer", "traffic", "--root", str(demo_traffic), "--prompt", chosen, "--out",
                     str(tmp_path / "named"), "--batch-size", "16", "--random-init"]) == 0
    for name in ("vehicle_results.json", "person_results.json"):
        assert json.loads((tmp_path / "auto" / name).read_text()) == json.loads((tmp_path / "named" / name).read_text())
    # An override outside [0, number of queries] is one clean error (exit 2).
    assert cli_main(["infer", "traffic", "--root", str(demo_traffic), "--out", str(tmp_path / "x"),
                     "--num-vehicle-queries", "999", "--random-init"]) == 2
    assert "outside" in capsys.readouterr().err


# ------------------------------------------------------------------------------ prompt selection on val

def _label(image: str, attr: str, text: str, kind: str, line: int):
    from irkit.data.records import TrafficLabel

    return TrafficLabel(image=image, attr=attr, text=text, kind=kind, line=line)


_PERSON_X, _PERSON_Y = ",".join("1" + "0" * 20), ",".join("0" * 20 + "1")
VAL_LABELS = [
    _label("a1.jpg", "white Audi", "This is a white Audi.", "vehicle", 1),
    _label("b1.jpg", "black BMW", "A black BMW.", "vehicle", 2),
    _label("a2.jpg", "white Audi", "A white Audi.", "vehicle", 3),
    _label("p1.jpg", _PERSON_X, "A man in a red coat.", "person", 4),
    _label("p3.jpg", _PERSON_Y, "A woman with a bag.", "person", 5),
    _label("p2.jpg", _PERSON_X, "A man wearing a red coat.", "person", 6),
]


def test_labelled_queries_group_by_kind_and_attr() -> None:
    from irkit.traffic.inference import labelled_queries

    queries = labelled_queries(VAL_LABELS)
    assert [(q.kind, q.text, q.relevant) for q in queries] == [
        ("vehicle", "This is a white Audi.", ("a1.jpg", "a2.jpg")),
        ("vehicle", "A black BMW.", ("b1.jpg",)),
        ("person", "A man in a red coat.", ("p1.jpg", "p2.jpg")),
        ("person", "A woman with a bag.", ("p3.jpg",)),
    ]


def test_select_prompt_scores_each_variant_and_picks_the_best(monkeypatch, tmp_path: Path) -> None:
    """One-hot 'embeddings' per attribute class; the fake text tower maps a suffixed vehicle
    query to the other vehicle class. Hand-worked official AP@10 for 'suffix':
    white Audi -> ranking [b1, a1, a2]: (1/2 + 2/3) / 2 = 7/12; black BMW -> [a1, a2, b1]: (1/3) / 1;
    persons are never suffixed -> 1 each; mean = (7/12 + 1/3 + 2) / 4 = 35/48.
    'strip' and 'none' rank every query perfectly (1.0): the tie goes to the earlier variant."""
    import irkit.embeddings
    from irkit.traffic.inference import select_prompt

    image_class = {"a1.jpg": 0, "a2.jpg": 0, "b1.jpg": 1, "p1.jpg": 2, "p2.jpg": 2, "p3.jpg": 3}

    def fake_encode_image_files(loaded, paths, **kwargs):
        return np.eye(4, dtype=np.float32)[[image_class[Path(p).name] for p in paths]]

    class FakeModel:
        @staticmethod
        def encode_texts(texts):
            rows = []
            for text in texts:
                suffixed = text.endswith(PROMPT_SUFFIX)
                if "Audi" in text:
                    rows.append(np.eye(4)[1 if suffixed else 0])
                elif "BMW" in text:
                    rows.append(np.eye(4)[0 if suffixed else 1])
                else:
                    rows.append(np.eye(4)[2 if "man " in text.lower() and "woman" not in text.lower() else 3])
            return np.asarray(rows, dtype=np.float32)

    monkeypatch.setattr(irkit.embeddings, "encode_image_files", fake_encode_image_files)
    selection = select_prompt(VAL_LABELS, tmp_path, FakeModel())
    assert selection.metrics["suffix"]["official_mAP@10"] == pytest.approx(35 / 48, abs=1e-5)
    assert selection.metrics["strip"]["official_mAP@10"] == pytest.approx(1.0, abs=1e-5)
    assert selection.metrics["none"]["official_mAP@10"] == pytest.approx(1.0, abs=1e-5)
    assert selection.chosen == "strip" and selection.num_queries == 4
    assert select_prompt(VAL_LABELS, tmp_path, FakeModel(), variants=("suffix",)).chosen == "suffix"
    with pytest.raises(InputError, match="val_label"):
        select_prompt([], tmp_path, FakeModel())


def test_auto_prompt_without_val_labels_is_a_clear_error(tmp_path: Path) -> None:
    from irkit.traffic.stages import TrafficRunParams, resolve_prompt

    class Run:
        def log(self, *args):
            raise AssertionError("must not log a choice")

    with pytest.raises(InputError, match="val_label.txt"):
        resolve_prompt(TrafficRunParams(prompt="auto"), object(), tmp_path, Run())
    assert resolve_prompt(TrafficRunParams(prompt="strip"), object(), tmp_path, Run()) == ("strip", None)
