"""Traffic challenge text->image inference: per-gallery top-10 (docs/methods.md §A.5).

Vehicle queries are answered against the vehicle images (``vehicle_*``) and person queries
against the person images (``person_*``). ``test_text.txt`` lists the vehicle queries first;
the split point is found with a keyword classifier (:func:`query_kind`) and the order is
verified (``num_vehicle_queries=`` overrides it).

Prompt variants (what the text encoder sees; the output keeps the query as given):

* ``"suffix"`` (published prompt augmentation): drop the trailing "." and append
  ``" image taken by traffic surveillance cameras"`` to vehicle queries;
* ``"strip"`` (published non-prompt variant): drop a leading "A ", "An ", "This is a ",
  "This is an " and the trailing "." of vehicle queries;
* ``"none"``: every query as given.

In ``suffix`` and ``strip`` the trailing "." of person queries is dropped too, as the
published script drops it from every line.

:func:`select_prompt` picks the variant on the labelled val split (``prompt="auto"`` in the
traffic stages): which phrasing suits a model depends on what its text tower was trained on (the
published suffix helps a web-pretrained CLIP; a model trained from scratch on the labels never
saw that phrase), so it is chosen on held-out labels, never on the test ground truth.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np

from irkit import index
from irkit.data.records import TrafficKind, TrafficLabel, TrafficSplit
from irkit.errors import InputError
from irkit.io import atomic_write_json
from irkit.traffic import PROMPT_MODES

PromptMode = Literal["suffix", "strip", "none"]
PROMPT_SUFFIX = " image taken by traffic surveillance cameras"
STRIP_PREFIXES = ("A ", "An ", "This is a ", "This is an ")
GALLERY_PREFIXES: dict[str, str] = {"vehicle": "vehicle_", "person": "person_"}
RESULT_FILES: dict[str, str] = {"vehicle": "vehicle_results.json", "person": "person_results.json"}
SUMMARY_FILE = "inference.json"
TOP_K = 10

# Words that mark a description of a person / of a vehicle (whole words, case-insensitive).
_PERSON_WORDS = re.compile(
    r"\b(pedestrians?|person|people|man|men|woman|women|boy|girl|lady|gentleman|male|female|child|kid|"
    r"he|she|his|her|him|wearing|wears|hair|trousers|pants|jeans|shorts|skirt|dress|coat|jacket|shirt|"
    r"t-shirt|top|sleeves?|short-sleeved|long-sleeved|backpack|handbag|bag|hat|cap|glasses|shoes|"
    r"carrying|walking|riding)\b", re.IGNORECASE)
_VEHICLE_WORDS = re.compile(
    r"\b(vehicles?|cars?|sedans?|suvs?|trucks?|bus|buses|microbus(es)?|minivans?|vans?|mpv|pickups?|"
    r"lorry|taxi|jeep)\b", re.IGNORECASE)


def query_kind(text: str) -> TrafficKind:
    """``"person"`` when the text has more person words than vehicle words, else ``"vehicle"``.

    Short vehicle sentences ("This is a white Audi.") name no person word; person sentences
    name the pedestrian, clothing or carried items.
    """
    return "person" if len(_PERSON_WORDS.findall(text)) > len(_VEHICLE_WORDS.findall(text)) else "vehicle"


def count_vehicle_queries(queries: Sequence[str], num_vehicle_queries: Optional[int] = None,
                          source: Optional[os.PathLike | str] = None) -> int:
    """Number of leading vehicle queries (the rest are person queries).

    Without an override the split point is the one that agrees with :func:`query_kind` on
    the most queries; any query on the wrong side of it means the file does not list vehicles
    first (or the classifier misread it) and raises, naming the lines.
    """
    if num_vehicle_queries is not None:
        if not 0 <= num_vehicle_queries <= len(queries):
            raise InputError(f"num_vehicle_queries={num_vehicle_queries} is outside [0, {len(queries)}] "
                             f"(the number of queries)", path=source, field="num_vehicle_queries")
        return int(num_vehicle_queries)
    is_person = np.array([query_kind(q) == "person" for q in queries], dtype=np.int64)
    # agreement(k) = vehicles among the first k + persons among the rest, for k = 0..N.
    vehicles_before = np.concatenate([[0], np.cumsum(1 - is_person)])
    persons_after = is_person.sum() - np.concatenate([[0], np.cumsum(is_person)])
    split = int(np.argmax(vehicles_before + persons_after))
    misplaced_persons = [i + 1 for i in range(split) if is_person[i]]
    misplaced_vehicles = [i + 1 for i in range(split, len(queries)) if not is_person[i]]
    if misplaced_persons or misplaced_vehicles:
        parts = []
        if misplaced_persons:
            parts.append(f"person-like queries among the vehicle queries on line(s) {_line_list(misplaced_persons)}")
        if misplaced_vehicles:
            parts.append(f"vehicle-like queries among the person queries on line(s) {_line_list(misplaced_vehicles)}")
        first = (misplaced_persons or misplaced_vehicles)[0]
        raise InputError(
            f"queries are not ordered vehicles first then persons: {'; '.join(parts)} (best split after "
            f"line {split}; line {first}: {queries[first - 1]!r}); expected all vehicle queries before all "
            f"person queries — pass num_vehicle_queries= / --num-vehicle-queries N if the order is right",
            path=source, line=first)
    return split


def _line_list(lines: Sequence[int], shown: int = 5) -> str:
    more = f" (+{len(lines) - shown} more)" if len(lines) > shown else ""
    return ", ".join(map(str, lines[:shown])) + more


def _strip_prefix(text: str) -> str:
    for prefix in STRIP_PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _strip_period(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def prompt_text(text: str, kind: TrafficKind, mode: PromptMode = "suffix") -> str:
    """What the text encoder sees for a query (see the module docstring)."""
    if mode not in PROMPT_MODES:
        raise InputError(f"unknown prompt mode {mode!r}; expected one of: {', '.join(PROMPT_MODES)}", field="prompt")
    text = text.strip()
    if mode == "none":
        return text
    text = _strip_period(text)
    if kind == "person":
        return text
    if mode == "suffix":
        return text + PROMPT_SUFFIX
    return _strip_prefix(text)


def gallery_kind_split(gallery: Sequence[str], source: Optional[os.PathLike | str] = None
                       ) -> dict[str, list[str]]:
    """``{"vehicle": [vehicle_* names], "person": [person_* names]}`` in gallery order."""
    out: dict[str, list[str]] = {kind: [] for kind in GALLERY_PREFIXES}
    other = []
    for name in gallery:
        for kind, prefix in GALLERY_PREFIXES.items():
            if name.startswith(prefix):
                out[kind].append(name)
                break
        else:
            other.append(name)
    if other:
        raise InputError(f"{len(other)} test image(s) are neither vehicle_* nor person_* (first: {other[0]!r}); "
                         f"expected the challenge's test image names (vehicle_0001886.jpg, person_...jpg)",
                         path=source)
    return out


@dataclass
class GalleryResult:
    """Top-k answers of one gallery (vehicle or person)."""

    kind: TrafficKind
    queries: list[str]                # as given in test_text.txt
    encoded_texts: list[str]          # after the prompt variant
    gallery: list[str]                # image names, in the order ties are broken by
    rankings: list[list[str]]         # per query, top-k image names, best first
    rank_statistics: Optional[dict[str, Any]] = None  # when ground truth is known

    def to_json(self) -> dict[str, Any]:
        return {"results": [{"text": text, "image_names": names}
                            for text, names in zip(self.queries, self.rankings)]}


@dataclass
class TrafficInference:
    """Both galleries' answers plus where they were written."""

    vehicle: GalleryResult
    person: GalleryResult
    prompt: str
    weights_id: str
    outputs: dict[str, Path] = field(default_factory=dict)
    image_reader: Optional[dict[str, Any]] = None   # how gallery images were read (EXIF, pixel limit)
    precision: str = "fp32"                         # the model's resolved precision (irkit.precision)

    def submission(self) -> dict[str, Any]:
        """``{"results": vehicle answers + person answers}``: test_text.txt order, since the
        vehicle queries lead that file (:func:`count_vehicle_queries` checks it)."""
        return {"results": self.vehicle.to_json()["results"] + self.person.to_json()["results"]}

    def summary(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "prompt_suffix": PROMPT_SUFFIX if self.prompt == "suffix" else None,
            "weights_id": self.weights_id,
            "precision": self.precision,
            "image_reader": self.image_reader,
            "num_vehicle_queries": len(self.vehicle.queries),
            "num_person_queries": len(self.person.queries),
            "num_vehicle_images": len(self.vehicle.gallery),
            "num_person_images": len(self.person.gallery),
            "rank_statistics": {kind: result.rank_statistics for kind, result in
                                (("vehicle", self.vehicle), ("person", self.person))
                                if result.rank_statistics is not None},
            "outputs": {name: str(path) for name, path in self.outputs.items()},
        }


