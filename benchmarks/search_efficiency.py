"""Which sampler finds the front in fewest trials? Measure a grid of real recipes once, then
replay every sampler against that table.

    python benchmarks/search_efficiency.py measure [--study studies/digits.toml] [--passes 2] [--shared-machine]
    python benchmarks/search_efficiency.py replay [--results DIR] [--trials 40] [--seeds 10] [--samplers ...] [--keep]
    python benchmarks/search_efficiency.py tpe-settings [--results DIR] [--trials 30] [--seeds 30]
    python benchmarks/search_efficiency.py report [--results DIR]   # results.md and the figure again, from results.json
    (benchmarks/README.md has the exact commands behind the committed results)

`measure` builds and measures every recipe of a grid over the study's space with slimtune's
own `Evaluator` (prune, KD fine-tune, cast, memory format, quantize, runtime; latency, memory,
accuracy on the study's device) and writes the table to `results/search-efficiency/<study>/grid.csv`
(+ `grid.json`: levels, how, where, how long). The recipes of one (architecture, KD) point
share one fine-tuning run: the deployment knobs are applied after fine-tuning, so this gives
the same candidate the evaluator would build for that seed, at a fraction of the time. With
`--passes K` every recipe is measured K times and keeps its lowest median latency (on a shared
machine contention only adds time); `--resume` continues a run cut short (a GPU call's limit).

`replay` runs each sampler (slimtune's own configurations from `search/samplers.py`) on an
in-memory Optuna study over the study's real `SearchSpace`: every sampled recipe is answered
with the measurements of the nearest grid point (each knob snapped on its own: prune ratio
and KD alpha linearly, KD temperature in log space, categorical knobs exactly). The baseline
is trial 0, as in a real study; failed and stopped grid points are failed trials; the
accuracy constraint is set on every completed trial. After each trial the hypervolume is
computed by `slimtune.search.hypervolume`, the same code a real study uses (and, for
comparison, under slimtune's first, linear rule), with the fastest feasible speed-up so far.
Results: `results/search-efficiency/<study>/` (results.json, results.md, hypervolume.html, .png).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import csv
import functools
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "search-efficiency"
#: the recipe fields a grid point is made of, in the order of the CSV's columns (a grid measured
#: before a field existed lacks its column: the field then had its baseline value everywhere)
KEY_FIELDS = ("prune_ratio", "prune_scope", "prune_round_to", "kd_temperature", "kd_alpha",
              "quantization", "precision", "memory_format", "runtime")
GridKey = tuple  # the values of KEY_FIELDS
#: fields that mean something only for a pruned (and so fine-tuned) model
PRUNED_ONLY = ("prune_scope", "prune_round_to", "kd_temperature", "kd_alpha")
NUMERIC = {"prune_ratio": float, "prune_round_to": int, "kd_temperature": float, "kd_alpha": float}
GRID_COLUMNS = [
    *KEY_FIELDS, "status", "reason", "accuracy", "latency_ms", "latency_p95_ms", "peak_memory_mb", "weight_mb",
    "params", "macs", "compile_s", "seconds", "finetune_seconds", "latency_passes",
]


# ---------------------------------------------------------------------------------------- grid
def _floats(text: str | None) -> list[float] | None:
    return [float(v) for v in text.split(",")] if text else None


def grid_levels(config, space, prune: list[float] | None = None, temperatures: list[float] | None = None,
                alphas: list[float] | None = None) -> dict[str, list]:
    """The levels of every searched knob. Defaults: prune ratio every 0.1, and every 0.05 from
    0.6 on (where accuracy falls off and the demo's front lies); KD temperature at 1/4 and 3/4
    of its log range; KD alpha at 1/4 and 3/4 of its range; every categorical choice the
    target can run (the capability probe's space). Fewer levels keep a GPU grid affordable."""
    low, high = space.prune_ratio
    if prune is None:
        candidates = [round(0.1 * i, 4) for i in range(10)] + [round(0.6 + 0.05 * i, 4) for i in range(8)]
        prune = sorted({v for v in candidates if low <= v <= high} | {low, high})
    levels: dict[str, list] = {"prune_ratio": sorted(set(prune) | {0.0})}
    if space.kd_temperature is not None and config.budget.finetune_steps > 0:
        from slimtune.spaces.joint import DEFAULT_KD_ALPHA

        t_low, t_high = (math.log(v) for v in space.kd_temperature)
        levels["kd_temperature"] = temperatures or [
            round(math.exp(t_low + f * (t_high - t_low)), 3) for f in (0.25, 0.75)]
        if space.kd_alpha is None:  # not searched: the knob's fixed weight
            levels["kd_alpha"] = [DEFAULT_KD_ALPHA]
        else:
            a_low, a_high = space.kd_alpha
            levels["kd_alpha"] = alphas or [round(a_low + f * (a_high - a_low), 3) for f in (0.25, 0.75)]
    for name in ("prune_scope", "prune_round_to", "quantization", "precision", "memory_format", "runtime"):
        levels[name] = list(getattr(space, name))
    return levels


def grid_recipes(levels: dict[str, list], finetune_steps: int, importance: str):
    """Every combination of the levels; an unpruned point has no pruning or KD settings."""
    from slimtune.spaces import Recipe

    deployments = list(itertools.product(*(levels[name] for name in ("quantization", "precision", "memory_format", "runtime"))))
    for prune in levels["prune_ratio"]:
        if prune > 0:
            trainings = itertools.product(levels["prune_scope"], levels["prune_round_to"],
                                          levels.get("kd_temperature", [None]), levels.get("kd_alpha", [0.0]))
        else:
            trainings = [("uniform", 1, None, 0.0)]
        for (scope, round_to, temperature, alpha), (quantization, precision, memory_format, runtime) in \
                itertools.product(trainings, deployments):
            yield Recipe(
                prune_ratio=prune, prune_importance=importance, prune_scope=scope, prune_round_to=round_to,
                kd_temperature=temperature, kd_alpha=alpha if temperature else 0.0,
                finetune_steps=finetune_steps if prune > 0 else 0, quantization=quantization, precision=precision,
                memory_format=memory_format, runtime=runtime,
            )


def caching_evaluator(spec, workload, baseline_model):
    """The worker-process factory (`measure --isolated`): the study's Evaluator with fine-tuning reused."""
    from slimtune.objectives.evaluator import Budget, Evaluator

    return _caching_evaluator(Evaluator)(
        workload, baseline_model, spec.device, threads=spec.threads, batch_sizes=tuple(spec.batch_sizes),
        budget=Budget(**spec.budget), max_accuracy_drop=spec.max_accuracy_drop,
    )


def training_key(recipe) -> tuple:
    """What decides the fine-tuned weights: the pruned architecture and the KD settings."""
    return (recipe.prune_ratio, recipe.prune_importance, recipe.prune_scope, recipe.prune_round_to,
            recipe.kd_temperature, recipe.kd_alpha, recipe.finetune_steps)


def _caching_evaluator(base):
    """The study's Evaluator, with fine-tuning done once per (architecture, KD) point and reused."""

    class CachingEvaluator(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.cache: dict[tuple, tuple] = {}

        def _finetune(self, model, recipe, seed, check_time):
            key = (*training_key(recipe), seed)
            if key not in self.cache:
                started = time.perf_counter()
                try:
                    steps = super()._finetune(model, recipe, seed, check_time)
                    self.cache[key] = ("ok", copy.deepcopy(model.state_dict()), steps, time.perf_counter() - started)
                except Exception as error:
                    self.cache[key] = ("error", error, 0, time.perf_counter() - started)
                    raise
            kind, payload, steps, _ = self.cache[key]
            if kind == "error":
                raise payload
            model.load_state_dict(payload)  # same pruned shapes, or this raises
            return steps

        def finetune_seconds(self, recipe, seed) -> float | None:
            key = (*training_key(recipe), seed)
            return self.cache[key][3] if key in self.cache else None

    return CachingEvaluator


def measure(args: argparse.Namespace) -> None:
    import torch

    from slimtune.objectives import Budget, Evaluator, TrainingRecipe, TrialStopped, get_baseline, load_workload
    from slimtune.search.config import load_config
    from slimtune.search.fingerprint import fingerprint
    from slimtune.spaces import probe
    from slimtune.spaces.errors import one_line

    config = load_config(args.study)
    folder = Path(args.results or RESULTS / Path(args.study).stem)
    device = torch.device(config.target.device)
    threads = args.threads or config.target.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    budget = Budget(
        finetune_steps=config.budget.finetune_steps, finetune_lr=config.budget.finetune_lr,
        finetune_batch_size=config.baseline.batch_size, trial_timeout_s=args.timeout_s or config.budget.trial_timeout_s,
        latency_warmup=config.budget.latency_warmup, latency_repeats=config.budget.latency_repeats,
    )
    if args.shared_machine:
        # On a shared, loaded machine: wall-clock timeouts would stop candidates for the load, not
        # for what they cost, and shorter latency runs (3 warm-up forwards, then up to
        # latency_repeats, stopping after 1 s once 10 ran) leave CPU time for repeated passes.
        budget = dataclasses.replace(budget, trial_timeout_s=3600.0, latency_warmup=min(3, budget.latency_warmup),
                                     latency_max_s=1.0)
    if args.isolated:
        # Each recipe in slimtune's worker process, as in a real study: a recipe that hangs
        # (a compile, a CUDA graph capture) is killed at the trial timeout and a fresh worker
        # goes on; a failing combination is verified on the unpruned model and then failed at
        # once. The worker keeps the fine-tuned weights of each (architecture, KD) point while it lives.
        from slimtune.search.isolated import IsolatedEvaluator, WorkerFailed
        from slimtune.search.runner import worker_spec

        spec = worker_spec(config, factory="search_efficiency:caching_evaluator")
        spec = dataclasses.replace(spec, budget={**spec.budget, **dataclasses.asdict(budget)})
        evaluator = IsolatedEvaluator(spec, log=lambda line: print(line, flush=True))
        evaluator.load()
        evaluator.prepare()
        space, removals, baseline_source = evaluator.space, evaluator.removals, evaluator.source
        failures: tuple[type[BaseException], ...] = (WorkerFailed,)
    else:
        workload = load_workload(config.workload.model, config.workload.data, tuple(config.workload.input_shape))
        baseline = get_baseline(workload, device, recipe=TrainingRecipe(
            config.baseline.epochs, config.baseline.batch_size, config.baseline.lr, config.study.seed))
        evaluator = _caching_evaluator(Evaluator)(
            workload, baseline.model, device, threads=threads, batch_sizes=tuple(config.workload.batch_sizes),
            budget=budget, max_accuracy_drop=config.constraints.max_accuracy_drop,
        )
        space, removals = probe(config.search_space(), device)
        baseline_source = baseline.source
        failures = (Exception,)
    levels = grid_levels(config, space, _floats(args.prune_levels), _floats(args.kd_temperatures), _floats(args.kd_alphas))
    recipes = list(grid_recipes(levels, config.budget.finetune_steps, space.prune_importance[0]))
    # Shuffled, so a slow spell of the machine does not land on one region of the grid.
    random.Random(0).shuffle(recipes)
    if args.shard:  # "I/N": the fine-tuning points whose index is I modulo N, all their variants
        index, count = (int(v) for v in args.shard.split("/"))
        points = sorted({training_key(r) for r in recipes}, key=repr)
        mine = {p for i, p in enumerate(points) if i % count == index}
        recipes = [r for r in recipes if training_key(r) in mine]
    if args.limit:
        recipes = recipes[: args.limit]
    print(f"{len(recipes)} recipes, {len({training_key(r) for r in recipes})} fine-tuning points", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    commit = os.environ.get("SLIMTUNE_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    meta = {
        "study_file": str(Path(args.study).resolve().relative_to(ROOT)) if Path(args.study).resolve().is_relative_to(ROOT) else args.study,
        "levels": levels, "budget": dataclasses.asdict(budget), "threads": threads, "seed": args.seed,
        "passes": args.passes, "shared_machine": args.shared_machine,
        "baseline_accuracy": evaluator.baseline_accuracy,
        "baseline_source": baseline_source.split(":")[0], "isolated": args.isolated,
        "probe_removed": [str(r) for r in removals],
        "commit": commit, "date": time.strftime("%Y-%m-%d"),
        "fingerprint": fingerprint(device, threads),
        "how": "slimtune Evaluator per recipe (prune -> KD fine-tune -> cast -> quantize -> measure) with the "
               "study file's budget; the fine-tuned weights of one (architecture, KD) point (prune ratio, scope, "
               "rounding, KD temperature and alpha) are reused for its deployment variants (quantization, precision, "
               "memory format, runtime), which are applied after fine-tuning",
    }
    name = f"grid.shard-{args.shard.replace('/', '-of-')}" if args.shard else "grid"
    best: dict[Any, dict[str, Any]] = {}
    if args.resume:  # rows an earlier, cut-short run measured (its .partial.csv): not measured again
        with open(args.resume, newline="") as handle:
            done = {row_point(row): row for row in csv.DictReader(handle)}
        for recipe in recipes:
            row = done.get(recipe_point(recipe))
            if row is not None:
                best[recipe] = {**row, "latency_passes": [float(v) for v in row["latency_passes"].split()]}
        recipes = [r for r in recipes if r not in best]
        meta["resumed_rows"] = len(best)
        print(f"resuming: {len(best)} recipes measured earlier, {len(recipes)} to go", flush=True)
    started = time.time()
    for number in range(args.passes):
        # Each pass in its own shuffled order; contention only adds time, so a recipe keeps the
        # pass whose median latency was lowest (all passes' medians are kept in latency_passes).
        order = recipes if number == 0 else random.Random(number).sample(recipes, len(recipes))
        for index, recipe in enumerate(order):
            row: dict[str, Any] = dict(zip(KEY_FIELDS, recipe_point(recipe)))
            try:
                m = evaluator.evaluate(recipe, seed=args.seed)
                row.update(status="complete", reason="", accuracy=m.accuracy, latency_ms=m.latency_ms,
                           latency_p95_ms=m.latency_p95_ms, peak_memory_mb=m.peak_memory_mb, weight_mb=m.weight_mb,
                           params=m.params, macs=m.macs, seconds=round(m.seconds, 3),
                           compile_s="" if m.compile_s is None else round(m.compile_s, 3))
            except TrialStopped as error:
                row.update(status="stopped", reason=str(error))
            except failures as error:
                row.update(status="failed", reason=one_line(error))
            if args.isolated:  # the worker keeps its fine-tuning times to itself
                ft = None
            else:
                ft = evaluator.finetune_seconds(recipe, args.seed) if recipe.finetune_steps else 0.0
            row["finetune_seconds"] = round(ft, 3) if ft is not None else ""
            print(f"  {index + 1}/{len(order)} {recipe.describe()}: {row['status']} "
                  + (f"{row['latency_ms']:.3f} ms, accuracy {row['accuracy']:.4f}" if row["status"] == "complete"
                     else row["reason"][:160]), flush=True)
            previous = best.get(recipe)
            passes = (previous["latency_passes"] if previous else []) + [row.get("latency_ms")]
            if previous is None or (row["status"] == "complete" and row["latency_ms"] < (previous.get("latency_ms") or math.inf)):
                best[recipe] = row
            best[recipe]["latency_passes"] = passes
            if index % 25 == 0:
                print(f"pass {number + 1}/{args.passes}: {index + 1}/{len(recipes)} after {time.time() - started:.0f} s", flush=True)
                # A partial table now and then: a run cut short (a machine's time limit) still
                # shows how far it got and at what pace.
                write_grid(folder, f"{name}.partial", _grid_rows(best), {**meta, "wall_seconds": round(time.time() - started, 1)})
    meta.update(wall_seconds=round(time.time() - started, 1), cpu_seconds=round(time.process_time(), 1),
                load_average=os.getloadavg())
    if args.isolated:
        meta["worker_restarts"] = evaluator.restarts
        evaluator.close()
    write_grid(folder, name, _grid_rows(best), meta)
    for suffix in (".csv", ".json"):
        (folder / f"{name}.partial{suffix}").unlink(missing_ok=True)


@functools.cache
def _key_defaults() -> dict[str, Any]:
    from slimtune.spaces.registry import recipe_defaults

    return {name: recipe_defaults()[name] for name in KEY_FIELDS}


def row_point(row: dict[str, str]) -> GridKey:
    """A CSV row's grid point as recipe field values (the same tuple `recipe_point` gives); a
    column the grid lacks (measured before that knob existed) is the knob's baseline value."""
    defaults = _key_defaults()

    def value(name: str) -> Any:
        text = row.get(name)
        if text is None:
            return defaults[name]
        if text == "":
            return None
        return NUMERIC[name](float(text)) if name in NUMERIC else text

    return tuple(value(name) for name in KEY_FIELDS)


def recipe_point(recipe) -> GridKey:
    return tuple(getattr(recipe, name) for name in KEY_FIELDS)


def _grid_rows(best: dict[Any, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "latency_passes": " ".join(f"{v:.4f}" for v in row["latency_passes"] if v is not None)}
            for row in best.values()]


def write_grid(folder: Path, name: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    rows = sorted(rows, key=lambda r: tuple(str(r.get(name, "")) for name in KEY_FIELDS))
    meta = {**meta, "recipes": len(rows),
            "status_counts": {s: sum(r["status"] == s for r in rows) for s in ("complete", "stopped", "failed")}}
    with open(folder / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, GRID_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {folder / name}.csv ({len(rows)} rows) in {meta['wall_seconds']} s")


def merge(args: argparse.Namespace) -> None:
    """grid.shard-*.csv (measured in parallel, each process on its own cores) -> grid.csv."""
    folder = Path(args.results or RESULTS / "digits")
    shards = sorted(folder.glob("grid.shard-*.json"))
    if not shards:
        raise SystemExit(f"no grid.shard-*.json in {folder}")
    metas = [json.loads(path.read_text()) for path in shards]
    rows: list[dict[str, Any]] = []
    for path in shards:
        with open(path.with_suffix(".csv"), newline="") as handle:
            rows += list(csv.DictReader(handle))
    meta = {k: v for k, v in metas[0].items() if k not in ("wall_seconds", "cpu_seconds")}
    meta["shards"] = len(shards)
    meta["wall_seconds"] = max(m["wall_seconds"] for m in metas)
    meta["cpu_seconds"] = round(sum(m["cpu_seconds"] for m in metas), 1)
    write_grid(folder, "grid", rows, meta)
    for path in shards:
        path.unlink()
        path.with_suffix(".csv").unlink()


# -------------------------------------------------------------------------------------- replay
SAMPLER_LABELS = {"tpe": "TPE (multivariate, constraints)", "nsga2": "NSGA-II", "gp": "GP (Optuna GPSampler)",
                  "random": "random"}


class Grid:
    """The measured table, looked up by the nearest grid point of a sampled recipe."""

    def __init__(self, folder: Path):
        self.meta = json.loads((folder / "grid.json").read_text())
        self.levels = self.meta["levels"]
        self.defaults = _key_defaults()
        with open(folder / "grid.csv", newline="") as handle:
            self.rows: dict[GridKey, dict[str, Any]] = {row_point(row): row for row in csv.DictReader(handle)}
        self.baseline = self.rows[tuple(self.defaults[name] for name in KEY_FIELDS)]

    @staticmethod
    def _nearest(levels: list[float], value: float, log: bool = False) -> float:
        measure = (lambda v: math.log(v)) if log else (lambda v: v)
        return min(levels, key=lambda level: abs(measure(level) - measure(value)))

    def key(self, recipe) -> GridKey:
        """Each knob snapped on its own: prune ratio and KD alpha linearly, the KD temperature in
        log space (it is sampled on a log scale), categorical knobs exactly. A knob the grid
        holds at one level (not searched, or measured at one setting) maps to that level."""
        values = dict(zip(KEY_FIELDS, recipe_point(recipe)))
        values["prune_ratio"] = self._nearest(self.levels["prune_ratio"], recipe.prune_ratio)
        if values["prune_ratio"] == 0:
            values.update({name: self.defaults[name] for name in PRUNED_ONLY})
        elif "kd_temperature" in self.levels:
            values["kd_temperature"] = self._nearest(self.levels["kd_temperature"], recipe.kd_temperature or 1.0, log=True)
            values["kd_alpha"] = self._nearest(self.levels["kd_alpha"], recipe.kd_alpha)
        for name in ("prune_scope", "prune_round_to", "quantization", "precision", "memory_format", "runtime"):
            known = self.levels.get(name)
            if known and len(known) == 1 and not (name in PRUNED_ONLY and values["prune_ratio"] == 0):
                values[name] = NUMERIC.get(name, str)(known[0])
        return tuple(values[name] for name in KEY_FIELDS)


class ReplayFailed(Exception):
    pass


def replay_one(grid: Grid, config, sampler_name: str, seed: int, n_trials: int, max_drop: float,
               objectives: dict[str, str], tpe_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One seeded study of `n_trials` (the baseline first) against the table; the hypervolume
    after each finished trial, computed by slimtune's own code. `tpe_overrides` replaces some
    of slimtune's TPE arguments (the tpe-settings comparison)."""
    import optuna

    from slimtune.search.hypervolume import (
        HYPERVOLUME_ATTR, hypervolume, hypervolume_settings, linear_settings, study_hypervolume,
    )
    from slimtune.search.samplers import make_sampler, tpe_settings

    space = config.search_space()
    base_accuracy = float(grid.baseline["accuracy"])
    if tpe_overrides is None:
        sampler = make_sampler(sampler_name, seed, n_trials)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, **{**tpe_settings(n_trials), **tpe_overrides})
    study = optuna.create_study(directions=list(objectives.values()), sampler=sampler)
    study.set_user_attr(HYPERVOLUME_ATTR, hypervolume_settings(objectives, max_drop))
    study.enqueue_trial(space.baseline_params(), user_attrs={"baseline": True})
    volumes: list[float] = []
    linear_volumes: list[float] = []  # under slimtune's first rule (linear ratios), for comparison
    speedups: list[float] = []  # the fastest feasible candidate so far, as a speed-up over the baseline
    points: list[GridKey] = []
    base_latency = float(grid.baseline["latency_ms"])
    fastest = [math.inf]

    def objective(trial: optuna.Trial) -> list[float]:
        key = grid.key(space.suggest(trial))
        points.append(key)
        row = grid.rows[key]
        if row["status"] != "complete":
            raise ReplayFailed(row["reason"])
        accuracy = float(row["accuracy"])
        trial.set_constraint("accuracy_drop", (base_accuracy - accuracy) - max_drop)
        if base_accuracy - accuracy <= max_drop:
            fastest[0] = min(fastest[0], float(row["latency_ms"]))
        return [float(row[name]) for name in objectives]

    linear = linear_settings(objectives, max_drop)
    baseline_values = [float(grid.baseline[name]) for name in objectives]

    def track(study: optuna.Study, trial) -> None:
        volumes.append(study_hypervolume(study) or 0.0)
        linear_volumes.append(hypervolume([t.values for t in study.best_trials], baseline_values, linear) or 0.0)
        speedups.append(base_latency / fastest[0])

    study.optimize(objective, n_trials=n_trials, catch=(ReplayFailed,), callbacks=[track])
    states = [t.state.name for t in study.trials]
    return {
        "hypervolume": volumes,
        "hypervolume_linear": linear_volumes,
        "best_speedup": speedups,
        "distinct_points": len(set(points)),
        "failed": states.count("FAIL"),
        "front_size": len(study.best_trials),
    }


def ratio_interval(values: list[float], reference: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval for median(values) / median(reference): both sets of seeds
    resampled with replacement, independently. How far a ratio of medians over a few dozen
    seeds can be trusted (on the digits grid, TPE over random in 30-seed blocks ranged from
    1.11x to 1.29x)."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(values, k=len(values))) / statistics.median(rng.choices(reference, k=len(reference)))
        for _ in range(draws))
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def _at(result: dict[str, Any], trials: int, key: str = "hypervolume") -> list[float]:
    return [run[key][trials - 1] for run in result["runs"]]


def _band(q: dict[str, float]) -> str:
    """A `_quantiles` result as the tables print it: median [25th-75th percentile]."""
    return f"{q['median']:.4f} [{q['q25']:.4f}-{q['q75']:.4f}]"


def _interval(bounds: tuple[float, float]) -> str:
    return f"[{bounds[0]:.2f}-{bounds[1]:.2f}]"


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 3
    return {"median": statistics.median(ordered), "q25": q[0], "q75": q[2], "min": ordered[0], "max": ordered[-1]}


def replay(args: argparse.Namespace) -> None:
    import optuna

    from slimtune.search.config import load_config

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    folder = Path(args.results or RESULTS / "digits")
    grid = Grid(folder)
    config = load_config(ROOT / grid.meta["study_file"])
    objectives = dict(config.objectives)
    max_drop = args.max_accuracy_drop if args.max_accuracy_drop is not None else config.constraints.max_accuracy_drop
    seeds = list(range(args.seeds))
    results: dict[str, Any] = {}
    previous = folder / f"results{args.tag}.json"
    if args.keep and previous.exists():  # samplers not run now keep their earlier runs
        results = {k: v for k, v in json.loads(previous.read_text())["samplers"].items() if k not in args.samplers}
    for name in args.samplers:
        started = time.time()
        runs = [replay_one(grid, config, name, seed, args.trials, max_drop, objectives) for seed in seeds]
        per_trial = [_quantiles([run["hypervolume"][i] for run in runs]) for i in range(args.trials)]
        results[name] = {
            "label": SAMPLER_LABELS[name],
            "per_trial": per_trial,
            "runs": runs,
            "seconds": round(time.time() - started, 1),
        }
        at = per_trial[min(args.trials, 30) - 1]
        print(f"{name:7s} median hypervolume at trial {min(args.trials, 30)}: {at['median']:.4f} "
              f"[{at['q25']:.4f}, {at['q75']:.4f}]  ({results[name]['seconds']} s)", flush=True)
    order = list(SAMPLER_LABELS)
    results = dict(sorted(results.items(), key=lambda item: order.index(item[0])))
    write_results(folder, results, grid, config, args, objectives, max_drop, seeds)


def write_results(folder, results, grid, config, args, objectives, max_drop, seeds) -> None:
    from slimtune.search.hypervolume import hypervolume_settings, linear_settings

    best_possible = _grid_hypervolume(grid, objectives, hypervolume_settings(objectives, max_drop), max_drop)
    summary = {
        "what": "hypervolume of the feasible front after each trial, samplers replayed against a table of real "
                "measurements (nearest grid point per sampled recipe); objectives in halvings against the baseline "
                "(search/hypervolume.py); hypervolume_linear: under slimtune's first rule (linear ratios)",
        "device": grid.meta["fingerprint"].get("device_name") or grid.meta["fingerprint"].get("device"),
        "study_file": grid.meta["study_file"], "objectives": objectives, "max_accuracy_drop": max_drop,
        "study_max_accuracy_drop": config.constraints.max_accuracy_drop,
        "trials": args.trials, "seeds": {name: len(result["runs"]) for name, result in results.items()},
        "grid": {k: grid.meta[k] for k in ("recipes", "levels", "status_counts", "threads", "passes", "date", "commit")},
        "grid_complete": sum(r["status"] == "complete" for r in grid.rows.values()),
        "grid_hypervolume": best_possible,
        "grid_hypervolume_linear": _grid_hypervolume(grid, objectives, linear_settings(objectives, max_drop), max_drop),
        "grid_best_speedup": _grid_speedup(grid, max_drop),
        "samplers": results,
    }
    (folder / f"results{args.tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_report(folder, summary, args.tag)


def write_report(folder: Path, summary: dict[str, Any], tag: str) -> None:
    """results{tag}.md and hypervolume{tag}.html (+ .png with kaleido) from the summary."""
    results, trials, best = summary["samplers"], summary["trials"], summary["grid_hypervolume"]
    objectives, max_drop, grid = summary["objectives"], summary["max_accuracy_drop"], summary["grid"]
    checkpoints = [n for n in (5, 10, 15, 20, 30, 40, 50, 60, 80, 100) if n <= trials]
    tighter = max_drop < summary["study_max_accuracy_drop"]
    lines = [
        f"# Sampler efficiency: hypervolume against trials (max_accuracy_drop {max_drop})",
        "",
        f"Study `{summary['study_file']}` (objectives {', '.join(f'{k} {v}' for k, v in objectives.items())}; "
        f"max_accuracy_drop {max_drop}" + (f", tighter than the study file's {summary['study_max_accuracy_drop']}" if tighter else "")
        + f"), replayed against the {grid['recipes']} recipes of `grid.csv`, each built and measured with slimtune's "
        f"Evaluator on {summary.get('device', 'the development CPU')} ({grid['date']}): each sampled recipe gets the "
        f"measurements of its nearest grid point. {trials} trials per study (the first is the baseline); seeds 0 to "
        f"n-1, n as the table says. Hypervolume in halvings against the baseline (`search/hypervolume.py`); the whole "
        f"grid's feasible front has **{best:.4f}**, the most any sampler can reach.",
        "",
        "Median hypervolume [25th-75th percentile] after N trials (the interval on the ratio to random: 2,000 "
        "bootstrap resamples of both samplers' seeds):",
        "",
        "| sampler | seeds | " + " | ".join(f"N={n}" for n in checkpoints)
        + " | N=30: median / random's [95% bootstrap interval] | N=30: % of the grid's |",
        "|---|---|" + "---|" * (len(checkpoints) + 2),
    ]
    for name, result in results.items():
        per = result["per_trial"]
        cells = [_band(per[n - 1]) for n in checkpoints]
        ratio = share = ""
        if trials >= 30:
            share = f"{100 * per[29]['median'] / best:.0f}%"
            if "random" in results:
                ratio = f"{per[29]['median'] / results['random']['per_trial'][29]['median']:.2f}x"
                if name != "random":
                    ratio += " " + _interval(ratio_interval(_at(result, 30), _at(results["random"], 30)))
        lines.append(f"| {result['label']} | {len(result['runs'])} | " + " | ".join(cells) + f" | {ratio} | {share} |")
    if trials >= 30 and "random" in results and "best_speedup" in results["random"]["runs"][0]:
        linear_best, fastest = summary["grid_hypervolume_linear"], summary["grid_best_speedup"]
        lines += ["", f"At 30 trials, the same studies by two more measures: the hypervolume under slimtune's first rule "
                  f"(linear ratios to the baseline, which the whole grid takes to {linear_best:.4f}) and the fastest "
                  f"feasible candidate found, as a speed-up over the baseline (the grid's fastest: {fastest:.2f}x). "
                  "Medians [25th-75th percentile] over seeds:", "",
                  "| sampler | hypervolume, halvings: / random's | linear rule | linear: / random's | linear: % of the grid's "
                  "| fastest feasible | fastest: / random's |", "|---|---|---|---|---|---|---|"]
        at = {name: {key: _quantiles(_at(result, 30, key)) for key in ("hypervolume_linear", "best_speedup")}
              for name, result in results.items()}
        for name, result in results.items():
            lin, fast = at[name]["hypervolume_linear"], at[name]["best_speedup"]
            lines.append(
                f"| {result['label']} | {result['per_trial'][29]['median'] / results['random']['per_trial'][29]['median']:.2f}x "
                f"| {_band(lin)} | {lin['median'] / at['random']['hypervolume_linear']['median']:.2f}x "
                f"| {100 * lin['median'] / linear_best:.0f}% | {fast['median']:.2f}x [{fast['q25']:.2f}-{fast['q75']:.2f}] "
                f"| {fast['median'] / at['random']['best_speedup']['median']:.2f}x |")
    lines += ["", "Per study (median over seeds): distinct grid points visited, failed trials (grid points whose "
              "fine-tuning was stopped as hopeless), size of the final front; and the replay's wall time for all seeds (nearly all of it the sampler's own, on the loaded "
              "shared machine):", "",
              "| sampler | distinct points | failed trials | front size | replay seconds (all seeds) |", "|---|---|---|---|---|"]
    for name, result in results.items():
        runs = result["runs"]
        lines.append(f"| {result['label']} | {statistics.median(r['distinct_points'] for r in runs):g} | "
                     f"{statistics.median(r['failed'] for r in runs):g} | {statistics.median(r['front_size'] for r in runs):g} | "
                     f"{result['seconds']} |")
    gain, window = 0.005, 10
    lines += ["", f"What `stop_when = {{ hypervolume_gain_below = {gain}, over_trials = {window} }}` would have done in these "
              f"studies (search/stopping.py's rule applied to each study's hypervolume history; median over seeds):", "",
              "| sampler | stopped studies | trials run | hypervolume at the stop, % of the full run's |", "|---|---|---|---|"]
    for name, result in results.items():
        stops = [_stop_at(run["hypervolume"], gain, window) for run in result["runs"]]
        spent = [stop + 1 if stop is not None else trials for stop in stops]
        kept = [run["hypervolume"][n - 1] / run["hypervolume"][-1] for run, n in zip(result["runs"], spent)]
        lines.append(f"| {result['label']} | {sum(s is not None for s in stops)}/{len(stops)} | "
                     f"{statistics.median(spent):g} of {trials} | {100 * statistics.median(kept):.0f}% |")
    if tighter:
        lines += ["", f"The grid was measured under the study file's max_accuracy_drop = {summary['study_max_accuracy_drop']}; "
                  "replaying a tighter constraint keeps every hopeless stop valid (a candidate that cannot reach the looser "
                  "floor cannot reach the tighter one), but candidates a real study would stop early at the tighter floor "
                  "are complete, infeasible trials here."]
    (folder / f"results{tag}.md").write_text("\n".join(lines) + "\n")
    figure = hypervolume_figure(results, trials, best, objectives, max_drop, summary)
    figure.write_html(folder / f"hypervolume{tag}.html", include_plotlyjs=True)
    try:
        figure.write_image(folder / f"hypervolume{tag}.png", scale=2)
    except Exception as error:  # kaleido or a Chrome missing: the HTML is the figure
        print(f"no PNG: {type(error).__name__}: {error}")
    print(f"wrote {folder}/results{tag}.json, .md, hypervolume{tag}.html")


#: variations of slimtune's TPE arguments (`search/samplers.py: tpe_settings`), one change each
TPE_VARIANTS: dict[str, dict[str, Any]] = {
    "slimtune's default": {},
    "independent (Optuna's default TPE)": {"multivariate": False, "group": False},
    "3 start-up trials": {"n_startup_trials": 3},
    "5 start-up trials": {"n_startup_trials": 5},
    "15 start-up trials": {"n_startup_trials": 15},
    "64 EI candidates": {"n_ei_candidates": 64},
    "prior weight 0.5": {"prior_weight": 0.5},
    "prior weight 2": {"prior_weight": 2.0},
    "endpoints considered": {"consider_endpoints": True},
    "no magic clip": {"consider_magic_clip": False},
}


def tpe_variants(args: argparse.Namespace) -> None:
    """Is a better TPE one argument away? Every variant of TPE_VARIANTS against random sampling,
    on the same seeds, at `--trials`: tpe-settings.json and tpe-settings.md."""
    import optuna

    from slimtune.search.config import load_config
    from slimtune.search.samplers import tpe_settings

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    folder = Path(args.results or RESULTS / "digits")
    grid = Grid(folder)
    config = load_config(ROOT / grid.meta["study_file"])
    objectives, max_drop = dict(config.objectives), config.constraints.max_accuracy_drop
    seeds, n = list(range(args.seeds)), args.trials

    def volumes(name: str, overrides: dict[str, Any] | None) -> list[float]:
        return [replay_one(grid, config, name, seed, n, max_drop, objectives, overrides)["hypervolume"][-1] for seed in seeds]

    started = time.time()
    reference = volumes("random", None)
    runs = {}
    for label, overrides in TPE_VARIANTS.items():
        runs[label] = volumes("tpe", overrides)
        print(f"{label:36s} median hypervolume at trial {n}: {statistics.median(runs[label]):.4f}", flush=True)
    default = runs["slimtune's default"]
    lines = [
        f"# TPE's settings: hypervolume at {n} trials (max_accuracy_drop {max_drop})",
        "",
        f"slimtune's TPE arguments ({', '.join(f'{k}={v}' for k, v in tpe_settings(n).items())}; `search/samplers.py`) "
        f"and one change at a time, replayed against `grid.csv` of `{grid.meta['study_file']}` like the sampler "
        f"comparison in `results.md`: {len(seeds)} seeds (0 to {len(seeds) - 1}), the same for every row. Intervals: 95%, "
        "2,000 bootstrap resamples of the seeds.",
        "",
        f"| TPE | changed argument | median [25th-75th percentile] | / random's [interval] | / the default's [interval] |",
        "|---|---|---|---|---|",
    ]
    for label, values in runs.items():
        q = _quantiles(values)
        vs_random, vs_default = ratio_interval(values, reference), ratio_interval(values, default)
        changed = ", ".join(f"{k}={v}" for k, v in TPE_VARIANTS[label].items()) or "(none)"
        lines.append(
            f"| {label} | {changed} | {_band(q)} "
            f"| {q['median'] / statistics.median(reference):.2f}x {_interval(vs_random)} "
            f"| {q['median'] / statistics.median(default):.2f}x {_interval(vs_default)} |")
    lines.append(f"| random sampling | | {_band(_quantiles(reference))} | 1.00x | |")
    summary = {"study_file": grid.meta["study_file"], "max_accuracy_drop": max_drop, "trials": n, "seeds": len(seeds),
               "tpe_settings": tpe_settings(n), "variants": TPE_VARIANTS, "hypervolume_at_last_trial": runs,
               "random": reference, "seconds": round(time.time() - started, 1)}
    (folder / "tpe-settings.json").write_text(json.dumps(summary, indent=1) + "\n")
    (folder / "tpe-settings.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {folder}/tpe-settings.json, .md")


def _stop_at(volumes: list[float], gain: float, window: int) -> int | None:
    """The trial index after which StopWhenFrontStalls(gain, window) stops a fresh study."""
    for now in range(window, len(volumes)):
        before = volumes[now - window]
        if before > 0 and (volumes[now] - before) / before < gain:
            return now
    return None


def report(args: argparse.Namespace) -> None:
    folder = Path(args.results or RESULTS / "digits")
    write_report(folder, json.loads((folder / f"results{args.tag}.json").read_text()), args.tag)


def _feasible_rows(grid: Grid, max_drop: float) -> list[dict[str, Any]]:
    base = float(grid.baseline["accuracy"])
    return [r for r in grid.rows.values() if r["status"] == "complete" and base - float(r["accuracy"]) <= max_drop]


def _grid_hypervolume(grid: Grid, objectives: dict[str, str], settings: dict[str, Any], max_drop: float) -> float:
    """The best any sampler could reach: the hypervolume of the whole table's feasible front."""
    from slimtune.search.hypervolume import hypervolume

    values = [[float(r[name]) for name in objectives] for r in _feasible_rows(grid, max_drop)]
    baseline = [float(grid.baseline[name]) for name in objectives]
    return hypervolume(values, baseline, settings) or 0.0


def _grid_speedup(grid: Grid, max_drop: float) -> float:
    """The fastest feasible recipe in the table, as a speed-up over the baseline."""
    return float(grid.baseline["latency_ms"]) / min(float(r["latency_ms"]) for r in _feasible_rows(grid, max_drop))


def hypervolume_figure(results, trials: int, best_possible: float, objectives, max_drop, summary: dict[str, Any]):
    import plotly.graph_objects as go

    colours = {"tpe": "#d62728", "nsga2": "#1f77b4", "gp": "#2ca02c", "random": "#7f7f7f"}
    fills = {"tpe": "rgba(214,39,40,0.15)", "nsga2": "rgba(31,119,180,0.15)", "gp": "rgba(44,160,44,0.15)",
             "random": "rgba(127,127,127,0.2)"}
    x = list(range(1, trials + 1))
    figure = go.Figure()
    for name, result in results.items():
        per = result["per_trial"]
        figure.add_trace(go.Scatter(x=x + x[::-1], y=[p["q75"] for p in per] + [p["q25"] for p in per][::-1],
                                    fill="toself", fillcolor=fills[name], line=dict(width=0), hoverinfo="skip",
                                    showlegend=False, legendgroup=name))
        figure.add_trace(go.Scatter(x=x, y=[p["median"] for p in per], mode="lines",
                                    name=f"{result['label']}, {len(result['runs'])} seeds",
                                    line=dict(color=colours[name], width=2.5), legendgroup=name))
    if "random" in results and trials >= 30:
        target = 1.2 * results["random"]["per_trial"][29]["median"]
        figure.add_trace(go.Scatter(
            x=[30], y=[target], mode="markers+text", marker=dict(symbol="x", size=12, color="black"),
            text=[f"1.2x random's median at 30 trials ({target:.3f}: {100 * target / best_possible:.0f}% of the grid's best)"],
            textposition="top left", name="the issue's target", showlegend=False))
    figure.add_hline(y=best_possible, line=dict(dash="dash", color="black"),
                     annotation_text="whole grid's feasible front", annotation_position="bottom right")
    figure.update_layout(
        title="Hypervolume against trials: median and 25-75% band over seeds"
              f"<br><sup>{summary['study_file']} ({', '.join(objectives)}; max_accuracy_drop {max_drop}),"
              f"<br>replayed against real measurements on {summary.get('device', 'a CPU')}</sup>",
        xaxis_title="trials (trial 1 = the baseline)", yaxis_title="hypervolume (halvings against the baseline)",
        template="plotly_white", width=900, height=560, margin=dict(t=110), legend=dict(orientation="h", y=-0.18),
    )
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    m = commands.add_parser("measure", help="measure the grid of real recipes (minutes of CPU)")
    m.add_argument("--study", default=str(ROOT / "studies" / "digits.toml"))
    m.add_argument("--threads", type=int, help="default: the study file's target.threads")
    m.add_argument("--shard", help="I/N: measure one of N parts (run N at once on separate cores, then `merge`)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--passes", type=int, default=1, help="measure every recipe this many times; keep the lowest median latency")
    m.add_argument("--shared-machine", action="store_true", help="no wall-clock trial timeout, shorter latency runs")
    m.add_argument("--limit", type=int, help="measure only the first N recipes of the shuffled grid (a smoke test)")
    m.add_argument("--isolated", action="store_true", help="each recipe in slimtune's worker process, with the "
                   "trial timeout as a hard limit (what a real study does; needed where a compile can hang)")
    m.add_argument("--timeout-s", type=float, help="the trial timeout for the grid (default: the study file's)")
    m.add_argument("--resume", help="a grid CSV (a cut-short run's .partial.csv): its recipes are kept, not measured again")
    m.add_argument("--prune-levels", help="comma-separated prune ratios (0 is always added)")
    m.add_argument("--kd-temperatures", help="comma-separated KD temperatures (default: 1/4 and 3/4 of the log range)")
    m.add_argument("--kd-alphas", help="comma-separated KD alphas (default: 1/4 and 3/4 of the range)")
    r = commands.add_parser("replay", help="replay the samplers against the measured grid (no model is run)")
    r.add_argument("--trials", type=int, default=50)
    r.add_argument("--seeds", type=int, default=10)
    r.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "gp", "random"], choices=list(SAMPLER_LABELS))
    r.add_argument("--max-accuracy-drop", type=float, help="a tighter constraint than the study's (the grid was "
                   "measured with the study's: its hopeless-candidate stops stay valid only for tighter ones)")
    r.add_argument("--tag", default="", help="suffix for the result files, e.g. -tight")
    r.add_argument("--keep", action="store_true", help="keep the earlier runs of samplers not named in --samplers")
    t = commands.add_parser("tpe-settings", help="replay variations of slimtune's TPE arguments against random sampling")
    t.add_argument("--trials", type=int, default=30)
    t.add_argument("--seeds", type=int, default=30)
    g = commands.add_parser("merge", help="join the grid.shard-* files into grid.csv / grid.json")
    p = commands.add_parser("report", help="rewrite results.md and the figure from results.json")
    p.add_argument("--tag", default="")
    for sub in (m, r, t, g, p):
        sub.add_argument("--results", help="folder of grid.csv and the results (default: results/search-efficiency/"
                         "<study file's name> for measure, .../digits otherwise)")
    args = parser.parse_args(argv)
    import warnings

    # torchao warns on every quantized layer that its configs are deprecated; torch-pruning and
    # Optuna's experimental-argument notes say nothing about the results either.
    warnings.filterwarnings("ignore", message="(Config )?Deprecation: ", category=UserWarning)
    warnings.filterwarnings("ignore", module="optuna")
    {"measure": measure, "merge": merge, "replay": replay, "tpe-settings": tpe_variants,
     "report": report}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
