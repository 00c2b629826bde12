"""GeneCIS (docs/formats.md §7, docs/protocols.md "GeneCIS"): four tasks; each template is ranked
over its own candidates [target] + gallery (the reference is not a candidate); R@{1,2,3};
headline: the mean R@1 over the tasks present. Ties count against the target.

Rankings are ``{template index: [candidate positions, best first]}`` with positions as strings:
``"0"`` = the target, ``"1".."n"`` = the template's gallery in file order (``CIRQuery.candidates``
maps a position to its image id). The local prediction file (there is no test server) is
``{"<task>": {"<template index>": [positions as JSON ints, best first]}}``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Optional, Sequence

import numpy as np

from irkit import metrics
from irkit.benchmarks.checks import (
    check_ranking_list,
    expect_file_count,
    expect_object,
    read_json_strict,
    write_json,
)
from irkit.benchmarks.spec import PERCENT, Benchmark, Rankings, register_benchmark
from irkit.data.genecis import ANNOTATION_DIR, TASKS, present_tasks, task_path
from irkit.data.records import CIRQuery, CIRSplit
from irkit.errors import InputError
from irkit.io import atomic_path

log = logging.getLogger(__name__)

DEPTH = max(metrics.GENECIS_KS)
FILE_FORMAT = '{"<task>": {"<template index>": [candidate positions as integers, best first]}}'


def candidates_of(query: CIRQuery) -> tuple[str, ...]:
    """A GeneCIS query's candidate image ids (position 0 = the target)."""
    if not query.candidates:
        raise InputError(f"query {query.query_id!r} has no candidate list; expected a GeneCIS template",
                         field=query.query_id)
    return query.candidates


def target_in_gallery(split: CIRSplit) -> list[int]:
    """Template indices whose gallery also lists the target image (a tie that counts as a miss)."""
    return [int(q.query_id) for q in split.queries if q.target in candidates_of(q)[1:]]