def rank_gallery(query_embeddings: np.ndarray, gallery_embeddings: np.ndarray, gallery: Sequence[str],
                 k: int = TOP_K) -> list[list[str]]:
    """Top-k gallery names per query by cosine similarity ([Q, D] x [G, D], normalised)."""
    if len(query_embeddings) == 0:
        return []
    return index.rank_ids(query_embeddings, gallery_embeddings, list(gallery), k)


def first_relevant_statistics(query_embeddings: np.ndarray, gallery_embeddings: np.ndarray,
                              gallery: Sequence[str], queries: Sequence[str],
                              ground_truth: dict[str, list[str]]) -> dict[str, Any]:
    """Mean/median rank of the first relevant image over the full [Q, G] score matrix.

    Only relevant images inside this gallery count; queries with none there are counted in
    ``queries_without_relevant_in_gallery`` and left out of the ranks.
    """
    from irkit.benchmarks.traffic import traffic_rank_statistics

    position = {name: i for i, name in enumerate(gallery)}
    rows, relevant = [], []
    for row, text in enumerate(queries):
        inside = [position[name] for name in ground_truth.get(text, ()) if name in position]
        if inside:
            rows.append(row)
            relevant.append(inside)
    result: dict[str, Any] = {"queries_without_relevant_in_gallery": len(queries) - len(rows)}
    if rows:
        scores = np.asarray(query_embeddings, np.float32)[rows] @ np.asarray(gallery_embeddings, np.float32).T
        result.update(traffic_rank_statistics(scores, relevant))
    return result


