"""FashionIQ (docs/formats.md §2, docs/protocols.md "FashionIQ"): three categories scored
separately (reference kept), R@10 and R@50; headline: the mean over dress, shirt and toptee.
Local prediction file ``{"dress": {"<query index>": [ASINs]}, "shirt": ..., "toptee": ...}``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from irkit import metrics
from irkit.benchmarks.checks import (
    check_fixed_depth,
    expect_file_count,
    expect_object,
    read_json_strict,
    truncate,
    write_json,
)
from irkit.benchmarks.spec import PERCENT, Benchmark, Rankings, register_benchmark
from irkit.data.records import CIRQuery, CIRSplit
from irkit.errors import InputError
from irkit.io import atomic_path

CATEGORIES = ("dress", "shirt", "toptee")
DEPTH = max(metrics.FASHIONIQ_KS)
#: Characters stripped from both ends of each caption (the published ``strip('.?, ')``).
CAPTION_STRIP = ".?, "


class FashionIQ(Benchmark):
    name = "fashioniq"
    title = "FashionIQ"
    parts = CATEGORIES
    part_option = "category"
    default_split = "val"
    annotation_marker = "captions"
    selection_metric = "R@10"
    default_rerank_k = 100
    demo_caption_file = "fashioniq_train.csv"
    recall_ks = metrics.FASHIONIQ_KS
    map_ks = ()

    def query_text(self, query: CIRQuery, include_shared_concept: bool = False) -> str:
        """The two captions joined with " and " (MagicLens's template)."""
        return " and ".join(c.strip(CAPTION_STRIP) for c in query.captions)

    def prompt_captions(self, query: CIRQuery, include_shared_concept: bool = False,
                        clean: Callable[[str], str] = str) -> list[str]:
        """Both caption orders, ``"{c1} and {c2}"`` / ``"{c2} and {c1}"``, each caption stripped of
        ``'.?, '`` (SEARLE's and LinCIR's FashionIQ prompts)."""
        captions = [clean(c) for c in query.captions]
        if len(captions) >= 2:
            c1, c2 = (c.strip(CAPTION_STRIP) for c in captions[:2])
            return [f"{c1} and {c2}", f"{c2} and {c1}"]
        return [captions[0] if captions else ""]

    def protocol_name(self, split: CIRSplit, shared_concept: Optional[bool] = None) -> str:
        return f"fashioniq-{split.split}/{split.category}: reference kept in gallery; R@K on target"

    def metric_values(self, split, rankings, subset_rankings) -> dict[str, Any]:
        values: dict[str, Any] = {"category": split.category}
        values.update(metrics.fashioniq_metrics(rankings, {q.query_id: q.target for q in split.queries}))
        return values

    def combine(self, splits: Sequence[CIRSplit], results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One category: its own result. All three: ``{category: {...}, "average": {...}}``, the mean
        over categories of R@10 and of R@50 (the headline) and ``mean(R@10,R@50)``."""
        if len(results) == 1:
            return dict(results[0])
        return combine_categories({s.category: r for s, r in zip(splits, results)})

    def submission_paths(self, out_dir, split_name) -> list[Path]:
        return [Path(out_dir) / f"fashioniq_{split_name}.json"]

    def write_submission(self, out_dir, splits, rankings, subset_rankings) -> list[Path]:
        (path,) = self.submission_paths(out_dir, splits[0].split)
        write_fashioniq_submission(path, {s.category: s for s in splits},
                                   {s.category: r for s, r in zip(splits, rankings)})
        return [path]

    def score_prediction_files(self, root, split, paths, **options) -> dict[str, Any]:
        """``paths`` = [one file covering dress, shirt and toptee]; returns per category + average."""
        (path,) = expect_file_count(self.name, paths, 1, "one file with dress, shirt and toptee")
        splits = {c: self.load(root, split, category=c) for c in CATEGORIES}
        rankings = read_fashioniq_submission(path, splits)
        return combine_categories({c: self.score(splits[c], rankings[c], source=f"{path} [{c}]") for c in splits})


BENCHMARK = register_benchmark(FashionIQ())


def combine_categories(per_category: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Merge per-category results into ``{category: {...}, "average": {...}}``."""
    if set(per_category) != set(CATEGORIES):
        raise InputError(f"FashionIQ results for categories {sorted(per_category)}; "
                         f"expected exactly {sorted(CATEGORIES)}")
    result: dict[str, Any] = {
        "protocol": "fashioniq: mean over dress, shirt, toptee of per-category R@K; reference kept in gallery",
        "units": PERCENT,
    }
    for category in sorted(per_category):
        result[category] = dict(per_category[category])
    result["average"] = metrics.fashioniq_average(
        {c: {k: v for k, v in r.items() if k.startswith("R@")} for c, r in per_category.items()})
    result["num_queries"] = int(sum(r.get("num_queries", 0) for r in per_category.values()))
    return result


def _check_categories(found: Sequence[str], expected: Sequence[str], path: Path) -> None:
    unknown = [c for c in found if c not in expected]
    missing = [c for c in expected if c not in found]
    if unknown:
        raise InputError(f"unknown category {unknown[0]!r}; expected exactly {', '.join(expected)}",
                         path=path, field=unknown[0])
    if missing:
        raise InputError(f"category {missing[0]!r} is missing; expected exactly {', '.join(expected)}",
                         path=path, field=missing[0])


def write_fashioniq_submission(path: os.PathLike | str, splits: Mapping[str, CIRSplit],
                               rankings: Mapping[str, Rankings]) -> None:
    """Write ``{category: {query index: [ranked ASINs]}}`` (atomic), 50 per query (cut to 50).

    ``splits`` and ``rankings`` are keyed by the same categories.
    """
    path = Path(path)
    _check_categories(list(rankings), list(splits), path)
    content: dict[str, Any] = {}
    for category, split in splits.items():
        lists = truncate(rankings[category], DEPTH)
        BENCHMARK.check_rankings(split, lists, DEPTH, f"{path} [{category}]", exact=True)
        content[category] = {q.query_id: lists[q.query_id] for q in split.queries}
    with atomic_path(path) as tmp:
        write_json(tmp, content)


def read_fashioniq_submission(path: os.PathLike | str, splits: Optional[Mapping[str, CIRSplit]] = None
                              ) -> dict[str, dict[str, list[str]]]:
    """Read ``{category: {query index: [ASINs]}}``; returns it with lists as ``list[str]``.

    With ``splits`` ({category: CIRSplit}): exactly those categories and each split's query
    ids, ``min(50, gallery)`` unique gallery ASINs each. Without: the three categories,
    exactly 50 unique ASINs per query.
    """
    path = Path(path)
    data = expect_object(read_json_strict(path), path,
                         '{"dress": {"<query index>": [ASINs]}, "shirt": ..., "toptee": ...}')
    expected = list(splits) if splits is not None else list(CATEGORIES)
    _check_categories(list(data), expected, path)
    result: dict[str, dict[str, list[str]]] = {}
    for category in expected:
        lists = expect_object(data[category], path, '{"<query index>": [ASINs]}', field=category)
        source = Path(f"{path} [{category}]")
        if splits is None:
            check_fixed_depth(lists, DEPTH, source)
        else:
            BENCHMARK.check_rankings(splits[category], lists, DEPTH, str(source), exact=True)
        result[category] = {k: list(v) for k, v in lists.items()}
    return result
