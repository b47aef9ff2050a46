"""Do measurements repeat? The old rule (50 single calls) against the new one (adaptive, in blocks).

    python benchmarks/measurement.py cpu [--runs 5] [--out benchmarks/results/measurement]
    python benchmarks/measurement.py gpu [--runs 5] [--out DIR]
    MEASUREMENT_DRY=1 python benchmarks/measurement.py gpu --runs 1 --out OUT   # the GPU part on a CPU, tiny

Each of `--runs` independent measurements runs in a fresh Python process (its own CUDA
context, allocator, clocks and core placement: what differs between two `slimtune run`s), and
each process measures every case both ways, alternating which goes first:
- before: `measure_latency(adaptive=False, blocks=False, repeats=50)`: 50 single calls after
  10 warm-up calls, the fixed rule every trial used until now (no core pinning on the CPU);
- after: `measure_latency()` as a trial now runs it: at least 50 samples, on until the median's
  95% interval is within +-1% (or 3 s), each sample a block of k calls lasting >= 1 ms; on
  the CPU the process is pinned to `threads` cores, as the trial worker now is.
Cases: on the CPU, the embedded demo's baseline (slimtune:small_cnn, digits [1, 8, 8], batch
64, 2 threads) and its knee recipe (trial 12 of the demo's front as the README showed it
then: prune 0.59, bf16); on the GPU,
torchvision resnet18 (random weights: timing does not depend on their values) at 3x224x224,
fp32 with TF32 off, eager, batch 1 and batch 256.
Per case and rule: the medians of the runs, their spread (max/min - 1), the mean width of the
95% interval (relative to the median) and the mean measurement time (warm-up included).
Writes <out>/<part>.json and <out>/<part>.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RULES = ("before", "after")
THREADS = 2


def _before(run, example):
    from slimtune.objectives.latency import measure_latency

    return measure_latency(run, example, warmup=10, repeats=50, adaptive=False, blocks=False, max_seconds=60.0)


def _after(run, example):
    from slimtune.objectives.latency import measure_latency

    return measure_latency(run, example, warmup=10, repeats=50, max_seconds=3.0)


def _cpu_cases() -> dict[str, Any]:
    import torch

    from slimtune.objectives import Budget, Evaluator
    from slimtune.objectives.workloads import load_workload
    from slimtune.spaces import Recipe

    torch.manual_seed(0)
    workload = load_workload("slimtune:small_cnn", "sklearn:digits", (1, 8, 8), None)
    evaluator = Evaluator(workload, workload.make_model().eval(), "cpu", threads=THREADS, batch_sizes=(64,),
                          budget=Budget(finetune_steps=0))
    cases = {}
    for name, recipe in (("demo baseline", Recipe()), ("demo knee (prune 0.59, bf16)", Recipe(prune_ratio=0.59, precision="bf16"))):
        candidate = evaluator.build(recipe)
        del evaluator._deadline
        cases[name] = (candidate, candidate.inputs(evaluator.example(64)), recipe.precision)
    return cases


def _gpu_cases() -> dict[str, Any]:
    import torch
    import torchvision

    dry = bool(os.environ.get("MEASUREMENT_DRY"))  # a check of the script on a CPU: tiny inputs
    device, side, batches = ("cpu", 32, (1, 2)) if dry else ("cuda", 224, (1, 256))
    model = torchvision.models.resnet18(weights=None).to(device).eval()
    return {f"resnet18 fp32 eager b{batch}": (model, torch.randn(batch, 3, side, side, device=device), "fp32")
            for batch in batches}


def one_run(part: str, index: int, rule: str) -> dict[str, Any]:
    """One independent measurement of every case with one rule, in this (fresh) process."""
    import torch

    from slimtune.spaces.precision import math_mode

    if part == "cpu":
        if rule == "after":
            from slimtune.objectives.worker import pin_to_cores

            pin_to_cores(THREADS)
        torch.set_num_threads(THREADS)
    cases = _cpu_cases() if part == "cpu" else _gpu_cases()
    measure = _after if rule == "after" else _before
    results = {}
    for name, (run, example, precision) in cases.items():
        with math_mode(precision):
            stats = measure(run, example)
        results[name] = stats.to_dict()
    return results


def _child(part: str, index: int, rule: str, queue) -> None:
    try:
        queue.put(one_run(part, index, rule))
    except BaseException as error:  # the parent reports it
        queue.put({"error": f"{type(error).__name__}: {error}"})


def in_fresh_process(part: str, index: int, rule: str) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(part, index, rule, queue))
    process.start()
    result = queue.get(timeout=600)
    process.join()
    if "error" in result:
        raise RuntimeError(f"run {index} ({rule}): {result['error']}")
    return result


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per case and rule: medians, spread, interval width, samples, time."""
    table: dict[str, Any] = {}
    for rule, results in runs.items():
        for case in results[0]:
            stats = [r[case] for r in results]
            medians = [s["median_ms"] for s in stats]
            widths = [100 * (s["ci_high_ms"] - s["ci_low_ms"]) / s["median_ms"] for s in stats
                      if s["ci_low_ms"] is not None]
            table.setdefault(case, {})[rule] = {
                "medians_ms": medians,
                "spread_pct": 100 * (max(medians) / min(medians) - 1),
                "interval_width_pct_mean": statistics.fmean(widths) if widths else None,
                "repeats": [s["repeats"] for s in stats],
                "block": [s["block"] for s in stats],
                "converged": [s["converged"] for s in stats],
                "seconds_mean": statistics.fmean(s["seconds"] for s in stats),
            }
    return table