def _reader_option(reader: Any) -> dict[str, Any]:
    """``{"reader": reader}`` for :func:`irkit.embeddings.encode_image_files`, or ``{}`` (its
    default, the user-folder reader) when ``reader`` is None."""
    return {} if reader is None else {"reader": reader}


def _reader_record(reader: Any) -> dict[str, Any]:
    """The reader's settings as recorded in ``inference.json``."""
    from irkit.transforms import USER_FOLDER_READER

    return (reader or USER_FOLDER_READER).to_dict()


def _answer_gallery(kind: TrafficKind, queries: list[str], gallery: list[str], image_dir: Path, loaded: Any,
                    prompt: PromptMode, k: int, batch_size: int, num_workers: int,
                    cache_dir: Optional[os.PathLike | str], ground_truth: Optional[dict[str, list[str]]],
                    reader: Any = None) -> GalleryResult:
    from irkit.embeddings import encode_image_files

    encoded_texts = [prompt_text(q, kind, prompt) for q in queries]
    if queries and not gallery:
        raise InputError(f"{len(queries)} {kind} queries but no {GALLERY_PREFIXES[kind]}* images in the test "
                         f"gallery; expected both", path=image_dir)
    if queries and len(gallery) < k:
        raise InputError(f"the {kind} gallery has {len(gallery)} images; expected at least {k} "
                         f"(each query is answered with {k} image names)", path=image_dir)
    result = GalleryResult(kind=kind, queries=list(queries), encoded_texts=encoded_texts,
                           gallery=list(gallery), rankings=[])
    if not queries:
        return result
    gallery_embeddings = encode_image_files(loaded, [image_dir / name for name in gallery],
                                            batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir,
                                            **_reader_option(reader))
    query_embeddings = loaded.encode_texts(encoded_texts)
    result.rankings = rank_gallery(query_embeddings, gallery_embeddings, gallery, k)
    if ground_truth is not None:
        result.rank_statistics = first_relevant_statistics(query_embeddings, gallery_embeddings, gallery,
                                                           queries, ground_truth)
    return result


