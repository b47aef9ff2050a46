"""The measuring half of the sampler benchmark: every recipe of a grid over a study's space,
built and measured once with slimtune's own `Evaluator` on the study's device.

    python benchmarks/search_efficiency.py measure [--study studies/digits.toml] [--passes 2] [--shared-machine]
    python benchmarks/search_efficiency.py merge [--results DIR]

Writes `results/search-efficiency/<study>/grid.csv` (+ `grid.json`: levels, how, where, how
long). The recipes of one (architecture, KD) point share one fine-tuning run: the deployment
knobs are applied after fine-tuning, so this gives the same candidate the evaluator would build
for that seed, at a fraction of the time. With `--passes K` every recipe is measured K times and
keeps its lowest median latency (on a shared machine contention only adds time); `--resume`
continues a run cut short (a GPU call's limit). The grid's format (`KEY_FIELDS`, `row_point`)
is shared with the replay in search_efficiency.py.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import functools
import itertools
import json
import math
import os
import random
import subprocess
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

        spec = worker_spec(config, factory="sampler_grid:caching_evaluator")
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


def add_parsers(commands) -> list[argparse.ArgumentParser]:
    """`measure` and `merge`, as subcommands of search_efficiency.py."""
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
    g = commands.add_parser("merge", help="join the grid.shard-* files into grid.csv / grid.json")
    return [m, g]
