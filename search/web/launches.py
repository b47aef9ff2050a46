"""Worker processes the service started: `slimtune launch STUDY --workers N` as a subprocess per
request, its output in a log file, stopped with SIGTERM (which `launch` turns into an
interrupted trial and a clean exit). The server stops what it started when it shuts down.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LAUNCH_MODULE = "slimtune.search.cli"


@dataclass
class Launch:
    study: str
    workers: int
    process: subprocess.Popen
    log: Path
    started: float

    def alive(self) -> bool:
        return self.process.poll() is None

    def to_dict(self) -> dict[str, object]:
        return {"study": self.study, "workers": self.workers, "pid": self.process.pid, "alive": self.alive(),
                "returncode": self.process.poll(), "log": str(self.log), "started": self.started}


class Launches:
    def __init__(self, storage_url: str, log_dir: Path):
        self.storage_url = storage_url
        self.log_dir = log_dir
        self._launches: dict[str, list[Launch]] = {}
        self._lock = threading.Lock()
        self._available: bool | None = None

    def available(self) -> bool:
        """Whether this install's CLI has `launch` (it comes with the many-workers feature)."""
        if self._available is None:
            probe = subprocess.run(
                [sys.executable, "-m", LAUNCH_MODULE, "launch", "--help"], capture_output=True, timeout=120
            )
            self._available = probe.returncode == 0
        return self._available

    def command(self, study: str, workers: int) -> list[str]:
        return [sys.executable, "-m", LAUNCH_MODULE, "launch", study, "--storage", self.storage_url,
                "--workers", str(workers)]

    def start(self, study: str, workers: int) -> Launch:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{study}-{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**6}.log"
        with self._lock, open(log, "wb") as output:
            # its own session: a Ctrl-C on the server reaches the workers only through stop()
            process = subprocess.Popen(self.command(study, workers), stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            launch = Launch(study, workers, process, log, time.time())
            self._launches.setdefault(study, []).append(launch)
        return launch

    def alive(self, study: str) -> list[Launch]:
        with self._lock:
            return [launch for launch in self._launches.get(study, []) if launch.alive()]

    def running(self) -> set[str]:
        with self._lock:
            return {study for study, launches in self._launches.items() if any(l.alive() for l in launches)}

    def history(self, study: str) -> list[Launch]:
        with self._lock:
            return list(self._launches.get(study, []))

    def stop(self, study: str) -> list[Launch]:
        """SIGTERM to every live launch of `study`; returns them."""
        stopped = self.alive(study)
        for launch in stopped:
            launch.process.send_signal(signal.SIGTERM)
        return stopped

    def stop_all(self, grace_s: float = 30.0) -> None:
        with self._lock:
            launches = [l for ls in self._launches.values() for l in ls if l.alive()]
        for launch in launches:
            launch.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for launch in launches:
            try:
                launch.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                launch.process.kill()
                launch.process.wait()
