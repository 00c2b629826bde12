"""FashionIQ composed-image-retrieval loader (``docs/formats.md`` §2).

Layout::

    <root>/captions/cap.<cat>.<split>.json       [{"target", "candidate", "captions": [s1, s2]}]
    <root>/image_splits/split.<cat>.<split>.json [ASIN, ...]  (gallery of that category/split)
    <root>/images/<ASIN>.jpg

Decisions, checked against the published files:

* The gallery is the split file of the same category and split (the standard protocol ranks
  val queries against ``split.<cat>.val.json``). In the published files every candidate and
  target is in its split's gallery. A *target* outside the gallery could never be retrieved
  (recall would be silently capped), so it is an error. A *candidate* (reference) outside the
  gallery is harmless: it gets an image path but is not added to the gallery.
* The published files contain a few empty captions (e.g. shirt val index 1928 has ``""`` as
  its first caption); they are kept unchanged. An entry whose captions are *all* empty is an
  error (there is no modification text).
* Images are ``images/<ASIN>.jpg``; copies that ship ``.png`` files (as used by some CIR code
  bases) are accepted when the ``.jpg`` is absent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from irkit.data.records import CIRQuery, CIRSplit
from irkit.data.registry import register_dataset
from irkit.data.validate import (
    existing_names,
    expect_list,
    expect_object,
    expect_str,
    expect_unique_strings,
    report_missing_images,
    require_choice,
    require_keys,
)
from irkit.errors import InputError
from irkit.io import read_json, safe_join

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
CAPTIONS_PER_QUERY = 2
IMAGE_SUFFIXES = (".jpg", ".png")


def fashioniq_paths(root: Path, split: str, category: str) -> tuple[Path, Path]:
    """``(caption file, gallery split file)`` of one category and split."""
    return (root / "captions" / f"cap.{category}.{split}.json",
            root / "image_splits" / f"split.{category}.{split}.json")


def _parse_entry(entry: Any, index: int, path: Path, split: str, category: str) -> CIRQuery:
    field = f"[{index}]"
    expect_object(entry, path, field, "an object with 'candidate', 'captions' (and 'target' outside test)")
    keys = ["candidate", "captions"] + (["target"] if split != "test" else [])
    require_keys(entry, keys, path, field)
    reference = expect_str(entry["candidate"], path, f"{field}.candidate")
    captions = expect_list(entry["captions"], path, f"{field}.captions",
                           f"a list of {CAPTIONS_PER_QUERY} caption strings")
    if len(captions) != CAPTIONS_PER_QUERY:
        raise InputError(f"found {len(captions)} captions; expected {CAPTIONS_PER_QUERY}",
                         path=path, field=f"{field}.captions")
    for j, caption in enumerate(captions):
        expect_str(caption, path, f"{field}.captions[{j}]", allow_empty=True)
    if not any(caption.strip() for caption in captions):
        raise InputError("all captions are empty; expected at least one modification text",
                         path=path, field=f"{field}.captions")
    target = None
    if split != "test":
        target = expect_str(entry["target"], path, f"{field}.target")
    return CIRQuery(
        query_id=str(index), reference=reference, captions=tuple(captions), target=target,
        ground_truths=(target,) if target is not None else (), category=category,
    )


def _image_path(images_dir: Path, asin: str, listing: set[str], source: Path, field: str) -> Path:
    """``images/<ASIN>.jpg``, or ``.png`` when only that exists; escaping names refused."""
    suffix = next((s for s in IMAGE_SUFFIXES if asin + s in listing), IMAGE_SUFFIXES[0])
    return safe_join(images_dir, asin + suffix, source=source, field=field)


@register_dataset("fashioniq")
def load_fashioniq(root: os.PathLike | str, split: str, category: str | None = None,
                   check_images: bool = False) -> CIRSplit:
    """Load one FashionIQ category and split.

    ``query_id`` is the entry's index in the caption file (as a string); ``captions`` are the
    two captions as published; ``target`` is ``None`` on test. The gallery is the category's
    split file, in file order. Image paths are computed always, checked only when
    ``check_images`` (the annotations are usable without the images).
    """
    root = Path(root)
    if category is None:
        raise InputError(f"FashionIQ needs a category; expected one of: {', '.join(CATEGORIES)}",
                         path=root, field="category")
    require_choice(category, CATEGORIES, "FashionIQ category", path=root, field="category")
    require_choice(split, SPLITS, "FashionIQ split", path=root, field="split")
    caption_path, split_path = fashioniq_paths(root, split, category)

    gallery = expect_unique_strings(read_json(split_path), split_path, "",
                                    "a JSON list of image ids (ASINs)")
    entries = expect_list(read_json(caption_path), caption_path, None,
                          "a JSON list of {'target', 'candidate', 'captions'} objects")
    queries = [_parse_entry(entry, i, caption_path, split, category) for i, entry in enumerate(entries)]

    gallery_set = set(gallery)
    for query in queries:
        if query.target is not None and query.target not in gallery_set:
            raise InputError(
                f"target {query.target!r} is not in the gallery {split_path.name}; expected every "
                f"target in the gallery it is ranked against",
                path=caption_path, field=f"[{query.query_id}].target")

    images_dir = root / "images"
    listing = existing_names(images_dir)
    image_paths: dict[str, Path] = {}
    for i, asin in enumerate(gallery):
        image_paths[asin] = _image_path(images_dir, asin, listing, split_path, f"[{i}]")
    for query in queries:
        if query.reference not in image_paths:
            image_paths[query.reference] = _image_path(images_dir, query.reference, listing,
                                                       caption_path, f"[{query.query_id}].candidate")
    if check_images:
        missing = [(asin, p) for asin, p in image_paths.items() if p.name not in listing and not p.is_file()]
        report_missing_images(missing, caption_path, "FashionIQ images")
    return CIRSplit(dataset="fashioniq", split=split, root=root, queries=queries, gallery=gallery,
                    image_paths=image_paths, category=category)


def load_fashioniq_all(root: os.PathLike | str, split: str, check_images: bool = False) -> dict[str, CIRSplit]:
    """All three FashionIQ categories of ``split``: ``{category: CIRSplit}``."""
    return {category: load_fashioniq(root, split, category, check_images=check_images)
            for category in CATEGORIES}
