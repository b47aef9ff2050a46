"""Which sampler finds the front in fewest trials? Measure a grid of real recipes once, then
replay every sampler against that table.

    python benchmarks/search_efficiency.py measure [--study studies/digits.toml] [--passes 2] [--shared-machine]
    python benchmarks/search_efficiency.py replay [--results DIR] [--trials 40] [--seeds 10] [--samplers ...] [--keep]
    python benchmarks/search_efficiency.py tpe-settings [--results DIR] [--trials 30] [--seeds 30]
    python benchmarks/search_efficiency.py report [--results DIR]   # results.md and the figure again, from results.json
    (benchmarks/README.md has the exact commands behind the committed results)

`measure` and `merge` (benchmarks/sampler_grid.py) build the table: every recipe of a grid over
the study's space measured once with slimtune's own `Evaluator`.

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
import csv
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded from a file by the tests
import sampler_grid  # noqa: E402
from sampler_grid import (  # noqa: E402
    KEY_FIELDS, NUMERIC, PRUNED_ONLY, RESULTS, ROOT, GridKey, _key_defaults, recipe_point, row_point,
)

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


class GridScreen:
    """The target screen's evaluator, answered from the grid: a setting's figures are its grid
    row at that prune ratio (the grid's pruned rows were fine-tuned, the screen's are not; the
    latency, memory and weights the screen reads do not depend on it)."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.baseline_accuracy = float(grid.baseline["accuracy"])

    def screen(self, recipe, *, accuracy: bool, timeout_s: float) -> dict[str, Any]:
        row = self.grid.rows[self.grid.key(recipe)]
        if row["status"] != "complete":
            raise RuntimeError(row["reason"])
        return {"latency_ms": float(row["latency_ms"]), "peak_memory_mb": float(row["peak_memory_mb"]),
                "weight_mb": float(row["weight_mb"]), "accuracy": float(row["accuracy"]),
                "quantized_layers": 0, "weight_layers": 0}


def screened_space(grid: Grid, config):
    """The study's space narrowed by the target screen run against the grid (no budget limit:
    the grid holds every setting), and the screen's result."""
    from slimtune.search.screen import Screen, narrow

    space = config.search_space()
    result = Screen(GridScreen(grid), space, objectives=dict(config.objectives),
                    max_accuracy_drop=config.constraints.max_accuracy_drop, budget_s=1e9,
                    setting_timeout_s=1e9, margin=config.screen.margin, log=lambda line: None).run()
    return narrow(space, result), result


def replay_one(grid: Grid, config, sampler_name: str, seed: int, n_trials: int, max_drop: float,
               objectives: dict[str, str], tpe_overrides: dict[str, Any] | None = None, space=None) -> dict[str, Any]:
    """One seeded study of `n_trials` (the baseline first) against the table; the hypervolume
    after each finished trial, computed by slimtune's own code. `tpe_overrides` replaces some
    of slimtune's TPE arguments (the tpe-settings comparison); `space`, the study's space
    (a screened one, `--screened`)."""
    import optuna

    from slimtune.search.hypervolume import (
        HYPERVOLUME_ATTR, hypervolume, hypervolume_settings, linear_settings, study_hypervolume,
    )
    from slimtune.search.samplers import make_sampler, tpe_settings

    space = space or config.search_space()
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
        # trial 0 is the baseline, measured from its recipe where the space no longer holds it
        # (as the runner does when the screen dropped fp32 eager)
        baseline = trial.user_attrs.get("baseline") and not space.contains_baseline()
        recipe = space.baseline_recipe() if baseline else space.suggest(trial)
        key = grid.key(recipe)
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
    space = None
    if args.screened:
        space, screened = screened_space(grid, config)
        args.tag = args.tag or "-screened"
        kept = [row["label"] for row in screened["settings"] if row["kept"]]
        print(f"screen on the grid: kept {len(kept)} of {len(screened['settings'])}: {', '.join(kept)}", flush=True)
    results: dict[str, Any] = {}
    previous = folder / f"results{args.tag}.json"
    if args.keep and previous.exists():  # samplers not run now keep their earlier runs
        results = {k: v for k, v in json.loads(previous.read_text())["samplers"].items() if k not in args.samplers}
    for name in args.samplers:
        started = time.time()
        runs = [replay_one(grid, config, name, seed, args.trials, max_drop, objectives, space=space) for seed in seeds]
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
    write_results(folder, results, grid, config, args, objectives, max_drop, seeds,
                  screened=screened if args.screened else None)


def write_results(folder, results, grid, config, args, objectives, max_drop, seeds, screened=None) -> None:
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
    if screened is not None:
        summary["screened"] = {"kept": [row["label"] for row in screened["settings"] if row["kept"]],
                               "dropped": {row["label"]: row["reason"] for row in screened["settings"] if not row["kept"]}}
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
    ]
    if summary.get("screened"):
        kept, dropped = summary["screened"]["kept"], summary["screened"]["dropped"]
        lines += [f"**Screened space**: the target screen (search/screen/) answered from the grid's rows kept "
                  f"{len(kept)} of {len(kept) + len(dropped)} deployment settings, searched as one choice: "
                  f"{', '.join(kept)}. Dropped: " + "; ".join(f"{k}: {v}" for k, v in dropped.items()) + ".", ""]
    lines += [
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
    figure.write_html(folder / f"hypervolume{tag}.html", include_plotlyjs="cdn")  # 4.7 MB of plotly.js per file otherwise
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
        "| TPE | changed argument | median [25th-75th percentile] | / random's [interval] | / the default's [interval] |",
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
    m, g = sampler_grid.add_parsers(commands)
    r = commands.add_parser("replay", help="replay the samplers against the measured grid (no model is run)")
    r.add_argument("--trials", type=int, default=50)
    r.add_argument("--seeds", type=int, default=10)
    r.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "gp", "random"], choices=list(SAMPLER_LABELS))
    r.add_argument("--max-accuracy-drop", type=float, help="a tighter constraint than the study's (the grid was "
                   "measured with the study's: its hopeless-candidate stops stay valid only for tighter ones)")
    r.add_argument("--tag", default="", help="suffix for the result files, e.g. -tight")
    r.add_argument("--keep", action="store_true", help="keep the earlier runs of samplers not named in --samplers")
    r.add_argument("--screened", action="store_true", help="search the space the target screen leaves, the screen "
                   "answered from the grid (results tagged -screened)")
    t = commands.add_parser("tpe-settings", help="replay variations of slimtune's TPE arguments against random sampling")
    t.add_argument("--trials", type=int, default=30)
    t.add_argument("--seeds", type=int, default=30)
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
    {"measure": sampler_grid.measure, "merge": sampler_grid.merge, "replay": replay, "tpe-settings": tpe_variants,
     "report": report}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
