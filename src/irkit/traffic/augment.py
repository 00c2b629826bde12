"""Zero-shot caption augmentation of incomplete vehicle labels (docs/methods.md §A.2).

For a vehicle label whose ``attr`` lacks the colour and/or the type, every candidate caption
is built from the product of the missing slots' vocabularies (colour x brand x type, in
vocabulary order; the brand is enumerated only when brand AND type are both missing, else a
missing brand stays missing). Each caption is ``<prefix><colour brand type>.`` with the
label's prefix as the published script writes it: ``"This is a "`` when the label's text
starts with "This", ``"A "`` when it starts with "A"/"An", else none. The CLIP model scores
the image against all its candidates (cosine) and the best one becomes the label's ``aug``
caption (first candidate on ties). Complete vehicle labels and persons get ``aug = text``.

The model is loaded once by the caller; images go through
:func:`irkit.embeddings.encode_image_files` (batched, cached) and each distinct candidate set
is encoded once.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from tqdm import tqdm

from irkit.data.records import TrafficLabel
from irkit.errors import InputError
from irkit.traffic.attributes import VehicleAttributes, VehicleVocab, parse_vehicle_attr
from irkit.traffic.training_csv import label_image_paths

SLOTS = ("color", "brand", "type")
TextEncoder = Callable[[list[str]], np.ndarray]


def caption_prefix(text: str) -> str:
    """The published caption prefix for a label sentence: ``"This is a "``, ``"A "`` or ``""``."""
    text = text.lstrip()
    if text.startswith("This"):
        return "This is a "
    if text.startswith("A"):
        return "A "
    return ""


def format_caption(prefix: str, attrs: VehicleAttributes) -> str:
    """``prefix + "colour brand type" + "."`` (empty slots left out)."""
    return f"{prefix}{attrs.phrase()}."


def candidate_attributes(attrs: VehicleAttributes, vocab: VehicleVocab) -> list[VehicleAttributes]:
    """All fillings of ``attrs``'s missing slots, colour-major; ``[]`` if colour and type are known.

    The brand is enumerated only when brand and type are both missing.
    """
    if attrs.color is not None and attrs.type is not None:
        return []
    colors: Sequence[Optional[str]] = [attrs.color] if attrs.color is not None else vocab.colors
    types: Sequence[Optional[str]] = [attrs.type] if attrs.type is not None else vocab.types
    enumerate_brands = attrs.brand is None and attrs.type is None and len(vocab.brands) > 0
    brands: Sequence[Optional[str]] = vocab.brands if enumerate_brands else [attrs.brand]
    return [VehicleAttributes(color=c, brand=b, type=t) for c in colors for b in brands for t in types]


def select_best(image_embeddings: np.ndarray, candidate_sets: Sequence[Sequence[str]],
                encode_texts: TextEncoder, progress: bool = True) -> list[int]:
    """Index of the best-scoring candidate for each image.

    Args:
        image_embeddings: [N, D] L2-normalised image embeddings, row i for candidate_sets[i].
        candidate_sets: N non-empty lists of captions.
        encode_texts: list of captions -> [C, D] L2-normalised text embeddings.

    Returns:
        N indices into the respective candidate lists (argmax of cosine similarity; the first
        candidate wins ties). Each distinct candidate list is encoded once.
    """
    image_embeddings = np.asarray(image_embeddings, dtype=np.float32)
    if image_embeddings.ndim != 2 or image_embeddings.shape[0] != len(candidate_sets):
        raise ValueError(f"image_embeddings must be [{len(candidate_sets)}, D], got {image_embeddings.shape}")
    rows_by_set: dict[tuple[str, ...], list[int]] = {}
    for row, candidates in enumerate(candidate_sets):
        if not candidates:
            raise ValueError(f"candidate set {row} is empty")
        rows_by_set.setdefault(tuple(candidates), []).append(row)
    best = [0] * len(candidate_sets)
    groups = tqdm(rows_by_set.items(), total=len(rows_by_set), desc="scoring candidate captions",
                  unit="set", disable=not progress)
    for candidates, rows in groups:
        text_embeddings = np.asarray(encode_texts(list(candidates)), dtype=np.float32)  # [C, D]
        scores = image_embeddings[rows] @ text_embeddings.T          # [len(rows), C] cosine
        for row, choice in zip(rows, np.argmax(scores, axis=1)):
            best[row] = int(choice)
    return best


@dataclass
class AugmentationResult:
    """Augmented labels plus, per label, the attributes the chosen caption filled in."""

    labels: list[TrafficLabel]
    parsed: list[Optional[VehicleAttributes]]   # attr as parsed (None for persons)
    chosen: list[Optional[VehicleAttributes]]   # chosen filling (None: label left unchanged)
    num_candidates: list[int]                   # candidates scored per label (0: unchanged)

    def summary(self) -> dict[str, Any]:
        """Counts: labels, vehicles, persons, augmented, and how often each slot was filled."""
        filled: Counter = Counter()
        for parsed, chosen in zip(self.parsed, self.chosen):
            if parsed is not None and chosen is not None:
                filled.update(slot for slot in parsed.missing() if getattr(chosen, slot) is not None)
        num_persons = sum(1 for label in self.labels if label.kind == "person")
        return {
            "labels": len(self.labels),
            "vehicles": len(self.labels) - num_persons,
            "persons": num_persons,
            "augmented": sum(1 for chosen in self.chosen if chosen is not None),
            "filled": {slot: filled[slot] for slot in SLOTS},
            "candidates_scored": int(sum(self.num_candidates)),
        }


def plan_candidates(labels: Sequence[TrafficLabel], vocab: VehicleVocab
                    ) -> tuple[list[Optional[VehicleAttributes]], list[list[VehicleAttributes]]]:
    """Parsed attributes and candidate fillings per label (persons: ``None`` and ``[]``)."""
    parsed: list[Optional[VehicleAttributes]] = []
    candidates: list[list[VehicleAttributes]] = []
    for label in labels:
        if label.kind == "person":
            parsed.append(None)
            candidates.append([])
            continue
        attrs = parse_vehicle_attr(label.attr, vocab)
        parsed.append(attrs)
        candidates.append(candidate_attributes(attrs, vocab))
    return parsed, candidates


def augment_labels_detailed(labels: Sequence[TrafficLabel], loaded: Any, images_dir: os.PathLike | str,
                            vocab: VehicleVocab, batch_size: int = 64, cache_dir: Optional[os.PathLike | str] = None,
                            num_workers: int = 0, source: Optional[os.PathLike | str] = None,
                            progress: bool = True, reader: Any = None) -> AugmentationResult:
    """:func:`augment_labels` returning what was filled for each label as well. ``reader``: an
    :class:`irkit.transforms.ImageReader` (default: the user-folder reader)."""
    from irkit.embeddings import encode_image_files  # heavy import (torch) only when scoring

    parsed, candidates = plan_candidates(labels, vocab)
    todo = [i for i, cands in enumerate(candidates) if cands]
    chosen: list[Optional[VehicleAttributes]] = [None] * len(labels)
    augmented = [replace(label, aug=label.text) for label in labels]
    if todo:
        paths = label_image_paths([labels[i] for i in todo], images_dir, source=source)
        image_embeddings = encode_image_files(loaded, paths, batch_size=batch_size, num_workers=num_workers,
                                              cache_dir=cache_dir, **({} if reader is None else {"reader": reader}))
        caption_sets = [[format_caption(caption_prefix(labels[i].text), c) for c in candidates[i]]
                        for i in todo]
        best = select_best(image_embeddings, caption_sets, loaded.encode_texts, progress=progress)
        for i, captions, choice in zip(todo, caption_sets, best):
            chosen[i] = candidates[i][choice]
            augmented[i] = replace(labels[i], aug=captions[choice])
    return AugmentationResult(labels=augmented, parsed=parsed, chosen=chosen,
                              num_candidates=[len(c) for c in candidates])


# ------------------------------------------------------------------ scoring against known attributes

#: irkit's demo generator writes the true attributes of every image here, at the dataset root.
ATTRIBUTES_SIDECAR = "irkit_attributes.jsonl"


def default_truth_path(images_dir: os.PathLike | str) -> Optional[Path]:
    """``<root>/irkit_attributes.jsonl`` for ``<root>/<split>/<split>_images``, if that file exists."""
    candidate = Path(os.path.abspath(images_dir)).parent.parent / ATTRIBUTES_SIDECAR
    return candidate if candidate.is_file() else None


def read_attribute_truth(path: os.PathLike | str) -> dict[str, VehicleAttributes]:
    """True vehicle attributes from an attribute sidecar, keyed by absolute image path.

    Rows are JSON objects with ``image`` (relative to the sidecar's folder), ``kind`` and, for
    vehicles, ``color``/``brand``/``type``; other rows are skipped.
    """
    path = Path(path)
    root = Path(os.path.abspath(path.parent))
    truth: dict[str, VehicleAttributes] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"malformed JSON line: {e.msg}", path=path, line=number) from None
            if not isinstance(row, dict) or row.get("kind") != "vehicle":
                continue
            if "image" not in row or not all(slot in row for slot in SLOTS):
                raise InputError(f"vehicle row lacks 'image' or one of {', '.join(SLOTS)}", path=path, line=number)
            truth[os.path.normpath(root / row["image"])] = VehicleAttributes(
                color=row["color"], brand=row["brand"], type=row["type"])
    return truth


def fill_accuracy(result: AugmentationResult, truth: Mapping[str, VehicleAttributes],
                  images_dir: os.PathLike | str) -> dict[str, dict[str, Any]]:
    """Per slot: how many filled values match the true attribute (images found in ``truth``).

    Returns ``{slot: {"correct", "filled", "accuracy"}}`` for colour, brand and type
    (accuracy ``None`` when nothing was filled or scored).
    """
    images_dir = Path(os.path.abspath(images_dir))
    correct: Counter = Counter()
    scored: Counter = Counter()
    for label, parsed, chosen in zip(result.labels, result.parsed, result.chosen):
        if parsed is None or chosen is None:
            continue
        true = truth.get(os.path.normpath(images_dir / label.image))
        if true is None:
            continue
        for slot in parsed.missing():
            value = getattr(chosen, slot)
            if value is not None:
                scored[slot] += 1
                correct[slot] += int(value == getattr(true, slot))
    return {slot: {"correct": correct[slot], "filled": scored[slot],
                   "accuracy": correct[slot] / scored[slot] if scored[slot] else None} for slot in SLOTS}


# ------------------------------------------------------------------ entry point


def augment_labels(labels: Sequence[TrafficLabel], loaded: Any, images_dir: os.PathLike | str,
                   vocab: VehicleVocab, batch_size: int = 64, cache_dir: Optional[os.PathLike | str] = None,
                   num_workers: int = 0, source: Optional[os.PathLike | str] = None) -> list[TrafficLabel]:
    """Fill missing colour/type of vehicle captions zero-shot with a CLIP model.

    Args:
        labels: traffic labels (persons pass through with ``aug = text``).
        loaded: a loaded model (:func:`irkit.models.create_model`): ``encode_texts`` and what
            :func:`irkit.embeddings.encode_image_files` needs.
        images_dir: folder of the labelled images.
        vocab: candidate vocabulary (e.g. :func:`load_car_attribute` of ``car_attribute.json``).
        batch_size / num_workers / cache_dir: image encoding settings.
        source: the label file, for error messages.

    Returns:
        The labels in input order, each with ``aug`` set.
    """
    return augment_labels_detailed(labels, loaded, images_dir, vocab, batch_size=batch_size,
                                   cache_dir=cache_dir, num_workers=num_workers, source=source).labels
