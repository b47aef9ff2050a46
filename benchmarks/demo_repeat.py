"""Does a whole study's answer repeat? Run `slimtune run STUDY` several times, each into an empty
database, one after the other, and compare what each run's front says.

    python benchmarks/demo_repeat.py [--study studies/digits.toml] [--runs 2] [--out benchmarks/results/measurement]

For each run: its wall time, the load average before and after, the front's size and
hypervolume (search/hypervolume.py, as `slimtune pareto` prints it), and the knee of the front
(search/export/selection.py, what `slimtune export --knee` ships) with its speed-up over the
baseline: the confirmed one (baseline and front re-measured interleaved when the run ended)
with its 95% interval, and the trial's own. Issue 24's target: on an idle CPU, the demo's
confirmed knee speed-up agrees within 5% across two whole runs. The runs' logs are kept.
Writes <out>/<study>-repeat.{json,md} and <study>-run-<i>.log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def one_run(study_file: Path, index: int, out: Path) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp())
    storage = f"sqlite:///{folder / 'study.db'}"
    log = out / f"{study_file.stem}-run-{index}.log"
    load_before = os.getloadavg()
    started = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "slimtune.search.cli", "run", str(study_file), "--storage", storage,
                               "--no-progress"], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - started
    # no machine paths in what is committed: the temporary folder and the home directory by name
    log.write_text(log.read_text().replace(str(folder), f"$TMPDIR/run-{index}").replace(str(Path.home()), "~"))
    if done.returncode != 0:
        raise SystemExit(f"run {index} exited {done.returncode}; see {log}")
    return {"run": index, "wall_s": round(wall, 1), "load_before": load_before, "load_after": os.getloadavg(),
            "storage": f"sqlite:///$TMPDIR/run-{index}/study.db", "log": log.name, **summarise(study_file, storage)}


def summarise(study_file: Path, storage: str) -> dict[str, Any]:
    from slimtune.search.config import load_config
    from slimtune.search.export.selection import knee
    from slimtune.search.hypervolume import study_hypervolume
    from slimtune.search.results import open_study, pareto_front

    config = load_config(study_file)
    study, repository = open_study(config.study.name, storage)
    front = pareto_front(study, repository)
    rows = front.to_dict(orient="records")
    chosen = knee(rows, dict(config.objectives))
    row = next(r for r in rows if r["trial"] == chosen)
    baseline = repository.trial(config.study.name, 0).measurement
    trial_speedup = baseline["latency_ms"] / repository.trial(config.study.name, chosen).measurement["latency_ms"]
    return {
        "front_size": len(rows), "hypervolume": study_hypervolume(study), "trials": len(study.trials),
        "baseline_latency_ms": baseline["latency_ms"],
        "knee": {"trial": chosen, "recipe": row.get("recipe"), "confirmed": row.get("confirmed"),
                 "speedup_x": row.get("speedup_x"), "speedup_ci_x": [row.get("speedup_ci_low_x"), row.get("speedup_ci_high_x")],
                 "latency_ms": row.get("latency_ms"), "trial_speedup_x": trial_speedup},
    }


def markdown(study: str, runs: list[dict[str, Any]]) -> str:
    lines = [f"# `{study}` run {len(runs)} times, each into an empty database", "",
             "| run | wall | load before / after | trials | front | hypervolume | knee | knee speed-up, confirmed [95% interval] | in its trial |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        k = r["knee"]
        low, high = k["speedup_ci_x"]
        interval = f" [{low:.2f}-{high:.2f}]" if low is not None and high is not None else ""
        lines.append(f"| {r['run']} | {r['wall_s']:.0f} s | {r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} | {r['trials']} | "
                     f"{r['front_size']} | {r['hypervolume']:.4f} | trial {k['trial']}: {k['recipe']} | "
                     f"{k['speedup_x']:.2f}x{interval} ({k['confirmed']}) | {k['trial_speedup_x']:.2f}x |")
    speedups = [r["knee"]["speedup_x"] for r in runs]
    if len(speedups) > 1:
        lines += ["", f"Knee speed-up, confirmed: spread {100 * (max(speedups) / min(speedups) - 1):.1f}% "
                      f"(max/min - 1) over {len(runs)} runs."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", default="studies/digits.toml")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/measurement")
    args = parser.parse_args(argv)
    study_file = (ROOT / args.study).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for index in range(1, args.runs + 1):
        runs.append(one_run(study_file, index, out))
        print(json.dumps(runs[-1], default=str), flush=True)
        stem = out / f"{study_file.stem}-repeat"
        stem.with_suffix(".json").write_text(json.dumps({"study": args.study, "runs": runs}, indent=2, default=str) + "\n")
        stem.with_suffix(".md").write_text(markdown(args.study, runs))
    print(markdown(args.study, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
