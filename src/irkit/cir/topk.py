"""Top-K files: ranked candidates (ids and scores) of every query, per split (docs/formats.md).

Stage I of two-stage re-ranking writes one (:func:`stage1_topk`, :func:`save_topk_file`); stage
II, the fusion rows and the significance report read them (:func:`load_topk_parts`). JSON,
written atomically::

    {"format": "irkit-topk", "version": 1, "stage": "stage1:image-text-sum",
     "parts": [{"dataset": "cirr", "split": "val", "category": null, "k": 50,
                "queries": [{"query_id": "7", "ids": [...], "scores": [...]}, ...]}]}

One part per split (FashionIQ: one per category). Where the benchmark's protocol removes the
reference, stage I already removes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from irkit.benchmarks import benchmark_of
from irkit.cir.context import CIRContext
from irkit.cir.registry import EmbeddingMethod
from irkit.data.records import CIRSplit
from irkit.errors import InputError
from irkit.io import atomic_write_json, read_json

TOPK_FORMAT = "irkit-topk"
TOPK_VERSION = 1


def default_k(dataset: str) -> int:
    """K of the published re-ranker for ``dataset`` (the benchmark's ``default_rerank_k``)."""
    from irkit.benchmarks import get_benchmark

    return get_benchmark(dataset).default_rerank_k


@dataclass
class TopK:
    """Ranked candidates of every query of one split: ``ids[q]`` best first, ``scores[q]`` aligned."""

    dataset: str
    split: str
    category: Optional[str]
    k: int
    query_ids: list[str]
    ids: list[list[str]]
    scores: list[list[float]]
    stage: str = "stage1"

    def key(self) -> tuple[str, str, Optional[str]]:
        return self.dataset, self.split, self.category

    def rankings(self) -> dict[str, list[str]]:
        """``{query_id: ids}``."""
        return dict(zip(self.query_ids, self.ids))

    def check_split(self, split: CIRSplit, source: Optional[Path | str] = None) -> None:
        """Raise :class:`InputError` unless this part lists exactly ``split``'s queries and
        only ids of its gallery."""
        if self.key() != (split.dataset, split.split, split.category):
            raise InputError(f"top-K part is for {self.key()}; expected {(split.dataset, split.split, split.category)}",
                             path=source)
        expected = [q.query_id for q in split.queries]
        if self.query_ids != expected:
            missing = sorted(set(expected) - set(self.query_ids))
            extra = sorted(set(self.query_ids) - set(expected))
            detail = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {extra[:3]}" if extra else "")
            raise InputError(f"top-K queries do not match {split.dataset}-{split.split} "
                             f"({detail or 'different order'});"
                             " expected one entry per query in split order", path=source, field="queries")
        benchmark = benchmark_of(split)
        gallery = set(split.gallery)
        for query, ids in zip(split.queries, self.ids):
            allowed = benchmark.candidate_ids(split, query)
            outside = [i for i in ids if i not in (gallery if allowed is None else set(allowed))]
            if outside:
                raise InputError(f"candidate {outside[0]!r} is not a candidate of {split.dataset}-{split.split} "
                                 f"query {query.query_id!r}", path=source, field=query.query_id)


def save_topk_file(path: Path | str, parts: Sequence[TopK]) -> Path:
    """Write top-K parts as one JSON file, atomically (no partial file on failure)."""
    if not parts:
        raise InputError("no top-K parts to save", path=path)
    stages = sorted({p.stage for p in parts})
    data = {
        "format": TOPK_FORMAT, "version": TOPK_VERSION, "stage": stages[0] if len(stages) == 1 else stages,
        "parts": [{
            "dataset": p.dataset, "split": p.split, "category": p.category, "k": p.k, "stage": p.stage,
            "queries": [{"query_id": q, "ids": list(ids), "scores": [float(s) for s in scores]}
                        for q, ids, scores in zip(p.query_ids, p.ids, p.scores)],
        } for p in parts],
    }
    for i, raw in enumerate(data["parts"]):  # the checks load_topk_file applies, before writing
        _parse_part(raw, i, Path(path), data["stage"] if isinstance(data["stage"], str) else "stage1")
    atomic_write_json(path, data)
    return Path(path)


def _expect(condition: bool, message: str, path: Path, field_name: str) -> None:
    if not condition:
        raise InputError(message, path=path, field=field_name)


def _parse_part(raw: Any, index: int, path: Path, default_stage: str) -> TopK:
    where = f"parts[{index}]"
    _expect(isinstance(raw, dict), f"found {type(raw).__name__}; expected an object", path, where)
    for key in ("dataset", "split", "k", "queries"):
        _expect(key in raw, f"missing '{key}'; expected dataset, split, category, k, queries", path, where)
    _expect(isinstance(raw["dataset"], str) and isinstance(raw["split"], str),
            "dataset and split must be strings", path, where)
    category = raw.get("category")
    _expect(category is None or isinstance(category, str), "category must be a string or null", path,
            f"{where}.category")
    k = raw["k"]
    _expect(isinstance(k, int) and not isinstance(k, bool) and k > 0, f"k is {k!r}; expected a positive integer",
            path, f"{where}.k")
    _expect(isinstance(raw["queries"], list), "queries must be a list", path, f"{where}.queries")
    query_ids, ids, scores = [], [], []
    for j, entry in enumerate(raw["queries"]):
        q_where = f"{where}.queries[{j}]"
        _expect(isinstance(entry, dict) and {"query_id", "ids", "scores"} <= set(entry),
                "expected an object with query_id, ids, scores", path, q_where)
        _expect(isinstance(entry["query_id"], str), "query_id must be a string", path, f"{q_where}.query_id")
        ranked, values = entry["ids"], entry["scores"]
        _expect(isinstance(ranked, list) and all(isinstance(x, str) for x in ranked),
                "ids must be a list of image id strings", path, f"{q_where}.ids")
        _expect(len(set(ranked)) == len(ranked), "ids repeat an image; expected unique candidates", path,
                f"{q_where}.ids")
        _expect(len(ranked) <= k, f"{len(ranked)} ids; expected at most k={k}", path, f"{q_where}.ids")
        _expect(isinstance(values, list) and len(values) == len(ranked)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values),
                "scores must be finite numbers, one per id", path, f"{q_where}.scores")
        query_ids.append(entry["query_id"])
        ids.append(ranked)
        scores.append([float(v) for v in values])
    _expect(len(set(query_ids)) == len(query_ids), "a query_id appears twice", path, f"{where}.queries")
    return TopK(raw["dataset"], raw["split"], category, k, query_ids, ids, scores,
                stage=str(raw.get("stage", default_stage)))