def environment(part: str) -> dict[str, Any]:
    import torch

    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    if part == "cpu":
        info["load_average_before"] = os.getloadavg()
        info["processor"] = platform.processor() or platform.machine()
    else:
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (dry run)"
    return info


def markdown(part: str, env: dict[str, Any], table: dict[str, Any], targets: dict[str, Any]) -> str:
    n = len(next(iter(next(iter(table.values())).values()))["medians_ms"])
    lines = [f"# Latency measurement: fixed 50 single calls (before) vs adaptive in blocks (after), {part.upper()}", "",
             ", ".join(f"{k} {v}" for k, v in env.items()) + ".", "",
             f"| case | rule | medians of {n} runs (ms) | spread | 95% interval width (mean) | samples | block k | "
             "interval met | time per measurement (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case, rules in table.items():
        for rule, row in rules.items():
            width = f"{row['interval_width_pct_mean']:.2f}%" if row["interval_width_pct_mean"] is not None else "-"
            lines.append(
                f"| {case} | {rule} | {', '.join(f'{m:.4f}' for m in row['medians_ms'])} | {row['spread_pct']:.2f}% | "
                f"{width} | {', '.join(map(str, row['repeats']))} | {', '.join(map(str, sorted(set(row['block']))))} | "
                f"{sum(row['converged'])}/{len(row['converged'])} | {row['seconds_mean']:.2f} |")
    if targets:
        lines += ["", "Targets: " + "; ".join(f"{k} = {v}" for k, v in targets.items()) + "."]
    return "\n".join(lines) + "\n"


def targets_for(part: str, table: dict[str, Any]) -> dict[str, Any]:
    if part != "gpu":
        return {}
    if "resnet18 fp32 eager b256" not in table:  # a dry run
        return {}
    b1, b256 = table["resnet18 fp32 eager b1"]["after"], table["resnet18 fp32 eager b256"]
    return {
        "b1 spread <= 3%": b1["spread_pct"] <= 3.0,
        "b256 spread <= 1%": b256["after"]["spread_pct"] <= 1.0,
        "b256 adaptive time <= fixed 50": b256["after"]["seconds_mean"] <= b256["before"]["seconds_mean"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["cpu", "gpu"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/measurement")
    args = parser.parse_args(argv)
    env = environment(args.part)
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {rule: [] for rule in RULES}
    for index in range(args.runs):
        order = RULES if index % 2 == 0 else RULES[::-1]  # neither rule always goes first
        for rule in order:
            runs[rule].append(in_fresh_process(args.part, index, rule))
            print(f"run {index + 1}/{args.runs} {rule}: " + ", ".join(
                f"{case} {r['median_ms']:.4f} ms [{r['ci_low_ms'] or float('nan'):.4f}, "
                f"{r['ci_high_ms'] or float('nan'):.4f}] n={r['repeats']} k={r['block']}"
                for case, r in runs[rule][-1].items()), flush=True)
            Path(args.out).mkdir(parents=True, exist_ok=True)  # what a killed run leaves
            (Path(args.out) / f"{args.part}.partial.json").write_text(json.dumps({"environment": env, "runs": runs}))
    if args.part == "cpu":
        env["load_average_after"] = os.getloadavg()
    env["wall_s"] = round(time.perf_counter() - started, 1)
    table = summarise(runs)
    targets = targets_for(args.part, table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.part}.json").write_text(json.dumps({"environment": env, "table": table, "targets": targets,
                                                       "runs": runs}, indent=2) + "\n")
    (out / f"{args.part}.md").write_text(markdown(args.part, env, table, targets))
    (out / f"{args.part}.partial.json").unlink(missing_ok=True)
    print(markdown(args.part, env, table, targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
