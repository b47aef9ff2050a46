"""Does `slimtune run STUDY --timeout S` end by S? The issue-34 target: wall time <= S + max(5% of
S, 10 s), the baseline cached, every stage (worker start, screen, trials, confirmation) inside.

    python benchmarks/timeout_bound.py [--study studies/digits.toml] [--timeout 60] [--runs 2]
        [--before COMMIT] [--out benchmarks/results/timeout]

First one run of one trial caches the baseline (not timed; bounded at 120 s). Then `--runs` runs of this checkout,
each into an empty database, timed from outside (the wall a user's `time` or a batch scheduler
sees). `--before COMMIT` also times the code of an earlier commit the same way, alternating with
this checkout's runs (git archive into a temporary folder, imported first through PYTHONPATH).
Writes <out>/<date>-cpu-<study>-timeout<S>.{json,md} and each run's log.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def before_tree(commit: str, folder: Path) -> Path:
    """The code of `commit` as an importable `slimtune` package under `folder/src`."""
    tree = folder / "before"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    package = tree / "src" / "slimtune"
    package.mkdir(parents=True)
    for name in ("search", "spaces", "objectives", "storage"):
        (package / name).symlink_to(tree / name)
    return tree


def one_run(study: Path, timeout: float, folder: Path, label: str, index: int, pythonpath: str | None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    storage = f"sqlite:///{folder / f'{label}-{index}.db'}"
    command = [sys.executable, "-m", "slimtune.search.cli", "run", str(study), "--timeout", f"{timeout:g}",
               "--storage", storage, "--no-progress"]
    load_before = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder)
    wall = time.perf_counter() - started
    # the committed logs name no machine's folders: the cache as ~, the run's temporary folder as $TMP
    log = (done.stdout + done.stderr).replace(str(Path.home()), "~").replace(str(folder), "$TMP")
    lines = [line for line in log.splitlines() if not line.startswith(("[I ", "[W "))]
    trials = re.search(r"feasible points?, (\d+) trials", log)
    confirmed = re.search(r"confirmed in ([\d.]+) s", log)
    return {
        "code": label, "run": index, "wall_s": round(wall, 1), "exit": done.returncode,
        "within_target": wall <= timeout + max(0.05 * timeout, 10.0),
        "trials": int(trials.group(1)) if trials else None,
        "confirmation_s": float(confirmed.group(1)) if confirmed else None,
        "timeout_lines": [line for line in lines if "--timeout" in line or line.startswith("confirmation")],
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "log": "\n".join(lines),
    }


def markdown(results: dict) -> str:
    target = results["timeout_s"] + max(0.05 * results["timeout_s"], 10.0)
    out = [f"# `slimtune run {results['study']} --timeout {results['timeout_s']:g}`, baseline cached",
           "", f"{results['date']}, {results['machine']}; target: wall <= {target:g} s (S + max(5% of S, 10 s)).",
           "", "| code | run | wall | exit | trials | confirmation | load before / after | what ended it |",
           "|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        ended = "; ".join(run["timeout_lines"]) or "-"
        confirmation = f"{run['confirmation_s']:.1f} s" if run["confirmation_s"] is not None else "none"
        out.append(f"| {run['code']} | {run['run']} | {run['wall_s']:.1f} s | {run['exit']} | {run['trials']} | "
                   f"{confirmation} | {run['load_before'][0]:.2f} / {run['load_after'][0]:.2f} | {ended} |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default=str(ROOT / "studies" / "digits.toml"))
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--before", metavar="COMMIT", help="also time the code of this commit")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "timeout"))
    args = parser.parse_args()
    study = Path(args.study).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        warm = subprocess.run([sys.executable, "-m", "slimtune.search.cli", "run", str(study), "--n-trials", "1",
                               "--timeout", "120", "--storage", f"sqlite:///{folder / 'warm.db'}", "--no-progress"],
                              capture_output=True, text=True, cwd=folder)
        if warm.returncode != 0:
            print(warm.stdout + warm.stderr)
            return 1
        codes = [("this", None)]
        if args.before:
            codes.append((f"before ({args.before})", str(before_tree(args.before, folder) / "src")))
        runs = []
        for index in range(1, args.runs + 1):
            for label, pythonpath in codes:
                run = one_run(study, args.timeout, folder, label, index, pythonpath)
                print(f"{label} run {index}: {run['wall_s']} s, exit {run['exit']}, {run['trials']} trials", flush=True)
                runs.append(run)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    results = {"study": str(study.relative_to(ROOT)) if study.is_relative_to(ROOT) else study.name,
               "timeout_s": args.timeout, "date": datetime.date.today().isoformat(), "commit": commit,
               "machine": f"{os.cpu_count()} CPUs, shared (load averages per run)", "runs": runs}
    stem = out / f"{results['date']}-cpu-{study.stem}-timeout{args.timeout:g}"
    for run in runs:
        name = "this" if run["code"] == "this" else "before"
        stem.with_name(f"{stem.name}-{name}-{run['run']}.log").write_text(run.pop("log") + "\n")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
