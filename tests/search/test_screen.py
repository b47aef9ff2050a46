"""The target screen: what it measures decides what the search may choose; a setting that hangs
is dropped with its reason; explicit choices stay the ceiling; a study screens once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import markupsafe
import optuna
import pytest

from slimtune.search.cli import main
from slimtune.search.config import load_config, parse_config
from slimtune.search.report.html_report import write_report
from slimtune.search.runner import run_study
from slimtune.search.screen import narrow
from slimtune.search.screen.tables import ladder_line
from slimtune.search.screen.settings import settings_of, wanted
from slimtune.spaces import Recipe, SearchSpace
from slimtune.storage import Repository, connect
from tests.conftest import TINY_STUDY

#: two deployment settings that compute the same thing (fp32, contiguous or channels_last),
#: judged on latency alone; no pruning, so no pruned phase and no shapes
TWO_FORMATS = {
    "study": {"n_trials": 2},
    "objectives": {"latency_ms": "minimize", "accuracy": "maximize"},
    "space": {"prune_ratio": [], "kd_temperature": [], "quantization": ["none"],
              "memory_format": ["contiguous", "channels_last"]},
    "screen": {"enabled": True, "budget_s": 120, "setting_timeout_s": 60},
}


def _run(path: Path, url: str, factory: str | None = None, **kwargs) -> tuple[optuna.Study, list[str]]:
    lines: list[str] = []
    extra = {"evaluator_factory": factory} if factory else {}
    study = run_study(load_config(path), url, progress=False, log=lines.append, **extra, **kwargs)
    return study, lines


@pytest.mark.parametrize("slow, fast", [("channels_last", "contiguous"), ("contiguous", "channels_last")])
def test_the_screen_keeps_and_drops_by_what_it_measures(write_study: Callable[..., Path], tmp_path: Path,
                                                        slow: str, fast: str) -> None:
    """Whichever memory format really runs slower on this target (each forward runs the model 20 times) is
    dropped with the measured ratio; the search then samples only the other."""
    url = f"sqlite:///{tmp_path / 'screen.db'}"
    study, lines = _run(write_study(TWO_FORMATS), url, f"tests.search.faults:slow_{slow}")
    result = Repository(connect(url)).screen(study.study_name).result
    rows = {row["setting"]["memory_format"]: row for row in result["settings"]}
    assert rows[fast]["kept"] and not rows[slow]["kept"]
    assert rows[slow]["unpruned"]["latency_ms"] > 1.5 * rows[fast]["unpruned"]["latency_ms"]
    assert f"x slower than fp32 {fast} eager" in rows[slow]["reason"]
    assert result["kept"]["memory_format"] == [fast]
    assert any(line.startswith(f"screen: dropped fp32 {slow} eager: ") for line in lines)
    for trial in study.trials:
        assert Recipe.from_dict(trial.user_attrs["recipe"]).memory_format == fast or trial.number == 0


def test_a_hanging_setting_is_dropped_with_its_reason_and_the_study_goes_on(write_study, tmp_path) -> None:
    path = write_study({**TWO_FORMATS, "space": {**TWO_FORMATS["space"], "memory_format": ["contiguous"],
                                                 "precision": ["fp32", "bf16"]},
                        "screen": {"enabled": True, "budget_s": 120, "setting_timeout_s": 15}})
    url = f"sqlite:///{tmp_path / 'hang.db'}"
    study, lines = _run(path, url, "tests.search.faults:hangs_on_bf16")
    result = Repository(connect(url)).screen(study.study_name).result
    bf16 = next(row for row in result["settings"] if row["setting"]["precision"] == "bf16")
    assert not bf16["kept"]
    assert bf16["reason"].startswith("failed: timeout after ") and "(injected hang)" in bf16["reason"]
    assert result["kept"]["precision"] == ["fp32"]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_explicit_choices_are_never_widened() -> None:
    """`narrow` keeps only values the space had, in its order, whatever a result lists."""
    space = SearchSpace(precision=("bf16", "fp32"), quantization=("none",), runtime=("eager", "compile"))
    result = {"kept": {"precision": ["fp16", "fp32", "bf16"], "quantization": ["none", "int8_dynamic"],
                       "memory_format": ["contiguous", "channels_last"], "runtime": ["compile"]}}
    narrowed = narrow(space, result)
    assert narrowed.precision == ("bf16", "fp32")
    assert narrowed.quantization == ("none",)
    assert narrowed.memory_format == ("contiguous",)
    assert narrowed.runtime == ("compile",)
    # the baseline is still measured in the first runtime the target listed
    assert narrowed.baseline_recipe() == Recipe(runtime="eager") and not narrowed.contains_baseline()


def test_a_resumed_study_and_a_second_worker_reuse_the_stored_screen(write_study, tmp_path) -> None:
    path = write_study(TWO_FORMATS)
    url = f"sqlite:///{tmp_path / 'reuse.db'}"
    _, first = _run(path, url, "tests.search.faults:slow_channels_last")
    assert any(line.startswith("screen: measuring 2 deployment settings") for line in first)
    stored = Repository(connect(url)).screen("tiny").result

    resumed = write_study({**TWO_FORMATS, "study": {"n_trials": 3}}, name="more.toml")
    study, second = _run(resumed, url)  # no slow factory: a new screen would keep both formats
    assert not any(line.startswith("screen: measuring") for line in second)
    assert any(line.startswith("screen: read from storage") for line in second)
    assert len(study.trials) == 3
    assert Recipe.from_dict(study.trials[2].user_attrs["recipe"]).memory_format == "contiguous"

    worker_file = write_study({**TWO_FORMATS, "study": {"n_trials": 4}}, name="worker.toml")
    study, third = _run(worker_file, url, join=True)  # what `slimtune worker` runs
    assert any(line.startswith("screen: read from storage") for line in third)
    assert Repository(connect(url)).screen("tiny").result == stored


def test_a_study_without_space_runs_and_the_screen_prints(write_study, tmp_path, capsys) -> None:
    """No [space]: every knob searched over all it allows, narrowed by the probe and the screen."""
    path = write_study({"study": {"n_trials": 2}, "space": {field: None for field in TINY_STUDY["space"]},
                        "screen": {"enabled": None, "budget_s": 20, "setting_timeout_s": 20}})
    assert "prune_ratio" not in path.read_text() and "precision" not in path.read_text()
    url = f"sqlite:///{tmp_path / 'open.db'}"
    study, lines = _run(path, url)
    assert len(study.trials) == 2 and study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert any(line.startswith("screen: the search's choices: ") for line in lines)
    # n_trials = 2 leaves room for one winner after the baseline, and it ran as trial 1; unless the
    # screen kept a single setting (what it keeps depends on what its 20 s measured: on a loaded
    # CI machine it once kept one), when there is nothing to start from but that
    result = Repository(connect(url)).screen("tiny").result
    winners = [line for line in lines if line.startswith("screen: the first trials start from its winners: ")]
    if len(result["deployments"]) > 1:
        assert len(winners) == 1 and "=" in winners[0] and ";" not in winners[0]
        assert study.trials[1].user_attrs.get("screen_winner") is True
    else:
        assert len(result["deployments"]) == 1 and not winners
    assert main(["screen", "tiny", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Target screen: ") and "fp32 contiguous eager" in out and "Search choices:" in out
    page = write_report("tiny", url, tmp_path / "report.html").read_text()  # the study page, as one file
    assert "<h2>Target screen</h2>" in page and "fp32 contiguous eager" in page
    # where the prune ladder starts, on the page as in the CLI's table, when the screen timed below the top
    below = ladder_line(result)
    assert (below is not None) == (len((result.get("ladder") or {}).get("latency_ms", {})) > 1)
    assert below is None or (below in out and str(markupsafe.escape(below)) in page)


def test_an_absent_field_means_every_value() -> None:
    raw = {section: dict(fields) for section, fields in TINY_STUDY.items() if section != "space"}
    space = parse_config(raw).search_space()
    assert space.precision == ("fp32", "tf32", "fp16", "bf16")
    assert space.prune_ratio == (0.0, 0.9) and space.kd_temperature == (1.0, 20.0)
    assert wanted(space, None) and not wanted(space, False)
    off = parse_config({**raw, "space": {"prune_ratio": [], "precision": ["fp32"], "quantization": ["none"],
                                         "memory_format": ["contiguous"]}}).search_space()
    assert off.prune_ratio is None and len(settings_of(off)) == 1 and not wanted(off, None)
    assert dataclasses.replace(off, precision=("fp32", "bf16")) != off


def test_the_search_starts_with_a_prune_ladder_from_the_screens_pruned_winner(write_study, tmp_path) -> None:
    """The first trial is the screened setting at the ratio the screen timed it fastest (the top,
    or a step or two below); it loses its accuracy there, so the next bisects down to the middle,
    and the one after bisects again from what that showed."""
    # one deployment setting: the screen is asked for, to time it pruned
    path = write_study({"study": {"n_trials": 4}, "constraints": {"max_accuracy_drop": 0.3},
                        "space": {"prune_ratio": [0.1, 0.9], "quantization": ["none"], "kd_temperature": []},
                        "screen": {"enabled": True, "budget_s": 60, "setting_timeout_s": 30}})
    url = f"sqlite:///{tmp_path / 'ladder.db'}"
    study, lines = _run(path, url, "tests.search.faults:loses_accuracy_past_0_6")
    ratios = [t.params.get("prune_ratio") for t in study.trials]
    # the screen timed the setting at 0.9, 0.85 and 0.8: on a busy CPU any of them can be fastest
    timed = Repository(connect(url)).screen("tiny").result["ladder"]["latency_ms"]
    top = ratios[1]
    assert "0.9" in timed and set(timed) <= {"0.9", "0.85", "0.8"} and timed[str(top)] == min(timed.values())
    middle = round((0.1 + top) / 2, 4)
    # the middle holds or gives: either way, a bisection
    assert ratios[2] == middle and ratios[3] in (round((0.1 + middle) / 2, 4), round((middle + top) / 2, 4))
    assert all(t.user_attrs.get("prune_ladder") for t in study.trials[1:])
    assert f"prune ladder: trial 1 at prune {top:g} gave; next rung at prune {middle:g}" in lines
    # it gave: infeasible, or stopped as hopeless before its fine-tune ended
    one = study.trials[1]
    assert one.state == optuna.trial.TrialState.FAIL or one.constraints["accuracy_drop"] > 0
