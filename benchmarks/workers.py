"""Many workers on PostgreSQL: trials per minute with 1, 2 and 4 workers, and what the database
costs per trial next to what the evaluator costs.

    python benchmarks/workers.py [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Writes benchmarks/results/workers/workers.json and workers.md. Each measurement gets a fresh
database on the server (dropped afterwards); baselines come from a cache trained first.

1. Throughput: `slimtune launch` of the tests' tiny study (one thread per worker, 20
   fine-tuning steps, `n_trials` trials) with 1, 2 and 4 workers. Two figures per run: the
   wall time of the whole command (process start-up, imports, probe included) and the steady
   rate from the first trial's start to the last trial's end, read from Optuna's trial times.
2. Overhead: one worker in this process, instrumented. SQL time is every statement's
   cursor-execute time (server, network and driver) on the main thread, the one a trial waits
   for; the heartbeat thread's statements run beside the evaluator and are counted apart. All
   time outside the evaluator (SQL, ORM, Optuna's sampler and bookkeeping, slots, snapshots)
   is the loop's wall time minus the time waiting on the worker process (`IsolatedEvaluator.evaluate`). Run for the tiny study and
   for the demo (studies/digits.toml, its first trials): the target is under 2% of a demo trial.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "workers"
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

TINY = """\
[study]
name = "{name}"
sampler = "random"
n_trials = {n_trials}
seed = 0
[target]
device = "cpu"
threads = 1
runtimes = ["eager"]
[workload]
model = "slimtune:small_cnn"
data = "sklearn:digits"
input_shape = [1, 8, 8]
batch_sizes = [32]
[baseline]
epochs = 3
[constraints]
max_accuracy_drop = 0.05
[space]
prune_ratio = [0.0, 0.6]
kd_temperature = [1.0, 8.0]
quantization = ["none", "int8_weight_only"]
[budget]
finetune_steps = 20
trial_timeout_s = 60
latency_warmup = 2
latency_repeats = 5
"""


@contextlib.contextmanager
def database(admin_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"slimtune_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def throughput(admin_url: str, workdir: Path, workers: int, n_trials: int) -> dict[str, Any]:
    import optuna

    from slimtune.storage.slots import counts_as_result

    name = f"bench-{workers}w"
    study_file = workdir / f"{name}.toml"
    study_file.write_text(TINY.format(name=name, n_trials=n_trials))
    with database(admin_url) as url:
        load_before = loadavg()
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "slimtune.search.cli", "launch", str(study_file), "--storage", url,
             "--workers", str(workers)], capture_output=True, text=True, cwd=workdir,
        )
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"launch with {workers} workers failed:\n{result.stdout}\n{result.stderr}")
        study = optuna.load_study(study_name=name, storage=url)
        trials = study.get_trials(deepcopy=False)
        results = [t for t in trials if counts_as_result(t.state, t.user_attrs.get("status"))]
        first = min(t.datetime_start for t in trials)
        last = max(t.datetime_complete for t in trials)
        steady = (last - first).total_seconds()
        durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in results]
        return {
            "workers": workers, "n_trials": n_trials, "results": len(results), "trials_in_study": len(trials),
            "wall_s": round(wall, 2), "trials_per_min_wall": round(60 * len(results) / wall, 2),
            "steady_s": round(steady, 2), "trials_per_min_steady": round(60 * len(results) / steady, 2),
            "mean_trial_s": round(sum(durations) / len(durations), 3),
            "loadavg_before": load_before, "loadavg_after": loadavg(),
        }


class Instruments:
    """SQL time by thread (SQLAlchemy cursor events) and time in the evaluator."""

    def __init__(self) -> None:
        self.sql = {"main": [0.0, 0], "other": [0.0, 0]}
        self.evaluate_s = 0.0
        self.evaluations = 0
        self.loop_s = 0.0
        self.in_loop = False

    def install(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        from slimtune.search.isolated import IsolatedEvaluator as Evaluator  # the driver waits here for the worker process
        from slimtune.search.many_workers import Worker

        local = threading.local()

        @event.listens_for(Engine, "before_cursor_execute")
        def before(conn, cursor, statement, parameters, context, executemany):
            local.started = time.perf_counter()

        @event.listens_for(Engine, "after_cursor_execute")
        def after(conn, cursor, statement, parameters, context, executemany):
            if not self.in_loop:  # schema creation, study setup: once per run, not per trial
                return
            kind = "main" if threading.current_thread() is threading.main_thread() else "other"
            self.sql[kind][0] += time.perf_counter() - local.started
            self.sql[kind][1] += 1

        real_evaluate, real_run = Evaluator.evaluate, Worker.run
        instruments = self

        def evaluate(self, recipe, seed=0):
            started = time.perf_counter()
            try:
                return real_evaluate(self, recipe, seed)
            finally:
                instruments.evaluate_s += time.perf_counter() - started
                instruments.evaluations += 1

        def run(self, *args, **kwargs):
            started = time.perf_counter()
            instruments.in_loop = True
            try:
                return real_run(self, *args, **kwargs)
            finally:
                instruments.in_loop = False
                instruments.loop_s += time.perf_counter() - started

        Evaluator.evaluate, Worker.run = evaluate, run

    def reset(self) -> None:
        self.__init__()


def overhead(admin_url: str, study_path: Path, n_trials: int, instruments: Instruments) -> dict[str, Any]:
    from slimtune.search.config import load_config
    from slimtune.search.runner import run_study

    config = load_config(study_path, {"study.n_trials": n_trials})
    instruments.reset()
    load_before = loadavg()
    with database(admin_url) as url:
        run_study(config, url, progress=False, log=lambda _: None)
    trials = instruments.evaluations
    outside = instruments.loop_s - instruments.evaluate_s
    return {
        "study": config.study.name, "trials": trials, "loadavg_before": load_before, "loadavg_after": loadavg(),
        "evaluator_s_per_trial": round(instruments.evaluate_s / trials, 4),
        "sql_ms_per_trial": round(1000 * instruments.sql["main"][0] / trials, 2),
        "sql_statements_per_trial": round(instruments.sql["main"][1] / trials, 1),
        "heartbeat_thread_sql_ms_per_trial": round(1000 * instruments.sql["other"][0] / trials, 2),
        "outside_evaluator_ms_per_trial": round(1000 * outside / trials, 2),
        "sql_share_of_trial_pct": round(100 * instruments.sql["main"][0] / instruments.loop_s, 3),
        "outside_share_of_trial_pct": round(100 * outside / instruments.loop_s, 3),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Workers on PostgreSQL",
        "",
        f"Measured {report['date']} on {report['machine']} ({report['cpus']} CPUs), PostgreSQL "
        f"{report['postgres']}, {report['versions']}. Produced by `python benchmarks/workers.py`; "
        "the JSON beside this file has every figure.",
        "",
        f"## Throughput: the tiny study, {report['throughput'][0]['n_trials']} trials, one thread per worker",
        "",
        "| workers | trials/min (steady) | trials/min (whole command) | wall (s) | mean trial (s) | results | load avg before |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["throughput"]:
        lines.append(
            f"| {row['workers']} | {row['trials_per_min_steady']} | {row['trials_per_min_wall']} | {row['wall_s']} | "
            f"{row['mean_trial_s']} | {row['results']} of {row['n_trials']} | {row['loadavg_before'][0]} |"
        )
    lines += [
        "",
        "## Cost of the database per trial (one worker, PostgreSQL on the same host)",
        "",
        "| study | trials | evaluator (s/trial) | SQL on the trial's path (ms/trial) | statements/trial | "
        "all time outside the evaluator (ms/trial) | SQL share | outside-evaluator share | load avg before |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["overhead"]:
        lines.append(
            f"| {row['study']} | {row['trials']} | {row['evaluator_s_per_trial']} | {row['sql_ms_per_trial']} | "
            f"{row['sql_statements_per_trial']} | {row['outside_evaluator_ms_per_trial']} | "
            f"{row['sql_share_of_trial_pct']}% | {row['outside_share_of_trial_pct']}% | {row['loadavg_before'][0]} |"
        )
    lines += [
        "",
        report["verdict"],
        "",
        "A load average above the CPU count means other processes shared the machine during the "
        "run: every figure here is slower than on an idle machine, the evaluator's (CPU-bound, "
        "two threads) more than the database's. The steady rate is bound by the CPUs: with more "
        "workers than cores, each trial takes longer (mean trial time) and the rate stays flat.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--admin-url", default=os.environ.get("SLIMTUNE_TEST_POSTGRES_ADMIN_URL", ADMIN_URL))
    parser.add_argument("--n-trials", type=int, default=16)
    parser.add_argument("--demo-trials", type=int, default=6)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()

    import warnings

    import optuna
    import torch
    from sqlalchemy import create_engine, text

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    with create_engine(args.admin_url).connect() as connection:
        postgres = connection.execute(text("SHOW server_version")).scalar()
    instruments = Instruments()
    instruments.install()
    with tempfile.TemporaryDirectory() as workdir:
        tiny = Path(workdir) / "tiny.toml"
        tiny.write_text(TINY.format(name="overhead-tiny", n_trials=args.n_trials))
        overheads = [overhead(args.admin_url, tiny, args.n_trials, instruments)]
        overheads.append(overhead(args.admin_url, ROOT / "studies" / "digits.toml", args.demo_trials, instruments))
        rows = [throughput(args.admin_url, Path(workdir), int(k), args.n_trials) for k in args.workers.split(",")]

    demo = overheads[1]
    share = 100 * demo["outside_evaluator_ms_per_trial"] / 1000 / (
        demo["evaluator_s_per_trial"] + demo["outside_evaluator_ms_per_trial"] / 1000)
    verdict = (
        f"Target: storage overhead under 2% of a demo trial. Measured: SQL on the trial's path "
        f"{demo['sql_ms_per_trial']} ms of a {demo['evaluator_s_per_trial']} s demo trial "
        f"({demo['sql_share_of_trial_pct']}%); all time outside the evaluator {demo['outside_evaluator_ms_per_trial']} ms "
        f"({share:.2f}%): {'met' if share < 2 else 'NOT met'}."
    )
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()} {platform.node()}",
        "cpus": os.cpu_count(), "postgres": postgres,
        "versions": f"torch {torch.__version__}, optuna {optuna.__version__}, python {platform.python_version()}",
        "throughput": rows, "overhead": overheads, "verdict": verdict,
    }
    from slimtune.search.fingerprint import cpu_name

    report["machine"] = cpu_name()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "workers.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "workers.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
