"""run_study paths the CLI tests do not reach."""

from __future__ import annotations

import optuna

from slimtune.search.config import load_config
from slimtune.search.runner import run_study
from slimtune.spaces import Recipe


def test_baseline_outside_the_space_is_still_trial_0(write_study, tmp_path):
    """precision = ["bf16", "fp16"] has no fp32: trial 0 is measured from the baseline recipe
    instead of sampled, and the study goes on."""
    path = write_study({"study": {"n_trials": 2}, "space": {"precision": ["bf16", "fp16"], "quantization": ["none"]}})
    url = f"sqlite:///{tmp_path / 'runner.db'}"
    study = run_study(load_config(path), url, progress=False, log=lambda _: None)
    first, second = sorted(study.trials, key=lambda t: t.number)
    assert first.state == optuna.trial.TrialState.COMPLETE
    assert Recipe.from_dict(first.user_attrs["recipe"]).is_baseline
    assert first.params == {}
    assert second.state == optuna.trial.TrialState.COMPLETE
    assert Recipe.from_dict(second.user_attrs["recipe"]).precision in ("bf16", "fp16")