def infer_traffic(split: TrafficSplit, loaded: Any, prompt: PromptMode = "suffix",
                  out_dir: Optional[os.PathLike | str] = None, k: int = TOP_K, batch_size: int = 64,
                  num_workers: int = 0, cache_dir: Optional[os.PathLike | str] = None,
                  num_vehicle_queries: Optional[int] = None, reader: Any = None) -> TrafficInference:
    """Answer every query of a test split against its own gallery.

    Args:
        split: a test split (:func:`irkit.data.traffic.load_traffic`: queries + gallery,
            ground truth optional).
        loaded: a loaded CLIP model (:func:`irkit.models.create_model`).
        prompt: ``"suffix"`` | ``"strip"`` | ``"none"`` (module docstring).
        out_dir: if given, ``vehicle_results.json``, ``person_results.json`` and
            ``inference.json`` (settings, counts, rank statistics) are written there atomically.
        k: answers per query (the challenge wants 10).
        batch_size / num_workers / cache_dir: image encoding settings (embeddings cached).
        num_vehicle_queries: override the detected number of leading vehicle queries.
        reader: an :class:`irkit.transforms.ImageReader` (EXIF orientation, pixel limit);
            default the user-folder reader (orientation applied).

    Returns:
        :class:`TrafficInference`; rank statistics (first relevant image, full scores) are
        filled when the split has ground truth.
    """
    if prompt not in PROMPT_MODES:
        raise InputError(f"unknown prompt mode {prompt!r}; expected one of: {', '.join(PROMPT_MODES)}", field="prompt")
    if not split.queries:
        raise InputError(f"the {split.split} split has no text queries; expected the test split "
                         f"(test/test_text.txt)", path=split.root)
    query_file = split.root / "test" / "test_text.txt"
    num_vehicles = count_vehicle_queries(split.queries, num_vehicle_queries, source=query_file)
    galleries = gallery_kind_split(split.gallery, source=split.image_dir)
    queries = {"vehicle": list(split.queries[:num_vehicles]), "person": list(split.queries[num_vehicles:])}
    results = {kind: _answer_gallery(kind, queries[kind], galleries[kind], split.image_dir, loaded, prompt, k,
                                     batch_size, num_workers, cache_dir, split.ground_truth, reader)
               for kind in ("vehicle", "person")}
    inference = TrafficInference(vehicle=results["vehicle"], person=results["person"], prompt=prompt,
                                 weights_id=str(getattr(loaded, "weights_id", "unknown")),
                                 image_reader=_reader_record(reader),
                                 precision=str(getattr(loaded, "precision", "fp32")))
    if out_dir is not None:
        out_dir = Path(out_dir)
        for kind, result in results.items():
            path = out_dir / RESULT_FILES[kind]
            atomic_write_json(path, result.to_json(), indent=2)
            inference.outputs[kind] = path
        inference.outputs["summary"] = out_dir / SUMMARY_FILE
        atomic_write_json(inference.outputs["summary"], inference.summary(), indent=2)
    return inference


# ------------------------------------------------------------------------------ prompt selection


@dataclass(frozen=True)
class LabelledQuery:
    """A retrieval query built from labelled images: one per distinct ``(kind, attr)``."""

    query_id: str                 # "<kind>:<attr>"
    kind: TrafficKind
    text: str                     # the sentence of the first image with this attr
    relevant: tuple[str, ...]     # every image of that kind with this attr


def labelled_queries(labels: Sequence[TrafficLabel]) -> list[LabelledQuery]:
    """Queries from a labelled split (val): each distinct vehicle attribute phrase / person
    flag vector is one query whose relevant images are all images of that kind carrying it,
    as the test ground truth groups images by their attributes. Order: first appearance."""
    groups: dict[tuple[str, str], list[TrafficLabel]] = {}
    for label in labels:
        groups.setdefault((label.kind, label.attr), []).append(label)
    return [LabelledQuery(query_id=f"{kind}:{attr}", kind=kind, text=members[0].text,  # type: ignore[arg-type]
                          relevant=tuple(m.image for m in members))
            for (kind, attr), members in groups.items()]


