"""Does the validation split tell the truth about the test split? Run one study file under
several seeds, each into its own database, and compare, point by point of each run's feasible
front, the accuracy drop the search judged it by (validation, with its paired interval) with the
drop measured once on the untouched test split when the search ended (issue 33).

    python benchmarks/holdout_repeat.py --study studies/elpv-cpu.toml --seeds 0,1,2,3,4 \
        [--work /tmp/holdout] [--out benchmarks/results/holdout]

The constrained figure is the study's: balanced accuracy where it sets
`max_balanced_accuracy_drop`, accuracy otherwise. Two checks, the issue's targets:

- **inside**: the test drop lies inside the validation interval of the drop, for at least 90% of
  all front points;
- **over**: no front point is feasible on validation while its test interval lies wholly above
  the allowed drop (test drop minus the constraint larger than its interval allows).

A run whose database already holds the test figures is read, not run again, so an interrupted
sweep resumes. Writes <out>/<study>-holdout.{json,md} and each run's log (machine paths replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: the share of front points whose test drop must lie inside their validation interval
TARGET_INSIDE = 0.90


def constrained(config: Any) -> tuple[str, float | None]:
    """The figure the study constrains ("balanced_accuracy" or "accuracy") and its allowed drop."""
    limits = config.constraints
    if limits.max_balanced_accuracy_drop is not None:
        return "balanced_accuracy", limits.max_balanced_accuracy_drop
    return "accuracy", limits.max_accuracy_drop


def has_test_figures(study_name: str, storage: str) -> bool:
    from slimtune.search.config import TEST_ATTR
    from slimtune.search.results import open_study

    try:
        study, _ = open_study(study_name, storage)
    except Exception:  # no database yet, or no study in it
        return False
    return study.user_attrs.get(TEST_ATTR) is not None


def run_seed(study_file: Path, study_name: str, seed: int, work: Path, out: Path) -> float | None:
    """Run (or resume) one seed's study unless its test figures are stored; its wall time, or
    None when it was already done."""
    database = work / f"seed-{seed}.db"
    storage = f"sqlite:///{database}"
    log = work / f"seed-{seed}.log"
    if not has_test_figures(study_name, storage):
        started = time.perf_counter()
        with open(log, "a") as handle:
            done = subprocess.run([sys.executable, "-m", "slimtune.search.cli", "run", str(study_file), "--seed", str(seed),
                                   "--storage", storage, "--no-progress"], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"seed {seed} exited {done.returncode}; see {log}")
    else:
        wall = None
    # no machine paths in what is committed
    text = log.read_text() if log.exists() else ""
    for path, name in ((str(work), "$WORK"), (str(Path.home()), "~"), (str(ROOT), ".")):
        text = text.replace(path, name)
    (out / f"{study_file.stem}-seed-{seed}.log").write_text(text)
    return wall


def front_points(study_name: str, storage: str, figure: str) -> dict[str, Any]:
    """Each feasible front point's validation drop and interval (what the trial was judged on)
    beside its test drop and interval, in points."""
    from slimtune.search.config import TEST_ATTR
    from slimtune.search.results import open_study

    study, repository = open_study(study_name, storage)
    test = study.user_attrs[TEST_ATTR]
    points = []
    for number, on_test in sorted(test["points"].items(), key=lambda item: int(item[0])):
        if int(number) == test["baseline_trial"]:
            continue
        judged = repository.trial(study_name, int(number)).measurement["judged_on"]
        low, high = judged[f"{figure}_drop_ci"]
        t_low, t_high = on_test[f"{figure}_drop_ci"]
        points.append({"trial": int(number), "validation_drop_pts": 100 * judged[f"{figure}_drop"],
                       "validation_ci_pts": [100 * low, 100 * high], "validation_examples": judged["examples"],
                       "test_drop_pts": 100 * on_test[f"{figure}_drop"], "test_ci_pts": [100 * t_low, 100 * t_high]})
    return {"test_examples": test["examples"], "baseline_test": test[f"baseline_{figure}"], "points": points}


def judge(points: list[dict[str, Any]], allowed_pts: float | None) -> None:
    """Mark each point `inside` (test drop within its validation interval) and `over` (its whole
    test interval above the allowed drop)."""
    for p in points:
        low, high = p["validation_ci_pts"]
        p["inside"] = low - 1e-9 <= p["test_drop_pts"] <= high + 1e-9
        p["over"] = allowed_pts is not None and p["test_ci_pts"][0] > allowed_pts + 1e-9
        p["test_drop_above_limit"] = allowed_pts is not None and p["test_drop_pts"] > allowed_pts + 1e-9


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    points = [p for r in runs for p in r["points"]]
    inside = sum(p["inside"] for p in points)
    widths = [p["validation_ci_pts"][1] - p["validation_ci_pts"][0] for p in points]
    gaps = [abs(p["test_drop_pts"] - p["validation_drop_pts"]) for p in points]
    return {"front_points": len(points), "inside": inside, "inside_share": inside / len(points) if points else None,
            "over": sum(p["over"] for p in points),
            "test_drop_above_limit": sum(p["test_drop_above_limit"] for p in points),
            "mean_validation_interval_width_pts": sum(widths) / len(widths) if widths else None,
            "mean_abs_test_minus_validation_pts": sum(gaps) / len(gaps) if gaps else None,
            "met": bool(points) and inside / len(points) >= TARGET_INSIDE and not any(p["over"] for p in points)}


def markdown(study: str, figure: str, allowed_pts: float | None, runs: list[dict[str, Any]], total: dict[str, Any]) -> str:
    label = figure.replace("_", " ")
    lines = [f"# `{study}`: validation against test, {len(runs)} seeds", "",
             f"Constraint: {label} drop <= {allowed_pts:g} points. Each front point: the drop it was judged by on the "
             f"validation split (95% paired interval), and the drop measured once on the test split when the search ended.",
             "", "| seed | wall | trial | validation drop [95%] | test drop [95%] | test inside validation | test drop above the limit | test interval above the limit |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        wall = f"{r['wall_s']:.0f} s" if r["wall_s"] is not None else "(earlier)"
        for p in r["points"]:
            v, t = p["validation_ci_pts"], p["test_ci_pts"]
            lines.append(f"| {r['seed']} | {wall} | {p['trial']} | {p['validation_drop_pts']:+.2f} [{v[0]:+.2f}, {v[1]:+.2f}] "
                         f"(n={p['validation_examples']}) | {p['test_drop_pts']:+.2f} [{t[0]:+.2f}, {t[1]:+.2f}] "
                         f"(n={r['test_examples']}) | {'yes' if p['inside'] else '**no**'} | "
                         f"{'yes' if p['test_drop_above_limit'] else 'no'} | {'**yes**' if p['over'] else 'no'} |")
    share = total["inside_share"]
    lines += ["", f"Front points: {total['front_points']}; test drop inside the validation interval: {total['inside']} "
                  f"({100 * share:.0f}%; target >= {100 * TARGET_INSIDE:.0f}%); feasible points whose test interval lies above "
                  f"the limit: {total['over']} (target 0); whose test drop (the point estimate) is above the limit: "
                  f"{total['test_drop_above_limit']}. Mean validation interval width "
                  f"{total['mean_validation_interval_width_pts']:.2f} points; mean |test - validation| drop "
                  f"{total['mean_abs_test_minus_validation_pts']:.2f} points. Target {'met' if total['met'] else 'NOT met'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", default="studies/elpv-cpu.toml")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--work", default=None, help="where the databases and logs live (default $TMPDIR/holdout/<study>)")
    parser.add_argument("--out", default="benchmarks/results/holdout")
    args = parser.parse_args(argv)
    from slimtune.search.config import load_config

    study_file = (ROOT / args.study).resolve()
    config = load_config(study_file)
    figure, allowed = constrained(config)
    allowed_pts = None if allowed is None else 100 * allowed
    work = Path(args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "holdout" / study_file.stem)
    out = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{study_file.stem}-holdout"
    earlier = {}  # a run read, not run: its wall time from the last write, where there is one
    if stem.with_suffix(".json").exists():
        earlier = {r["seed"]: r["wall_s"] for r in json.loads(stem.with_suffix(".json").read_text())["runs"]}
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        wall = run_seed(study_file, config.study.name, seed, work, out)
        wall = earlier.get(seed) if wall is None else wall
        run = {"seed": seed, "wall_s": None if wall is None else round(wall, 1),
               **front_points(config.study.name, f"sqlite:///{work / f'seed-{seed}.db'}", figure)}
        judge(run["points"], allowed_pts)
        runs.append(run)
        total = summary(runs)
        stem.with_suffix(".json").write_text(json.dumps({"study": args.study, "figure": figure, "allowed_drop_pts": allowed_pts,
                                                         "runs": runs, "summary": total}, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(args.study, figure, allowed_pts, runs, total))
        print(f"seed {seed}: {len(run['points'])} front points, wall {run['wall_s']} s", flush=True)
    print(markdown(args.study, figure, allowed_pts, runs, summary(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
