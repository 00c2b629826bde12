"""Generic caption CSV (open_clip's training layout: a ``filepath`` and a ``title`` column).

open_clip reads these with ``pandas.read_csv(path, sep=...)`` and looks the columns up by name;
a separator mismatch makes the whole header one column and surfaces as ``KeyError: 'filepath'``.
:func:`load_caption_csv` detects that case and says which separator the file seems to use.

Image paths: with ``root`` they are joined onto ``root`` (paths escaping it are refused);
without, they are used as written (relative to the working directory, as open_clip does).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from irkit.data.records import CaptionRecord
from irkit.data.validate import (
    SEPARATOR_NAMES,
    decode_utf8,
    describe_separator,
    report_missing_images,
    require_file,
)
from irkit.errors import InputError
from irkit.io import atomic_path, safe_join

CaptionPair = tuple[Union[str, os.PathLike], str]


def _separator_hint(header_cell: str, sep: str) -> str:
    """Which other separator splits a one-column header into several columns, if any."""
    for candidate in SEPARATOR_NAMES:
        if candidate != sep and candidate in header_cell:
            name = SEPARATOR_NAMES[candidate]
            return (f"; it looks {name}-separated but the separator is {describe_separator(sep)} "
                    f"(pass --csv-separator {candidate!r} / sep={candidate!r})")
    return ""


def _check_header(header: Sequence[str], path: Path, sep: str, keys: Sequence[str]) -> dict[str, int]:
    """Column index of each of ``keys``; a missing column explains the likely cause."""
    columns = {name: i for i, name in enumerate(header)}
    missing = [key for key in keys if key not in columns]
    if not missing:
        return columns
    if len(header) == 1:
        raise InputError(
            f"header has 1 column {header[0]!r}{_separator_hint(header[0], sep)}; expected columns "
            f"{', '.join(repr(k) for k in keys)} separated by {describe_separator(sep)}",
            path=path, line=1)
    near = {key: [c for c in header if c.strip().lower() == key.lower()] for key in missing}
    hints = "".join(f" (found {near[key][0]!r}: check case/spaces)" for key in missing if near[key])
    raise InputError(
        f"missing column(s) {', '.join(repr(k) for k in missing)}{hints}; header has columns "
        f"{', '.join(repr(c) for c in header)} (set --csv-img-key / --csv-caption-key "
        f"or img_key= / caption_key= to the right names)",
        path=path, line=1)


def _missing_image_hint(path: Path, root: Optional[os.PathLike | str], missing: list[CaptionRecord]) -> str:
    """Explain the common mistake of paths written relative to the CSV's own folder."""
    if root is not None or not missing:
        return ""
    relative = [r.filepath for r in missing if not r.filepath.is_absolute()]
    if len(relative) == len(missing) and all((path.parent / p).is_file() for p in relative):
        return (f"relative paths are opened from the working directory {Path.cwd()}, as open_clip "
                f"does, but these exist relative to the CSV's folder {path.parent}: write absolute "
                f"paths (or paths relative to the working directory)")
    return f"relative paths are opened from the working directory {Path.cwd()}, as open_clip does"


def load_caption_csv(path: os.PathLike | str, sep: str = "\t", img_key: str = "filepath",
                     caption_key: str = "title", root: Optional[os.PathLike | str] = None,
                     check_images: bool = True) -> list[CaptionRecord]:
    """Read a caption CSV into :class:`CaptionRecord` rows (``line``: 1-based line where the row starts).

    Raises :class:`InputError` on a separator mismatch, missing columns, a row with the wrong
    number of fields, an empty path or caption, or (``check_images``) missing image files.
    """
    path = Path(path)
    require_file(path, f"a caption CSV with columns {img_key!r} and {caption_key!r}")
    text = decode_utf8(path.read_bytes(), path)
    if not text.strip():
        raise InputError(f"empty file; expected a header line with {img_key!r} and {caption_key!r}", path=path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    line = 1
    try:
        header = next(reader)
        columns = _check_header(header, path, sep, [img_key, caption_key])
        img_col, caption_col = columns[img_key], columns[caption_key]
        records: list[CaptionRecord] = []
        while True:
            line = reader.line_num + 1  # first line of the row (a quoted field may span lines)
            row = next(reader, None)
            if row is None:
                break
            if not row or all(not cell.strip() for cell in row):
                continue  # blank line: pandas skips these too
            if len(row) != len(header):
                raise InputError(
                    f"found {len(row)} fields; expected {len(header)} (as in the header) separated by "
                    f"{describe_separator(sep)}", path=path, line=line)
            filepath, title = row[img_col].strip(), row[caption_col]
            if not filepath:
                raise InputError("empty image path; expected a file path", path=path, line=line, field=img_key)
            if not title.strip():
                raise InputError("empty caption; expected a non-empty caption", path=path, line=line,
                                 field=caption_key)
            image = safe_join(root, filepath, source=path, line=line, field=img_key) if root is not None \
                else Path(filepath)
            records.append(CaptionRecord(filepath=image, title=title, line=line))
    except csv.Error as e:
        raise InputError(f"malformed CSV: {e}; expected {describe_separator(sep)}-separated fields "
                         f"with '\"' quoting", path=path, line=line) from None
    if not records:
        raise InputError("no rows after the header; expected one image/caption row per line", path=path)
    if check_images:
        missing = [r for r in records if not r.filepath.is_file()]
        report_missing_images([(f"line {r.line}", r.filepath) for r in missing], path, "images",
                              line=missing[0].line if missing else None, field=img_key,
                              hint=_missing_image_hint(path, root, missing))
    return records


def write_caption_csv(path: os.PathLike | str, records_or_pairs: Iterable[Union[CaptionRecord, CaptionPair]],
                      sep: str = "\t", img_key: str = "filepath", caption_key: str = "title") -> int:
    """Write ``(filepath, caption)`` rows (or :class:`CaptionRecord`) atomically; returns the row count.

    Fields holding the separator, quotes or line breaks are quoted, so ``pandas.read_csv`` (what
    open_clip uses) and :func:`load_caption_csv` read them back unchanged.
    """
    path = Path(path)
    rows: list[tuple[str, str]] = []
    for index, item in enumerate(records_or_pairs):
        filepath, title = (item.filepath, item.title) if isinstance(item, CaptionRecord) else item
        if not str(filepath).strip() or not str(title).strip():
            raise InputError(f"row {index} has an empty image path or caption; expected both",
                             path=path, field=f"[{index}]")
        rows.append((str(filepath), str(title)))
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter=sep, lineterminator="\n")
            writer.writerow([img_key, caption_key])
            writer.writerows(rows)
    return len(rows)
