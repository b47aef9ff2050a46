"""The validation and test splits, the driver's side (objectives/splits.py carves them).

- Before the first trial: one line saying what the validation split costs the training data,
  and one line per accuracy constraint the split is too small to resolve (a typical candidate's
  interval of the drop wider than the allowed drop), with the size it would need.
- On resume: a study created before the validation split is refused (its trials were judged on
  the data set's held-out split, so there is no untouched split left to report its front on),
  and so is one whose validation split would now differ (other data).
- When the search ends: the baseline and each point of the feasible front are rebuilt in the
  worker and measured on the test split once (Evaluator.test_figures); the figures, with the
  paired intervals of the drops, are stored with the study (`TEST_ATTR`) and are what `pareto`
  and export show as "test".
"""

from __future__ import annotations

from typing import Any, Callable

import optuna

from slimtune.objectives import TrialStopped
from slimtune.objectives.intervals import needed_examples, typical_width
from slimtune.spaces import Recipe
from slimtune.storage import Repository

from slimtune.search.config import CONFIG_ATTR, TEST_ATTR, VALIDATION_ATTR, StudyConfig, StudyFileError
from slimtune.search.deadline import RunBudget, TimedOut
from slimtune.search.isolated import IsolatedEvaluator, WorkerFailed

Log = Callable[[str], None]


def refuse_old_study(study: optuna.Study, data: dict[str, Any]) -> None:
    """Raise `StudyFileError` (one line) for a study that cannot go on with this data: created
    before the validation split, or whose validation split differs from the one `data` (the
    worker's answer to "load") describes."""
    identity = study.user_attrs.get(CONFIG_ATTR) or {}
    stored = study.user_attrs.get(VALIDATION_ATTR)
    if stored is None and "validation_share" not in identity.get("workload", {"validation_share": None}):
        raise StudyFileError(
            f"study {study.study_name!r} was created before slimtune judged trials on a validation split (its trials "
            f"were judged on the test split); start a new study: give study.name another name")
    facts = data.get("validation")
    if stored is not None and facts is not None and stored.get("digest") != facts.get("digest"):
        raise StudyFileError(
            f"study {study.study_name!r}: its validation split ({stored.get('size')} examples) is not the one this data "
            f"gives ({facts.get('size')}): the data changed; start a new study: give study.name another name")


def resolution_lines(config: StudyConfig, evaluator: IsolatedEvaluator) -> list[str]:
    """One line per accuracy constraint the validation split cannot resolve: a typical
    candidate's interval of the drop (objectives/intervals.typical_width) wider than the
    allowed drop, with the split size that would resolve it."""
    data, constraints = evaluator.data, config.constraints
    level = constraints.confidence or 0.95
    size = int(data.get("judged_size") or 0)
    classes = [c for c in (data.get("judged_classes") or []) if c > 0]
    split = "validation split" if data.get("validation") else "held-out split"
    lines = []
    checks = [("max_accuracy_drop", constraints.max_accuracy_drop, evaluator.baseline_accuracy, size)]
    if classes:  # balanced accuracy weighs each class alike: its effective size is the harmonic one
        effective = round(len(classes) ** 2 / sum(1.0 / c for c in classes))
        checks.append(("max_balanced_accuracy_drop", constraints.max_balanced_accuracy_drop,
                       evaluator.baseline_balanced_accuracy, effective))
    for name, max_drop, baseline, examples in checks:
        if not max_drop or baseline is None or not examples:
            continue
        error = 1.0 - baseline
        width = typical_width(error, examples, max_drop, level)
        if width > max_drop:
            need = needed_examples(error, max_drop, level) * size // max(examples, 1)
            lines.append(
                f"accuracy resolution: the {split} ({size} examples) cannot resolve {name} = {max_drop:g}: a typical "
                f"candidate's {level:.0%} interval of the drop is about {100 * width:.1f} points wide (wider than "
                f"{100 * max_drop:g}); about {need:,} examples would resolve it")
    return lines


def measure_test_at_end(study: optuna.Study, repository: Repository, config: StudyConfig,
                        evaluator: IsolatedEvaluator, log: Log, budget: RunBudget | None = None) -> dict[str, Any] | None:
    """Measure the baseline and the feasible front on the test split once, store the figures with
    the study and log them; a failure is reported, never raised. None when there is nothing to
    measure or no test split. Under a `--timeout` (`budget`) it runs only when its estimate fits in
    the time left, and the deadline stops it; `slimtune confirm STUDY` measures it later."""
    if not evaluator.data.get("validation"):
        return None
    if budget is None:
        return _measure_test(study, repository, config, evaluator, log)
    needed, left = budget.test_estimate(study, restart=not evaluator.alive), budget.deadline.left()
    if needed > left:
        log(f"test split skipped: about {needed:.0f} s needed (estimated), {max(0.0, left):.0f} s left; "
            f"`slimtune confirm {study.study_name}` measures it")
        return None
    try:
        with evaluator.until(budget.deadline):
            return _measure_test(study, repository, config, evaluator, log)
    except TimedOut as stopped:
        log(f"test split stopped at {stopped.args[0]}; `slimtune confirm {study.study_name}` measures it")
        return None


def _measure_test(study: optuna.Study, repository: Repository, config: StudyConfig,
                  evaluator: IsolatedEvaluator, log: Log) -> dict[str, Any] | None:
    from slimtune.search.confirm import NothingToConfirm, points_to_confirm

    try:
        points = points_to_confirm(study, repository)
    except NothingToConfirm as error:
        log(f"test split skipped: {error}")
        return None
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    seeds = [frozen[p.trial_number].user_attrs.get("seed", config.study.seed + p.trial_number) for p in points]
    log(f"test split: measuring the baseline and {len(points) - 1} front points once ...")
    try:
        result = evaluator.test([Recipe.from_dict(p.recipe) for p in points], seeds)
    except (WorkerFailed, TrialStopped) as error:
        log(f"test split skipped: {error}")
        return None
    stored = {key: value for key, value in result.items() if key != "points"}
    stored["baseline_trial"] = points[0].trial_number
    stored["points"] = {str(p.trial_number): figures for p, figures in zip(points, result["points"])}
    study.set_user_attr(TEST_ATTR, stored)
    for point in points[1:]:
        figures = stored["points"][str(point.trial_number)]
        low, high = figures["accuracy_drop_ci"]
        log(f"test split ({stored['examples']} examples): trial {point.trial_number} accuracy {figures['accuracy']:.4f}, "
            f"drop {100 * figures['accuracy_drop']:+.2f} pts ({stored['ci_level']:.0%}: {100 * low:+.2f} to {100 * high:+.2f})")
    return stored


def test_figures(study: optuna.Study) -> dict[str, Any] | None:
    """What `measure_test_at_end` stored, or None."""
    return study.user_attrs.get(TEST_ATTR)
