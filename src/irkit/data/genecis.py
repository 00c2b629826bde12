"""GeneCIS loader (``docs/formats.md`` §7): four tasks, each template ranked over its own gallery.

Layout::

    <root>/genecis/{focus_attribute,change_attribute,focus_object,change_object}.json
    <root>/coco2017/val2017/<val_image_id:012d>.jpg   object tasks (``coco_dir`` overrides the folder)
    <root>/VG_100K_all/<image_id>.jpg                 attribute tasks (``vg_dir`` overrides the folder)

Decisions:

* GeneCIS has one evaluation set and no splits: only ``split="val"`` is accepted (any other name
  is an :class:`InputError`). Each task is one :class:`CIRSplit` with ``category`` = the task.
* Template ``i`` -> ``CIRQuery(query_id=str(i), reference, captions=(condition,), target,
  candidates=(target, *gallery))``; candidate position 0 is the target, 1..n the gallery in file
  order (an id may repeat: one real change_object template lists its target in its gallery too).
  The reference is not a candidate. ``split.gallery`` is every image id of the task (references
  included) in first-appearance order; ``image_paths`` maps each to a file.
* Object tasks: the id is ``str(val_image_id)``.
* Attribute tasks: each image is an object CROP, id ``"<image_id>@<x>,<y>,<w>,<h>"`` (the bbox
  numbers as the JSON writes them). The crop follows the published code: dilation 0.7, box
  ``left = max(0, x - 0.7 w)``, ``top = max(0, y - 0.7 h)``, ``right = min(W, left + 1.7 w)``,
  ``bottom = min(H, top + 1.7 h)``, rounded half-to-even to whole pixels (Pillow's ``crop`` of a
  float box), then padded to a centred square with black (``L`` images pad with 0; other modes
  are converted to RGB first). Crops are written as lossless PNGs into a cache folder
  (``crop_dir``; default ``$IRKIT_CACHE_DIR/genecis_crops`` or ``~/.cache/irkit/genecis_crops``),
  named by a hash of (source file CONTENT, bbox, dilation, padding rule), written atomically, so
  a changed source image never serves a stale crop. ``image_paths[id]`` is the crop file, so
  every method reads crops like any other image. A bbox with w or h <= 0, or with no pixel inside
  its image, is refused; one that extends past the image edge is clamped (as published).
  Without the source image (and ``check_images=False``) the id maps to the missing source path,
  so a reader fails naming it; ``make_crops=False`` (annotation-only, e.g. scoring prediction
  files) leaves attribute ids out of ``image_paths``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from PIL import Image

from irkit.data.records import CIRQuery, CIRSplit
from irkit.data.registry import register_dataset
from irkit.data.validate import (
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
from irkit.io import atomic_write_bytes, read_json, stable_hash
from irkit.transforms import to_rgb

log = logging.getLogger(__name__)

TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")
OBJECT_TASKS = ("focus_object", "change_object")
ATTRIBUTE_TASKS = ("focus_attribute", "change_attribute")
SPLITS = ("val",)
TEMPLATE_KEYS = ("reference", "target", "gallery", "condition")
ANNOTATION_DIR = "genecis"
COCO_DIR = Path("coco2017") / "val2017"
VG_DIR = Path("VG_100K_all")
#: Crop dilation of the attribute tasks (the published ``DILATION``).
DILATION = 0.7
#: The padding rule, part of every crop's cache key.
PADDING_RULE = "centred square, black (0 for L images; other modes converted to RGB first)"
#: Bumped whenever the crop bytes for the same inputs change.
CROP_FORMAT_VERSION = 1
CACHE_ENV = "IRKIT_CACHE_DIR"

BBox = tuple[float, float, float, float]


def task_path(root: os.PathLike | str, task: str) -> Path:
    """``<root>/genecis/<task>.json``."""
    return Path(root) / ANNOTATION_DIR / f"{task}.json"


def present_tasks(root: os.PathLike | str) -> list[str]:
    """The tasks whose annotation file exists under ``root``, in :data:`TASKS` order."""
    return [task for task in TASKS if task_path(root, task).is_file()]


def default_crop_dir() -> Path:
    """``$IRKIT_CACHE_DIR/genecis_crops``, else ``~/.cache/irkit/genecis_crops``."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "irkit") / "genecis_crops"


