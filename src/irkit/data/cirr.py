"""CIRR composed-image-retrieval loader (``docs/formats.md`` §3).

Layout::

    <root>/cirr/captions/cap.rc2.<train|val|test1>.json
    <root>/cirr/image_splits/split.rc2.<train|val|test1>.json   {name: "./dev/<name>.png"}
    <root>/train/<k>/<name>.png   <root>/dev/<name>.png   <root>/test1/<name>.png

Decisions, checked against the published files:

* The gallery is every image of the split file, in file order.
* Captions are kept exactly as published; test1 pairid 27098 has the caption ``" "`` and the
  test server still expects a prediction for it, so blank captions are accepted.
* ``img_set.reference_rank`` / ``target_rank`` are not checked against ``members`` (in the
  published val file they disagree with the member order for most entries); they are unused.
* ``target_soft`` does not always contain ``target_hard`` in the published files; only its
  shape is checked. ``ground_truths`` is ``(target_hard,)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from irkit.data.records import CIRQuery, CIRSplit
from irkit.data.registry import register_dataset
from irkit.data.validate import (
    entry_context,
    expect_int,
    expect_list,
    expect_object,
    expect_str,
    report_missing_images,
    require_choice,
    require_keys,
    type_name,
)
from irkit.errors import InputError
from irkit.io import read_json, safe_join

SPLITS = ("train", "val", "test1")
SUBSET_SIZE = 6
ENTRY_KEYS = ("pairid", "reference", "target_hard", "target_soft", "caption", "img_set")
TEST_ENTRY_KEYS = ("pairid", "reference", "caption", "img_set")
IMG_SET_KEYS = ("id", "members")


def cirr_paths(root: Path, split: str) -> tuple[Path, Path]:
    """``(caption file, split file)`` of a CIRR split."""
    return (root / "cirr" / "captions" / f"cap.rc2.{split}.json",
            root / "cirr" / "image_splits" / f"split.rc2.{split}.json")


def read_cirr_split_file(root: Path, split_path: Path) -> dict[str, Path]:
    """``{image name: absolute path}`` from a ``split.rc2.*.json`` file, in file order.

    Paths are relative to ``root``; a path escaping ``root`` is refused.
    """
    mapping = expect_object(read_json(split_path), split_path, None,
                            "a JSON object {image name: './dev/<name>.png'}")
    image_paths: dict[str, Path] = {}
    for name, relative in mapping.items():
        expect_str(name, split_path, f"[{name!r}]")
        expect_str(relative, split_path, name)
        image_paths[name] = safe_join(root, relative, source=split_path, field=name)
    if not image_paths:
        raise InputError("no images; expected {image name: relative path} entries", path=split_path)
    return image_paths


def _check_in_split(name: str, images: Mapping[str, Path], path: Path, field: str, context: str,
                    split_path: Path) -> None:
    if name not in images:
        raise InputError(f"image {name!r}{context} is not in {split_path.name}; expected an image of this split",
                         path=path, field=field)


def _parse_entry(entry: Any, index: int, path: Path, split: str, images: Mapping[str, Path],
                 split_path: Path) -> CIRQuery:
    field = f"[{index}]"
    expect_object(entry, path, field, "an object with pairid, reference, caption, img_set, ...")
    context = entry_context(entry, "pairid")
    require_keys(entry, TEST_ENTRY_KEYS if split == "test1" else ENTRY_KEYS, path, field, context)
    pairid = expect_int(entry["pairid"], path, f"{field}.pairid")
    reference = expect_str(entry["reference"], path, f"{field}.reference", context)
    caption = expect_str(entry["caption"], path, f"{field}.caption", context, allow_empty=True)
    _check_in_split(reference, images, path, f"{field}.reference", context, split_path)

    img_set = expect_object(entry["img_set"], path, f"{field}.img_set",
                            "an object with 'id' and 'members' (6 image names)")
    require_keys(img_set, IMG_SET_KEYS, path, f"{field}.img_set", context, what="img_set")
    expect_int(img_set["id"], path, f"{field}.img_set.id", context)
    members = expect_list(img_set["members"], path, f"{field}.img_set.members",
                          f"a list of {SUBSET_SIZE} image names")
    if len(members) != SUBSET_SIZE:
        raise InputError(f"img_set has {len(members)} members{context}; expected {SUBSET_SIZE}",
                         path=path, field=f"{field}.img_set.members")
    for j, member in enumerate(members):
        expect_str(member, path, f"{field}.img_set.members[{j}]", context)
        _check_in_split(member, images, path, f"{field}.img_set.members[{j}]", context, split_path)
    if reference not in members:
        raise InputError(f"reference {reference!r}{context} is not among img_set.members; "
                         f"expected the reference in its subset", path=path, field=f"{field}.img_set.members")

    target = None
    if split != "test1":
        target = expect_str(entry["target_hard"], path, f"{field}.target_hard", context)
        _check_in_split(target, images, path, f"{field}.target_hard", context, split_path)
        if target not in members:
            raise InputError(f"target_hard {target!r}{context} is not among img_set.members; "
                             f"expected the target in its subset", path=path, field=f"{field}.img_set.members")
        soft = expect_object(entry["target_soft"], path, f"{field}.target_soft",
                             "an object {image name: score}")
        for name, score in soft.items():
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise InputError(f"score {score!r} is a {type_name(score)}{context}; expected a number",
                                 path=path, field=f"{field}.target_soft.{name}")
    return CIRQuery(query_id=str(pairid), reference=reference, captions=(caption,), target=target,
                    ground_truths=(target,) if target is not None else (), subset=tuple(members))


@register_dataset("cirr")
def load_cirr(root: os.PathLike | str, split: str, check_images: bool = False) -> CIRSplit:
    """Load a CIRR split (train | val | test1).

    ``query_id`` is ``str(pairid)``, ``subset`` the 6 ``img_set.members``; the gallery is every
    image of ``split.rc2.<split>.json`` in file order. Image paths are ``root`` joined with the
    split file's relative paths, checked on disk only when ``check_images``.
    """
    root = Path(root)
    require_choice(split, SPLITS, "CIRR split", path=root, field="split")
    caption_path, split_path = cirr_paths(root, split)
    image_paths = read_cirr_split_file(root, split_path)
    entries = expect_list(read_json(caption_path), caption_path, None,
                          "a JSON list of CIRR query objects")
    queries: list[CIRQuery] = []
    first_index: dict[str, int] = {}
    for i, entry in enumerate(entries):
        query = _parse_entry(entry, i, caption_path, split, image_paths, split_path)
        if query.query_id in first_index:
            raise InputError(f"duplicate pairid {query.query_id} (first at index {first_index[query.query_id]}); "
                             f"expected unique pairids", path=caption_path, field=f"[{i}].pairid")
        first_index[query.query_id] = i
        queries.append(query)
    if check_images:
        missing = [(name, p) for name, p in image_paths.items() if not p.is_file()]
        report_missing_images(missing, split_path, "CIRR images")
    return CIRSplit(dataset="cirr", split=split, root=root, queries=queries, gallery=list(image_paths),
                    image_paths=image_paths)
