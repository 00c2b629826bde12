"""Merge the per-gallery answers into the challenge's ``submission.json`` (docs/methods.md §A.6).

``submission.json = {"results": vehicle_results + person_results}``, one entry per line of
``test_text.txt`` in that file's order. Both inputs are validated like a submission
(:func:`irkit.benchmarks.traffic.read_traffic_submission`: each entry a ``text`` and 10
unique ``image_names``); every query line must be answered exactly once (a text that
repeats in ``test_text.txt`` must be answered as often as it repeats), and the vehicle
answers must cover the leading lines (swapped inputs are caught). The output is written
atomically: a failed merge leaves no file behind.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, Optional

from irkit.benchmarks.traffic import read_traffic_submission, write_traffic_submission
from irkit.data.traffic import read_test_queries
from irkit.errors import InputError


def merge_results(vehicle_json: os.PathLike | str, person_json: os.PathLike | str,
                  test_text_path: os.PathLike | str, out_path: Optional[os.PathLike | str] = None
                  ) -> dict[str, Any]:
    """Build the submission from the two per-gallery result files; write it to ``out_path``.

    Returns the submission object ``{"results": [...]}`` (entries in ``test_text.txt`` order).
    """
    vehicle_json, person_json, test_text_path = Path(vehicle_json), Path(person_json), Path(test_text_path)
    queries = read_test_queries(test_text_path)
    sources = {"vehicle": vehicle_json, "person": person_json}
    pending: dict[str, deque] = defaultdict(deque)   # text -> answers (kind, index) not yet placed
    for kind, path in sources.items():
        for i, entry in enumerate(read_traffic_submission(path)["results"]):
            pending[entry["text"]].append((kind, i, entry))

    merged: list[dict[str, Any]] = []
    kinds: list[str] = []
    for line, text in enumerate(queries, start=1):
        if not pending.get(text):
            raise InputError(f"query {text!r} has no answer in {vehicle_json} or {person_json} (or fewer answers "
                             f"than the times it appears); expected every query line answered once",
                             path=test_text_path, line=line)
        kind, _, entry = pending[text].popleft()
        merged.append({"text": text, "image_names": entry["image_names"]})
        kinds.append(kind)
    leftover = [(kind, i, text) for text, answers in pending.items() for kind, i, _ in answers]
    if leftover:
        kind, i, text = min(leftover, key=lambda x: (x[0], x[1]))
        raise InputError(f"{len(leftover)} answer(s) do not match a line of {test_text_path} (first: {text!r}); "
                         f"expected one answer per query line, texts exactly as in the query file",
                         path=sources[kind], field=f"results[{i}]")
    if "vehicle" in kinds:
        last_vehicle = len(kinds) - 1 - kinds[::-1].index("vehicle")
        if "person" in kinds[:last_vehicle]:
            first_person = kinds.index("person")
            raise InputError(
                f"line {first_person + 1} is answered by the person results but line {last_vehicle + 1} by the "
                f"vehicle results; expected the vehicle queries first (were --vehicle and --person swapped?)",
                path=test_text_path, line=first_person + 1)
    if out_path is not None:
        write_traffic_submission(out_path, [(e["text"], e["image_names"]) for e in merged], queries=queries)
    return {"results": merged}
