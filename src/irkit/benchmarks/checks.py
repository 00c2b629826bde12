"""Checks shared by every benchmark's rankings and prediction files (docs/formats.md).

Rankings are ``{query_id: [gallery ids, best first]}`` inside irkit. These functions raise
:class:`~irkit.errors.InputError` naming the file (``source``) and the query id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from irkit import metrics
from irkit.errors import InputError

PathLike = os.PathLike | str


def read_json_strict(path: PathLike) -> Any:
    """Read JSON, refusing duplicate object keys (``json`` would silently keep the last).

    Missing file, malformed JSON (with its line), non-UTF-8 text and duplicate keys raise
    :class:`InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found (expected a JSON file)", path=path)

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise InputError(f"key {key!r} appears twice in one JSON object; expected unique keys",
                                 path=path, field=key)
            obj[key] = value
        return obj

    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", path=path, line=e.lineno) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text: {e}", path=path) from None


def expect_object(obj: Any, path: PathLike, what: str, field: Optional[str] = None) -> dict:
    """``obj`` when it is a JSON object, else :class:`InputError` saying ``what`` was expected."""
    if not isinstance(obj, dict):
        raise InputError(f"found a JSON {type(obj).__name__}; expected {what}", path=path, field=field)
    return obj


def write_json(tmp: Path, obj: Any) -> None:
    """Write ``obj`` as one line of UTF-8 JSON (the test servers' own style) to ``tmp``."""
    tmp.write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")


def check_ranking_list(ranked: Any, query_id: str, source: Optional[str] = None) -> None:
    """Raise :class:`InputError` unless ``ranked`` is a list of unique string ids."""
    if not isinstance(ranked, (list, tuple)):
        raise InputError(f"ranking is a {type(ranked).__name__}; expected a list of image ids",
                         path=source, field=query_id)
    for position, item in enumerate(ranked):
        if not isinstance(item, str):
            raise InputError(f"entry {position} is {item!r} ({type(item).__name__}); expected an image id string",
                             path=source, field=query_id)
    metrics.check_unique(ranked, query_id, source)


def check_fixed_depth(lists: Mapping[str, Any], depth: int, source: PathLike) -> None:
    """Without a split to check against: lists of unique strings, exactly ``depth`` long."""
    for query_id, ranked in lists.items():
        check_ranking_list(ranked, query_id, str(source))
        if len(ranked) != depth:
            raise InputError(f"list has {len(ranked)} ids; expected exactly {depth}", path=source, field=query_id)


def truncate(rankings: Mapping[str, Sequence[str]], depth: int) -> dict[str, Any]:
    """Cut each list to ``depth``; anything that is not a list is kept for the checks to report."""
    return {str(q): list(ranked)[:depth] if isinstance(ranked, (list, tuple)) else ranked
            for q, ranked in rankings.items()}


def expect_file_count(benchmark: str, paths: Sequence[PathLike], count: int, what: str) -> list[Path]:
    """``paths`` as Paths when there are exactly ``count`` of them, else :class:`InputError`."""
    if len(paths) != count:
        raise InputError(f"{benchmark}: {len(paths)} prediction file(s) given; expected {count} ({what})",
                         field="predictions")
    return [Path(p) for p in paths]


def read_gallery_ids(path: PathLike) -> list[str]:
    """Gallery ids from a ``.json`` list or a text file with one id per line."""
    from irkit.data.validate import read_text_lines

    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json_strict(path)
        if not isinstance(data, list):
            raise InputError(f"found a JSON {type(data).__name__}; expected a list of image ids", path=path)
        return [str(x) for x in data]
    lines = read_text_lines(path, "one gallery image id per line")
    return [line.strip() for _, line in lines]
