"""End a study whose front has stopped improving (the study file's `[study] stop_when`).

The rule: after `over_trials` finished trials of this run (failed ones count: they were
spent), if the hypervolume of the feasible front rose by less than `hypervolume_gain_below`
(a fraction of the hypervolume at the start of that window), the study stops after the trial
at hand and says so. The window counts only trials of this run, so resuming a stopped study
with more trials runs at least `over_trials` before the rule can stop it again.
"""

from __future__ import annotations

from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from slimtune.search.hypervolume import study_hypervolume

#: the Optuna study user attribute that records why and when a run stopped early
STOPPED_ATTR = "slimtune_stopped"
FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


class StopWhenFrontStalls:
    """An Optuna callback; `start(study)` takes the hypervolume the window starts from."""

    def __init__(self, gain_below: float, over_trials: int, log: Callable[[str], None] = print):
        self.gain_below = gain_below
        self.over_trials = over_trials
        self.log = log
        self.history: list[float | None] = []
        self.stopped: str | None = None

    def start(self, study: optuna.Study) -> "StopWhenFrontStalls":
        self.history = [study_hypervolume(study)]
        return self

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in FINISHED or self.stopped:
            return
        self.history.append(study_hypervolume(study))
        if len(self.history) <= self.over_trials:
            return
        before, now = self.history[-1 - self.over_trials], self.history[-1]
        if before is None or now is None or before <= 0:
            return  # no front to judge yet (the baseline has not completed)
        gain = (now - before) / before
        if gain < self.gain_below:
            self.stopped = (
                f"stopped: the front stopped improving: hypervolume {before:.4f} -> {now:.4f} "
                f"(+{100 * gain:.2f}%) over the last {self.over_trials} trials, below "
                f"stop_when.hypervolume_gain_below = {100 * self.gain_below:g}%"
            )
            study.set_user_attr(STOPPED_ATTR, {"after_trial": trial.number, "reason": self.stopped})
            self.log(f"after trial {trial.number}: {self.stopped}")
            study.stop()
