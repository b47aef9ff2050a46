"""The driver's side of the three splits (search/holdout.py) and the `confidence` constraint:
feasibility from the upper end of the validation interval, the too-small-split line, and an
old study (created before the validation split) refused on resume."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import optuna
import pytest

from slimtune.objectives import Measurement
from slimtune.search.config import CONFIG_ATTR, STUDY_FILE_ATTR, StudyFileError, load_config
from slimtune.search.holdout import refuse_old_study, resolution_lines
from slimtune.search.runner import TrialObjective, run_study


def _measurement(accuracy: float, drop_ci: list[float]) -> Measurement:
    return Measurement(accuracy=accuracy, latency_ms=1.0, latency_p95_ms=1.0, latency_repeats=6, peak_memory_mb=1.0,
                       weight_mb=1.0, params=1, macs=1, batch_size=32, balanced_accuracy=accuracy,
                       judged_on={"accuracy_drop": 0.95 - accuracy, "accuracy_drop_ci": drop_ci,
                                  "balanced_accuracy_drop": 0.95 - accuracy, "balanced_accuracy_drop_ci": drop_ci,
                                  "ci_level": 0.95, "examples": 216, "split": "validation"})


class _Evaluator:
    baseline_accuracy = baseline_balanced_accuracy = 0.95

    def evaluate(self, recipe, seed=0):
        # a 1-point drop (within the 2-point constraint) whose interval reaches 2.5 points
        return _measurement(0.94, [-0.005, 0.025])


class _Repository:
    def record_trial(self, **record) -> None:
        pass


@pytest.mark.parametrize("confidence", [None, 0.95])
def test_confidence_makes_infeasible_a_point_the_point_estimate_passes(write_study, confidence) -> None:
    config = load_config(write_study({"constraints": {"max_accuracy_drop": 0.02, "confidence": confidence}}))
    objective = TrialObjective(config, config.search_space(), _Evaluator(), _Repository(), 0, lambda _: None)
    study = optuna.create_study(directions=list(config.objectives.values()))
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    if confidence is None:  # the point estimate: 0.01 - 0.02 <= 0, feasible
        assert trial.constraints == {"accuracy_drop": pytest.approx(-0.01)} and study.best_trials
    else:  # the interval's upper end: 0.025 - 0.02 > 0, infeasible
        assert trial.constraints == {"accuracy_drop": pytest.approx(0.005)} and not study.best_trials


def _evaluator(baseline: float, size: int, classes: list[int] | None = None, validation: bool = True):
    return SimpleNamespace(baseline_accuracy=baseline, baseline_balanced_accuracy=baseline,
                           data={"judged_size": size, "judged_classes": classes,
                                 "validation": {"size": size} if validation else None})


def test_a_split_too_small_for_the_constraint_is_said_in_one_line_with_the_size_it_needs(write_study) -> None:
    config = load_config(write_study({"constraints": {"max_accuracy_drop": 0.01}}))
    (line,) = resolution_lines(config, _evaluator(0.97, 216))
    assert "\n" not in line
    assert line.startswith("accuracy resolution: the validation split (216 examples) cannot resolve "
                           "max_accuracy_drop = 0.01")
    assert "about 4,610 examples would resolve it" in line  # (2 x 1.96)^2 x 0.03 / 0.01^2
    assert resolution_lines(config, _evaluator(0.97, 5000)) == []  # large enough: nothing said
    loose = load_config(write_study({"constraints": {"max_accuracy_drop": 0.05}}))
    assert resolution_lines(loose, _evaluator(0.97, 400)) == []
    # balanced accuracy: a rare class makes the split effectively smaller
    balanced = load_config(write_study({"constraints": {"max_accuracy_drop": None, "max_balanced_accuracy_drop": 0.05}}))
    assert resolution_lines(balanced, _evaluator(0.9, 800, [400, 400])) == []
    (rare,) = resolution_lines(balanced, _evaluator(0.9, 800, [790, 10]))
    assert "max_balanced_accuracy_drop = 0.05" in rare


def _old_study(url: str, config) -> None:
    """A study as a slimtune before the validation split stored it: no validation_share in its
    identity, no validation facts."""
    identity = config.identity()
    identity["workload"].pop("validation_share")
    study = optuna.create_study(study_name=config.study.name, storage=url, directions=list(config.objectives.values()))
    study.set_user_attr(CONFIG_ATTR, identity)
    study.set_user_attr(STUDY_FILE_ATTR, config.model_dump(mode="json"))


def test_an_old_study_is_refused_on_resume_with_one_line(write_study, tmp_path) -> None:
    config = load_config(write_study())
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _old_study(url, config)
    with pytest.raises(StudyFileError) as refused:
        run_study(config, url, progress=False, log=lambda _: None)
    message = str(refused.value)
    assert "\n" not in message
    assert message == ("study 'tiny' was created before slimtune judged trials on a validation split (its trials were "
                       "judged on the test split); start a new study: give study.name another name")
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == 0  # nothing run


def test_a_study_whose_validation_split_changed_is_refused() -> None:
    study = optuna.create_study()
    study.set_user_attr(CONFIG_ATTR, {"workload": {"validation_share": 0.15}})
    study.set_user_attr("slimtune_validation", {"size": 216, "digest": "aaaa"})
    refuse_old_study(study, {"validation": {"size": 216, "digest": "aaaa"}})  # the same split: goes on
    with pytest.raises(StudyFileError, match="the data changed"):
        refuse_old_study(study, {"validation": {"size": 300, "digest": "bbbb"}})


def test_the_table_shows_each_drop_with_its_interval_in_one_column() -> None:
    import pandas as pd

    from slimtune.search.results import accuracy_columns, format_table

    measurement = {"latency_ms": 1.0, "accuracy": 0.98, "judged_on": {
        "accuracy_drop": 0.0093, "accuracy_drop_ci": [-0.004, 0.022], "split": "validation"}}
    test = {"points": {"3": {"accuracy": 0.975, "accuracy_drop": 0.0194, "accuracy_drop_ci": [0.005, 0.0337],
                             "balanced_accuracy": 0.97, "balanced_accuracy_drop": 0.02,
                             "balanced_accuracy_drop_ci": [0.0, 0.04]}}}
    row = {"trial": 3, "latency_ms": 1.0, "accuracy": 0.98, "accuracy_drop_pts": 0.93,
           **accuracy_columns(measurement, 3, test)}
    assert row["test_accuracy_drop_ci_low_pts"] == pytest.approx(0.5)
    header, line = format_table(pd.DataFrame([row])).splitlines()
    assert header.split() == ["trial", "latency_ms", "val_accuracy", "val_drop_pts", "test_accuracy", "test_drop_pts"]
    assert "+0.93 [-0.4,+2.2]" in line and "+1.94 [+0.5,+3.4]" in line and "0.9750" in line
