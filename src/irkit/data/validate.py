"""Validation helpers shared by the dataset loaders.

Every helper raises :class:`irkit.errors.InputError` naming the file, the 1-based line or
the JSON field path (``[17].img_set``), what was found and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from irkit.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

# Separators users mix up, with the words used in messages.
SEPARATOR_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe", "$": "dollar"}


def describe_separator(sep: str) -> str:
    """Readable name of a separator, e.g. ``"'\\t' (tab)"``."""
    name = SEPARATOR_NAMES.get(sep)
    shown = repr(sep)
    return f"{shown} ({name})" if name else shown


def require_file(path: Path, expected: str) -> Path:
    """Return ``path`` if it is a file, else raise naming what the file should hold."""
    if not path.is_file():
        hint = " (a folder with that name exists)" if path.is_dir() else ""
        raise InputError(f"file not found{hint}; expected {expected}", path=path)
    return path


def require_dir(path: Path, expected: str) -> Path:
    """Return ``path`` if it is a folder, else raise naming what the folder should hold."""
    if not path.is_dir():
        raise InputError(f"folder not found; expected {expected}", path=path)
    return path


def require_choice(value: Any, choices: Sequence[str], what: str, path: Optional[Path] = None,
                   field: Optional[str] = None) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise list the choices."""
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; expected one of: {', '.join(choices)}",
                         path=path, field=field)
    return value


def decode_utf8(data: bytes, path: Path) -> str:
    """Decode ``data`` as UTF-8 (a leading BOM is dropped); bad bytes raise with their line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"not UTF-8 text: byte 0x{data[e.start]:02x} cannot be decoded "
            f"(expected a UTF-8 encoded file; re-save it as UTF-8)",
            path=path, line=line,
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text_lines(path: Path, expected: str) -> list[tuple[int, str]]:
    """Read a UTF-8 text file as ``(line_number, line)`` pairs, line numbers 1-based.

    Line endings (``\\n`` or ``\\r\\n``) are removed. Blank lines at the end of the file are
    ignored; a blank line followed by more content is an error (it would shift every later
    line). An empty file gives ``[]`` (the caller decides whether that is allowed).
    """
    require_file(path, expected)
    text = decode_utf8(path.read_bytes(), path)
    lines = text.split("\n")
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise InputError(
                f"blank line inside the file (expected {expected} on every line; "
                f"only blank lines at the very end are ignored)",
                path=path, line=number,
            )
    return list(enumerate(lines, start=1))


def entry_context(entry: Any, key: str) -> str:
    """`` (pairid 123)``-style context for an error about a JSON entry, if it has ``key``."""
    if isinstance(entry, Mapping) and key in entry:
        return f" ({key} {entry[key]!r})"
    return ""


def type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", int: "integer", float: "number",
            bool: "boolean", type(None): "null"}.get(type(value), type(value).__name__)


def expect_list(value: Any, path: Path, field: Optional[str], expected: str) -> list:
    """``value`` must be a JSON list."""
    if not isinstance(value, list):
        raise InputError(f"found a JSON {type_name(value)}; expected {expected}", path=path, field=field)
    return value


def expect_object(value: Any, path: Path, field: Optional[str], expected: str) -> dict:
    """``value`` must be a JSON object."""
    if not isinstance(value, dict):
        raise InputError(f"found a JSON {type_name(value)}; expected {expected}", path=path, field=field)
    return value


def require_keys(entry: Mapping, keys: Iterable[str], path: Path, field: str, context: str = "",
                 what: str = "entry") -> None:
    """Every key of ``keys`` must be in ``entry``; the first missing one is reported.

    ``field`` is the entry's JSON path (``[17]``); the error's field is ``[17].<missing key>``.
    """
    keys = list(keys)
    for key in keys:
        if key not in entry:
            raise InputError(
                f"{what}{context} has no '{key}' (expected keys: {', '.join(keys)}; "
                f"found: {', '.join(map(str, entry)) or 'none'})",
                path=path, field=f"{field}.{key}",
            )


def expect_str(value: Any, path: Path, field: str, context: str = "", allow_empty: bool = False) -> str:
    """``value`` must be a string (non-empty after stripping unless ``allow_empty``)."""
    if not isinstance(value, str):
        raise InputError(f"found a {type_name(value)} {value!r}{context}; expected a string",
                         path=path, field=field)
    if not allow_empty and not value.strip():
        raise InputError(f"empty string{context}; expected a non-empty string", path=path, field=field)
    return value


def expect_int(value: Any, path: Path, field: str, context: str = "") -> int:
    """``value`` must be a JSON integer (booleans and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"found a {type_name(value)} {value!r}{context}; expected an integer",
                         path=path, field=field)
    return value


def expect_unique_strings(values: Any, path: Path, field_prefix: str, expected: str) -> list[str]:
    """A JSON list of unique non-empty strings (e.g. a gallery); duplicates name both indices."""
    values = expect_list(values, path, field_prefix or None, expected)
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        field = f"{field_prefix}[{i}]"
        expect_str(value, path, field)
        if value in seen:
            raise InputError(f"duplicate image id {value!r} (first at index {seen[value]}); "
                             f"expected each image once", path=path, field=field)
        seen[value] = i
    return values


def list_image_files(folder: Path) -> list[str]:
    """Sorted names of the image files directly inside ``folder`` (hidden files skipped)."""
    return sorted(
        entry.name for entry in os.scandir(folder)
        if entry.is_file() and not entry.name.startswith(".")
        and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def existing_names(folder: Path) -> set[str]:
    """Names of the files directly inside ``folder`` (empty if it does not exist).

    Listing a folder once is much faster than one ``stat`` per image for 100k-image splits.
    """
    if not folder.is_dir():
        return set()
    return {entry.name for entry in os.scandir(folder) if entry.is_file()}


def report_missing_images(missing: Sequence[tuple[str, Path]], source: Path, what: str,
                          line: Optional[int] = None, field: Optional[str] = None,
                          shown: int = 3, hint: str = "") -> None:
    """Raise if ``missing`` (``(where, path)`` pairs) is non-empty, listing the first few.

    ``line``/``field`` locate the first missing image in ``source``.
    """
    if not missing:
        return
    listed = "; ".join(f"{where}: {p}" for where, p in missing[:shown])
    more = f" (and {len(missing) - shown} more)" if len(missing) > shown else ""
    raise InputError(
        f"{what} not found ({len(missing)} missing): {listed}{more} "
        f"({hint or 'expected the image files beside the annotations'}; load with "
        f"check_images=False to read the annotations alone)",
        path=source, line=line, field=field,
    )