@dataclass
class PromptSelection:
    """Result of :func:`select_prompt`: the chosen variant and every variant's val metrics."""

    chosen: str
    metrics: dict[str, dict[str, float]]   # variant -> traffic metrics (fractions) on the labelled split
    num_queries: int
    num_images: int
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "criterion": f"official_mAP@{TOP_K} on {self.source}",
                "num_queries": self.num_queries, "num_images": self.num_images, "metrics": self.metrics}


def select_prompt(labels: Sequence[TrafficLabel], image_dir: os.PathLike | str, loaded: Any,
                  variants: Sequence[str] = PROMPT_MODES, k: int = TOP_K, batch_size: int = 64,
                  num_workers: int = 0, cache_dir: Optional[os.PathLike | str] = None,
                  source: Optional[os.PathLike | str] = None, reader: Any = None) -> PromptSelection:
    """Score each prompt variant on queries built from labelled images (:func:`labelled_queries`),
    each kind against its own images, and choose the best official mAP@k (ties: earlier variant).

    Args:
        labels: a labelled split (``val/val_label.txt``); images are ``image_dir / label.image``.
        loaded: a loaded CLIP model (:func:`irkit.models.create_model`).
        variants: prompt modes to compare, in tie-break order.
    """
    from irkit.embeddings import encode_image_files
    from irkit.metrics import traffic_metrics

    for variant in variants:
        if variant not in PROMPT_MODES:
            raise InputError(f"unknown prompt mode {variant!r}; expected one of: {', '.join(PROMPT_MODES)}",
                             field="prompt")
    queries = labelled_queries(labels)
    if not queries:
        raise InputError("no labelled images to choose the prompt on; expected a non-empty val_label.txt",
                         path=source)
    image_dir = Path(image_dir)
    relevant = {q.query_id: list(q.relevant) for q in queries}
    rankings: dict[str, dict[str, list[str]]] = {v: {} for v in variants}
    for kind in ("vehicle", "person"):
        kind_queries = [q for q in queries if q.kind == kind]
        if not kind_queries:
            continue
        gallery = sorted({label.image for label in labels if label.kind == kind})
        gallery_embeddings = encode_image_files(loaded, [image_dir / name for name in gallery],
                                                batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir,
                                                **_reader_option(reader))
        for variant in variants:
            texts = [prompt_text(q.text, kind, variant) for q in kind_queries]  # type: ignore[arg-type]
            ranked = rank_gallery(loaded.encode_texts(texts), gallery_embeddings, gallery, min(k, len(gallery)))
            rankings[variant].update({q.query_id: r for q, r in zip(kind_queries, ranked)})
    metrics = {variant: traffic_metrics(rankings[variant], relevant, k) for variant in variants}
    key = f"official_mAP@{k}"
    chosen = max(variants, key=lambda v: (metrics[v][key], -list(variants).index(v)))
    return PromptSelection(chosen=chosen, metrics=metrics, num_queries=len(queries),
                           num_images=len(labels), source=str(source or image_dir))


def select_prompt_on_val(root: os.PathLike | str, loaded: Any, **encoding: Any) -> PromptSelection:
    """:func:`select_prompt` on ``<root>/val/val_label.txt`` (images in ``val/val_images``);
    ``encoding``: ``batch_size``, ``num_workers``, ``cache_dir``, ``reader``."""
    from irkit.data.traffic import read_label_file

    labels_path = Path(root) / "val" / "val_label.txt"
    if not labels_path.is_file():
        raise InputError("prompt 'auto' chooses the prompt on the labelled val split, but there is no "
                         "val_label.txt; expected one, or choose the prompt: suffix | strip | none", path=labels_path)
    image_dir = labels_path.parent / "val_images"
    return select_prompt(read_label_file(labels_path, image_dir), image_dir, loaded, source=labels_path, **encoding)
