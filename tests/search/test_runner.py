"""run_study paths the CLI tests do not reach."""

from __future__ import annotations

import optuna

from slimtune.search.config import load_config
from slimtune.search.runner import run_study
from slimtune.spaces import Recipe


def test_baseline_outside_the_space_is_still_trial_0(write_study, tmp_path):
    """precision = ["bf16", "fp16"] has no fp32: trial 0 is measured from the baseline recipe
    instead of sampled, and the study goes on."""
    path = write_study({"study": {"n_trials": 2}, "space": {"precision": ["bf16", "fp16"], "quantization": None}})
    url = f"sqlite:///{tmp_path / 'runner.db'}"
    study = run_study(load_config(path), url, progress=False, log=lambda _: None)
    first, second = sorted(study.trials, key=lambda t: t.number)
    assert first.state == optuna.trial.TrialState.COMPLETE
    assert Recipe.from_dict(first.user_attrs["recipe"]).is_baseline
    assert first.params == {}
    assert second.state == optuna.trial.TrialState.COMPLETE
    assert Recipe.from_dict(second.user_attrs["recipe"]).precision in ("bf16", "fp16")


def test_ctrl_c_keeps_finished_trials_and_records_the_interrupted_one(write_study, tmp_path, monkeypatch):
    """Ctrl-C arrives as KeyboardInterrupt inside a trial: it propagates (the CLI exits 130),
    trial 0 stays complete, and the interrupted trial has its slimtune row."""
    import pytest

    from slimtune.objectives import Evaluator
    from slimtune.storage import Repository, connect

    real_evaluate = Evaluator.evaluate

    def evaluate(self, recipe, seed=0):
        if not recipe.is_baseline:
            raise KeyboardInterrupt
        return real_evaluate(self, recipe, seed)

    monkeypatch.setattr(Evaluator, "evaluate", evaluate)
    url = f"sqlite:///{tmp_path / 'interrupted.db'}"
    with pytest.raises(KeyboardInterrupt):
        run_study(load_config(write_study()), url, progress=False, log=lambda _: None)
    rows = {r.trial_number: r for r in Repository(connect(url)).trials("tiny")}
    assert rows[0].status == "complete"
    assert rows[1].status == "interrupted"
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
