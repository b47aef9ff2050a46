"""SIGTERM and SIGINT end a run cleanly: the trial being measured ends as FAIL with status
`interrupted`, nothing stays RUNNING, and the exit code says which signal it was (130 for
SIGINT, 143 for SIGTERM, as a shell reports a process killed by it).

Python turns SIGINT into KeyboardInterrupt wherever the main thread happens to be, and SIGTERM
kills the process outright, which is what left trials RUNNING. Under `handle_signals()` both
raise `Interrupted` (a KeyboardInterrupt carrying the signal number), but only where that is
safe: inside `delivered()` regions (measuring a candidate, waiting for a slot, preparing before
anything is written). In `deferred()` regions (Optuna's ask and tell, claiming a slot, creating
a study) the signal is held and raised at the next delivered point, so a trial is never left
between Optuna's bookkeeping steps. Once a signal was raised, further ones are ignored while
the run records what it was doing; SIGKILL remains for a process that must die at once.

Without `handle_signals()` (the Python API) both context managers do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(error: KeyboardInterrupt) -> int:
    """130 for Ctrl-C (a plain KeyboardInterrupt too), 143 for SIGTERM, 124 for a run stopped by
    its --timeout before its trials (search/deadline.py)."""
    return getattr(error, "exit_code", 128 + signal.SIGINT)


class _State:
    def __init__(self) -> None:
        self.installed = False
        self.modes: list[bool] = []  # True: raise at once; False: hold until the next delivered point
        self.received: int | None = None
        self.raised = False

    @property
    def delivering(self) -> bool:
        return not self.modes or self.modes[-1]


_state = _State()


def _handler(signum: int, frame) -> None:
    if _state.received is not None:
        if _state.raised:
            print(f"slimtune: {signal.Signals(signum).name} ignored: already stopping", file=sys.stderr, flush=True)
        return
    _state.received = signum
    if _state.delivering:
        _raise_pending()


def _raise_pending() -> None:
    if _state.received is not None and not _state.raised:
        _state.raised = True
        raise Interrupted(_state.received)


def received() -> int | None:
    """The signal received so far, if any."""
    return _state.received


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Install the handlers for SIGINT and SIGTERM (main thread only) for the duration."""
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    saved = (_state.installed, _state.modes, _state.received, _state.raised)
    _state.installed, _state.modes, _state.received, _state.raised = True, [], None, False
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state.installed, _state.modes, _state.received, _state.raised = saved


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A region a signal must not cut: it is held until the next `delivered()` point."""
    _state.modes.append(False)
    try:
        yield
    finally:
        _state.modes.pop()


@contextlib.contextmanager
def delivered() -> Iterator[None]:
    """A region a signal may cut; a signal held since raises on entry."""
    _state.modes.append(True)
    try:
        _raise_pending()
        yield
    finally:
        _state.modes.pop()


def check() -> None:
    """A delivered point: raise a held signal now."""
    if _state.installed:
        _raise_pending()
