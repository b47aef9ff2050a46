"""`slimtune launch STUDY --workers N [--gpus 0,1,...]`: N local workers on one study.

The study is created (or resumed) and its baseline trained once, here, before any worker
starts: creating the schema from many processes at once collides on PostgreSQL, and N workers
training the same baseline would do the work N times. Each worker is a `slimtune worker`
process of its own (its own session, so a terminal's Ctrl-C reaches the launcher only), with
one GPU through CUDA_VISIBLE_DEVICES when GPUs are named; its output comes back prefixed.

SIGTERM or SIGINT on the launcher is passed to every worker once: each ends its trial as
`interrupted` and exits, the launcher waits for all of them and exits 143 or 130. Running the
same command again resumes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from slimtune.storage import StorageError, is_sqlite
from slimtune.storage.sqlite import POSTGRES_HINT

from slimtune.search import signals
from slimtune.search.config import StudyConfig, StudyFileError, load_config, names_a_study_file

Log = Callable[[str], None]


@dataclass
class WorkerProcess:
    index: int
    gpu: str | None
    process: subprocess.Popen
    relay: threading.Thread


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    try:
        return f"exit {code} ({signal.Signals(code - 128).name})" if code > 128 else f"exit {code}"
    except ValueError:
        return f"exit {code}"


def _check(storage_url: str, workers: int, gpus: list[str] | None) -> None:
    if workers < 1:
        raise StudyFileError(f"--workers = {workers}: must be at least 1")
    if gpus is not None:
        if not gpus or any(not gpu.strip() for gpu in gpus):
            raise StudyFileError("--gpus: name GPUs as a comma-separated list, e.g. 0,1")
        if workers > len(gpus):
            raise StudyFileError(
                f"--workers = {workers}: more than the {len(gpus)} GPUs named in --gpus (one GPU per worker; "
                "name a GPU twice to share it)"
            )
    if workers > 1 and is_sqlite(storage_url):
        raise StorageError(f"storage: SQLite holds one process at a time; {POSTGRES_HINT}")


def _check_device(config: StudyConfig, gpus: list[str] | None) -> None:
    if gpus is not None and not config.target.device.startswith("cuda"):
        raise StudyFileError(f"--gpus: study {config.study.name!r} measures on target.device = "
                             f"{config.target.device!r}; GPUs need a cuda target")


def prepare(study: str, storage_url: str, gpus: list[str] | None, log: Log) -> StudyConfig:
    """Create or resume the study a file describes (or find the one named) before any worker
    starts; everything is checked before anything is written."""
    from slimtune.search.runner import run_study
    from slimtune.search.workers.joining import stored_config

    if names_a_study_file(study):
        config = load_config(study)
        _check_device(config, gpus)
        run_study(config, storage_url, log=log, progress=False, prepare_only=True)
        return config
    config = stored_config(study, storage_url)
    _check_device(config, gpus)
    return config


def _relay(stream, prefix: str, log: Log) -> None:
    for line in stream:
        log(f"{prefix} {line.rstrip()}")


def start_workers(
    study_name: str, storage_url: str, workers: int, gpus: list[str] | None, timeout: float | None, log: Log,
) -> list[WorkerProcess]:
    started = []
    for index in range(workers):
        command = [sys.executable, "-m", "slimtune.search.cli", "worker", study_name, "--storage", storage_url,
                   "--no-progress"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        gpu = gpus[index] if gpus else None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu.strip()
            command += ["--device", "cuda"]
        if timeout is not None:
            command += ["--timeout", str(timeout)]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,  # signals reach workers through the launcher, exactly once
        )
        prefix = f"[worker {index}]"
        relay = threading.Thread(target=_relay, args=(process.stdout, prefix, log), daemon=True)
        relay.start()
        log(f"{prefix} started (pid {process.pid}" + (f", CUDA_VISIBLE_DEVICES={gpu.strip()})" if gpu else ")"))
        started.append(WorkerProcess(index, gpu, process, relay))
    return started


def wait_for(workers: list[WorkerProcess], log: Log) -> list[int]:
    """Wait for every worker; a signal to the launcher is passed on to each running worker."""
    try:
        with signals.delivered():
            while any(w.process.poll() is None for w in workers):
                time.sleep(0.2)
    except KeyboardInterrupt as interrupt:
        signum = interrupt.signum if isinstance(interrupt, signals.Interrupted) else signal.SIGINT
        with signals.deferred():
            for worker in workers:
                if worker.process.poll() is None:
                    worker.process.send_signal(signum)
            for worker in workers:
                worker.process.wait()
                worker.relay.join(timeout=5)
        raise
    for worker in workers:
        worker.relay.join(timeout=5)
        if worker.process.returncode != 0:
            log(f"[worker {worker.index}] {describe_exit(worker.process.returncode)}")
    return [w.process.returncode for w in workers]


def launch(
    study: str, storage_url: str, workers: int, gpus: list[str] | None = None, *,
    timeout: float | None = None, log: Log = print,
) -> tuple[StudyConfig, list[int]]:
    """Prepare the study, run `workers` worker processes on it, wait; returns the study's
    configuration and the workers' exit codes."""
    _check(storage_url, workers, gpus)
    config = prepare(study, storage_url, gpus, log)
    started = start_workers(config.study.name, storage_url, workers, gpus, timeout, log)
    return config, wait_for(started, log)
