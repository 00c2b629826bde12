"""Typed records every loader returns, so methods and metrics never see raw JSON.

Image identifiers are strings everywhere inside irkit (CIRCO's integer COCO ids included);
submission writers convert them back to the published types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

TrafficKind = Literal["vehicle", "person"]


@dataclass(frozen=True)
class TrafficLabel:
    """One line of a traffic challenge ``*_label.txt`` (``img$attr$text[$aug]``)."""

    image: str                 # file name inside ``<split>_images/``
    attr: str                  # vehicle phrase, or 21 comma-separated 0/1 flags for persons
    text: str                  # the sentence
    kind: TrafficKind
    line: int                  # 1-based line number in the label file
    aug: Optional[str] = None  # augmented caption (published extra ``$aug`` column)


@dataclass
class TrafficSplit:
    """A traffic challenge split: labelled images (train/val) or queries + gallery (test)."""

    root: Path
    split: str
    image_dir: Path
    labels: list[TrafficLabel] = field(default_factory=list)     # train / val
    queries: list[str] = field(default_factory=list)              # test: lines of test_text.txt
    gallery: list[str] = field(default_factory=list)              # test: image file names
    ground_truth: Optional[dict[str, list[str]]] = None           # query text -> relevant images

    def image_path(self, name: str) -> Path:
        return self.image_dir / name


@dataclass(frozen=True)
class CIRQuery:
    """One composed-retrieval query: a reference image plus modification text."""

    query_id: str                          # CIRR pairid, CIRCO id, FashionIQ index in its file
    reference: str                         # reference image id
    captions: tuple[str, ...]              # FashionIQ: two captions; CIRR/CIRCO: one
    target: Optional[str] = None           # target image id (None on test splits)
    ground_truths: tuple[str, ...] = ()    # all relevant ids (CIRCO gt_img_ids; else (target,))
    subset: Optional[tuple[str, ...]] = None  # CIRR img_set members (6 names)
    shared_concept: Optional[str] = None   # CIRCO
    category: Optional[str] = None         # FashionIQ dress|shirt|toptee
    candidates: Optional[tuple[str, ...]] = None  # per-query candidates (GeneCIS: target, *gallery; may repeat)


@dataclass
class CIRSplit:
    """Queries plus the gallery they are ranked against."""

    dataset: str                  # registry name: "cirr", "circo", "fashioniq"
    split: str                    # "train" | "val" | "test" | "test1"
    root: Path
    queries: list[CIRQuery]
    gallery: list[str]            # gallery image ids, in the order ties are broken by
    image_paths: dict[str, Path]  # image id -> absolute path (may not exist without images)
    category: Optional[str] = None  # FashionIQ category of this split

    def image_path(self, image_id: str) -> Path:
        return self.image_paths[image_id]


@dataclass(frozen=True)
class CaptionRecord:
    """One row of a generic caption CSV (open_clip's ``filepath``/``title`` layout)."""

    filepath: Path
    title: str
    line: int
