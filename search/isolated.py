"""The driver's side of the worker process: send a recipe, wait for the measurement, and
enforce what the worker itself cannot.

- `trial_timeout_s` is a hard limit here: the evaluator stops cooperatively at the limit, but a
  compiler or a CUDA call can hang without returning, so past the limit plus a grace period the
  worker is killed and replaced and the trial fails with `timeout after N s (stage)`.
- A worker that dies (segfault, CUDA error, killed for memory) fails its trial with the reason;
  the next trial gets a fresh worker.
- A worker whose resident memory passes `memory_limit_mb` is killed: on a shared host that is
  kinder than the kernel's OOM killer choosing some other process.
- Known-bad combinations: when a pruned trial fails and the same (quantization, precision,
  memory format, runtime) fails on the unpruned model too, the failure does not depend on the
  prune ratio, and later trials that sample it fail at once with the recorded reason.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from typing import Any, Callable, Iterator

from slimtune.objectives import Measurement, TrialStopped, WorkloadError
from slimtune.objectives.worker import WorkerSpec, serve
from slimtune.search.deadline import Deadline
from slimtune.spaces import Recipe, Removal, SearchSpace
from slimtune.spaces.warnings_once import SHOWN

Log = Callable[[str], None]
#: recipe fields whose combination can fail whatever the prune ratio
COMBINATION = ("quantization", "precision", "memory_format", "runtime")
POLL_S = 0.2


class WorkerFailed(Exception):
    """The trial failed in (or with) the worker; the message is the reason to record."""


def grace_s(timeout_s: float) -> float:
    """How long past `trial_timeout_s` the cooperative stop may take before the kill."""
    return max(10.0, 0.25 * timeout_s)


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker process crashed ({name})"
    return f"worker process exited with code {exitcode}"


class IsolatedEvaluator:
    """Has the evaluator's interface (`evaluate(recipe, seed)`, `baseline_accuracy`), with the
    evaluator itself running in a spawned worker process."""

    def __init__(self, spec: WorkerSpec, *, log: Log = print, memory_limit_mb: float | None = None):
        self.spec = spec
        self.log = log
        self.memory_limit_mb = memory_limit_mb
        self.timeout_s = float(spec.budget["trial_timeout_s"])
        self.known_bad: dict[tuple, str] = {}
        self.baseline_accuracy: float | None = None
        self.baseline_balanced_accuracy: float | None = None
        self.space: SearchSpace | None = None
        self.removals: list[Removal] = []
        self.source = ""
        self.train_seconds = 0.0
        self.restarts = 0
        #: what the worker said of the data when it loaded it: split sizes, the validation facts
        self.data: dict[str, Any] = {}
        self._process: multiprocessing.Process | None = None
        self._conn = None
        self._serving = False  # set once a worker has loaded the baseline
        #: the run's `--timeout` (or a stage's stop within it): a request still waiting then is cut
        self.deadline: Deadline | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        """Start a worker and load the workload (and checkpoint) in it: raises WorkloadError
        for bad input before anything is created."""
        self._start()
        self.data = self._request(("load",), None, "loading the workload") or {}

    def prepare(self) -> None:
        """Train or load the baseline and probe the target's capabilities (in the worker)."""
        info = self._request(("baseline",), None, "the baseline")
        self.baseline_accuracy = info["baseline_accuracy"]
        self.baseline_balanced_accuracy = info.get("baseline_balanced_accuracy")
        self.space = SearchSpace(**info["space"])
        self.removals = [Removal(*r) for r in info["removals"]]
        self.source, self.train_seconds = info["source"], info["train_seconds"]
        self._serving = True

    def close(self) -> None:
        if self._process is None:
            return
        try:
            self._conn.send(("stop",))
            self._process.join(timeout=5)
        except (OSError, BrokenPipeError):
            pass
        self._kill()

    def __enter__(self) -> "IsolatedEvaluator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=serve, args=(child, self.spec), name="slimtune-worker", daemon=True)
        self._process.start()
        child.close()

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.is_alive():
            try:  # the worker leads its own process group: its compiler subprocesses go too
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                process.kill()
        process.join(timeout=10)
        self._conn.close()

    def _restart(self) -> None:
        """A fresh worker, brought to where the old one was (workload and baseline loaded)."""
        self._kill()
        self.restarts += 1
        self._start()
        self._serving = False
        try:
            self._request(("load",), None, "loading the workload")
            self._request(("baseline",), None, "the baseline")
        finally:  # a restart cut by the deadline leaves no worker: the next request starts one
            self._serving = True

    @property
    def alive(self) -> bool:
        """Whether a worker is running (none after a deadline or a signal killed it)."""
        return self._process is not None

    @contextlib.contextmanager
    def until(self, deadline: Deadline | None) -> Iterator[None]:
        """Requests within are cut at `deadline` (None: the one set before stays)."""
        before = self.deadline
        self.deadline = deadline if deadline is not None else before
        try:
            yield
        finally:
            self.deadline = before

    def _cut(self) -> None:
        """The deadline passed while a request waited: the worker is killed as a signal's stop
        kills it (a compile or a CUDA call cannot be interrupted more gently), and the run's
        `TimedOut` is raised; the next request starts a fresh worker."""
        self._kill()
        raise self.deadline.timed_out()

    # -- talking to the worker ------------------------------------------------------------
    def _request(self, message: tuple, timeout_s: float | None, stage: str,
                 on_stage: Callable[[str], None] | None = None) -> Any:
        """Send one request and wait for its answer, relaying log lines and stage names (to
        `on_stage` too, when given)."""
        if self.deadline is not None and self.deadline.passed():
            raise self.deadline.timed_out()
        if self._process is None and self._serving:  # killed at a deadline or by a signal
            self._restart()
        self._conn.send(message)
        started = time.perf_counter()
        while True:
            try:
                ready = self._conn.poll(POLL_S)
            except (EOFError, OSError):
                ready = False
            process = self._process
            if ready:
                try:
                    reply = self._conn.recv()
                except (EOFError, OSError):
                    reply = None
                if reply is not None:
                    kind = reply[0]
                    if kind == "log":
                        self.log(reply[1])
                    elif kind == "warning":  # once per run, whichever worker sent it
                        if SHOWN.first_time(reply[1]):
                            self.log(reply[1])
                    elif kind == "stage":
                        stage = reply[1]
                        if on_stage is not None:
                            on_stage(stage)
                    elif kind in ("loaded", "ready"):
                        return reply[1]
                    elif kind == "result":
                        return reply[1]
                    elif kind == "stopped":
                        raise TrialStopped(reply[1])
                    elif kind == "failed":
                        if reply[2]:  # the worker exits: the CUDA context cannot be trusted
                            self._restart()
                        raise WorkerFailed(reply[1])
                    elif kind == "error":
                        raise WorkloadError(reply[1], reply[2].removeprefix(f"{reply[1]}: "), reply[3])
                    continue
            if not process.is_alive():
                process.join()
                reason = _death_reason(process.exitcode)
                self._restart_after(f"{reason} during {stage}")
            if self.deadline is not None and self.deadline.passed():
                self._cut()
            elapsed = time.perf_counter() - started
            if timeout_s is not None and elapsed > timeout_s:
                self._restart_after(f"timeout after {elapsed:.0f} s ({stage})")
            if self.memory_limit_mb is not None:
                rss = _rss_mb(process.pid)
                if rss > self.memory_limit_mb:
                    self._restart_after(
                        f"out of memory: worker used {rss:.0f} MB > memory_limit_mb={self.memory_limit_mb:g} during {stage}"
                    )

    def _restart_after(self, reason: str) -> None:
        """Replace the worker and fail the request. A worker that dies while it is being set
        up would die again: that is an error of the run, not of a trial."""
        if not self._serving:
            self._kill()
            raise WorkerFailed(f"the worker process could not start: {reason}")
        self._restart()
        raise WorkerFailed(reason)

    # -- the evaluator's interface ----------------------------------------------------------
    def evaluate(self, recipe: Recipe, seed: int = 0) -> Measurement:
        combination = tuple(getattr(recipe, name) for name in COMBINATION)
        if combination in self.known_bad:
            raise WorkerFailed(self.known_bad[combination])
        try:
            result = self._request(("evaluate", recipe.to_dict(), seed), self.timeout_s + grace_s(self.timeout_s), "start")
        except KeyboardInterrupt:
            self._kill()  # the trial is abandoned; a resumed study starts a new worker
            raise
        except WorkerFailed as error:
            if not str(error).startswith(("timeout", "worker process", "out of memory")):
                self._learn(recipe, combination, str(error))
            raise
        return Measurement(**result)

    def export(self, recipe: Recipe, seed: int, fmt: str, folder: str,
               on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Rebuild the trial's model in the worker and write it in `fmt` into `folder`; the
        same hard limit as a trial (twice its timeout: rebuilding plus writing). `on_stage`
        hears each stage's name as it starts."""
        limit = 2 * self.timeout_s + grace_s(self.timeout_s)
        return self._request(("export", recipe.to_dict(), seed, fmt, folder), limit, "export", on_stage)

    def screen(self, recipe: Recipe, *, accuracy: bool, timeout_s: float) -> dict[str, Any]:
        """Measure one setting of the target screen in the worker (objectives/screen.py), with
        `timeout_s` as its hard limit: a setting that hangs or crashes kills and replaces the
        worker, and raises WorkerFailed with the reason, as a failed trial does."""
        return self._request(("screen", recipe.to_dict(), accuracy, timeout_s), timeout_s + grace_s(timeout_s),
                             "screen")

    def confirm(self, recipes: list[Recipe], seeds: list[int], rounds: int) -> dict[str, Any]:
        """Rebuild `recipes` in the worker and time them in interleaved rounds
        (objectives/confirm.py); the limit is a rebuild per point plus the rounds' time cap."""
        budget = self.spec.budget
        per_round = len(recipes) * (float(budget.get("latency_max_s", 3.0)) + 1.0)
        limit = len(recipes) * 2 * self.timeout_s + rounds * per_round + grace_s(self.timeout_s)
        return self._request(("confirm", [r.to_dict() for r in recipes], list(seeds), rounds), limit, "confirmation")

    def test(self, recipes: list[Recipe], seeds: list[int]) -> dict[str, Any]:
        """Rebuild `recipes` in the worker and score them and the baseline on the test split
        (Evaluator.test_figures); the limit is a rebuild per point."""
        limit = (len(recipes) + 1) * 2 * self.timeout_s + grace_s(self.timeout_s)
        return self._request(("test", [r.to_dict() for r in recipes], list(seeds)), limit, "the test split")

    def _learn(self, recipe: Recipe, combination: tuple, reason: str) -> None:
        """Remember a combination that also fails on the unpruned model."""
        if recipe.prune_ratio > 0:
            try:
                self._request(("check", recipe.to_dict()), self.timeout_s + grace_s(self.timeout_s), "combination check")
                return  # the unpruned model runs it: the failure depends on the pruning
            except (WorkerFailed, TrialStopped):
                pass
        described = ", ".join(f"{name}={value}" for name, value in zip(COMBINATION, combination))
        self.known_bad[combination] = f"known-bad combination ({described}): {reason}"