class GeneCIS(Benchmark):
    name = "genecis"
    title = "GeneCIS"
    parts = TASKS
    part_option = "task"
    default_split = "val"
    test_split = "val"  # no test server: the local predictions file of the one annotated set
    ties_against_target = True
    annotation_marker = ANNOTATION_DIR
    query_noun = "template index"
    removes_reference = False
    selection_metric = "R@1"
    default_rerank_k = 15  # every candidate of a real template (target + 14 gallery images)
    recall_ks = metrics.GENECIS_KS
    map_ks = ()

    # ------------------------------------------------------------------ loading

    def load_parts(self, root: os.PathLike | str, split: str, **options: Any) -> list[CIRSplit]:
        """Every task whose annotation file is under ``root`` (absent tasks are logged and named by
        :meth:`combine`), or only ``options["task"]``; :class:`InputError` when none is present."""
        if options.get(self.part_option) is not None:
            return [self.load(root, split, **options)]
        present = present_tasks(root)
        if not present:
            raise InputError(f"none of the GeneCIS task files is present; expected at least one of "
                             f"{', '.join(f'{ANNOTATION_DIR}/{t}.json' for t in TASKS)}", path=root)
        skipped = [t for t in TASKS if t not in present]
        if skipped:
            log.info("genecis: skipping task(s) %s: annotation file absent under %s", ", ".join(skipped), root)
        rest = {k: v for k, v in options.items() if k != self.part_option}
        return [self.load(root, split, **{self.part_option: task}, **rest) for task in present]

    def dataset_root(self, data_root: os.PathLike | str) -> Path:
        """``<data_root>/genecis`` when it holds the layout (a demo root), else ``data_root``
        (whose own ``genecis/`` folder holds the task files)."""
        data_root = Path(data_root)
        nested = data_root / self.name
        return nested if self.has_layout(nested) else data_root

    def has_layout(self, root: os.PathLike | str) -> bool:
        return bool(present_tasks(root))

    # ------------------------------------------------------------------ query text

    def query_text(self, query: CIRQuery, include_shared_concept: bool = False) -> str:
        """The condition word or short phrase, unchanged (e.g. ``"wall"``, ``"color"``)."""
        return query.captions[0] if query.captions else ""

    def prompt_captions(self, query: CIRQuery, include_shared_concept: bool = False,
                        clean: Callable[[str], str] = str) -> list[str]:
        """The condition (passed through ``clean``) as the one caption filling a prompt template;
        GeneCIS publishes no task-specific wording, so none is invented here."""
        return [clean(query.captions[0]) if query.captions else ""]

    # ------------------------------------------------------------------ protocol

    def protocol_name(self, split: CIRSplit, shared_concept: Optional[bool] = None) -> str:
        return (f"genecis-{split.split}/{split.category}: each template ranked over [target] + its gallery "
                f"(reference not a candidate); R@K on the target, K in 1,2,3; {metrics.GENECIS_TIE_RULE}")

    def ranking_depth(self, split: Optional[CIRSplit] = None) -> int:
        return DEPTH

    def rankable(self, split: CIRSplit, query: CIRQuery, gallery_set: Collection[str]) -> int:
        return len(candidates_of(query))

    def check_query_ranking(self, split: CIRSplit, query: CIRQuery, ranked: Any, depth: int,
                            gallery_set: Collection[str], source: Optional[str] = None, exact: bool = False) -> None:
        """Raise :class:`InputError` unless one template's ranking is a list of unique candidate
        positions (``"0".."n"``) ``min(depth, n+1)`` long (at least that long unless ``exact``)."""
        check_ranking_list(ranked, query.query_id, source)
        count = len(candidates_of(query))
        valid = {str(p) for p in range(count)}
        outside = [p for p in ranked if p not in valid]
        if outside:
            raise InputError(f"candidate position {outside[0]!r} is out of range; expected 0 (the target) "
                             f"to {count - 1} (gallery order)", path=source, field=query.query_id)
        needed = min(depth, count)
        if len(ranked) < needed or (exact and len(ranked) != needed):
            raise InputError(f"ranking has {len(ranked)} positions; expected {'exactly' if exact else 'at least'} "
                             f"{needed}", path=source, field=query.query_id)

    # ------------------------------------------------------------------ ranking

    def candidate_scores(self, split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray
                         ) -> list[np.ndarray]:
        """Per template, the [n+1] scores (float64 dot products) of its candidates, target first.

        Args:
            query_embeddings: [Q, D], one row per ``split.queries`` entry.
            gallery_embeddings: [G, D], one row per ``split.gallery`` id.
        A candidate listed twice gets the one score of its gallery row (an exact tie).
        """
        self.check_embeddings(split, query_embeddings, gallery_embeddings)
        position = {image_id: i for i, image_id in enumerate(split.gallery)}
        queries = np.asarray(query_embeddings)
        gallery = np.asarray(gallery_embeddings)
        scores = []
        for row, query in enumerate(split.queries):
            ids = candidates_of(query)
            unknown = [c for c in ids if c not in position]
            if unknown:
                raise InputError(f"candidate {unknown[0]!r} is not in the split's gallery", field=query.query_id)
            unique, inverse = np.unique(np.asarray([position[c] for c in ids]), return_inverse=True)
            values = gallery[unique].astype(np.float64) @ queries[row].astype(np.float64)
            scores.append(values[inverse.reshape(-1)])
        return scores

    def search(self, split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
        raise InputError("GeneCIS ranks each template's own candidates, not the whole gallery; use rank()",
                         field="dataset")

    def candidate_ids(self, split: CIRSplit, query: CIRQuery) -> Sequence[str]:
        return [str(p) for p in range(len(candidates_of(query)))]

    def candidate_image(self, query: CIRQuery, candidate: str) -> str:
        return candidates_of(query)[int(candidate)]

    def is_target(self, query: CIRQuery, candidate: str) -> bool:
        return candidate == metrics.GENECIS_TARGET

    def top_candidates(self, split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
                       k: int) -> tuple[list[list[str]], list[list[float]]]:
        """Per template, its top-``k`` candidate positions (strings) and their scores."""
        ids, values = [], []
        for scores in self.candidate_scores(split, query_embeddings, gallery_embeddings):
            order = metrics.genecis_order(scores)[:k]
            ids.append([str(p) for p in order])
            values.append([float(scores[p]) for p in order])
        return ids, values

    def rank_for_scoring(self, split, query_embeddings, gallery_embeddings):
        depth = max(len(candidates_of(q)) for q in split.queries)
        return self.rank(split, query_embeddings, gallery_embeddings, depth), None

    # ------------------------------------------------------------------ scoring

    def metric_values(self, split, rankings, subset_rankings) -> dict[str, Any]:
        values: dict[str, Any] = {"task": split.category}
        values.update(metrics.genecis_recall(rankings, self.recall_ks))
        values["target_in_gallery"] = target_in_gallery(split)
        values["rules"] = metrics.GENECIS_TIE_RULE
        return values

    def relevant(self, query: CIRQuery) -> tuple[str, ...]:
        """The target's candidate position (``"0"``): per-query R@k / AP@k are over positions."""
        return (metrics.GENECIS_TARGET,)

    def combine(self, splits: Sequence[CIRSplit], results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """``{task: {...}, "average": {R@1, R@2, R@3}, "tasks", "skipped_tasks", ...}``: the mean over
        the tasks scored (headline: ``average.R@1``); tasks whose file is absent are named."""
        if not splits or len(splits) != len(results):
            raise InputError(f"cannot combine {len(results)} result(s) of {len(splits)} GeneCIS task split(s)")
        per_task = {s.category: dict(r) for s, r in zip(splits, results)}
        tasks = [t for t in TASKS if t in per_task]
        absent = [t for t in TASKS if t not in per_task and not task_path(splits[0].root, t).is_file()]
        not_requested = [t for t in TASKS if t not in per_task and t not in absent]
        result: dict[str, Any] = {
            "protocol": (f"genecis-{splits[0].split}: mean over the tasks scored ({', '.join(tasks)}) of per-task "
                         f"R@K, K in 1,2,3; each template ranked over [target] + its gallery"
                         + (f"; skipped (annotation file absent): {', '.join(absent)}" if absent else "")),
            "units": PERCENT,
            "rules": metrics.GENECIS_TIE_RULE,
        }
        for task in tasks:
            result[task] = per_task[task]
        result["average"] = {f"R@{k}": float(np.mean([per_task[t][f"R@{k}"] for t in tasks])) for k in self.recall_ks}
        result["tasks"] = tasks
        result["skipped_tasks"] = absent
        if not_requested:
            result["tasks_not_requested"] = not_requested
        result["num_queries"] = int(sum(per_task[t].get("num_queries", 0) for t in tasks))
        return result

    # ------------------------------------------------------------------ files

    def write_submission(self, out_dir, splits, rankings, subset_rankings) -> list[Path]:
        """The local prediction file ``genecis_<split>.json`` (full rankings; no test server exists)."""
        path = Path(out_dir) / f"genecis_{splits[0].split}.json"
        write_genecis_predictions(path, {s.category: s for s in splits},
                                  {s.category: r for s, r in zip(splits, rankings)})
        return [path]

    def score_prediction_files(self, root, split, paths, **options) -> dict[str, Any]:
        """``paths`` = [one file ``{task: {template index: [positions]}}``]; scores every task present
        under ``root`` (absent tasks are skipped and named) and returns per task + average."""
        (path,) = expect_file_count(self.name, paths, 1, f"one file {FILE_FORMAT}")
        splits = self.load_parts(root, split, make_crops=False, **options)
        rankings = read_genecis_predictions(path, {s.category: s for s in splits})
        results = [self.score(s, rankings[s.category], source=f"{path} [{s.category}]") for s in splits]
        return self.combine(splits, results)


BENCHMARK = register_benchmark(GeneCIS())


def write_genecis_predictions(path: os.PathLike | str, splits: Mapping[str, CIRSplit],
                              rankings: Mapping[str, Rankings]) -> None:
    """Write ``{task: {template index: [positions as ints]}}`` (atomic); every list is checked
    against its split (valid unique positions, at least 3 or all of them)."""
    path = Path(path)
    content: dict[str, Any] = {}
    for task, split in splits.items():
        if task not in rankings:
            raise InputError(f"no rankings for task {task!r}", path=path, field=task)
        BENCHMARK.check_rankings(split, rankings[task], DEPTH, f"{path} [{task}]")
        content[task] = {q.query_id: [int(p) for p in rankings[task][q.query_id]] for q in split.queries}
    with atomic_path(path) as tmp:
        write_json(tmp, content)


def read_genecis_predictions(path: os.PathLike | str, splits: Mapping[str, CIRSplit]
                             ) -> dict[str, dict[str, list[str]]]:
    """Read ``{task: {template index: [positions as JSON ints]}}`` strictly against ``splits``
    ({task: CIRSplit}): known task names only, every task of ``splits`` present (tasks not in
    ``splits``, i.e. absent from the root, are ignored), exactly the templates' indices, unique
    in-range integer positions, at least 3 (or all n+1). Returns positions as strings."""
    path = Path(path)
    data = expect_object(read_json_strict(path), path, FILE_FORMAT)
    unknown = [t for t in data if t not in TASKS]
    if unknown:
        raise InputError(f"unknown task {unknown[0]!r}; expected task names among {', '.join(TASKS)}",
                         path=path, field=unknown[0])
    missing = [t for t in splits if t not in data]
    if missing:
        raise InputError(f"task {missing[0]!r} has no predictions; expected every task present under the root: "
                         f"{', '.join(splits)}", path=path, field=missing[0])
    result: dict[str, dict[str, list[str]]] = {}
    for task, split in splits.items():
        lists = expect_object(data[task], path, '{"<template index>": [candidate positions]}', field=task)
        source = f"{path} [{task}]"
        converted: dict[str, Any] = {}
        for query_id, ranked in lists.items():
            if isinstance(ranked, list):
                for j, position in enumerate(ranked):
                    if isinstance(position, bool) or not isinstance(position, int):
                        raise InputError(f"entry {j} is {position!r}; expected a candidate position (a JSON integer: "
                                         "0 = the target, 1..n = gallery order)", path=source, field=query_id)
                converted[query_id] = [str(p) for p in ranked]
            else:
                converted[query_id] = ranked  # reported by check_rankings
        BENCHMARK.check_rankings(split, converted, DEPTH, source)
        result[task] = converted
    return result
