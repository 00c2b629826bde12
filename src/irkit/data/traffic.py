"""Traffic text-to-image retrieval challenge (CVPR 2023 foundation-model track 2) loader.

Layout (see ``docs/formats.md`` §1)::

    <root>/train/train_label.txt   img$attr$text[$aug]   one line per image
    <root>/train/train_images/<img>
    <root>/val/val_label.txt, val/val_images/<img>
    <root>/test/test_text.txt      one text query per line
    <root>/test/test_images/<img>
    <root>/test/test_ground_truth.txt   optional, lines text$img1$img2...

The optional 4th ``$aug`` column of a label line is the augmented caption written by irkit's
augmentation stage (the published pipeline appends it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

from irkit.data.records import TrafficKind, TrafficLabel, TrafficSplit
from irkit.data.registry import register_dataset
from irkit.data.validate import (
    SEPARATOR_NAMES,
    existing_names,
    list_image_files,
    read_text_lines,
    report_missing_images,
    require_choice,
    require_dir,
)
from irkit.errors import InputError
from irkit.io import atomic_path, safe_join

SPLITS = ("train", "val", "test")
SEP = "$"
PERSON_FLAG_COUNT = 21
LABEL_LAYOUT = "'img$attr$text' separated by '$' (optionally a 4th '$aug' field)"
GROUND_TRUTH_FILE = "test_ground_truth.txt"

# An attribute "looks like flags" when it is only digits, commas and spaces with a comma.
_FLAG_LIKE = re.compile(r"^[\d\s,]+$")


def attr_kind(attr: str, path: Optional[Path] = None, line: Optional[int] = None) -> TrafficKind:
    """``"person"`` for 21 comma-separated 0/1 flags, else ``"vehicle"``.

    An attribute made only of digits and commas that is not exactly 21 flags of 0/1 is an
    error (a person label with a wrong flag count or value), not a vehicle phrase.
    """
    if "," in attr and _FLAG_LIKE.match(attr):
        flags = [flag.strip() for flag in attr.split(",")]
        if len(flags) != PERSON_FLAG_COUNT:
            raise InputError(
                f"person attribute has {len(flags)} comma-separated flags; expected "
                f"{PERSON_FLAG_COUNT} flags of 0/1", path=path, line=line, field="attr")
        bad = [flag for flag in flags if flag not in ("0", "1")]
        if bad:
            raise InputError(
                f"person attribute flag {bad[0]!r} is not 0 or 1; expected {PERSON_FLAG_COUNT} "
                f"comma-separated 0/1 flags", path=path, line=line, field="attr")
        return "person"
    return "vehicle"


def _separator_problem(line: str) -> str:
    """Explain a label line that has no '$' at all."""
    for sep in ("\t", ",", ";", "|"):
        if sep in line:
            return f"found a {SEPARATOR_NAMES[sep]}-separated line"
    return "found no '$' in the line"


def _parse_label_line(line: str, path: Path, number: int) -> tuple[str, str, str, Optional[str]]:
    """Split one label line into ``(image, attr, text, aug)``, validating its shape."""
    if SEP not in line:
        raise InputError(f"expected {LABEL_LAYOUT}, {_separator_problem(line)}", path=path, line=number)
    fields = [field.strip() for field in line.split(SEP)]
    if len(fields) not in (3, 4):
        raise InputError(
            f"found {len(fields)} '$'-separated fields; expected 3 (img$attr$text) "
            f"or 4 (img$attr$text$aug)", path=path, line=number)
    image, attr, text = fields[:3]
    aug = fields[3] if len(fields) == 4 else None
    if not image:
        raise InputError("empty image name (1st field); expected an image file name",
                         path=path, line=number, field="img")
    if not text:
        raise InputError("empty text (3rd field); expected a sentence describing the image",
                         path=path, line=number, field="text")
    if aug is not None and not aug:
        raise InputError("empty augmented caption (4th field); expected a sentence, or no 4th field",
                         path=path, line=number, field="aug")
    return image, attr, text, aug


def _image_exists(images_dir: Path, name: str, listing: set[str]) -> bool:
    if name in listing:
        return True
    return ("/" in name or os.sep in name) and (images_dir / name).is_file()


def read_label_file(path: os.PathLike | str, images_dir: Optional[os.PathLike | str] = None,
                    check_images: bool = True) -> list[TrafficLabel]:
    """Parse a traffic ``*_label.txt`` file (``img$attr$text[$aug]`` lines).

    Image names must stay inside the image folder (``images_dir``, or the label file's folder
    when not given) and be unique. When ``images_dir`` is given and ``check_images``, every
    image must exist there. Returns one :class:`TrafficLabel` per line, in file order.
    """
    path = Path(path)
    lines = read_text_lines(path, LABEL_LAYOUT)
    if not lines:
        raise InputError(f"empty label file; expected one {LABEL_LAYOUT} line per image", path=path)
    containment_root = Path(images_dir) if images_dir is not None else path.parent
    labels: list[TrafficLabel] = []
    first_line: dict[str, int] = {}
    for number, line in lines:
        image, attr, text, aug = _parse_label_line(line, path, number)
        safe_join(containment_root, image, source=path, line=number, field="img")
        if image in first_line:
            raise InputError(
                f"duplicate image name {image!r} (first on line {first_line[image]}); "
                f"expected each image once", path=path, line=number, field="img")
        first_line[image] = number
        kind = attr_kind(attr, path, number)
        labels.append(TrafficLabel(image=image, attr=attr, text=text, kind=kind, line=number, aug=aug))
    if images_dir is not None and check_images:
        images_dir = Path(images_dir)
        require_dir(images_dir, f"the images named in {path}")
        listing = existing_names(images_dir)
        missing = [lab for lab in labels if not _image_exists(images_dir, lab.image, listing)]
        report_missing_images([(f"line {lab.line}", images_dir / lab.image) for lab in missing], path,
                              "labelled images", line=missing[0].line if missing else None)
    return labels


def write_label_file(path: os.PathLike | str, labels: Iterable[TrafficLabel]) -> None:
    """Write ``labels`` as ``img$attr$text[$aug]`` lines, atomically.

    The ``$aug`` column is written for labels whose ``aug`` is set. A field containing '$' or
    a line break cannot be written (it would change the field count) and raises.
    """
    path = Path(path)
    out_lines = []
    for index, label in enumerate(labels):
        fields = [label.image, label.attr, label.text] + ([label.aug] if label.aug is not None else [])
        for name, value in zip(("img", "attr", "text", "aug"), fields):
            if SEP in value or "\n" in value or "\r" in value:
                raise InputError(
                    f"label {index} ({label.image!r}) has a '$' or line break in its {name}; "
                    f"expected single-line fields without '$'", path=path, field=name)
        out_lines.append(SEP.join(fields))
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in out_lines), encoding="utf-8")


def read_test_queries(path: os.PathLike | str) -> list[str]:
    """Lines of ``test_text.txt`` (one query each, line endings removed, text as given)."""
    path = Path(path)
    lines = read_text_lines(path, "one text query per line")
    if not lines:
        raise InputError("empty query file; expected one text query per line", path=path)
    return [line for _, line in lines]


def read_traffic_ground_truth(path: os.PathLike | str, gallery: Optional[Iterable[str]] = None,
                              queries: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
    """Read ground-truth lines ``text$img1$img2...`` into ``{text: [image names]}``.

    With ``gallery``, every named image must be in it; with ``queries``, every query must have
    exactly one ground-truth line and every line must name a query.
    """
    path = Path(path)
    lines = read_text_lines(path, "'text$img1$img2...' lines")
    if not lines:
        raise InputError("empty ground-truth file; expected one 'text$img1$img2...' line per query", path=path)
    gallery_set = set(gallery) if gallery is not None else None
    query_set = set(queries) if queries is not None else None
    truth: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for number, line in lines:
        if SEP not in line:
            raise InputError(f"expected 'text$img1$img2...' separated by '$', {_separator_problem(line)}",
                             path=path, line=number)
        text, *images = line.split(SEP)
        images = [image.strip() for image in images]
        if not text.strip():
            raise InputError("empty query text (1st field); expected the query as in test_text.txt",
                             path=path, line=number, field="text")
        if not any(images):
            raise InputError("no relevant image names; expected 'text$img1$img2...' with at least one image",
                             path=path, line=number)
        if "" in images:
            raise InputError("empty image name (two '$' in a row or a trailing '$'); expected image names",
                             path=path, line=number)
        if text in first_line:
            raise InputError(f"duplicate ground truth for query {text!r} (first on line {first_line[text]})",
                             path=path, line=number, field="text")
        if query_set is not None and text not in query_set:
            raise InputError(f"query {text!r} is not a line of the query file; expected the query text "
                             f"exactly as in test_text.txt", path=path, line=number, field="text")
        if gallery_set is not None:
            unknown = [image for image in images if image not in gallery_set]
            if unknown:
                raise InputError(f"image {unknown[0]!r} is not in the test gallery (test_images/)",
                                 path=path, line=number)
        if len(set(images)) != len(images):
            raise InputError("an image is listed twice; expected each relevant image once",
                             path=path, line=number)
        first_line[text] = number
        truth[text] = images
    if queries is not None:
        for index, query in enumerate(queries):
            if query not in truth:
                raise InputError(f"query on line {index + 1} of the query file ({query!r}) has no "
                                 f"ground-truth line; expected one line per query", path=path)
    return truth


@register_dataset("traffic")
def load_traffic(root: os.PathLike | str, split: str, check_images: bool = True) -> TrafficSplit:
    """Load a traffic challenge split.

    train/val: ``labels`` from ``<split>/<split>_label.txt`` (images checked under
    ``<split>/<split>_images`` when ``check_images``). test: ``queries`` from
    ``test/test_text.txt``, ``gallery`` = sorted image names in ``test/test_images/`` and
    ``ground_truth`` from ``test/test_ground_truth.txt`` when that file exists.
    """
    root = Path(root)
    require_choice(split, SPLITS, "traffic split", path=root, field="split")
    require_dir(root, "a traffic challenge root with train/, val/ and test/ folders")
    if split in ("train", "val"):
        label_path = root / split / f"{split}_label.txt"
        image_dir = root / split / f"{split}_images"
        labels = read_label_file(label_path, images_dir=image_dir, check_images=check_images)
        return TrafficSplit(root=root, split=split, image_dir=image_dir, labels=labels)

    image_dir = root / "test" / "test_images"
    queries = read_test_queries(root / "test" / "test_text.txt")
    require_dir(image_dir, "the test gallery images")
    gallery = list_image_files(image_dir)
    if not gallery:
        raise InputError("no image files in the test gallery folder; expected .jpg/.png images", path=image_dir)
    truth_path = root / "test" / GROUND_TRUTH_FILE
    truth = read_traffic_ground_truth(truth_path, gallery=gallery, queries=queries) if truth_path.exists() else None
    return TrafficSplit(root=root, split="test", image_dir=image_dir, queries=queries,
                        gallery=gallery, ground_truth=truth)
