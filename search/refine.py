"""`slimtune refine`: the chosen points of the front fine-tuned for longer and measured again.

The search fine-tunes every pruned candidate for `budget.finetune_steps` (a cheap estimate of
what the architecture can recover); the model a user ships deserves a longer fine-tune. Refine
takes `top` pruned front points (fastest or most pruned first) or one trial, rebuilds each in the trial worker
process (the same code path as a trial: prune -> KD fine-tune -> precision -> quantize ->
runtime) with the trial's seed and `finetune_steps = steps`, measures it as a trial is measured,
and stores a refined record linked to the trial (`slimtune_refined_trials`). The trial and the
front are left as they were: the short figures stay what the search compared.

- The best step is kept, not the last: a long fine-tune on a small data set overfits. The step
  is chosen on training images held back from the run (objectives/selection.py), never on the
  held-out split the figures are measured on; by balanced accuracy when the study constrains
  or maximizes it, else by accuracy.
- `seeds` > 1 refines each point several times (the trial's seed, then others): one seed's
  held-out figure on a few hundred images moves by a point or more. Every run is stored; the
  one that export and the front show is the best on the held-back images.
- `control`: the front keeps the trials whose one held-out draw came out high (on ELPV both
  points of an H200 run scored above the baseline after 200 steps and below their short figures
  after 1000), so short vs refined figures overstate what the short fine-tune gives. With
  `control`, each seed also re-runs the search's short fine-tune the way the long one runs (same
  seed, same held-back split, best step kept): the paired difference is what the longer
  fine-tune buys, and the control is a candidate for what the front and export take.
- No hopeless stop: a refined point is already feasible, and the long run is what is asked for.
- Time limit: the study's `trial_timeout_s` scaled by `steps / finetune_steps` (never less).
- Export rebuilds the same model from the stored record (`slimtune export --refined`): the same
  recipe, seed and worker settings give the same weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from slimtune.objectives import TrialStopped
from slimtune.objectives.worker import DEFAULT_FACTORY, WorkerSpec
from slimtune.spaces import Recipe
from slimtune.storage import DEFAULT_STORAGE, Repository, StorageError

from slimtune.search.config import CONFIG_ATTR, StudyConfig, parse_config
from slimtune.search.isolated import IsolatedEvaluator, WorkerFailed
from slimtune.search.results import StudyNotFound, baseline_record, open_study, pareto_front, selection_key
from slimtune.search.runner import worker_spec

Log = Callable[[str], None]


class RefineError(ValueError):
    """Bad input (study, trial, top, steps): nothing was refined; the message is one line."""


@dataclass(frozen=True)
class Refined:
    trial: int
    steps: int
    status: str  # complete | failed | stopped
    reason: str | None
    short: dict[str, Any]  # the trial's own measurement
    long: dict[str, Any] | None  # the refined measurement
    seed: int | None = None
    control: bool = False  # the search's short fine-tune re-run under the refine's conditions


def refine_timeout_s(config: StudyConfig, steps: int) -> float:
    """The trial's time limit, scaled with the fine-tuning steps (never below a trial's)."""
    return config.budget.trial_timeout_s * max(1.0, steps / max(1, config.budget.finetune_steps))


def selection_score(config: StudyConfig) -> str:
    """The score that picks a refined run's best step: the one the study is judged on."""
    balanced = config.constraints.max_balanced_accuracy_drop is not None or "balanced_accuracy" in config.objectives
    return "balanced_accuracy" if balanced else "accuracy"


def refine_spec(config: StudyConfig, steps: int, factory: str = DEFAULT_FACTORY, keep_best: bool = True) -> WorkerSpec:
    """The worker settings of a refined build: the study's, with the scaled time limit, no
    hopeless stop and (`keep_best`) the best step kept. `refine` and `export --refined` both use
    it, so both build the same model; records of slimtunes before keep_best rebuild without it."""
    spec = worker_spec(config, factory)
    budget = {**spec.budget, "trial_timeout_s": refine_timeout_s(config, steps),
              "keep_best": selection_score(config) if keep_best else None, "score_test": True}
    return dataclasses.replace(spec, budget=budget, max_accuracy_drop=None, max_balanced_accuracy_drop=None)


#: the seeds of a point's refined runs: the trial's, then the trial's plus multiples of this
SEED_STRIDE = 1000


def refine_seeds(trial_seed: int, seeds: int) -> list[int]:
    return [trial_seed + k * SEED_STRIDE for k in range(seeds)]


def refined_recipe(recipe: dict[str, Any], steps: int) -> Recipe:
    return Recipe.from_dict({**recipe, "finetune_steps": steps})


