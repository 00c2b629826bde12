"""CIRCO composed-image-retrieval loader (``docs/formats.md`` §4).

Layout::

    <root>/annotations/val.json, test.json
    <root>/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json  {"images": [{"id", "file_name"}]}
    <root>/COCO2017_unlabeled/unlabeled2017/<file_name>

The gallery is every image of the COCO 2017 unlabeled image-info file (ids as strings, in file
order). That file is large; ``gallery_ids=`` supplies the gallery instead (e.g. a stand-in
built from the ids in the annotations). Images without an image-info entry get the COCO file
name ``<id as 12 digits>.jpg``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

from irkit.data.records import CIRQuery, CIRSplit
from irkit.data.registry import register_dataset
from irkit.data.validate import (
    entry_context,
    existing_names,
    expect_int,
    expect_list,
    expect_object,
    expect_str,
    report_missing_images,
    require_choice,
    require_keys,
)
from irkit.errors import InputError
from irkit.io import read_json, safe_join

SPLITS = ("val", "test")
VAL_KEYS = ("id", "reference_img_id", "target_img_id", "relative_caption", "shared_concept", "gt_img_ids")
TEST_KEYS = ("id", "reference_img_id", "relative_caption", "shared_concept")
IMAGE_INFO = Path("COCO2017_unlabeled") / "annotations" / "image_info_unlabeled2017.json"
IMAGE_DIR = Path("COCO2017_unlabeled") / "unlabeled2017"


def coco_file_name(image_id: str) -> str:
    """COCO's file name for an image id: ``000000123456.jpg``."""
    return f"{int(image_id):012d}.jpg"


def read_coco_image_info(path: Path) -> dict[str, str]:
    """``{image id (str): file_name}`` from a COCO image-info file, in file order."""
    data = expect_object(read_json(path), path, None, 'a JSON object {"images": [{"id", "file_name"}, ...]}')
    require_keys(data, ["images"], path, "", what="image-info file")
    images = expect_list(data["images"], path, "images", 'a list of {"id", "file_name"} objects')
    info: dict[str, str] = {}
    for i, image in enumerate(images):
        field = f"images[{i}]"
        expect_object(image, path, field, 'an object with "id" and "file_name"')
        require_keys(image, ["id", "file_name"], path, field, what="image")
        image_id = str(expect_int(image["id"], path, f"{field}.id"))
        if image_id in info:
            raise InputError(f"duplicate image id {image_id}; expected each image once", path=path, field=f"{field}.id")
        info[image_id] = expect_str(image["file_name"], path, f"{field}.file_name")
    if not info:
        raise InputError("no images; expected a non-empty 'images' list", path=path, field="images")
    return info


def _normalise_gallery_ids(gallery_ids: Sequence[int | str]) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    for i, value in enumerate(gallery_ids):
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit():
            raise InputError(f"gallery id {value!r} is not an integer COCO image id",
                             field=f"gallery_ids[{i}]")
        text = str(int(text))
        if text in seen:
            raise InputError(f"duplicate gallery id {text}; expected each image once", field=f"gallery_ids[{i}]")
        seen.add(text)
        ids.append(text)
    if not ids:
        raise InputError("empty gallery_ids; expected at least one COCO image id", field="gallery_ids")
    return ids


