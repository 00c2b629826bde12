"""Test-server and local submission files: atomic writers, strict readers, file scoring.

Formats (``specs/formats.md``):

- CIRR, two files: ``{"version": "rc2", "metric": "recall", "<pairid>": [50 names]}`` and
  ``{"version": "rc2", "metric": "recall_subset", "<pairid>": [3 names]}`` (subset names from
  ``img_set.members``); the reference never appears in either list.
- CIRCO: ``{"<id>": [50 unique int image ids]}`` for every query id.
- FashionIQ (local): ``{"dress": {"<query index>": [ranked ASINs]}, "shirt": {...}, "toptee": {...}}``.
- Traffic: ``{"results": [{"text": <query>, "image_names": [10 names]}, ...]}`` in query order.

Readers raise :class:`~irkit.errors.InputError` naming the file and the offending key: a
duplicate JSON object key, a wrong version/metric, missing or extra query ids, a wrong list
length, a repeated prediction, an id outside the gallery (or outside the CIRR subset).
Rankings are ``{query_id: [image ids as strings]}`` inside irkit; CIRCO's integer ids are
converted at the file edge. List lengths are ``min(depth, what can be ranked)``, i.e. exactly
the published 50 / 3 / 50 / 10 on real galleries.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from irkit.data.records import CIRSplit
from irkit.data.validate import read_text_lines
from irkit.errors import InputError
from irkit.eval import protocols
from irkit.io import atomic_path

CIRR_VERSION = "rc2"
CIRR_METRICS = ("recall", "recall_subset")
CIRR_DEPTH = 50
CIRR_SUBSET_DEPTH = 3
CIRCO_DEPTH = 50
FASHIONIQ_DEPTH = 50
FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
TRAFFIC_DEPTH = 10
TRAFFIC_GROUND_TRUTH = Path("test") / "test_ground_truth.txt"

PathLike = os.PathLike | str


# --------------------------------------------------------------------------- JSON


def read_json_strict(path: PathLike) -> Any:
    """Read JSON, refusing duplicate object keys (``json`` would silently keep the last).

    Missing file, malformed JSON (with its line), non-UTF-8 text and duplicate keys raise
    :class:`InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found (expected a JSON submission file)", path=path)

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise InputError(f"key {key!r} appears twice in one JSON object; expected unique keys",
                                 path=path, field=key)
            obj[key] = value
        return obj

    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", path=path, line=e.lineno) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text: {e}", path=path) from None


def _expect_object(obj: Any, path: Path, what: str, field: Optional[str] = None) -> dict:
    if not isinstance(obj, dict):
        raise InputError(f"found a JSON {type(obj).__name__}; expected {what}", path=path, field=field)
    return obj


def _write_json(tmp: Path, obj: Any) -> None:
    tmp.write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_fixed_depth(lists: Mapping[str, Any], depth: int, source: Path) -> None:
    """Without a split to check against: lists of unique strings, exactly ``depth`` long."""
    for query_id, ranked in lists.items():
        protocols.check_ranking_list(ranked, query_id, str(source))
        if len(ranked) != depth:
            raise InputError(f"list has {len(ranked)} ids; expected exactly {depth}", path=source, field=query_id)


def _truncate(rankings: Mapping[str, Sequence[str]], depth: int) -> dict[str, Any]:
    """Cut each list to ``depth``; anything that is not a list is kept for the checks to report."""
    return {str(q): list(ranked)[:depth] if isinstance(ranked, (list, tuple)) else ranked
            for q, ranked in rankings.items()}


def _in_query_order(split: CIRSplit, lists: Mapping[str, Any]) -> dict[str, Any]:
    return {q.query_id: lists[q.query_id] for q in split.queries}


# --------------------------------------------------------------------------- CIRR


def cirr_submission_paths(out_dir: PathLike, split_name: str = "test1") -> tuple[Path, Path]:
    """The file names of the CIRR examples: ``<split>_pred_ranks_recall.json`` and
    ``<split>_pred_ranks_recall_subset.json`` inside ``out_dir``."""
    out_dir = Path(out_dir)
    return (out_dir / f"{split_name}_pred_ranks_recall.json",
            out_dir / f"{split_name}_pred_ranks_recall_subset.json")


def _check_cirr(split: CIRSplit, lists: Mapping[str, Any], metric: str, source: Path) -> None:
    if metric == "recall":
        protocols.check_rankings(split, lists, CIRR_DEPTH, str(source), exact=True)
    else:
        protocols.check_subset_rankings(split, lists, CIRR_SUBSET_DEPTH, str(source), exact=True)


def write_cirr_submission(recall_path: PathLike, subset_path: PathLike, split: CIRSplit,
                          rankings: Mapping[str, Sequence[str]],
                          subset_rankings: Mapping[str, Sequence[str]]) -> None:
    """Write both CIRR test-server files atomically (neither is written if either is invalid).

    ``rankings``: ``{pairid: names}`` with the reference removed, at least 50 deep (cut to 50);
    ``subset_rankings``: ``{pairid: names}`` of members minus reference (cut to 3). Keys must be
    exactly the split's pairids. :func:`irkit.eval.protocols.rank_cirr` produces both.
    """
    if split.dataset != "cirr":
        raise InputError(f"write_cirr_submission needs a CIRR split, got {split.dataset!r}")
    recall_path, subset_path = Path(recall_path), Path(subset_path)
    contents = {}
    for path, metric, lists, depth in ((recall_path, "recall", rankings, CIRR_DEPTH),
                                       (subset_path, "recall_subset", subset_rankings, CIRR_SUBSET_DEPTH)):
        lists = _truncate(lists, depth)
        _check_cirr(split, lists, metric, path)
        contents[path] = {"version": CIRR_VERSION, "metric": metric, **_in_query_order(split, lists)}
    with atomic_path(recall_path) as recall_tmp, atomic_path(subset_path) as subset_tmp:
        _write_json(recall_tmp, contents[recall_path])
        _write_json(subset_tmp, contents[subset_path])


def read_cirr_submission(path: PathLike, metric: str, split: Optional[CIRSplit] = None) -> dict[str, list[str]]:
    """Read one CIRR submission file (``metric`` = ``"recall"`` or ``"recall_subset"``).

    Checks ``version == "rc2"`` and the metric; with ``split``, the pairids (exactly the
    split's), list lengths (50 / 3 on real galleries), gallery membership, the reference's
    absence and (subset) membership in ``img_set.members``. Returns ``{pairid: names}``.
    """
    if metric not in CIRR_METRICS:
        raise ValueError(f"metric must be one of {CIRR_METRICS}, got {metric!r}")
    path = Path(path)
    data = _expect_object(read_json_strict(path), path,
                          f'an object {{"version": "rc2", "metric": "{metric}", "<pairid>": [names]}}')
    for key, expected in (("version", CIRR_VERSION), ("metric", metric)):
        if key not in data:
            raise InputError(f"missing key; expected \"{key}\": \"{expected}\"", path=path, field=key)
        if data[key] != expected:
            raise InputError(f"found {data[key]!r}; expected {expected!r}", path=path, field=key)
    lists = {k: v for k, v in data.items() if k not in ("version", "metric")}
    if split is None:
        _check_fixed_depth(lists, CIRR_DEPTH if metric == "recall" else CIRR_SUBSET_DEPTH, path)
    else:
        _check_cirr(split, lists, metric, path)
    return {k: list(v) for k, v in lists.items()}


# --------------------------------------------------------------------------- CIRCO


def write_circo_submission(path: PathLike, split: CIRSplit, rankings: Mapping[str, Sequence[str]]) -> None:
    """Write ``{"<id>": [50 unique int image ids]}`` for every query of ``split`` (atomic).

    ``rankings`` holds string ids (irkit's convention), at least 50 deep (cut to 50).
    """
    if split.dataset != "circo":
        raise InputError(f"write_circo_submission needs a CIRCO split, got {split.dataset!r}")
    path = Path(path)
    lists = _truncate(rankings, CIRCO_DEPTH)
    protocols.check_rankings(split, lists, CIRCO_DEPTH, str(path), exact=True)
    content = {}
    for query_id, ranked in _in_query_order(split, lists).items():
        bad = [x for x in ranked if not x.isdigit()]
        if bad:
            raise InputError(f"image id {bad[0]!r} is not an integer COCO id", path=path, field=query_id)
        content[query_id] = [int(x) for x in ranked]
    with atomic_path(path) as tmp:
        _write_json(tmp, content)


def read_circo_submission(path: PathLike, split: Optional[CIRSplit] = None) -> dict[str, list[str]]:
    """Read ``{"<id>": [int image ids]}``; returns ``{id: [ids as strings]}``.

    Ids must be JSON integers and unique per query; with ``split``: exactly the split's query
    ids, ``min(50, gallery size)`` ids each, all in the gallery. Without: exactly 50 each.
    """
    path = Path(path)
    data = _expect_object(read_json_strict(path), path, 'an object {"<query id>": [50 int image ids]}')
    lists: dict[str, list[str]] = {}
    for query_id, ranked in data.items():
        if not isinstance(ranked, list):
            raise InputError(f"found a {type(ranked).__name__}; expected a list of int image ids",
                             path=path, field=query_id)
        for position, item in enumerate(ranked):
            if isinstance(item, bool) or not isinstance(item, int):
                raise InputError(f"entry {position} is {item!r}; expected an integer image id",
                                 path=path, field=query_id)
        lists[query_id] = [str(x) for x in ranked]
    if split is None:
        _check_fixed_depth(lists, CIRCO_DEPTH, path)
    else:
        protocols.check_rankings(split, lists, CIRCO_DEPTH, str(path), exact=True)
    return lists


# --------------------------------------------------------------------------- FashionIQ


def _check_fashioniq_categories(found: Sequence[str], expected: Sequence[str], path: Path) -> None:
    unknown = [c for c in found if c not in expected]
    missing = [c for c in expected if c not in found]
    if unknown:
        raise InputError(f"unknown category {unknown[0]!r}; expected exactly {', '.join(expected)}",
                         path=path, field=unknown[0])
    if missing:
        raise InputError(f"category {missing[0]!r} is missing; expected exactly {', '.join(expected)}",
                         path=path, field=missing[0])


def write_fashioniq_submission(path: PathLike, splits: Mapping[str, CIRSplit],
                               rankings: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
    """Write ``{category: {query index: [ranked ASINs]}}`` (atomic), 50 per query (cut to 50).

    ``splits`` and ``rankings`` are keyed by the same categories.
    """
    path = Path(path)
    _check_fashioniq_categories(list(rankings), list(splits), path)
    content: dict[str, Any] = {}
    for category, split in splits.items():
        lists = _truncate(rankings[category], FASHIONIQ_DEPTH)
        protocols.check_rankings(split, lists, FASHIONIQ_DEPTH, f"{path} [{category}]", exact=True)
        content[category] = _in_query_order(split, lists)
    with atomic_path(path) as tmp:
        _write_json(tmp, content)


def read_fashioniq_submission(path: PathLike, splits: Optional[Mapping[str, CIRSplit]] = None
                              ) -> dict[str, dict[str, list[str]]]:
    """Read ``{category: {query index: [ASINs]}}``; returns it with lists as ``list[str]``.

    With ``splits`` ({category: CIRSplit}): exactly those categories and each split's query
    ids, ``min(50, gallery)`` unique gallery ASINs each. Without: the three categories,
    exactly 50 unique ASINs per query.
    """
    path = Path(path)
    data = _expect_object(read_json_strict(path), path, '{"dress": {"<query index>": [ASINs]}, "shirt": ..., "toptee": ...}')
    expected = list(splits) if splits is not None else list(FASHIONIQ_CATEGORIES)
    _check_fashioniq_categories(list(data), expected, path)
    result: dict[str, dict[str, list[str]]] = {}
    for category in expected:
        lists = _expect_object(data[category], path, '{"<query index>": [ASINs]}', field=category)
        source = Path(f"{path} [{category}]")
        if splits is None:
            _check_fixed_depth(lists, FASHIONIQ_DEPTH, source)
        else:
            protocols.check_rankings(splits[category], lists, FASHIONIQ_DEPTH, str(source), exact=True)
        result[category] = {k: list(v) for k, v in lists.items()}
    return result


# --------------------------------------------------------------------------- traffic


def validate_traffic_submission(submission: Any, queries: Optional[Sequence[str]] = None,
                                gallery: Optional[Sequence[str] | set] = None,
                                source: Optional[PathLike] = None) -> list[tuple[str, list[str]]]:
    """Check a traffic ``{"results": [{"text", "image_names"}]}`` object; return its (text, names).

    Each entry: exactly ``text`` (a string) and ``image_names`` (10 unique strings, from
    ``gallery`` when given). With ``queries`` the texts must be exactly those, in that order.
    """
    source = None if source is None else str(source)
    if not isinstance(submission, dict) or "results" not in submission:
        raise InputError('expected an object {"results": [{"text": ..., "image_names": [10 names]}, ...]}',
                         path=source)
    extra = [k for k in submission if k != "results"]
    if extra:
        raise InputError(f"unexpected key {extra[0]!r}; expected only \"results\"", path=source, field=extra[0])
    results = submission["results"]
    if not isinstance(results, list):
        raise InputError(f"found a {type(results).__name__}; expected a list of entries", path=source, field="results")
    gallery_set = set(gallery) if gallery is not None else None
    parsed: list[tuple[str, list[str]]] = []
    for i, entry in enumerate(results):
        field = f"results[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"text", "image_names"}:
            found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise InputError(f"found {found}; expected an object with exactly \"text\" and \"image_names\"",
                             path=source, field=field)
        text, names = entry["text"], entry["image_names"]
        if not isinstance(text, str):
            raise InputError(f"found {text!r}; expected the query text", path=source, field=f"{field}.text")
        protocols.check_ranking_list(names, f"{field}.image_names", source)
        if len(names) != TRAFFIC_DEPTH:
            raise InputError(f"{len(names)} image names; expected exactly {TRAFFIC_DEPTH}",
                             path=source, field=f"{field}.image_names")
        if gallery_set is not None:
            unknown = [n for n in names if n not in gallery_set]
            if unknown:
                raise InputError(f"image {unknown[0]!r} is not in the test gallery",
                                 path=source, field=f"{field}.image_names")
        parsed.append((text, list(names)))
    if queries is not None:
        if len(parsed) != len(queries):
            raise InputError(f"{len(parsed)} results; expected one per query ({len(queries)}), in query order",
                             path=source, field="results")
        for i, ((text, _), query) in enumerate(zip(parsed, queries)):
            if text != query:
                raise InputError(f"text {text!r} differs from query {i + 1} {query!r}; expected the queries "
                                 "exactly as given, in their order", path=source, field=f"results[{i}].text")
    return parsed


def write_traffic_submission(path: PathLike, results: Sequence[tuple[str, Sequence[str]]],
                             queries: Optional[Sequence[str]] = None,
                             gallery: Optional[Sequence[str]] = None) -> None:
    """Write ``submission.json`` = ``{"results": [{"text", "image_names"}]}`` atomically.

    ``results``: ``(query text, 10 image names best first)`` in query order (vehicle queries
    first, as in ``test_text.txt``); checked against ``queries``/``gallery`` when given.
    """
    path = Path(path)
    submission = {"results": [{"text": text, "image_names": list(names)} for text, names in results]}
    validate_traffic_submission(submission, queries=queries, gallery=gallery, source=path)
    with atomic_path(path) as tmp:
        _write_json(tmp, submission)


def read_traffic_submission(path: PathLike, queries: Optional[Sequence[str]] = None,
                            gallery: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Read and check a traffic ``submission.json``; returns the object (see
    :func:`validate_traffic_submission`)."""
    path = Path(path)
    submission = read_json_strict(path)
    validate_traffic_submission(submission, queries=queries, gallery=gallery, source=path)
    return submission


def write_submission_from_embeddings(split: CIRSplit, query_embeddings: Any, gallery_embeddings: Any,
                                     out_dir: PathLike) -> list[Path]:
    """Rank a CIRR or CIRCO split with embeddings and write its test-server file(s).

    CIRR: ``<out_dir>/<split>_pred_ranks_recall.json`` and ``..._recall_subset.json``;
    CIRCO: ``<out_dir>/submission_<split>.json`` (the names of the published examples).
    Embeddings: [Q, D] per ``split.queries`` and [G, D] per ``split.gallery``. Returns the paths.
    """
    if split.dataset == "cirr":
        rankings, subsets = protocols.rank_cirr(split, query_embeddings, gallery_embeddings,
                                                CIRR_DEPTH, CIRR_SUBSET_DEPTH)
        recall_path, subset_path = cirr_submission_paths(out_dir, split.split)
        write_cirr_submission(recall_path, subset_path, split, rankings, subsets)
        return [recall_path, subset_path]
    if split.dataset == "circo":
        path = Path(out_dir) / f"submission_{split.split}.json"
        write_circo_submission(path, split, protocols.rank_split(split, query_embeddings, gallery_embeddings,
                                                                 CIRCO_DEPTH))
        return [path]
    raise InputError(f"no single-file submission format for dataset {split.dataset!r}; expected cirr or circo "
                     "(FashionIQ: write_fashioniq_submission with all three categories)")


# --------------------------------------------------------------------------- scoring files


def read_gallery_ids(path: PathLike) -> list[str]:
    """Gallery ids from a ``.json`` list or a text file with one id per line."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json_strict(path)
        if not isinstance(data, list):
            raise InputError(f"found a JSON {type(data).__name__}; expected a list of image ids", path=path)
        return [str(x) for x in data]
    lines = read_text_lines(path, "one gallery image id per line")
    return [line.strip() for _, line in lines]


def _expect_paths(dataset: str, paths: Sequence[PathLike], count: int, what: str) -> list[Path]:
    if len(paths) != count:
        raise InputError(f"{dataset}: {len(paths)} prediction file(s) given; expected {count} ({what})",
                         field="predictions")
    return [Path(p) for p in paths]


def evaluate_prediction_files(dataset: str, root: PathLike, split: str, prediction_paths: Sequence[PathLike],
                              **kwargs: Any) -> dict[str, Any]:
    """Load ``split`` of ``dataset`` through the registry, read the prediction file(s), score.

    - ``cirr``: ``[recall file, recall_subset file]``.
    - ``fashioniq``: ``[one file]`` covering dress, shirt and toptee; returns per category + average.
    - ``circo``: ``[one file]``; kwargs ``gallery_ids`` (when the COCO image-info file is absent)
      and ``shared_concept`` (bool, recorded in the protocol).
    - ``traffic``: ``[submission.json]``; kwarg ``ground_truth`` (path) defaults to the split's
      own (``<root>/test/test_ground_truth.txt``); for train/val the label texts are the queries.
    """
    from irkit.data.registry import load_dataset

    if dataset == "cirr":
        recall_path, subset_path = _expect_paths(dataset, prediction_paths, 2, "the recall and recall_subset files")
        cir_split = load_dataset("cirr", root, split)
        rankings = read_cirr_submission(recall_path, "recall", cir_split)
        subsets = read_cirr_submission(subset_path, "recall_subset", cir_split)
        return protocols.evaluate_rankings(cir_split, rankings, subset_rankings=subsets,
                                           source=str(recall_path), subset_source=str(subset_path))
    if dataset == "circo":
        (path,) = _expect_paths(dataset, prediction_paths, 1, "the CIRCO submission file")
        loader_kwargs = {}
        if kwargs.get("gallery_ids") is not None:
            loader_kwargs["gallery_ids"] = kwargs["gallery_ids"]
        cir_split = load_dataset("circo", root, split, **loader_kwargs)
        rankings = read_circo_submission(path, cir_split)
        return protocols.evaluate_rankings(cir_split, rankings, shared_concept=kwargs.get("shared_concept"),
                                           source=str(path))
    if dataset == "fashioniq":
        (path,) = _expect_paths(dataset, prediction_paths, 1, "one file with dress, shirt and toptee")
        splits = {c: load_dataset("fashioniq", root, split, category=c) for c in FASHIONIQ_CATEGORIES}
        rankings = read_fashioniq_submission(path, splits)
        return protocols.combine_fashioniq({
            c: protocols.evaluate_rankings(splits[c], rankings[c], source=f"{path} [{c}]") for c in splits
        })
    if dataset == "traffic":
        (path,) = _expect_paths(dataset, prediction_paths, 1, "submission.json")
        return _evaluate_traffic_file(root, split, path, kwargs.get("ground_truth"))
    raise InputError(f"no prediction-file format for dataset {dataset!r}; expected cirr, circo, fashioniq or traffic",
                     field="dataset")


def _evaluate_traffic_file(root: PathLike, split: str, path: Path, ground_truth_path: Optional[PathLike]
                           ) -> dict[str, Any]:
    from irkit.data.registry import load_dataset
    from irkit.data.traffic import read_traffic_ground_truth

    traffic_split = load_dataset("traffic", root, split)
    if split == "test":
        queries, gallery = traffic_split.queries, traffic_split.gallery
        if ground_truth_path is not None:
            truth = read_traffic_ground_truth(ground_truth_path, gallery=gallery, queries=queries)
        elif traffic_split.ground_truth is not None:
            truth = traffic_split.ground_truth
        else:
            raise InputError("no ground truth for the test queries; expected this file or --ground-truth",
                             path=Path(root) / TRAFFIC_GROUND_TRUTH)
    else:
        truth = protocols.traffic_ground_truth_from_labels(traffic_split.labels)
        if ground_truth_path is not None:
            truth = read_traffic_ground_truth(ground_truth_path)
        queries = list(truth)
        gallery = [label.image for label in traffic_split.labels]
    submission = read_traffic_submission(path, queries=queries, gallery=gallery)
    return protocols.evaluate_traffic_submission(submission, truth, queries=queries, source=str(path),
                                                 split_name=split)