def study_config(study, seed: int | None = None) -> StudyConfig:
    """The study's stored configuration (what decides its results), with its seed."""
    identity = study.user_attrs.get(CONFIG_ATTR)
    if identity is None:
        raise RefineError(f"study {study.study_name!r} has no stored configuration; it was not created by slimtune run")
    study_seed = seed if seed is not None else identity.get("study", {}).get("seed", 0)
    return parse_config({**identity, "study": {**identity["study"], "seed": study_seed}}, f"study {study.study_name!r}", stored=True)


#: how `top` ranks the front's pruned points
ORDERS = ("fastest", "most_pruned")


def choose(study, repository: Repository, top: int | None, trial: int | None, order: str = "fastest") -> list[int]:
    """The trials to refine: `trial`, or the first `top` pruned points of the feasible front in
    `order`: fastest first, or most pruned first (where a short fine-tune left the most to recover)."""
    if order not in ORDERS:
        raise RefineError(f"order = {order!r}: allowed: {', '.join(ORDERS)}")
    if (top is None) == (trial is None):
        raise RefineError("refine: give exactly one of --top K or --trial N")
    records = {r.trial_number: r for r in repository.trials(study.study_name)}
    if trial is not None:
        record = records.get(trial)
        if record is None or record.status != "complete":
            state = record.status if record else "not measured"
            raise RefineError(f"trial = {trial}: {state}, nothing to refine")
        if not Recipe.from_dict(record.recipe).finetune_steps:
            raise RefineError(f"trial = {trial}: not pruned, so never fine-tuned; nothing to refine")
        return [trial]
    if top < 1:
        raise RefineError(f"top = {top}: must be at least 1")
    front = pareto_front(study, repository)
    pruned = [int(n) for n in front["trial"] if Recipe.from_dict(records[int(n)].recipe).finetune_steps]
    if not pruned:
        raise RefineError(f"study {study.study_name!r}: no pruned point on the feasible front; nothing to refine")
    if order == "most_pruned":  # the front comes fastest first; a stable sort keeps that among equals
        pruned.sort(key=lambda n: -Recipe.from_dict(records[n].recipe).prune_ratio)
    return pruned[:top]


def refine(
    study_name: str,
    storage_url: str = DEFAULT_STORAGE,
    *,
    steps: int,
    top: int | None = None,
    trial: int | None = None,
    order: str = "fastest",
    seeds: int = 1,
    control: bool = False,
    log: Log = print,
    evaluator_factory: str = DEFAULT_FACTORY,
) -> list[Refined]:
    """Refine `trial` or `top` pruned front points of a study (in `order`, see `choose`) with
    `steps` fine-tuning steps each, `seeds` times each (with `control`, each seed's short
    fine-tune too, first); every result (complete, failed or stopped) is stored before the next
    starts. Raises `RefineError` for bad input (nothing refined)."""
    if steps < 1:
        raise RefineError(f"steps = {steps}: must be at least 1")
    if seeds < 1:
        raise RefineError(f"seeds = {seeds}: must be at least 1")
    try:
        study, repository = open_study(study_name, storage_url)
    except (StudyNotFound, StorageError) as error:
        raise RefineError(str(error)) from None
    numbers = choose(study, repository, top, trial, order)
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    # the study's seed decides the baseline's training (and so which cached baseline is used)
    config = study_config(study, frozen[numbers[0]].user_attrs.get("study_seed"))
    records = {r.trial_number: r for r in repository.trials(study_name)}
    baseline = baseline_record(list(records.values()))
    base = (baseline.measurement if baseline else None) or {}
    repository.create_schema()  # the refined table, in a database made before it existed
    limit = refine_timeout_s(config, steps)
    score = selection_score(config)
    log(f"refine: trials {', '.join(map(str, numbers))} of {study_name!r} with {steps} fine-tuning steps each"
        f"{f', {seeds} seeds' if seeds > 1 else ''} (limit {limit:.0f} s per run); the best step is kept, chosen by "
        f"{score.replace('_', ' ')} on training images held back from the run")
    results: list[Refined] = []
    with IsolatedEvaluator(refine_spec(config, steps, evaluator_factory), log=log,
                           memory_limit_mb=config.budget.memory_limit_mb) as evaluator:
        try:
            evaluator.load()
            evaluator.prepare()
        except WorkerFailed as error:  # e.g. the data set is not on this machine any more
            raise RefineError(f"refine: {error}") from None
        for number in numbers:
            record = records[number]
            short = record.measurement or {}
            short_steps = Recipe.from_dict(record.recipe).finetune_steps
            runs, pairs = [], []
            for seed in refine_seeds(frozen[number].user_attrs.get("seed", config.study.seed + number), seeds):
                paired = {}
                plan = ([(short_steps, True)] if control and short_steps != steps else []) + [(steps, False)]
                for run_steps, is_control in plan:
                    done = _run_once(evaluator, repository, study_name, number, record, run_steps, seed, base, short,
                                     control=is_control, log=log)
                    results.append(done)
                    if done.long is not None:
                        paired[done.control] = done.long
                        if not done.control:  # the seeds' spread is the long runs'
                            runs.append(done.long)
                if len(paired) == 2:
                    pairs.append((paired[True][score], paired[False][score]))
            split = next(((r.get("judged_on") or {}).get("split") for r in runs), None) or "held-out"
            if len(runs) > 1:
                log(f"refine: trial {number}: {spread_line(runs, score, split)}")
            if pairs:
                log(f"refine: trial {number}: {paired_line(pairs, score, short_steps, steps, split)}")
    return results


