"""Does a longer fine-tune recover what pruning cost? One pruned recipe on ELPV (the CPU study's
model, `slimtune:strided_cnn` at 1x64x64), fine-tuned for several step counts, with and without
keeping the best step (objectives/selection.py), over three seeds; the evaluator is called
directly (no study), and each line is a held-out measurement.

    python benchmarks/refine_recovery.py 0.7 --arms 40:last 160:last 160:best 400:best
    python benchmarks/refine_recovery.py 0.3 --arms 160:last 800:last 800:best 800:best:3e-4
    python benchmarks/refine_recovery.py 0.7 --data elpv:flips --arms 40:last 400:best 1000:best

An arm is STEPS:last|best[:LR] (LR defaults to 1e-3). Results: results/elpv/cpu/refine-recovery-*.log
(made by the two one-off scripts this was folded from, with these arms).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from slimtune.objectives import Budget, Evaluator, TrainingRecipe, get_baseline, load_workload
from slimtune.spaces import Recipe


def parse_arm(text: str) -> tuple[int, str | None, float]:
    steps, keep, *lr = text.split(":")
    if keep not in ("last", "best"):
        raise SystemExit(f"arm {text!r}: the second field must be last or best")
    return int(steps), ("balanced_accuracy" if keep == "best" else None), float(lr[0]) if lr else 1e-3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ratio", type=float, help="prune ratio")
    parser.add_argument("--arms", nargs="+", default=["40:last", "160:last", "160:best", "400:best"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", default="elpv", help="the workload's data, e.g. elpv:flips (random flips)")
    args = parser.parse_args(argv)
    arms = [parse_arm(a) for a in args.arms]
    torch.set_num_threads(2)
    workload = load_workload("slimtune:strided_cnn", args.data, (1, 64, 64))
    baseline = get_baseline(workload, torch.device("cpu"), recipe=TrainingRecipe(epochs=12, batch_size=64, lr=3e-3)).model
    budget = Budget(finetune_steps=40, finetune_batch_size=64, latency_repeats=3, latency_warmup=1,
                    latency_max_s=0.2, trial_timeout_s=900)
    evaluator = Evaluator(workload, baseline, "cpu", batch_sizes=(64,), budget=budget)
    print("baseline balanced", round(evaluator.baseline_balanced_accuracy, 4), flush=True)
    rows = []
    for seed in range(args.seeds):
        for steps, keep, lr in arms:
            evaluator.budget = dataclasses.replace(budget, keep_best=keep, finetune_lr=lr)
            recipe = Recipe(prune_ratio=args.ratio, kd_temperature=2.0, kd_alpha=0.5, finetune_steps=steps)
            m = evaluator.evaluate(recipe, seed=seed)
            rows.append((steps, keep, lr, m.balanced_accuracy, m.build.get("selected_step")))
            print(rows[-1], flush=True)
    for steps, keep, lr in arms:
        values = [r[3] for r in rows if r[:3] == (steps, keep, lr)]
        print(steps, keep, lr, "mean", round(statistics.mean(values), 4), [round(v, 4) for v in values])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