def coco_file_name(val_image_id: int | str) -> str:
    """COCO 2017 val file name: ``000000153527.jpg``."""
    return f"{int(val_image_id):012d}.jpg"


def crop_id(image_id: int, bbox: Sequence[float]) -> str:
    """Id of an attribute-task crop: ``"<image_id>@<x>,<y>,<w>,<h>"`` (numbers as JSON writes them)."""
    return f"{image_id}@" + ",".join(repr(v) if isinstance(v, float) else str(v) for v in bbox)


def crop_box(bbox: Sequence[float], width: int, height: int, dilation: float = DILATION) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` pixel box of a dilated object crop in a ``width`` x ``height`` image.

    ``left = max(0, x - d w)``, ``top = max(0, y - d h)``, ``right = min(W, left + (1 + d) w)``,
    ``bottom = min(H, top + (1 + d) h)``, each rounded half-to-even (Pillow's float-box crop).
    """
    x, y, w, h = (float(v) for v in bbox)
    left, top = max(0.0, x - dilation * w), max(0.0, y - dilation * h)
    right, bottom = min(float(width), left + (1 + dilation) * w), min(float(height), top + (1 + dilation) * h)
    return int(round(left)), int(round(top)), int(round(right)), int(round(bottom))


def pad_to_square(image: Image.Image) -> Image.Image:
    """Pad to a square of side ``max(w, h)`` with black, the image centred (offset ``(side - short) // 2``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), 0 if image.mode == "L" else (0, 0, 0))
    canvas.paste(image, (0, (side - height) // 2) if width > height else ((side - width) // 2, 0))
    return canvas


def crop_object(image: Image.Image, bbox: Sequence[float], dilation: float = DILATION) -> Image.Image:
    """The padded square crop of one object (mode ``L`` kept, anything else as RGB)."""
    if image.mode not in ("L", "RGB"):
        image = to_rgb(image)
    return pad_to_square(image.crop(crop_box(bbox, image.width, image.height, dilation)))


def crop_cache_key(source_sha256: str, bbox: Sequence[float], dilation: float = DILATION) -> str:
    """Hex key of a crop: a hash of the source file's content hash, the bbox, dilation and padding rule."""
    return stable_hash({"version": CROP_FORMAT_VERSION, "source_sha256": source_sha256, "bbox": list(bbox),
                        "dilation": dilation, "padding": PADDING_RULE})


def crop_file(crop_dir: os.PathLike | str, key: str) -> Path:
    """Where the crop with cache key ``key`` lives: ``<crop_dir>/<key[:2]>/<key>.png``."""
    return Path(crop_dir) / key[:2] / f"{key}.png"


@dataclass(frozen=True)
class _CropRequest:
    image_id: int
    bbox: BBox
    field: str  # first place (JSON field) the crop is named


def _expect_image_id(value: Any, path: Path, field: str) -> int:
    number = expect_int(value, path, field)
    if number < 0:
        raise InputError(f"image id {number} is negative; expected a non-negative integer", path=path, field=field)
    return number


def _expect_bbox(value: Any, path: Path, field: str) -> BBox:
    box = expect_list(value, path, field, "[x, y, w, h] (4 numbers, pixels)")
    if len(box) != 4:
        raise InputError(f"bbox has {len(box)} numbers; expected [x, y, w, h]", path=path, field=field)
    for j, v in enumerate(box):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"bbox entry {j} is a {type_name(v)} {v!r}; expected a finite number (pixels)",
                             path=path, field=field)
    if box[2] <= 0 or box[3] <= 0:
        raise InputError(f"bbox {box} has width or height <= 0; expected [x, y, w, h] with w, h > 0",
                         path=path, field=field)
    return tuple(box)  # type: ignore[return-value]


def _parse_image(value: Any, path: Path, field: str, attribute: bool, crops: dict[str, _CropRequest]) -> str:
    """The id of one template image (``{"val_image_id"}`` or ``{"image_id", "instance_bbox"}``)."""
    if not attribute:
        expect_object(value, path, field, '{"val_image_id": int}')
        require_keys(value, ("val_image_id",), path, field, what="image")
        return str(_expect_image_id(value["val_image_id"], path, f"{field}.val_image_id"))
    expect_object(value, path, field, '{"image_id": int, "instance_bbox": [x, y, w, h]}')
    require_keys(value, ("image_id", "instance_bbox"), path, field, what="image")
    image_id = _expect_image_id(value["image_id"], path, f"{field}.image_id")
    bbox = _expect_bbox(value["instance_bbox"], path, f"{field}.instance_bbox")
    key = crop_id(image_id, bbox)
    crops.setdefault(key, _CropRequest(image_id, bbox, f"{field}.instance_bbox"))
    return key


def _parse_template(entry: Any, index: int, path: Path, task: str, attribute: bool,
                    crops: dict[str, _CropRequest]) -> CIRQuery:
    field = f"[{index}]"
    expect_object(entry, path, field, "a template {reference, target, gallery, condition}")
    require_keys(entry, TEMPLATE_KEYS, path, field, what="template")
    condition = expect_str(entry["condition"], path, f"{field}.condition")
    reference = _parse_image(entry["reference"], path, f"{field}.reference", attribute, crops)
    target = _parse_image(entry["target"], path, f"{field}.target", attribute, crops)
    gallery = expect_list(entry["gallery"], path, f"{field}.gallery", "a non-empty list of gallery images")
    if not gallery:
        raise InputError("empty gallery; expected at least one gallery image", path=path, field=f"{field}.gallery")
    ids = [_parse_image(g, path, f"{field}.gallery[{j}]", attribute, crops) for j, g in enumerate(gallery)]
    return CIRQuery(query_id=str(index), reference=reference, captions=(condition,), target=target,
                    ground_truths=(target,), category=task, candidates=(target, *ids))


def _read_source(source: Path, annotation: Path, field: str) -> tuple[str, Image.Image]:
    """``(sha256 of the file bytes, the opened image)``; unreadable images raise naming both files."""
    data = source.read_bytes()
    try:
        image = Image.open(io.BytesIO(data))
        image.size  # noqa: B018 - header parsed
    except Exception as e:  # PIL raises several types for bad image bytes
        raise InputError(f"cannot read image {source}: {e}; expected a Visual Genome image",
                         path=annotation, field=field) from None
    return hashlib.sha256(data).hexdigest(), image


def _make_crops(requests: dict[str, _CropRequest], vg_dir: Path, crop_dir: Path, annotation: Path,
                check_images: bool) -> dict[str, Path]:
    """``{crop id: crop file}`` (crops written when absent); missing sources map to their own path."""
    by_image: dict[int, list[str]] = {}
    for key, request in requests.items():
        by_image.setdefault(request.image_id, []).append(key)
    paths: dict[str, Path] = {}
    missing: list[tuple[str, Path]] = []
    written = 0
    for image_id, keys in by_image.items():
        source = vg_dir / f"{image_id}.jpg"
        if not source.is_file():
            missing.append((requests[keys[0]].field.rsplit(".", 1)[0], source))
            paths.update({key: source for key in keys})
            continue
        digest, image = _read_source(source, annotation, requests[keys[0]].field)
        width, height = image.size
        decoded = False
        for key in keys:
            request = requests[key]
            x, y, w, h = request.bbox
            if x >= width or y >= height or x + w <= 0 or y + h <= 0:
                raise InputError(f"bbox {list(request.bbox)} lies outside the {width}x{height} image {source.name}; "
                                 "expected a box overlapping the image", path=annotation, field=request.field)
            left, top, right, bottom = crop_box(request.bbox, width, height)
            if right <= left or bottom <= top:
                raise InputError(f"bbox {list(request.bbox)} gives an empty crop ({left}, {top}, {right}, {bottom}) "
                                 f"of image {source.name}; expected a box at least a pixel wide",
                                 path=annotation, field=request.field)
            target = crop_file(crop_dir, crop_cache_key(digest, request.bbox))
            if not target.is_file():
                if not decoded:
                    try:
                        image.load()
                    except Exception as e:  # truncated / corrupt image data
                        raise InputError(f"cannot decode image {source}: {e}", path=annotation,
                                         field=request.field) from None
                    decoded = True
                buffer = io.BytesIO()
                crop_object(image, request.bbox).save(buffer, "PNG")
                atomic_write_bytes(target, buffer.getvalue())
                written += 1
            paths[key] = target
    if check_images:
        report_missing_images(missing, annotation, "GeneCIS Visual Genome images",
                              hint=f"expected <image_id>.jpg in {vg_dir} (vg_dir=...)")
    if missing:
        log.warning("genecis: %d Visual Genome image(s) missing (first: %s); their crops cannot be made",
                    len(missing), missing[0][1])
    if written:
        log.info("genecis: wrote %d object crops to %s", written, crop_dir)
    return paths


@register_dataset("genecis")
def load_genecis(root: os.PathLike | str, split: str = "val", task: Optional[str] = None,
                 coco_dir: Optional[os.PathLike | str] = None, vg_dir: Optional[os.PathLike | str] = None,
                 crop_dir: Optional[os.PathLike | str] = None, check_images: bool = False,
                 make_crops: bool = True) -> CIRSplit:
    """Load one GeneCIS task (``task`` in :data:`TASKS`) as a :class:`CIRSplit` (split ``"val"``).

    Object tasks map ids to ``<coco_dir>/<id:012d>.jpg`` (checked only when ``check_images``).
    Attribute tasks write/reuse object crops in ``crop_dir`` (see the module docstring);
    ``make_crops=False`` reads the annotations alone.
    """
    root = Path(root)
    require_choice(split, SPLITS, "GeneCIS split (GeneCIS has one evaluation set)", path=root, field="split")
    if task is None:
        raise InputError(f"GeneCIS needs a task; expected one of: {', '.join(TASKS)}", path=root, field="task")
    require_choice(task, TASKS, "GeneCIS task", path=root, field="task")
    attribute = task in ATTRIBUTE_TASKS
    path = task_path(root, task)
    entries = expect_list(read_json(path), path, None,
                          "a JSON list of templates {reference, target, gallery, condition}")
    if not entries:
        raise InputError("no templates; expected a non-empty list", path=path)
    crops: dict[str, _CropRequest] = {}
    queries = [_parse_template(entry, i, path, task, attribute, crops) for i, entry in enumerate(entries)]
    gallery = list(dict.fromkeys(i for q in queries for i in (q.reference, *(q.candidates or ()))))

    image_paths: dict[str, Path]
    if not attribute:
        folder = Path(os.path.abspath(coco_dir if coco_dir is not None else root / COCO_DIR))
        image_paths = {image_id: folder / coco_file_name(image_id) for image_id in gallery}
        if check_images:
            missing = [(image_id, p) for image_id, p in image_paths.items() if not p.is_file()]
            report_missing_images(missing, path, "GeneCIS COCO val2017 images",
                                  hint=f"expected <val_image_id:012d>.jpg in {folder} (coco_dir=...)")
    else:
        folder = Path(os.path.abspath(vg_dir if vg_dir is not None else root / VG_DIR))
        if make_crops:
            cache = Path(os.path.abspath(crop_dir if crop_dir is not None else default_crop_dir()))
            image_paths = _make_crops(crops, folder, cache, path, check_images)
        else:
            image_paths = {}
            if check_images:
                missing = [(r.field.rsplit(".", 1)[0], folder / f"{r.image_id}.jpg")
                           for r in {c.image_id: c for c in crops.values()}.values()
                           if not (folder / f"{r.image_id}.jpg").is_file()]
                report_missing_images(missing, path, "GeneCIS Visual Genome images",
                                      hint=f"expected <image_id>.jpg in {folder} (vg_dir=...)")
    return CIRSplit(dataset="genecis", split=split, root=root, queries=queries, gallery=gallery,
                    image_paths=image_paths, category=task)