def _run_once(evaluator: IsolatedEvaluator, repository: Repository, study_name: str, number: int, record: Any,
              steps: int, seed: int, base: dict[str, Any], short: dict[str, Any], *, control: bool, log: Log) -> Refined:
    """One refined run of trial `number` with `steps` steps: measured, stored, logged."""
    recipe = refined_recipe(record.recipe, steps)
    what = f"seed {seed}" + (f" control ({steps} steps, as the search)" if control else "")
    try:
        measurement = evaluator.evaluate(recipe, seed=seed).to_dict()
    except (TrialStopped, WorkerFailed) as error:
        status = "stopped" if isinstance(error, TrialStopped) else "failed"
        repository.record_refined(study_name, number, steps=steps, seed=seed, status=status,
                                  recipe=recipe.to_dict(), reason=str(error))
        log(f"refine: trial {number} {what} {status}: {error}")
        return Refined(number, steps, status, str(error), short, None, seed, control)
    drop = base["accuracy"] - measurement["accuracy"] if "accuracy" in base else None
    if "balanced_accuracy" in base:
        measurement["balanced_accuracy_drop"] = base["balanced_accuracy"] - measurement["balanced_accuracy"]
    repository.record_refined(study_name, number, steps=steps, seed=seed, status="complete",
                              recipe=recipe.to_dict(), measurement=measurement, accuracy_drop=drop)
    chosen = measurement.get("build", {})
    split = (measurement.get("judged_on") or {}).get("split", "held-out")
    log(f"refine: trial {number} {what} ({recipe.describe()}): {split} accuracy "
        f"{short.get('accuracy', float('nan')):.4f} after {short.get('finetune_steps_run', 0)} steps -> "
        f"{measurement['accuracy']:.4f} at step {chosen.get('selected_step', measurement['finetune_steps_run'])}"
        f" of {measurement['finetune_steps_run']}; balanced {short.get('balanced_accuracy', float('nan')):.4f}"
        f" -> {measurement['balanced_accuracy']:.4f}; latency {measurement['latency_ms']:.3f} ms "
        f"({measurement['seconds']:.0f} s){test_clause(measurement.get('test'))}")
    return Refined(number, steps, "complete", None, short, measurement, seed, control)


def test_clause(test: dict[str, Any] | None) -> str:
    """'; test accuracy 0.7812, drop +0.61 pts (95%: -1.20 to +2.42)', or '' without a test split."""
    if not test:
        return ""
    low, high = test["accuracy_drop_ci"]
    return (f"; test accuracy {test['accuracy']:.4f}, drop {100 * test['accuracy_drop']:+.2f} pts "
            f"({test['ci_level']:.0%}: {100 * low:+.2f} to {100 * high:+.2f})")


def paired_line(pairs: list[tuple[float, float]], score: str, short_steps: int, steps: int,
                split: str = "held-out") -> str:
    """What the longer fine-tune bought over the short one, seed by seed (same seed, same
    held-back split, best step kept in both): free of the front's selection."""
    gains = [100 * (long - short) for short, long in pairs]
    return (f"{steps} steps against the search's {short_steps} under the same seeds and held-back split: {split} "
            f"{score.replace('_', ' ')} {sum(gains) / len(gains):+.2f} pts on average "
            f"({' / '.join(f'{g:+.2f}' for g in gains)} per seed)")


def spread_line(runs: list[dict[str, Any]], score: str, split: str = "held-out") -> str:
    """Several seeds of one point: the held-out figures' spread, and the run kept."""
    values = [100 * run[score] for run in runs]
    kept = max(reversed(runs), key=selection_key)  # the newest among equals, as chosen_refined keeps
    return (f"{len(runs)} seeds, {split} {score.replace('_', ' ')} "
            f"{' / '.join(f'{v:.2f}' for v in values)}% (mean {sum(values) / len(values):.2f}, spread "
            f"{max(values) - min(values):.2f} pts); the best of these on the held-back images: "
            f"{100 * kept[score]:.2f}%")