def load_topk_file(path: Path | str) -> list[TopK]:
    """Read a top-K file; malformed content raises :class:`InputError` naming the field."""
    path = Path(path)
    data = read_json(path)
    _expect(isinstance(data, dict) and data.get("format") == TOPK_FORMAT,
            f"not an irkit top-K file; expected an object with \"format\": \"{TOPK_FORMAT}\"", path, "format")
    _expect(data.get("version") == TOPK_VERSION, f"version {data.get('version')!r}; expected {TOPK_VERSION}",
            path, "version")
    _expect(isinstance(data.get("parts"), list) and data["parts"], "expected a non-empty 'parts' list", path, "parts")
    stage = data.get("stage") if isinstance(data.get("stage"), str) else "stage1"
    parts = [_parse_part(raw, i, path, stage) for i, raw in enumerate(data["parts"])]
    keys = [p.key() for p in parts]
    _expect(len(set(keys)) == len(keys), "two parts for the same dataset/split/category", path, "parts")
    return parts


def find_part(parts: Sequence[TopK], split: CIRSplit, source: Optional[Path | str] = None) -> TopK:
    """The part of ``parts`` for ``split`` (checked against it)."""
    for part in parts:
        if part.key() == (split.dataset, split.split, split.category):
            part.check_split(split, source)
            return part
    raise InputError(f"no top-K part for {split.dataset}-{split.split}"
                     + (f"/{split.category}" if split.category else "")
                     + f"; the file has {[p.key() for p in parts]}", path=source)


def load_topk_parts(path: Path | str, splits: Sequence[CIRSplit]) -> list[TopK]:
    """The parts of ``splits``, in order, from the top-K file ``path`` (each checked)."""
    parts = load_topk_file(path)
    return [find_part(parts, split, path) for split in splits]


def stage1_topk(method: EmbeddingMethod, ctx: CIRContext, split: CIRSplit, k: int) -> TopK:
    """Stage I: rank ``split`` with ``method``'s embeddings and keep each query's top ``k``
    (the reference removed where the protocol removes it; ties by gallery order)."""
    if k <= 0:
        raise InputError(f"k is {k}; expected a positive number of candidates", field="k")
    ids, scores = benchmark_of(split).top_candidates(split, ctx.query_embeddings(method, split),
                                                     method.gallery_embeddings(ctx, split), k)
    return TopK(split.dataset, split.split, split.category, int(k), [q.query_id for q in split.queries], ids, scores,
                stage=f"stage1:{method.name}")


def is_topk_path(stage1: Union[str, Path]) -> bool:
    """Whether a stage-I description names a top-K file (``*.json`` or an existing file)."""
    return str(stage1).endswith(".json") or Path(stage1).is_file()
