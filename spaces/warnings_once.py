"""Third-party warnings, each shown once per run, as one readable line.

Python shows a warning once per code location, but its memory of what it showed is wiped
whenever the warning filters change, and torch changes them all the time
(`warnings.catch_warnings()` around compiles, exports and tracing). torchao 0.17 warned on every
quantized layer ("Deprecation: PlainLayout is deprecated ..."), so a GPU study's log held
hundreds of copies per trial. `show_once` replaces `warnings.showwarning`: a warning whose
category and first line were already shown is dropped, and the rest become one line naming the
package it came from, so slimtune's own lines stay readable. The worker process installs it
with an `emit` that sends the line to the driver, which checks it against its own `SHOWN`: a
warning is shown once per run, whichever process raised it (a replaced worker does not show it
again).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import PurePath
from typing import Callable

#: warnings longer than this are cut (some libraries put a whole paragraph in one)
LIMIT = 300


def origin(filename: str) -> str:
    """The package a warning came from: the folder under site-packages, else the file's name."""
    parts = PurePath(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return PurePath(filename).stem


def warning_line(message: Warning | str, category: type[Warning], filename: str) -> str:
    lines = str(message).strip().splitlines()
    text = lines[0][:LIMIT] if lines else ""
    return f"warning from {origin(filename)} ({category.__name__}, shown once per run): {text}"


class OnceSet:
    """The lines already shown (thread-safe: torch warns from its compile threads too)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def first_time(self, line: str) -> bool:
        with self._lock:
            if line in self._seen:
                return False
            self._seen.add(line)
            return True


#: what this process has shown; the driver adds the lines its workers send to the same set
SHOWN = OnceSet()


def show_once(emit: Callable[[str], None]) -> None:
    """From now on, each distinct warning in this process reaches `emit` once, as one line."""

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        text = warning_line(message, category, filename)
        if SHOWN.first_time(text):
            emit(text)

    warnings.showwarning = showwarning
