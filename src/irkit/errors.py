"""One error type for every bad input, so users see *which* file, line and field is wrong."""

from __future__ import annotations

import os
import re
from typing import Optional


class InputError(ValueError):
    """A user-supplied file or value is malformed.

    The message always names the offending file (when there is one), the 1-based line
    and/or the field, what was found and what was expected.
    """

    def __init__(
        self,
        message: str,
        path: Optional[os.PathLike | str] = None,
        line: Optional[int] = None,
        field: Optional[str] = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.detail = message
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class RunFailed(RuntimeError):
    """A training run failed after its run folder was created; the folder records it (``FAILED``).

    The message is one line: the original error, where the traceback was written and how to
    start again.
    """

    def __init__(self, message: str, run_dir: Optional[os.PathLike | str] = None) -> None:
        self.run_dir = None if run_dir is None else str(run_dir)
        super().__init__(message)


def first_line_of(error: BaseException) -> str:
    """The most telling line of ``error``'s message: for torch's weights-only refusal, which
    global it refused (nothing of the file ran); otherwise the first non-empty line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    refused = re.search(r"unsupported global:?\s+(?:GLOBAL\s+)?(\S+)", text, flags=re.IGNORECASE)
    if refused:
        return (f"refused to unpickle the global {refused.group(1)} (nothing of the file ran): irkit loads "
                "pickled files with weights_only=True, which admits tensors and plain containers only")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines or [type(error).__name__])[0]
