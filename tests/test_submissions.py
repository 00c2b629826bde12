"""Submission writers/readers (formats.md) and `irkit eval` on small on-disk datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from irkit.benchmarks.circo import read_circo_submission, write_circo_submission
from irkit.benchmarks.cirr import cirr_submission_paths, read_cirr_submission, write_cirr_submission
from irkit.benchmarks.fashioniq import read_fashioniq_submission, write_fashioniq_submission
from irkit.benchmarks.traffic import read_traffic_submission, write_traffic_submission
from irkit.cli import main as cli_main
from irkit.data.records import CIRQuery, CIRSplit
from irkit.errors import InputError

GALLERY = [f"dev-{j}-0-img0" for j in range(60)]


def _cirr_split() -> CIRSplit:
    queries = [
        CIRQuery("12060", reference=GALLERY[0], captions=("c",), target=GALLERY[1], ground_truths=(GALLERY[1],),
                 subset=(GALLERY[0], GALLERY[1], GALLERY[2], GALLERY[3], GALLERY[4], GALLERY[5])),
        CIRQuery("12061", reference=GALLERY[10], captions=("c",), target=GALLERY[12], ground_truths=(GALLERY[12],),
                 subset=(GALLERY[11], GALLERY[12], GALLERY[10], GALLERY[13], GALLERY[14], GALLERY[15])),
    ]
    return CIRSplit("cirr", "val", Path("."), queries, list(GALLERY), {g: Path(g) for g in GALLERY})


def _cirr_predictions(split: CIRSplit):
    rankings = {q.query_id: [g for g in GALLERY if g != q.reference][:50] for q in split.queries}
    subsets = {q.query_id: [m for m in q.subset if m != q.reference][:3] for q in split.queries}
    return rankings, subsets


def _dump(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- CIRR


def test_cirr_write_then_read(tmp_path):
    split = _cirr_split()
    rankings, subsets = _cirr_predictions(split)
    recall_path, subset_path = cirr_submission_paths(tmp_path, "val")
    assert recall_path.name == "val_pred_ranks_recall.json"
    write_cirr_submission(recall_path, subset_path, split, rankings, subsets)
    raw = json.loads(recall_path.read_text())
    assert list(raw)[:2] == ["version", "metric"]
    assert raw["version"] == "rc2" and raw["metric"] == "recall"
    assert set(raw) - {"version", "metric"} == {"12060", "12061"}
    assert all(len(v) == 50 for k, v in raw.items() if k not in ("version", "metric"))
    raw_subset = json.loads(subset_path.read_text())
    assert raw_subset["metric"] == "recall_subset"
    assert raw_subset["12061"] == [GALLERY[11], GALLERY[12], GALLERY[13]]
    assert read_cirr_submission(recall_path, "recall", split) == rankings
    assert read_cirr_submission(subset_path, "recall_subset", split) == subsets
    assert read_cirr_submission(recall_path, "recall") == rankings  # no split: shape only


def test_cirr_writer_refuses_reference_and_writes_nothing(tmp_path):
    split = _cirr_split()
    rankings, subsets = _cirr_predictions(split)
    rankings["12060"] = [GALLERY[0]] + rankings["12060"][:49]  # reference inside
    recall_path, subset_path = cirr_submission_paths(tmp_path)
    with pytest.raises(InputError, match="reference image"):
        write_cirr_submission(recall_path, subset_path, split, rankings, subsets)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mutate, message, field", [
    (lambda d: d.update(version="rc1"), "expected 'rc2'", "version"),
    (lambda d: d.update(metric="recall_subset"), "expected 'recall'", "metric"),
    (lambda d: d.pop("metric"), "missing key", "metric"),
    (lambda d: d.pop("12061"), "no ranking", "12061"),
    (lambda d: d.update({"99999": d["12060"]}), "not in cirr-val", "99999"),
    (lambda d: d.update({"12060": d["12060"][:49]}), "expected exactly 50", "12060"),
    (lambda d: d["12061"].__setitem__(5, "dev-unknown"), "not in the cirr-val gallery", "12061"),
    (lambda d: d["12061"].__setitem__(5, d["12061"][0]), "more than once", "12061"),
])
def test_cirr_reader_errors_name_file_and_key(tmp_path, mutate, message, field):
    split = _cirr_split()
    rankings, _ = _cirr_predictions(split)
    data = {"version": "rc2", "metric": "recall", **{k: list(v) for k, v in rankings.items()}}
    mutate(data)
    path = _dump(tmp_path / "recall.json", data)
    with pytest.raises(InputError, match=message) as info:
        read_cirr_submission(path, "recall", split)
    assert info.value.path == str(path)
    assert info.value.field == field


def test_cirr_subset_reader_checks_members(tmp_path):
    split = _cirr_split()
    _, subsets = _cirr_predictions(split)
    bad = {"version": "rc2", "metric": "recall_subset", **subsets, "12060": [GALLERY[0], GALLERY[1], GALLERY[2]]}
    with pytest.raises(InputError, match="reference is never ranked"):
        read_cirr_submission(_dump(tmp_path / "s.json", bad), "recall_subset", split)
    outside = {"version": "rc2", "metric": "recall_subset", **subsets, "12061": [GALLERY[40], GALLERY[12], GALLERY[13]]}
    with pytest.raises(InputError, match="not a subset candidate"):
        read_cirr_submission(_dump(tmp_path / "s2.json", outside), "recall_subset", split)
    long = {"version": "rc2", "metric": "recall_subset", **subsets, "12061": [GALLERY[11], GALLERY[12], GALLERY[13], GALLERY[14]]}
    with pytest.raises(InputError, match="expected exactly 3"):
        read_cirr_submission(_dump(tmp_path / "s3.json", long), "recall_subset", split)


def test_duplicate_json_keys_detected(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{"version": "rc2", "metric": "recall", "1": [], "1": []}', encoding="utf-8")
    with pytest.raises(InputError, match="appears twice") as info:
        read_cirr_submission(path, "recall")
    assert info.value.field == "1" and info.value.path == str(path)


def test_malformed_json_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"0": [1, 2,\n\n ]}', encoding="utf-8")
    with pytest.raises(InputError, match="malformed JSON") as info:
        read_circo_submission(path)
    assert info.value.line == 3


# --------------------------------------------------------------------------- CIRCO


def _circo_split() -> CIRSplit:
    gallery = [str(100000 + j) for j in range(70)]
    queries = [CIRQuery(str(i), reference=gallery[i], captions=("c",), target=gallery[i + 1],
                        ground_truths=(gallery[i + 1], gallery[i + 2]), shared_concept="x") for i in range(3)]
    return CIRSplit("circo", "val", Path("."), queries, gallery, {g: Path(g) for g in gallery})


def test_circo_write_then_read(tmp_path):
    split = _circo_split()
    rankings = {q.query_id: split.gallery[:60] for q in split.queries}
    path = tmp_path / "circo.json"
    write_circo_submission(path, split, rankings)
    raw = json.loads(path.read_text())
    assert list(raw) == ["0", "1", "2"]
    assert all(len(v) == 50 and all(type(x) is int for x in v) for v in raw.values())
    assert raw["0"][0] == 100000
    back = read_circo_submission(path, split)
    assert back == {q: split.gallery[:50] for q in raw}


def test_circo_reader_errors(tmp_path):
    split = _circo_split()
    ids = [int(g) for g in split.gallery[:50]]
    ok = {"0": ids, "1": ids, "2": ids}
    dup = dict(ok, **{"1": ids[:49] + [ids[0]]})
    with pytest.raises(InputError, match="more than once") as info:
        read_circo_submission(_dump(tmp_path / "a.json", dup), split)
    assert info.value.field == "1"
    strings = dict(ok, **{"2": [str(x) for x in ids]})
    with pytest.raises(InputError, match="integer image id") as info:
        read_circo_submission(_dump(tmp_path / "b.json", strings), split)
    assert info.value.field == "2"
    missing = {"0": ids, "2": ids}
    with pytest.raises(InputError, match="no ranking") as info:
        read_circo_submission(_dump(tmp_path / "c.json", missing), split)
    assert info.value.field == "1"
    outside = dict(ok, **{"0": ids[:49] + [999]})
    with pytest.raises(InputError, match="not in the circo-val gallery"):
        read_circo_submission(_dump(tmp_path / "d.json", outside), split)
    (tmp_path / "e.json").write_text('{"0": [1], "0": [2]}')
    with pytest.raises(InputError, match="appears twice"):
        read_circo_submission(tmp_path / "e.json")


# --------------------------------------------------------------------------- FashionIQ


def _fiq_splits() -> dict[str, CIRSplit]:
    splits = {}
    for c, cat in enumerate(("dress", "shirt", "toptee")):
        gallery = [f"B{c}{j:04d}" for j in range(55)]
        queries = [CIRQuery(str(i), reference=gallery[i], captions=("a", "b"), target=gallery[i + 3],
                            ground_truths=(gallery[i + 3],), category=cat) for i in range(2)]
        splits[cat] = CIRSplit("fashioniq", "val", Path("."), queries, gallery, {g: Path(g) for g in gallery},
                               category=cat)
    return splits


def test_fashioniq_write_then_read(tmp_path):
    splits = _fiq_splits()
    rankings = {c: {q.query_id: s.gallery for q in s.queries} for c, s in splits.items()}
    path = tmp_path / "fiq.json"
    write_fashioniq_submission(path, splits, rankings)
    raw = json.loads(path.read_text())
    assert list(raw) == ["dress", "shirt", "toptee"] and list(raw["shirt"]) == ["0", "1"]
    assert all(len(v) == 50 for cat in raw.values() for v in cat.values())
    assert read_fashioniq_submission(path, splits) == {
        c: {q: s.gallery[:50] for q in ("0", "1")} for c, s in splits.items()}
    del raw["toptee"]
    with pytest.raises(InputError, match="'toptee' is missing"):
        read_fashioniq_submission(_dump(tmp_path / "x.json", raw), splits)


# --------------------------------------------------------------------------- traffic


def test_traffic_write_then_read(tmp_path):
    queries = ["A red car.", "A woman."]
    gallery = [f"vehicle_{i:07d}.jpg" for i in range(12)]
    results = [(queries[0], gallery[:10]), (queries[1], gallery[2:12])]
    path = tmp_path / "submission.json"
    write_traffic_submission(path, results, queries=queries, gallery=gallery)
    raw = json.loads(path.read_text())
    assert raw == {"results": [{"text": t, "image_names": n} for t, n in results]}
    assert read_traffic_submission(path, queries, gallery) == raw
    with pytest.raises(InputError, match="differs from query 1"):
        write_traffic_submission(tmp_path / "other.json", results[::-1], queries=queries)
    assert not (tmp_path / "other.json").exists()


# --------------------------------------------------------------------------- files + CLI


def _write_cirr_root(root: Path) -> None:
    """A tiny CIRR val in the published layout (60 images, 2 queries)."""
    (root / "cirr" / "captions").mkdir(parents=True)
    (root / "cirr" / "image_splits").mkdir(parents=True)
    split = _cirr_split()
    entries = [{"pairid": int(q.query_id), "reference": q.reference, "target_hard": q.target,
                "target_soft": {q.target: 1.0}, "caption": "c",
                "img_set": {"id": i, "members": list(q.subset), "reference_rank": 0, "target_rank": 1}}
               for i, q in enumerate(split.queries)]
    _dump(root / "cirr" / "captions" / "cap.rc2.val.json", entries)
    _dump(root / "cirr" / "image_splits" / "split.rc2.val.json", {g: f"./dev/{g}.png" for g in GALLERY})


def test_cli_eval_cirr(tmp_path, capsys):
    root = tmp_path / "cirr_root"
    _write_cirr_root(root)
    split = _cirr_split()
    rankings, subsets = _cirr_predictions(split)
    # query 12060: target GALLERY[1] first after removing the reference -> rank 1
    # query 12061: ranking GALLERY without [10] -> target GALLERY[12] at rank 12 -> only R@50
    # subsets: 12060 -> [1, 2, 3] target first ; 12061 -> [11, 12, 13] target second
    recall_path, subset_path = cirr_submission_paths(tmp_path, "val")
    write_cirr_submission(recall_path, subset_path, split, rankings, subsets)
    code = cli_main(["eval", "cirr", "--root", str(root), "--split", "val",
                     "--predictions", str(recall_path), str(subset_path)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    # printed as fractions in [0, 1] (the one printed unit), like `eval traffic` below
    assert result["units"] == "fraction"
    assert (result["R@1"], result["R@5"], result["R@10"], result["R@50"]) == (0.5, 0.5, 0.5, 1.0)
    assert (result["Rs@1"], result["Rs@2"], result["Rs@3"]) == (0.5, 1.0, 1.0)
    assert result["(R@5+Rs@1)/2"] == 0.5
    assert result["protocol"].startswith("cirr-val: reference removed")


def test_cli_eval_error_is_clean(tmp_path, capsys):
    root = tmp_path / "cirr_root"
    _write_cirr_root(root)
    code = cli_main(["eval", "cirr", "--root", str(root), "--predictions", str(tmp_path / "only_one.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("irkit: error:") and "expected 2" in err and "Traceback" not in err
    code = cli_main(["eval", "cirr", "--root", str(root), "--predictions", str(tmp_path / "a.json"),
                     str(tmp_path / "b.json")])
    assert code == 2
    assert "a.json" in capsys.readouterr().err  # names the missing file


def test_cli_eval_traffic(tmp_path, capsys):
    root = tmp_path / "traffic"
    (root / "test" / "test_images").mkdir(parents=True)
    gallery = [f"vehicle_{i:07d}.jpg" for i in range(15)]
    for name in gallery:
        (root / "test" / "test_images" / name).write_bytes(b"")
    queries = ["A white Audi.", "A black Sedan."]
    (root / "test" / "test_text.txt").write_text("\n".join(queries) + "\n")
    # relevant: q1 -> images 0 and 5 ; q2 -> image 14 (never retrieved)
    (root / "test" / "test_ground_truth.txt").write_text(
        f"{queries[0]}${gallery[0]}${gallery[5]}\n{queries[1]}${gallery[14]}\n")
    path = tmp_path / "submission.json"
    write_traffic_submission(path, [(queries[0], gallery[:10]), (queries[1], gallery[:10])])
    assert cli_main(["eval", "traffic", "--root", str(root), "--predictions", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    # q1: hits at 1 and 6 -> official (1 + 2/6)/(2 + 1e-6), standard (4/3)/2 ; q2: 0
    assert result["official_mAP@10"] == pytest.approx((4 / 3) / (2 + 1e-6) / 2, rel=1e-12)
    assert result["standard_mAP@10"] == pytest.approx((4 / 3) / 2 / 2)
    assert (result["R@1"], result["R@5"], result["R@10"]) == (0.5, 0.5, 0.5)
    assert result["units"] == "fraction"
    assert result["protocol"].startswith("traffic-test:")
