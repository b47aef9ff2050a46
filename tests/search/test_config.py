"""The study file: each mistake is one `StudyFileError` line naming the field and what is allowed."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from slimtune.search.config import StudyConfig, StudyFileError, load_config

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def error_of(path: Path, overrides: dict[str, Any] | None = None) -> str:
    with pytest.raises(StudyFileError) as caught:
        load_config(path, overrides)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


def test_the_defaults_of_the_test_study_validate(write_study: Callable[..., Path]) -> None:
    config = load_config(write_study())
    assert isinstance(config, StudyConfig)
    assert config.study.name == "tiny"
    assert config.space.prune_ratio == [0.0, 0.6]
    space = config.search_space()
    assert space.quantization == ("none", "int8_weight_only")
    assert space.finetune_steps == 20


@pytest.mark.parametrize(
    "changes, expected",
    [
        pytest.param({"space": {"prune_sparsity": [0.0, 0.5]}},
                     ["space.prune_sparsity: unknown field", "allowed: drop_layers, prune_ratio, prune_importance"],
                     id="unknown knob"),
        pytest.param({"spaces": {"prune_ratio": [0.0, 0.5]}},
                     ["spaces: unknown field", "allowed: study, target, workload"], id="unknown section"),
        pytest.param({"space": {"prune_ratio": [0.0, 1.5]}},
                     ["space.prune_ratio = [0.0, 1.5]", "must lie within [0.0, 0.9]"], id="prune_ratio out of range"),
        pytest.param({"space": {"prune_ratio": [-0.1, 0.5]}},
                     ["space.prune_ratio", "must lie within [0.0, 0.9]"], id="prune_ratio below range"),
        pytest.param({"space": {"prune_ratio": [0.6, 0.1]}},
                     ["space.prune_ratio = [0.6, 0.1]", "low <= high"], id="reversed range"),
        pytest.param({"space": {"kd_temperature": [8.0, 2.0]}},
                     ["space.kd_temperature", "low <= high"], id="reversed temperature"),
        pytest.param({"space": {"quantization": ["none", "int3"]}},
                     ["space.quantization", "'int3'", "'int8_weight_only'", "'int4_weight_only'"],
                     id="unknown quantization choice"),
        pytest.param({"space": {"precision": ["fp32", "fp32"]}},
                     ["space.precision", "without repeats"], id="repeated choice"),
        pytest.param({"objectives": {"speed": "maximize"}},
                     ["objectives", "unknown objective 'speed'", "allowed: accuracy, balanced_accuracy, latency_ms"],
                     id="unknown objective"),
        pytest.param({"objectives": {"latency_ms": "fastest"}},
                     ["objectives.latency_ms", "'minimize'", "'maximize'"], id="unknown direction"),
        pytest.param({"study": {"sampler": "cmaes"}},
                     ["study.sampler = 'cmaes'", "'tpe'", "'nsga2'", "'gp'", "'random'"], id="unknown sampler"),
        pytest.param({"study": {"name": "has space"}}, ["study.name = 'has space'"], id="bad study name"),
        pytest.param({"study": {"n_trials": 0}}, ["study.n_trials = 0", "greater than 0"], id="no trials"),
        pytest.param({"target": {"device": "tpu"}},
                     ["target.device = 'tpu'", "'cpu', 'cuda' or 'cuda:N'"], id="bad target.device"),
        pytest.param({"target": {"runtimes": ["eager", "cudagraphs"]}},
                     ["target.runtimes", "'cudagraphs' needs a CUDA device", "allowed on cpu: eager, compile"],
                     id="cudagraphs on cpu"),
        pytest.param({"constraints": {"max_accuracy_drop": 2.0}},
                     ["constraints.max_accuracy_drop = 2.0", "1"], id="accuracy drop over 100%"),
        pytest.param({"workload": {"input_shape": [8, 8]}}, ["workload.input_shape"], id="2-d input shape"),
        pytest.param({"workload": {"model": None}}, ["workload.model: required field is missing"],
                     id="missing workload.model"),
    ],
)
def test_a_bad_field_gives_one_line_naming_it(
    write_study: Callable[..., Path], changes: dict[str, dict[str, Any]], expected: list[str]
) -> None:
    message = error_of(write_study(changes))
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_missing_workload_section(write_study: Callable[..., Path]) -> None:
    path = write_study()
    blocks = path.read_text().split("\n\n")
    path.write_text("\n\n".join(block for block in blocks if not block.startswith("[workload]")))
    assert "[workload]" not in path.read_text() and "[space]" in path.read_text()
    assert error_of(path) == f"{path}: workload: required field is missing"


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[study]\nname = "x"\nn_trials = = 3\n')
    message = error_of(path)
    assert "not valid TOML" in message and "line 3" in message


def test_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    assert error_of(path) == f"{path}: study file not found"


def test_overrides_are_validated_like_the_file(write_study: Callable[..., Path]) -> None:
    path = write_study()
    message = error_of(path, {"study.sampler": "annealing", "study.n_trials": None})
    assert "study.sampler = 'annealing'" in message
    config = load_config(path, {"study.n_trials": 7, "study.seed": None, "study.sampler": "tpe"})
    assert (config.study.n_trials, config.study.seed, config.study.sampler) == (7, 0, "tpe")


def test_an_override_into_a_section_that_is_not_a_table_is_a_study_file_error(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text('study = "digits"\n')
    with pytest.raises(StudyFileError, match="study"):
        load_config(path, {"study.n_trials": 5})


def test_cudagraphs_on_cpu_names_the_field_without_dumping_the_file(write_study: Callable[..., Path]) -> None:
    path = write_study({"target": {"runtimes": ["eager", "cudagraphs"]}})
    message = error_of(path)
    assert message.startswith(f"{path}: target.runtimes")
    assert "slimtune:small_cnn" not in message  # the rest of the file is no part of this error


def test_relative_paths_resolve_against_the_study_file_folder(
    write_study: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the study file's folder
    path = write_study({"workload": {"data_root": "data/cifar"}, "baseline": {"checkpoint": "../ckpt/base.pt"}})
    config = load_config(os.path.relpath(path, elsewhere))
    assert config.workload.data_root == str((tmp_path / "data" / "cifar").resolve())
    assert config.baseline.checkpoint == str((tmp_path.parent / "ckpt" / "base.pt").resolve())

    path = write_study({"workload": {"data": "imagefolder:images"}})
    assert load_config(path).workload.data == "imagefolder:" + str((tmp_path / "images").resolve())


def test_absolute_paths_are_kept(write_study: Callable[..., Path], tmp_path: Path) -> None:
    root, checkpoint = tmp_path / "abs" / "data", tmp_path / "abs" / "base.pt"
    path = write_study({"workload": {"data_root": str(root)}, "baseline": {"checkpoint": str(checkpoint)}})
    config = load_config(path)
    assert (config.workload.data_root, config.baseline.checkpoint) == (str(root), str(checkpoint))


def test_the_shipped_digits_study_validates() -> None:
    config = load_config(STUDIES / "digits.toml")
    assert config.study.name == "digits-cnn"
    assert config.workload.model == "slimtune:small_cnn" and config.workload.data == "sklearn:digits"
    assert list(config.objectives) == ["latency_ms", "peak_memory_mb", "accuracy"]
    space = config.search_space()
    assert space.prune_ratio == (0.0, 0.9)
    assert set(space.precision) == {"fp32", "bf16", "fp16"}


def test_identity_ignores_only_what_may_change_on_resume(write_study: Callable[..., Path]) -> None:
    base = load_config(write_study()).identity()
    assert load_config(write_study(), {"study.n_trials": 9, "study.seed": 3, "study.sampler": "tpe"}).identity() == base
    assert load_config(write_study({"space": {"prune_ratio": [0.0, 0.5]}})).identity() != base
    assert load_config(write_study({"budget": {"finetune_steps": 10}})).identity() != base


def test_balanced_accuracy_constraint_and_refine_section(write_study: Callable[..., Path]) -> None:
    base = load_config(write_study()).identity()
    assert "max_balanced_accuracy_drop" not in base["constraints"]  # as studies stored before it: they resume
    path = write_study({"constraints": {"max_balanced_accuracy_drop": 0.02},
                        "objectives": {"latency_ms": "minimize", "balanced_accuracy": "maximize"}})
    config = load_config(path)
    assert config.constraints.max_balanced_accuracy_drop == 0.02 and config.refine is None
    assert config.identity() != base
    refined = load_config(write_study({"refine": {"top": 2, "steps": 500}}))
    assert (refined.refine.top, refined.refine.steps, refined.refine.order) == (2, 500, "fastest")
    assert load_config(write_study({"refine": {"order": "most_pruned"}})).refine.order == "most_pruned"
    assert refined.identity() == base  # refining after the search changes no trial: resume is fine
    for changes, message in [
        ({"constraints": {"max_balanced_accuracy_drop": 1.5}}, "constraints.max_balanced_accuracy_drop = 1.5"),
        ({"refine": {"top": 0}}, "refine.top = 0"),
        ({"refine": {"steps": 10, "epochs": 3}}, "refine.epochs: unknown field; allowed: top, steps, order"),
        ({"refine": {"order": "slowest"}}, "refine.order = 'slowest'"),
    ]:
        with pytest.raises(StudyFileError, match=re.escape(message)):
            load_config(write_study(changes))


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_study_file_validates(path: Path) -> None:
    config = load_config(path)
    assert config.search_space().runtime == tuple(config.target.runtimes)


def test_stop_when_validates_and_may_change_on_resume(write_study: Callable[..., Path]) -> None:
    path = write_study({"study": {"stop_when": {"hypervolume_gain_below": 0.005, "over_trials": 10}}})
    stop = load_config(path).study.stop_when
    assert (stop.hypervolume_gain_below, stop.over_trials) == (0.005, 10)
    assert load_config(write_study()).study.stop_when is None
    assert load_config(path).identity() == load_config(write_study()).identity()  # when to stop is no result


@pytest.mark.parametrize(
    "stop_when, expected",
    [
        ({"hypervolume_gain_below": 0.0, "over_trials": 10},
         "study.stop_when.hypervolume_gain_below = 0.0: Input should be greater than 0"),
        ({"hypervolume_gain_below": 1.5, "over_trials": 10},
         "study.stop_when.hypervolume_gain_below = 1.5: Input should be less than 1"),
        ({"hypervolume_gain_below": 0.01, "over_trials": 0}, "study.stop_when.over_trials = 0: Input should be greater than 0"),
        ({"hypervolume_gain_below": 0.01}, "study.stop_when.over_trials: required field is missing"),
        ({"hypervolume_gain_below": 0.01, "over_trials": 5, "patience": 3},
         "study.stop_when.patience: unknown field; allowed: hypervolume_gain_below, over_trials"),
    ],
)
def test_a_bad_stop_when_is_one_line(write_study: Callable[..., Path], stop_when: dict[str, Any], expected: str) -> None:
    path = write_study({"study": {"stop_when": stop_when}})
    assert error_of(path) == f"{path}: {expected}"


def test_a_key_a_user_typed_is_quoted_so_the_error_stays_one_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text('[study]\nname = "x"\n[workload]\nmodel = "m:f"\ndata = "d"\ninput_shape = [1, 8, 8]\n'
                    '[target]\n"\\n" = 1\n')
    assert error_of(path) == f"{path}: target.'\\n': unknown field; allowed: device, threads, runtimes"


def test_the_cli_prints_a_control_character_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from slimtune.search.cli import main

    path = tmp_path / "new\nline.toml"  # the path is user text too
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "new\\nline.toml: study file not found" in err


def test_absent_runtimes_mean_every_runtime_the_target_supports_probed_then_screened(
        write_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 34: an absent `runtimes` meant eager alone, so the screen never timed a compiled
    setting (ConvNeXt-tiny on an H100: 9.9x with it absent, 14.2x with the runtimes listed)."""
    import torch

    from slimtune.search.screen.settings import settings_of, wanted
    from slimtune.spaces import probe
    from slimtune.spaces.runtime import RUNTIME_CHOICES, RuntimeKnob

    config = load_config(write_study({"target": {"runtimes": None}}))
    assert config.target.runtimes is None
    space = config.search_space()
    assert space.runtime == RUNTIME_CHOICES
    tried: list[str] = []  # a real compile on the tiny module takes 3-12 s here: tests/spaces covers it
    monkeypatch.setattr(RuntimeKnob, "try_on_tiny_model", lambda self, value, device: tried.append(value))
    kept, removals = probe(space, torch.device("cpu"))
    assert kept.runtime == ("eager", "compile") and tried == ["compile"]
    assert {(r.knob, r.value): r.reason for r in removals} == {
        ("runtime", "cudagraphs"): "CUDA graphs need a CUDA device",
        ("runtime", "compile+cudagraphs"): "CUDA graphs need a CUDA device"}
    # the baseline is measured in eager, and compile is a deployment setting the screen judges
    assert kept.baseline_recipe().runtime == "eager" and kept.baseline_params()["runtime"] == "eager"
    assert {s["runtime"] for s in settings_of(kept)} == {"eager", "compile"} and wanted(kept, None)
    # a file that lists its runtimes keeps them as its ceiling
    assert load_config(write_study()).search_space().runtime == ("eager",)
