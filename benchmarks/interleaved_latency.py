"""Latency of a study's points measured side by side, in rounds, in one process.

    python benchmarks/interleaved_latency.py STUDY --trials 0 11 6 [--storage URL] [--rounds 7] [--out FILE.json]

On a CPU shared with other jobs a trial's latency depends on what else ran at that moment: the
ELPV study's baseline measured 452 ms at batch 64 while the machine's load average was 11, its
pruned points 170-500 ms at other moments. Here each trial's architecture is rebuilt from its
stored recipe (pruned as in the trial, with no fine-tuning: weights do not change fp32 eager
latency) and all are timed in turn, round after round, so contention falls on each alike; the
median over rounds of each round's median is reported, with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

from slimtune.objectives import Evaluator, TrainingRecipe, get_baseline, load_workload
from slimtune.objectives.evaluator import Budget
from slimtune.objectives.latency import measure_latency
from slimtune.search.refine import study_config
from slimtune.search.results import open_study
from slimtune.spaces import Recipe
from slimtune.spaces.precision import math_mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study")
    parser.add_argument("--storage", default="sqlite:///slimtune.db")
    parser.add_argument("--trials", type=int, nargs="+", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    study, repository = open_study(args.study, args.storage)
    config = study_config(study, study.trials[0].user_attrs.get("study_seed"))
    device = torch.device(config.target.device)
    torch.set_num_threads(config.target.threads or torch.get_num_threads())
    workload = load_workload(config.workload.model, config.workload.data, tuple(config.workload.input_shape),
                             config.workload.data_root)
    training = TrainingRecipe(epochs=config.baseline.epochs, batch_size=config.baseline.batch_size,
                              lr=config.baseline.lr, seed=config.study.seed)
    baseline = get_baseline(workload, device, recipe=training).model
    batch = config.workload.batch_sizes[0]
    evaluator = Evaluator(workload, baseline, device, batch_sizes=(batch,), budget=Budget(trial_timeout_s=3600))
    records = {r.trial_number: r for r in repository.trials(args.study)}
    built = {}
    for number in args.trials:
        recipe = Recipe.from_dict({**records[number].recipe, "finetune_steps": 0, "kd_temperature": None})
        with math_mode(recipe.precision):
            candidate = evaluator.build(recipe)
        built[number] = (recipe, candidate, candidate.inputs(evaluator.example(batch)))
    load_before = os.getloadavg()
    rounds: dict[int, list[float]] = {number: [] for number in args.trials}
    for _ in range(args.rounds):
        for number, (recipe, candidate, example) in built.items():
            with math_mode(recipe.precision):
                stats = measure_latency(candidate, example, warmup=3, repeats=20, max_seconds=3.0)
            rounds[number].append(stats.median_ms)
    result = {
        "study": args.study, "batch": batch, "threads": torch.get_num_threads(), "rounds": args.rounds,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "trials": {str(n): {"recipe": built[n][0].describe(), "median_of_round_medians_ms": statistics.median(v),
                            "round_medians_ms": v} for n, v in rounds.items()},
    }
    base = statistics.median(rounds[args.trials[0]])
    for number, values in rounds.items():
        print(f"trial {number} ({built[number][0].describe()}): {statistics.median(values):.2f} ms "
              f"({base / statistics.median(values):.2f}x trial {args.trials[0]}); rounds "
              + ", ".join(f"{v:.1f}" for v in values))
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    if args.out:
        with open(args.out, "w") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
