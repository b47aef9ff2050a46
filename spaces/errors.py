"""One line from an exception, for the reasons slimtune records and prints.

Library errors (torchao, CUDA, pickle) often span many lines; a failed trial's reason, a
probe's removal and a study-file error each show only the first, with the exception's type.
"""

from __future__ import annotations


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of the message, cut to `limit` characters."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else ""


def one_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line`, e.g. `NotImplementedError: Int8Tensor dispatch: ...`."""
    return f"{type(error).__name__}: {first_line(error, limit)}"