def _parse_entry(entry: Any, index: int, path: Path, split: str, gallery: set[str], gallery_source: str
                 ) -> CIRQuery:
    field = f"[{index}]"
    expect_object(entry, path, field, "a CIRCO annotation object")
    context = entry_context(entry, "id")
    keys = TEST_KEYS if split == "test" else VAL_KEYS
    require_keys(entry, keys, path, field, context)
    if split == "test":
        extra = sorted(set(entry) - set(TEST_KEYS))
        if extra:
            raise InputError(
                f"test entry{context} has extra key(s) {', '.join(extra)}; expected only "
                f"{', '.join(TEST_KEYS)} (is this the val file?)", path=path, field=f"{field}.{extra[0]}")
    query_id = expect_int(entry["id"], path, f"{field}.id")
    if query_id != index:
        raise InputError(f"id is {query_id} at index {index}; expected id == its index in the list",
                         path=path, field=f"{field}.id")
    reference = str(expect_int(entry["reference_img_id"], path, f"{field}.reference_img_id", context))
    caption = expect_str(entry["relative_caption"], path, f"{field}.relative_caption", context)
    concept = expect_str(entry["shared_concept"], path, f"{field}.shared_concept", context, allow_empty=True)

    def in_gallery(image_id: str, where: str) -> None:
        if image_id not in gallery:
            raise InputError(f"image id {image_id}{context} is not in the gallery ({gallery_source}); "
                             f"expected an image of the gallery", path=path, field=f"{field}.{where}")

    in_gallery(reference, "reference_img_id")
    target = None
    ground_truths: tuple[str, ...] = ()
    if split == "val":
        target = str(expect_int(entry["target_img_id"], path, f"{field}.target_img_id", context))
        gt_list = expect_list(entry["gt_img_ids"], path, f"{field}.gt_img_ids", "a non-empty list of image ids")
        if not gt_list:
            raise InputError(f"empty gt_img_ids{context}; expected at least the target id",
                             path=path, field=f"{field}.gt_img_ids")
        ground_truths = tuple(str(expect_int(g, path, f"{field}.gt_img_ids[{j}]", context))
                              for j, g in enumerate(gt_list))
        if ground_truths[0] != target:
            raise InputError(f"gt_img_ids[0] is {ground_truths[0]} but target_img_id is {target}{context}; "
                             f"expected gt_img_ids[0] == target_img_id", path=path, field=f"{field}.gt_img_ids[0]")
        if len(set(ground_truths)) != len(ground_truths):
            raise InputError(f"gt_img_ids lists an image twice{context}; expected unique ids",
                             path=path, field=f"{field}.gt_img_ids")
        for j, gt in enumerate(ground_truths):
            in_gallery(gt, f"gt_img_ids[{j}]")
        if "semantic_aspects" in entry:
            aspects = expect_list(entry["semantic_aspects"], path, f"{field}.semantic_aspects", "a list of strings")
            for j, aspect in enumerate(aspects):
                expect_str(aspect, path, f"{field}.semantic_aspects[{j}]", context)
    return CIRQuery(query_id=str(query_id), reference=reference, captions=(caption,), target=target,
                    ground_truths=ground_truths, shared_concept=concept)


@register_dataset("circo")
def load_circo(root: os.PathLike | str, split: str, gallery_ids: Optional[Sequence[int | str]] = None,
               check_images: bool = False) -> CIRSplit:
    """Load a CIRCO split (val | test).

    The gallery comes from ``gallery_ids`` when given, else from the COCO image-info file.
    Ids are strings; ``query_id`` is ``str(id)``; ``ground_truths`` are the ``gt_img_ids`` (val).
    Image paths are computed always and checked on disk only when ``check_images``.
    """
    root = Path(root)
    require_choice(split, SPLITS, "CIRCO split", path=root, field="split")
    info_path = root / IMAGE_INFO
    file_names: dict[str, str] = {}
    if info_path.exists():
        file_names = read_coco_image_info(info_path)
    if gallery_ids is not None:
        gallery = _normalise_gallery_ids(gallery_ids)
        gallery_source = "gallery_ids"
    elif file_names:
        gallery = list(file_names)
        gallery_source = str(IMAGE_INFO)
    else:
        raise InputError(
            "COCO image-info file not found and no gallery_ids given; expected the file "
            "(from the COCO 2017 unlabeled annotations) or gallery_ids=[...] to define the gallery",
            path=info_path)

    annotation_path = root / "annotations" / f"{split}.json"
    entries = expect_list(read_json(annotation_path), annotation_path, None, "a JSON list of CIRCO annotations")
    gallery_set = set(gallery)
    queries = [_parse_entry(entry, i, annotation_path, split, gallery_set, gallery_source)
               for i, entry in enumerate(entries)]

    image_dir = root / IMAGE_DIR
    image_paths = {
        image_id: safe_join(image_dir, file_names.get(image_id) or coco_file_name(image_id),
                            source=info_path, field=image_id)
        for image_id in gallery
    }
    if check_images:
        listing = existing_names(image_dir)
        missing = [(image_id, p) for image_id, p in image_paths.items()
                   if p.name not in listing and not p.is_file()]
        report_missing_images(missing, info_path if file_names else annotation_path, "CIRCO gallery images")
    return CIRSplit(dataset="circo", split=split, root=root, queries=queries, gallery=gallery,
                    image_paths=image_paths)
