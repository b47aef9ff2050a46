"""Confirmation, the worker's side: re-measure the baseline and the front's points interleaved.

A trial's latency was measured once, minutes or hours from the baseline's, under whatever the
machine was doing then; a speed-up is a ratio of two such figures. Confirmation rebuilds every
point in one worker process and times them in rounds, A B C ... A B C ..., each round taking a
fixed number of samples of each, so a slow drift of the machine (clocks, temperature, another
tenant) falls on every point of a round alike and cancels in the ratio of one round. The driver
(search/confirm.py) turns the rounds into figures with intervals and stores them.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from slimtune.spaces import Recipe
from slimtune.spaces.precision import math_mode

from .latency import measure_latency


def confirm_candidates(evaluator, recipes: list[dict[str, Any]], seeds: list[int], rounds: int,
                       on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build each recipe as its trial built it (same seed, same fine-tuning, its runtime) and
    time them all in `rounds` interleaved rounds. Returns, per point in the order given, the
    per-call median of each round, the calls per block and the samples per round."""
    stage = on_stage or (lambda name: None)
    budget = evaluator.budget
    started = time.perf_counter()
    built = []
    for index, (raw, seed) in enumerate(zip(recipes, seeds)):
        recipe = Recipe.from_dict(raw)
        stage(f"rebuilding point {index + 1}/{len(recipes)}")
        evaluator._deadline = time.perf_counter() + 2 * budget.trial_timeout_s
        try:
            with math_mode(recipe.precision):
                candidate = evaluator.build(recipe, seed)
        finally:
            del evaluator._deadline
        example = candidate.inputs(evaluator.example(evaluator.batch_size))
        built.append((recipe, candidate, example))
    medians: list[list[float]] = [[] for _ in built]
    blocks: list[int | None] = [None for _ in built]
    for round_number in range(rounds):
        stage(f"round {round_number + 1}/{rounds}")
        for index, (recipe, candidate, example) in enumerate(built):
            with math_mode(recipe.precision):
                stats = measure_latency(candidate, example, warmup=budget.latency_warmup, repeats=budget.latency_repeats,
                                        adaptive=False, block=blocks[index], max_seconds=budget.latency_max_s)
            blocks[index] = stats.block  # the first round chooses k; later rounds time the same blocks
            medians[index].append(stats.median_ms)
    if hasattr(evaluator, "keep_built"):  # for the test split that follows (an evaluator factory's may not have it)
        evaluator.keep_built([(recipe, seed, candidate) for (recipe, candidate, _), seed in zip(built, seeds)])
    return {"round_medians_ms": medians, "blocks": blocks, "samples_per_round": budget.latency_repeats,
            "batch_size": evaluator.batch_size, "seconds": time.perf_counter() - started}
