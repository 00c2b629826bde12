"""Training CSV for open_clip_train from traffic labels (docs/methods.md §A.4).

open_clip_train reads ``--train-data x.csv`` with ``pandas.read_csv(sep=--csv-separator)`` and
looks up the ``filepath`` / ``title`` columns by name; a separator mismatch is its most
reported error (``KeyError: 'filepath'``). :func:`build_training_csv` therefore writes absolute
image paths, refuses labels whose image is missing (naming the label line), and records the
separator and column names in a sidecar ``<csv>.json`` so the training wrapper passes the
matching ``--csv-separator`` / ``--csv-img-key`` / ``--csv-caption-key``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional, Sequence

from irkit.data.captions import write_caption_csv
from irkit.data.records import TrafficLabel
from irkit.data.validate import describe_separator, existing_names, require_dir
from irkit.errors import InputError
from irkit.io import atomic_write_json, read_json, safe_join

CaptionField = Literal["aug", "text"]
CAPTION_FIELDS = ("aug", "text")
IMG_KEY = "filepath"
CAPTION_KEY = "title"


def label_image_paths(labels: Sequence[TrafficLabel], images_dir: os.PathLike | str,
                      source: Optional[os.PathLike | str] = None) -> list[Path]:
    """Absolute path of every label's image, in label order.

    Names escaping ``images_dir`` or missing images raise :class:`InputError` naming the label
    file ``source`` and the line of the first missing image (with a count of the others).
    """
    images_dir = require_dir(Path(images_dir), "the images named in the labels")
    listing = existing_names(images_dir)
    paths: list[Path] = []
    missing: list[TrafficLabel] = []
    for label in labels:
        path = safe_join(images_dir, label.image, source=source, line=label.line, field="img")
        if label.image not in listing and not path.is_file():
            missing.append(label)
        paths.append(path)
    if missing:
        shown = ", ".join(f"line {lab.line} ({lab.image!r})" for lab in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(
            f"{len(missing)} labelled image(s) not found in {images_dir}: {shown}{more}; expected every "
            f"image named in the labels inside that folder",
            path=source, line=missing[0].line, field="img")
    return paths


def csv_sidecar_path(csv_path: os.PathLike | str) -> Path:
    """``<csv>.json``: where :func:`build_training_csv` records separator and columns."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.name + ".json")


def read_csv_sidecar(csv_path: os.PathLike | str) -> dict:
    """The recorded ``{"csv_separator", "csv_img_key", "csv_caption_key", ...}`` of a built CSV."""
    return read_json(csv_sidecar_path(csv_path))


def build_training_csv(labels: Sequence[TrafficLabel], images_dir: os.PathLike | str,
                       out_csv: os.PathLike | str, caption: CaptionField = "aug", sep: str = "\t",
                       source: Optional[os.PathLike | str] = None) -> Path:
    """Write open_clip's ``filepath``/``title`` CSV (absolute image paths) and its sidecar.

    Args:
        labels: traffic labels (persons and vehicles), written in order.
        images_dir: folder holding the labelled images.
        out_csv: CSV to write (atomically); ``<out_csv>.json`` records separator and columns.
        caption: ``"aug"`` = the augmented caption (every label must have one: run the
            augmentation first) or ``"text"`` = the original sentence.
        sep: field separator (tab by default, as the published pipeline).
        source: the label file the labels came from, for error messages.

    Returns:
        ``out_csv`` as a :class:`Path`.
    """
    if caption not in CAPTION_FIELDS:
        raise InputError(f"unknown caption field {caption!r}; expected one of: {', '.join(CAPTION_FIELDS)}")
    if len(sep) != 1 or sep in "\"\r\n":
        raise InputError(f"separator {sep!r} cannot be used; expected one character such as a tab or a comma")
    if not labels:
        raise InputError("no labels to write; expected at least one label line", path=source)
    if caption == "aug":
        unaugmented = [label for label in labels if label.aug is None]
        if unaugmented:
            first = unaugmented[0]
            raise InputError(
                f"{len(unaugmented)} label(s) have no augmented caption (4th '$aug' field), first "
                f"{first.image!r}; expected an augmented label file (run 'irkit preprocess augment' first) "
                f"or caption='text' / --caption text", path=source, line=first.line, field="aug")
    paths = label_image_paths(labels, images_dir, source=source)
    rows = [(str(path), label.aug if caption == "aug" else label.text) for path, label in zip(paths, labels)]
    out_csv = Path(out_csv)
    count = write_caption_csv(out_csv, rows, sep=sep, img_key=IMG_KEY, caption_key=CAPTION_KEY)
    atomic_write_json(csv_sidecar_path(out_csv), {
        "csv_separator": sep,
        "csv_separator_name": describe_separator(sep),
        "csv_img_key": IMG_KEY,
        "csv_caption_key": CAPTION_KEY,
        "caption": caption,
        "rows": count,
        "images_dir": str(Path(os.path.abspath(images_dir))),
        "labels": None if source is None else str(Path(os.path.abspath(source))),
    }, indent=2)
    return out_csv
