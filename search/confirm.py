"""Confirmation, the driver's side: re-measure the front against the baseline and store it.

A front is a set of ratios to one baseline measured once; each trial was timed at another
moment of the machine's day. When a study ends (and on `slimtune confirm STUDY`), one worker
process rebuilds the baseline and every front point and times them interleaved, in rounds
(objectives/confirm.py). Here the rounds become figures:

- a point's confirmed latency is the median of its per-round medians, with the 95%
  order-statistic interval of those medians (rounds are the independent units: drift between
  rounds widens the interval instead of hiding in it; 6 rounds are the fewest that give a 95%
  interval);
- its speed-up is the median over rounds of (baseline / point) within one round, with the same
  interval over the per-round ratios: the baseline and the point were timed seconds apart, so
  what drifts between rounds cancels;
- it is flagged when its trial's own figure tells another story: ranked by the trials' latencies
  it stands elsewhere on the front than the confirmed intervals put it, or its trial's speed-up
  is off the confirmed one by more than the confirmed interval spans (results.disagreeing). A
  trial latency merely outside the confirmed interval is no mark: on a shared CPU it is normal.

The rows replace the study's previous confirmation (storage table `slimtune_confirmations`).
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import optuna

from slimtune.objectives.latency import median_interval
from slimtune.spaces import Recipe
from slimtune.storage import Repository, TrialRecord

from slimtune.search.config import STUDY_FILE_ATTR, StudyConfig
from slimtune.search.deadline import RunBudget, TimedOut
from slimtune.search.isolated import IsolatedEvaluator
from slimtune.search.results import baseline_record, disagreeing

#: interleaved rounds; 6 is the fewest whose min..max is a 95% interval of the median
DEFAULT_ROUNDS = 6
Log = Callable[[str], None]


class NothingToConfirm(LookupError):
    """The study has no completed baseline or no feasible front."""


def _interval(values: list[float]) -> tuple[float | None, float | None]:
    interval = median_interval(sorted(values))
    return interval if interval is not None else (None, None)


def summarise(round_medians: list[list[float]], trials: list[TrialRecord], blocks: list[int | None] | None = None,
              batch_size: int | None = None) -> list[dict[str, Any]]:
    """Confirmed figures, one row per point; `round_medians[0]` and `trials[0]` are the baseline's.
    Pure: tested on planted numbers."""
    base = round_medians[0]
    rows = []
    for index, (medians, record) in enumerate(zip(round_medians, trials)):
        ratios = [b / m for b, m in zip(base, medians)]
        low, high = _interval(medians)
        speed_low, speed_high = _interval(ratios)
        rows.append({
            "trial_number": record.trial_number,
            "is_baseline": index == 0,
            "latency_ms": statistics.median(medians),
            "latency_ci_low_ms": low,
            "latency_ci_high_ms": high,
            "speedup_x": statistics.median(ratios),
            "speedup_ci_low_x": speed_low,
            "speedup_ci_high_x": speed_high,
            "trial_latency_ms": record.measurement["latency_ms"],
            "flagged": False,  # set below, once every row is known
            "rounds": len(medians),
            "details": {"round_medians_ms": medians, "block": (blocks or [None] * len(trials))[index],
                        "batch_size": batch_size},
        })
    marked = disagreeing({row["trial_number"]: row for row in rows})
    return [{**row, "flagged": row["trial_number"] in marked} for row in rows]


def points_to_confirm(study: optuna.Study, repository: Repository) -> list[TrialRecord]:
    """The baseline first, then every completed point of the feasible front (trial order)."""
    records = {r.trial_number: r for r in repository.trials(study.study_name)}
    baseline = baseline_record(list(records.values()))
    if baseline is None:
        raise NothingToConfirm(f"study {study.study_name!r} has no completed baseline trial to confirm against")
    front = sorted(t.number for t in study.best_trials)
    points = [records[n] for n in front if n in records and records[n].status == "complete" and records[n].measurement
              and n != baseline.trial_number]
    if not points:
        raise NothingToConfirm(f"study {study.study_name!r} has no feasible front point besides the baseline")
    return [baseline, *points]


def study_config(study: optuna.Study) -> StudyConfig:
    """The study file as last run (the budget's measurement settings included), else the stored
    identity; raises `StudyFileError` for a study slimtune did not create."""
    from slimtune.search.config import CONFIG_ATTR, StudyFileError, parse_config

    raw = study.user_attrs.get(STUDY_FILE_ATTR) or study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise StudyFileError(f"study {study.study_name!r} has no stored configuration; it was not created by slimtune run")
    if "seed" not in raw.get("study", {}):
        raw = {**raw, "study": {**raw["study"], "seed": study.user_attrs.get("study_seed", 0)}}
    return parse_config(raw, f"study {study.study_name!r}", stored=True)


def confirm_study(study: optuna.Study, repository: Repository, config: StudyConfig, evaluator: IsolatedEvaluator, *,
                  rounds: int = DEFAULT_ROUNDS, log: Log = print) -> list[dict[str, Any]]:
    """Re-measure the baseline and the front interleaved in `evaluator`'s worker (loaded and
    prepared), store the confirmed rows and return them. Raises `NothingToConfirm`, and what the
    worker raises (`WorkerFailed`, `TrialStopped`) when a point cannot be rebuilt."""
    points = points_to_confirm(study, repository)
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    seeds = [frozen[p.trial_number].user_attrs.get("seed", config.study.seed + p.trial_number) for p in points]
    log(f"confirming the baseline and {len(points) - 1} front points in {rounds} interleaved rounds ...")
    result = evaluator.confirm([Recipe.from_dict(p.recipe) for p in points], seeds, rounds)
    rows = summarise(result["round_medians_ms"], points, result.get("blocks"), result.get("batch_size"))
    repository.record_confirmations(study.study_name, rows)
    flagged = [row["trial_number"] for row in rows if row["flagged"]]
    log(f"confirmed in {result['seconds']:.1f} s" + (f"; the trial's own latency would change the rank or "
                                                      f"speed-up of: {', '.join(map(str, flagged))}" if flagged else ""))
    return rows


def confirm_at_end(study: optuna.Study, repository: Repository, config: StudyConfig, evaluator: IsolatedEvaluator,
                   log: Log, budget: RunBudget | None = None) -> None:
    """The runner's hook when a study's run ends: confirm unless the study file says
    `confirm_rounds = 0`; a failure is reported, never raised (the trials are what the run was for).
    Under a `--timeout` (`budget`), it runs only when its estimate fits in the time left, and the
    deadline stops it; `slimtune confirm STUDY` confirms later."""
    from slimtune.objectives import TrialStopped
    from slimtune.search.isolated import WorkerFailed

    rounds = config.budget.confirm_rounds
    if not rounds:
        return
    if budget is not None:
        needed = budget.confirmation_estimate(study, restart=not evaluator.alive)
        left = budget.deadline.left()
        if needed > left:
            log(f"confirmation skipped: about {needed:.0f} s needed (estimated), {max(0.0, left):.0f} s left of "
                f"{budget.deadline.timed_out().args[0]}; `slimtune confirm {study.study_name}` runs it")
            return
    try:
        with evaluator.until(budget.deadline if budget is not None else None):
            confirm_study(study, repository, config, evaluator, rounds=rounds, log=log)
    except (NothingToConfirm, WorkerFailed, TrialStopped) as error:
        log(f"confirmation skipped: {error}")
    except TimedOut as stopped:
        log(f"confirmation stopped at {stopped.args[0]}; `slimtune confirm {study.study_name}` runs it")
