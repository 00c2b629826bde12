"""One spec per benchmark: everything the CIR engine asks a benchmark (docs/protocols.md).

A :class:`Benchmark` says how a benchmark is loaded (its parts: FashionIQ categories, GeneCIS
tasks), what is ranked against what (reference removal, per-query candidate lists), how deep,
which metrics and how parts combine, the query text of template-free methods, the metric that
selects a best checkpoint, the re-ranking depth and its test-server file format. The base class
is the generic protocol (R@K and mAP@K over each query's relevant images, reference kept), so a
new benchmark is a loader (``irkit.data``) plus a subclass registered here, overriding only
what differs.

Rankings are ``{query_id: [gallery ids, best first]}``; metrics are percentages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Collection, Mapping, Optional, Sequence

import numpy as np

from irkit import index, metrics
from irkit.benchmarks.checks import check_ranking_list
from irkit.data.records import CIRQuery, CIRSplit
from irkit.errors import InputError

PERCENT = "percent"
FRACTION = "fraction"
GENERIC_RECALL_KS = (1, 5, 10, 50)
GENERIC_MAP_KS = (5, 10, 25, 50)

Rankings = Mapping[str, Sequence[str]]


class Benchmark:
    """The generic protocol; subclasses override what their benchmark does differently."""

    #: registry name (``CIRSplit.dataset``)
    name: ClassVar[str] = ""
    #: display name
    title: ClassVar[str] = ""
    #: "cir" (composed retrieval, CIRSplit queries) or "text-to-image"
    kind: ClassVar[str] = "cir"
    #: parts loaded as separate splits (FashionIQ categories, GeneCIS tasks); ``(None,)`` = one
    parts: ClassVar[tuple[Optional[str], ...]] = (None,)
    #: loader keyword that selects one part
    part_option: ClassVar[str] = "category"
    #: the split scored by default and the test-server split
    default_split: ClassVar[str] = "val"
    #: a path below a dataset root that marks the published layout
    annotation_marker: ClassVar[str] = ""
    #: whether each query's reference is removed from its ranking
    removes_reference: ClassVar[bool] = False
    #: whether queries also rank a small candidate subset (CIRR's Rs@K over ``img_set.members``)
    has_subset_ranking: ClassVar[bool] = False
    #: whether a score tie with the target counts against it (else ties keep the given order)
    ties_against_target: ClassVar[bool] = False
    #: the split a test-server file is written for by default
    test_split: ClassVar[str] = "test"
    #: whether ``shared_concept`` may enter the query text (a recorded option)
    takes_shared_concept: ClassVar[bool] = False
    #: metric that keeps the best checkpoint during training (higher is better)
    selection_metric: ClassVar[str] = "R@1"
    #: candidates re-ranked by stage II by default
    default_rerank_k: ClassVar[int] = 50
    #: demo caption file (under ``<demo root>/captions/``) for text-only training (LinCIR)
    demo_caption_file: ClassVar[Optional[str]] = None
    #: demo datasets this benchmark's demo needs beside itself (e.g. CIRCO's training captions)
    demo_needs: ClassVar[tuple[str, ...]] = ()
    #: options :meth:`score_prediction_files` takes beside the files (``irkit eval`` flags)
    prediction_file_options: ClassVar[tuple[str, ...]] = ()
    #: what a ranking's key names, in messages
    query_noun: ClassVar[str] = "query id"
    recall_ks: ClassVar[tuple[int, ...]] = GENERIC_RECALL_KS
    map_ks: ClassVar[tuple[int, ...]] = GENERIC_MAP_KS

    # ------------------------------------------------------------------ loading

    def load(self, root: os.PathLike | str, split: str, **options: Any) -> CIRSplit:
        """One split (one part) through the registered loader."""
        from irkit.data.registry import load_dataset

        return load_dataset(self.name, root, split, **options)

    def load_parts(self, root: os.PathLike | str, split: str, **options: Any) -> list[CIRSplit]:
        """Every part of ``split`` (one :class:`CIRSplit` each), or only the part named by
        ``options[part_option]``."""
        if self.parts == (None,) or options.get(self.part_option) is not None:
            return [self.load(root, split, **options)]
        rest = {k: v for k, v in options.items() if k != self.part_option}
        return [self.load(root, split, **{self.part_option: part}, **rest) for part in self.parts]

    def dataset_root(self, data_root: os.PathLike | str) -> Path:
        """``<data_root>/<name>`` (a demo root holding several benchmarks) when it exists, else ``data_root``."""
        data_root = Path(data_root)
        return data_root / self.name if (data_root / self.name).is_dir() else data_root

    def has_layout(self, root: os.PathLike | str) -> bool:
        """Whether ``root`` holds this benchmark's published layout."""
        return (Path(root) / self.annotation_marker).exists()

    # ------------------------------------------------------------------ query text

    def shared_concept(self, include_shared_concept: Optional[bool]) -> Optional[bool]:
        """The shared-concept option as results record it (None where the benchmark has none)."""
        return include_shared_concept if self.takes_shared_concept else None

    def query_text(self, query: CIRQuery, include_shared_concept: bool = False) -> str:
        """The modification text as template-free methods use it (default: the first caption)."""
        return query.captions[0] if query.captions else ""

    def prompt_captions(self, query: CIRQuery, include_shared_concept: bool = False,
                        clean: Callable[[str], str] = str) -> list[str]:
        """The caption(s) that fill a prompt template such as ``a photo of $ that {caption}``,
        each text passed through ``clean`` first; several captions give several prompts,
        averaged into one query (default: the first caption)."""
        return [clean(query.captions[0]) if query.captions else ""]

    # ------------------------------------------------------------------ protocol

    def protocol_name(self, split: CIRSplit, shared_concept: Optional[bool] = None) -> str:
        """The ``"protocol"`` string of a result."""
        return (f"{split.dataset}-{split.split}: generic; reference kept; "
                "R@K and AP@K/min(|relevant|, K)")

    def ranking_depth(self, split: Optional[CIRSplit] = None) -> int:
        """How deep rankings must be for the metrics (the largest K)."""
        return max(self.recall_ks + self.map_ks)

    def relevant(self, query: CIRQuery) -> tuple[str, ...]:
        """The query's relevant gallery ids (all ground truths, else the target)."""
        return tuple(query.ground_truths) if query.ground_truths else (query.target,)

    def subset_candidates(self, query: CIRQuery) -> Optional[list[str]]:
        """The small candidate subset a query also ranks (CIRR's ``img_set.members`` minus the
        reference), or None where the benchmark has none."""
        return None

    def candidate_ids(self, split: CIRSplit, query: CIRQuery) -> Optional[Sequence[str]]:
        """The ids a query's ranking may hold when they are not gallery ids (None: the gallery)."""
        return None

    def candidate_image(self, query: CIRQuery, candidate: str) -> str:
        """The gallery image id of a ranked candidate of ``query`` (the id itself by default)."""
        return candidate

    def is_target(self, query: CIRQuery, candidate: str) -> bool:
        """Whether ranked candidate ``candidate`` is the query's target."""
        return candidate == query.target

    def recall_relevant(self, query: CIRQuery) -> set[str]:
        """The candidates whose presence in the top K counts as a hit for R@K (default: every relevant id)."""
        return set(self.relevant(query))

    def top_candidates(self, split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
                       k: int) -> tuple[list[list[str]], list[list[float]]]:
        """Per query, its top-``k`` ranked candidates and their scores (stage I of re-ranking)."""
        scores, indices = self.search(split, query_embeddings, gallery_embeddings, k)
        return ([[split.gallery[i] for i in row] for row in indices],
                [[float(v) for v in row] for row in scores])

    def rankable(self, split: CIRSplit, query: CIRQuery, gallery_set: Collection[str]) -> int:
        """How many gallery items one query's ranking can hold under the protocol."""
        if self.removes_reference and query.reference in gallery_set:
            return len(split.gallery) - 1
        return len(split.gallery)

    def require_targets(self, split: CIRSplit) -> None:
        """:class:`InputError` unless every query is annotated (scoring needs targets)."""
        missing = [q.query_id for q in split.queries if q.target is None and not q.ground_truths]
        if missing:
            raise InputError(
                f"{split.dataset}-{split.split} has {len(missing)} queries without a target "
                f"(first: {missing[0]!r}); expected an annotated split (val) to evaluate — "
                "write a submission file for test splits instead")

    def check_ranking_keys(self, split: CIRSplit, rankings: Rankings, source: Optional[str] = None) -> None:
        """Raise :class:`InputError` unless ``rankings`` has exactly the split's query ids."""
        expected = [q.query_id for q in split.queries]
        expected_set = set(expected)
        missing = [q for q in expected if q not in rankings]
        extra = [q for q in rankings if q not in expected_set]
        name = "-".join([split.dataset, split.split]) + (f"/{split.category}" if split.category else "")
        if missing:
            raise InputError(f"{len(missing)} {self.query_noun}(s) have no ranking (first: {missing[0]!r}); "
                             f"expected every query of {name}", path=source, field=missing[0])
        if extra:
            raise InputError(f"{len(extra)} ranking(s) for {self.query_noun}s not in {name} (first: {extra[0]!r})",
                             path=source, field=extra[0])

    def check_query_ranking(self, split: CIRSplit, query: CIRQuery, ranked: Any, depth: int,
                            gallery_set: Collection[str], source: Optional[str] = None, exact: bool = False) -> None:
        """Raise :class:`InputError` unless one query's ranking is a list of unique gallery ids
        ``min(depth, rankable)`` long (at least that long unless ``exact``); where the protocol
        removes the reference it must not appear."""
        check_ranking_list(ranked, query.query_id, source)
        needed = min(depth, self.rankable(split, query, gallery_set))
        if len(ranked) < needed or (exact and len(ranked) != needed):
            raise InputError(f"ranking has {len(ranked)} ids; expected {'exactly' if exact else 'at least'} "
                             f"{needed}", path=source, field=query.query_id)
        unknown = [x for x in ranked if x not in gallery_set]
        if unknown:
            raise InputError(f"id {unknown[0]!r} is not in the {split.dataset}-{split.split} gallery", path=source,
                             field=query.query_id)
        if self.removes_reference and query.reference in ranked:
            raise InputError(f"the reference image {query.reference!r} is in the ranking; expected it "
                             f"removed ({split.dataset} protocol)", path=source, field=query.query_id)

    def check_rankings(self, split: CIRSplit, rankings: Rankings, depth: int, source: Optional[str] = None,
                       exact: bool = False) -> None:
        """Raise :class:`InputError` unless ``rankings`` has exactly the split's query ids, each
        passing :meth:`check_query_ranking`."""
        self.check_ranking_keys(split, rankings, source)
        gallery_set = set(split.gallery)
        for query in split.queries:
            self.check_query_ranking(split, query, rankings[query.query_id], depth, gallery_set, source, exact)

    # ------------------------------------------------------------------ ranking

    def check_embeddings(self, split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray) -> None:
        """:class:`InputError` unless the embeddings are [Q, D] and [G, D] for this split."""
        q_shape, g_shape = np.shape(query_embeddings), np.shape(gallery_embeddings)
        name = f"{split.dataset}-{split.split}"
        if len(q_shape) != 2 or q_shape[0] != len(split.queries):
            raise InputError(f"query embeddings have shape {q_shape}; expected [{len(split.queries)}, D] "
                             f"(one row per query of {name})")
        if len(g_shape) != 2 or g_shape[0] != len(split.gallery):
            raise InputError(f"gallery embeddings have shape {g_shape}; expected [{len(split.gallery)}, D] "
                             f"(one row per gallery image of {name})")
        if q_shape[1] != g_shape[1]:
            raise InputError(f"query embeddings are {q_shape[1]}-d but gallery embeddings {g_shape[1]}-d; "
                             "expected one shared embedding space")

    def search(self, split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [Q, k'], gallery indices [Q, k'])`` under the protocol (ties by gallery order)."""
        self.check_embeddings(split, query_embeddings, gallery_embeddings)
        if len(set(split.gallery)) != len(split.gallery):
            raise InputError(f"{split.dataset}-{split.split} gallery lists an image twice; expected unique ids")
        exclude = None
        if self.removes_reference:
            position = {image_id: i for i, image_id in enumerate(split.gallery)}
            exclude = np.array([position.get(q.reference, -1) for q in split.queries], dtype=np.int64)
        return index.search(query_embeddings, gallery_embeddings, k, exclude=exclude)

    def rank(self, split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
             k: int) -> dict[str, list[str]]:
        """Top-``k`` ranked candidates (gallery ids, or a benchmark's own candidate ids) per query id
        under the protocol: the ids of :meth:`top_candidates`.

        Args:
            query_embeddings: [Q, D] L2-normalised, one row per ``split.queries`` entry.
            gallery_embeddings: [G, D] L2-normalised, one row per ``split.gallery`` entry.
        """
        ids, _ = self.top_candidates(split, query_embeddings, gallery_embeddings, k)
        return {q.query_id: row for q, row in zip(split.queries, ids)}

    def rank_for_scoring(self, split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray
                         ) -> tuple[dict[str, list[str]], Optional[dict[str, list[str]]]]:
        """``(rankings, subset rankings or None)`` as deep as :meth:`score` needs."""
        return self.rank(split, query_embeddings, gallery_embeddings, self.ranking_depth(split)), None

    def rank_for_submission(self, split: CIRSplit, query_embeddings: np.ndarray, gallery_embeddings: np.ndarray
                            ) -> tuple[dict[str, list[str]], Optional[dict[str, list[str]]]]:
        """``(rankings, subset rankings or None)`` as deep as the test-server file needs."""
        return self.rank_for_scoring(split, query_embeddings, gallery_embeddings)

    # ------------------------------------------------------------------ scoring

    def check_for_scoring(self, split: CIRSplit, rankings: Rankings, subset_rankings: Optional[Rankings],
                          source: Optional[str], subset_source: Optional[str]) -> None:
        """The checks :meth:`score` applies before computing metrics."""
        if subset_rankings is not None:
            raise InputError(f"subset rankings are a CIRR protocol; got dataset {split.dataset!r}")
        self.check_rankings(split, rankings, self.ranking_depth(split), source)

    def metric_values(self, split: CIRSplit, rankings: Rankings, subset_rankings: Optional[Rankings]
                      ) -> dict[str, float]:
        """The benchmark's metrics (percent) of checked rankings."""
        relevant = {q.query_id: set(self.relevant(q)) for q in split.queries}
        values = metrics.recall_metrics(rankings, relevant, self.recall_ks)
        values.update(metrics.map_metrics(rankings, relevant, self.map_ks))
        return values

    def score(self, split: CIRSplit, rankings: Rankings, *, subset_rankings: Optional[Rankings] = None,
              shared_concept: Optional[bool] = None, source: Optional[str] = None,
              subset_source: Optional[str] = None) -> dict[str, Any]:
        """Score rankings of an annotated split: the metrics (percent) plus ``protocol``,
        ``units`` and ``num_queries``. ``source`` / ``subset_source`` name files, for errors."""
        self.require_targets(split)
        self.check_for_scoring(split, rankings, subset_rankings, source, subset_source)
        result: dict[str, Any] = {"protocol": self.protocol_name(split, shared_concept), "units": PERCENT}
        result.update(self.metric_values(split, rankings, subset_rankings))
        result["num_queries"] = len(split.queries)
        return result

    def per_query(self, split: CIRSplit, rankings: Rankings, metric: str,
                  subset_rankings: Optional[Rankings] = None) -> np.ndarray:
        """[Q] per-query values (fractions) of ``metric`` in ``split.queries`` order: ``R@k`` (0/1:
        the target in the top k), ``mAP@k`` (standard AP@k over the relevant images); their mean
        x 100 is the aggregate metric. Where the protocol removes the reference it is dropped first."""
        name, _, k_text = metric.partition("@")
        if name not in ("R", "mAP") or not k_text.isdigit():
            raise InputError(f"metric {metric!r}; expected R@k or mAP@k", field="metric")
        k = int(k_text)
        values = []
        for query in split.queries:
            if query.query_id not in rankings:
                raise InputError(f"no ranking for query {query.query_id!r}", field="rankings")
            ranked = [i for i in rankings[query.query_id]
                      if not (self.removes_reference and i == query.reference)]
            if name == "R":
                values.append(metrics.recall_at_k(ranked, self.recall_relevant(query), k, query.query_id))
            else:
                values.append(metrics.standard_ap_at_k(ranked, set(self.relevant(query)), k, query.query_id))
        return np.asarray(values, np.float64)

    def combine(self, splits: Sequence[CIRSplit], results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One result for a benchmark split from its parts' results (one part: that result)."""
        if len(results) != 1:
            raise InputError(f"cannot combine results of {len(results)} splits of {self.name}; expected one")
        return dict(results[0])

    # ------------------------------------------------------------------ files

    def submission_paths(self, out_dir: os.PathLike | str, split_name: str) -> list[Path]:
        """The file(s) :meth:`write_submission` writes into ``out_dir`` for split ``split_name``."""
        raise InputError(f"{self.name} has no test-server file format", field="dataset")

    def write_submission(self, out_dir: os.PathLike | str, splits: Sequence[CIRSplit],
                         rankings: Sequence[Rankings], subset_rankings: Sequence[Optional[Rankings]]) -> list[Path]:
        """Write the test-server file(s) of ranked split(s) into ``out_dir``; returns their paths."""
        raise InputError(f"{self.name} has no test-server file format", field="dataset")

    def score_prediction_files(self, root: os.PathLike | str, split: str, paths: Sequence[os.PathLike | str],
                               **options: Any) -> dict[str, Any]:
        """Load ``split`` from ``root``, read prediction file(s) ``paths`` and score them."""
        raise InputError(f"{self.name} has no prediction-file format", field="dataset")


_BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Register ``benchmark`` (an instance of a :class:`Benchmark` subclass) under its name; returns it."""
    if not benchmark.name or benchmark.name in _BENCHMARKS:
        raise ValueError(f"benchmark name {benchmark.name!r} is empty or already registered")
    _BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def _import_builtin_benchmarks() -> None:
    # Importing the modules runs their @register_benchmark decorators.
    from irkit.benchmarks import (  # noqa: F401
        circo,
        cirr,
        fashioniq,
        genecis,  # noqa: F401
        traffic,
    )


def list_benchmarks(kind: Optional[str] = None) -> list[str]:
    """Registered benchmark names (``kind="cir"``: composed-retrieval benchmarks only)."""
    _import_builtin_benchmarks()
    return sorted(n for n, b in _BENCHMARKS.items() if kind is None or b.kind == kind)


def generic_benchmark(name: str) -> Benchmark:
    """The generic protocol under the name of a dataset that has a loader but no spec."""
    generic = Benchmark()
    generic.name = name  # type: ignore[misc]  (an instance attribute: the generic protocol by name)
    return generic


def get_benchmark(name: str) -> Benchmark:
    """The registered spec of benchmark ``name``; a dataset registered with a loader alone gets the
    generic protocol; anything else is an :class:`InputError` listing the benchmarks."""
    from irkit.data.registry import list_datasets

    _import_builtin_benchmarks()
    if name in _BENCHMARKS:
        return _BENCHMARKS[name]
    if name in list_datasets():
        return generic_benchmark(name)
    raise InputError(f"unknown benchmark {name!r}; registered: {', '.join(sorted(_BENCHMARKS))}", field="dataset")


def benchmark_of(split: Any) -> Benchmark:
    """The spec of the benchmark a loaded split belongs to; a dataset without a registered spec
    gets the generic protocol."""
    _import_builtin_benchmarks()
    return _BENCHMARKS.get(split.dataset) or generic_benchmark(split.dataset)
