"""CIRCO (docs/formats.md §4, docs/protocols.md "CIRCO"): reference kept; mAP@{5,10,25,50} with
AP@K / min(|gt_img_ids|, K); R@K on ``target_img_id``; ``shared_concept`` in the query text is a
recorded option; test-server file ``{"<id>": [50 int image ids]}``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from irkit import metrics
from irkit.benchmarks.checks import (
    check_fixed_depth,
    expect_file_count,
    expect_object,
    read_json_strict,
    truncate,
    write_json,
)
from irkit.benchmarks.spec import Benchmark, Rankings, register_benchmark
from irkit.data.records import CIRQuery, CIRSplit
from irkit.errors import InputError
from irkit.io import atomic_path

DEPTH = max(metrics.CIRCO_KS)
#: Template-free methods with ``include_shared_concept``: the query text.
SHARED_CONCEPT_TEXT = "find {concept} but {caption}"
#: Prompt templates with ``include_shared_concept``: the caption that fills the prompt.
SHARED_CONCEPT_CAPTION = "shows {concept} but {caption}"


class CIRCO(Benchmark):
    name = "circo"
    title = "CIRCO"
    prediction_file_options = ("gallery_ids", "shared_concept")
    default_split = "val"
    annotation_marker = "annotations"
    takes_shared_concept = True
    selection_metric = "mAP@10"
    default_rerank_k = 50
    demo_caption_file = "cirr_train.csv"  # its own caption file describes the evaluation gallery
    demo_needs = ("cirr",)
    recall_ks = metrics.CIRCO_KS
    map_ks = metrics.CIRCO_KS

    def query_text(self, query: CIRQuery, include_shared_concept: bool = False) -> str:
        """The relative caption, optionally prefixed ``find {shared_concept} but`` (a named option:
        published methods differ)."""
        caption = query.captions[0]
        if include_shared_concept and query.shared_concept:
            return SHARED_CONCEPT_TEXT.format(concept=query.shared_concept, caption=caption)
        return caption

    def prompt_captions(self, query: CIRQuery, include_shared_concept: bool = False,
                        clean: Callable[[str], str] = str) -> list[str]:
        caption = clean(query.captions[0]) if query.captions else ""
        if include_shared_concept and query.shared_concept:
            caption = SHARED_CONCEPT_CAPTION.format(concept=clean(query.shared_concept), caption=caption)
        return [caption]

    def recall_relevant(self, query: CIRQuery) -> set[str]:
        """R@K counts ``target_img_id`` only (mAP@K uses every ``gt_img_ids`` entry)."""
        return {query.target}

    def protocol_name(self, split: CIRSplit, shared_concept: Optional[bool] = None) -> str:
        concept = "unspecified" if shared_concept is None else str(bool(shared_concept))
        return (f"circo-{split.split}: shared_concept={concept}; reference kept; "
                "AP@K / min(|gt_img_ids|, K); R@K on target_img_id")

    def metric_values(self, split, rankings, subset_rankings) -> dict[str, float]:
        return metrics.circo_metrics(
            rankings,
            ground_truths={q.query_id: self.relevant(q) for q in split.queries},
            targets={q.query_id: q.target for q in split.queries},
        )

    def submission_paths(self, out_dir, split_name) -> list[Path]:
        return [Path(out_dir) / f"submission_{split_name}.json"]

    def write_submission(self, out_dir, splits, rankings, subset_rankings) -> list[Path]:
        if len(splits) != 1:
            raise InputError(f"circo submissions are written for one split, got {len(splits)}")
        (path,) = self.submission_paths(out_dir, splits[0].split)
        write_circo_submission(path, splits[0], rankings[0])
        return [path]

    def score_prediction_files(self, root, split, paths, **options) -> dict[str, Any]:
        """``paths`` = [one file]; options ``gallery_ids`` (when the COCO image-info file is
        absent) and ``shared_concept`` (bool, recorded in the protocol)."""
        (path,) = expect_file_count(self.name, paths, 1, "the CIRCO submission file")
        loader_options = {}
        if options.get("gallery_ids") is not None:
            loader_options["gallery_ids"] = options["gallery_ids"]
        cir_split = self.load(root, split, **loader_options)
        rankings = read_circo_submission(path, cir_split)
        return self.score(cir_split, rankings, shared_concept=options.get("shared_concept"), source=str(path))


BENCHMARK = register_benchmark(CIRCO())


def write_circo_submission(path: os.PathLike | str, split: CIRSplit, rankings: Rankings) -> None:
    """Write ``{"<id>": [50 unique int image ids]}`` for every query of ``split`` (atomic).

    ``rankings`` holds string ids (irkit's convention), at least 50 deep (cut to 50).
    """
    if split.dataset != BENCHMARK.name:
        raise InputError(f"write_circo_submission needs a CIRCO split, got {split.dataset!r}")
    path = Path(path)
    lists = truncate(rankings, DEPTH)
    BENCHMARK.check_rankings(split, lists, DEPTH, str(path), exact=True)
    content = {}
    for query in split.queries:
        ranked = lists[query.query_id]
        bad = [x for x in ranked if not x.isdigit()]
        if bad:
            raise InputError(f"image id {bad[0]!r} is not an integer COCO id", path=path, field=query.query_id)
        content[query.query_id] = [int(x) for x in ranked]
    with atomic_path(path) as tmp:
        write_json(tmp, content)


def read_circo_submission(path: os.PathLike | str, split: Optional[CIRSplit] = None) -> dict[str, list[str]]:
    """Read ``{"<id>": [int image ids]}``; returns ``{id: [ids as strings]}``.

    Ids must be JSON integers and unique per query; with ``split``: exactly the split's query
    ids, ``min(50, gallery size)`` ids each, all in the gallery. Without: exactly 50 each.
    """
    path = Path(path)
    data = expect_object(read_json_strict(path), path, 'an object {"<query id>": [50 int image ids]}')
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
        check_fixed_depth(lists, DEPTH, path)
    else:
        BENCHMARK.check_rankings(split, lists, DEPTH, str(path), exact=True)
    return lists
