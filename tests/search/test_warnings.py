"""Third-party warnings in a study's output: each once per run, as one line, from the worker
process as from the driver."""

from __future__ import annotations

from slimtune.search.config import load_config
from slimtune.search.runner import run_study
from tests.search.noisy import MESSAGE


def test_a_warning_repeated_in_every_quantized_trial_is_shown_once(write_study, tmp_path, capfd):
    """Two quantized trials, 20 warnings each in the worker process: one line in the output."""
    url = f"sqlite:///{tmp_path / 'warnings.db'}"
    config = load_config(write_study({"study": {"n_trials": 3}, "space": {"quantization": ["int8_weight_only"]}}))
    study = run_study(config, url, progress=False, log=print, evaluator_factory="tests.search.noisy:noisy")
    assert sum(t.user_attrs.get("status") == "complete" for t in study.trials) == 3
    out, err = capfd.readouterr()
    output = out + err
    assert output.count("PlainLayout is deprecated") == 1, output[-3000:]
    [line] = [line for line in output.splitlines() if "PlainLayout" in line]
    assert line == f"warning from noisy (UserWarning, shown once per run): {MESSAGE}"
