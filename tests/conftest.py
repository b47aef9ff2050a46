"""Shared fixtures: an isolated baseline cache, the digits workload, and small study files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

# Before torch loads OpenMP (here and in every process the tests start, which inherit it): an
# OpenMP thread that waits for work sleeps instead of spinning. Three xdist workers on two
# cores run several two-thread slimtune processes at once, and spinning threads then take the
# cores from the threads they wait for: three tiny studies at once took 39 s instead of 16 s.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings

# CI (which sets CI=true) runs the property tests derandomized: the same examples on every run,
# so a commit cannot pass once and fail the next time. Local runs keep searching at random.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

# Optuna's notes on experimental arguments say nothing about slimtune's behaviour.
warnings.filterwarnings("ignore", module="optuna")


#: modules whose tests share a module-scoped study (or another costly module fixture): with
#: pytest-xdist each runs on one worker (the scheduler below), so the fixture is built once
SHARED_SETUP = {
    "tests/search/export/test_export.py", "tests/search/test_refine.py", "tests/search/test_confirm.py",
    "tests/search/test_end_to_end.py", "tests/search/web/test_browser.py", "tests/objectives/test_elpv_workload.py",
    "tests/objectives/test_baseline.py", "tests/objectives/test_evaluator.py",
}
#: modules whose tests run studies (a worker process each) without the `processes` mark
RUN_STUDIES = {
    "tests/search/test_screen.py", "tests/search/test_warm_start.py", "tests/search/test_warnings.py",
    "tests/search/test_refine.py", "tests/search/test_confirm.py", "tests/search/test_cli.py",
}


#: seconds the slowest tests (setup included) took in a full `pytest -q -n 3` run on the 2-core
#: development machine (2026-12-01; benchmarks/results/test-suite/): the schedule below starts
#: the longest work first. Only the order depends on these figures; a test missing here counts
#: as DEFAULT_PROCESSES_S when it starts processes and as DEFAULT_S otherwise.
EXPECTED_S = {
    "tests/search/workers/test_workers.py::test_sigterm_on_launch_interrupts_its_workers_leaves_another_study_alone_and_resumes": 84,
    "tests/search/workers/test_workers.py::test_four_workers_finish_exactly_n_trials_even_when_one_is_killed_mid_trial": 70,
    "tests/search/test_isolation.py::test_every_fault_fails_its_trial_and_the_study_goes_on": 68,
    "tests/search/web/test_service.py::test_launch_and_stop": 62,
    "tests/benchmarks/test_multi_gpu.py::test_one_and_two_workers_finish_exactly_n_trials_each": 58,
    "tests/search/export/test_export.py::test_export_pt2_verified_in_a_fresh_process": 44,
    "tests/search/test_screen.py::test_a_hanging_setting_is_dropped_with_its_reason_and_the_study_goes_on": 38,
    # the first test to ask for the served study builds it (tests/search/conftest.py), the other
    # served tests wait for it: built early, while the other workers run long tests
    "tests/search/report/test_html_report.py::test_report_is_self_contained": 32,
    "tests/search/test_screen.py::test_a_study_without_space_runs_and_the_screen_prints": 32,
    "tests/search/workers/test_workers.py::test_when_the_last_worker_dies_a_new_worker_fails_its_trial_and_retries_it": 31,
    "tests/search/test_refine.py::test_refine_stores_shows_and_exports_the_refined_model": 30,
    "tests/benchmarks/test_search_efficiency.py::test_measure_resume_isolated_and_replay": 29,
    "tests/search/export/test_export.py::test_pt2_of_a_pruned_model_runs_with_torch_alone": 26,
    "tests/search/test_signals.py::test_a_signal_on_run_interrupts_the_trial_and_the_same_command_resumes[SIGTERM]": 23,
    "tests/search/test_signals.py::test_a_signal_on_run_interrupts_the_trial_and_the_same_command_resumes[SIGINT]": 9,
    "tests/search/web/test_browser.py::test_click_a_pareto_point_to_open_its_trial": 19,
    "tests/search/test_refine.py::test_the_study_files_refine_section_runs_after_the_search": 19,
    "tests/search/test_end_to_end.py::test_the_same_command_with_more_trials_resumes": 18,
    "tests/search/test_warm_start.py::test_a_bad_warm_start_is_one_line_and_creates_nothing": 18,
    "tests/search/test_end_to_end.py::test_run_exits_0_and_prints_the_pareto_table": 17,
    "tests/search/test_confirm.py::test_a_study_is_confirmed_when_its_run_ends": 16,
    "tests/search/test_isolation.py::test_a_combination_that_fails_unpruned_too_fails_later_trials_at_once": 16,
    "tests/search/test_warm_start.py::test_warm_start_enqueues_the_front_after_the_baseline": 16,
    "tests/search/web/test_service.py::test_export_a_trial": 15,
    "tests/search/web/test_openapi_contract.py::test_every_route_answers_as_declared_with_the_token": 10,  # 2026-12-06, alone
    "tests/objectives/test_elpv_workload.py::test_binary_split_from_the_package_holds_out_a_stratified_quarter": 15,
    "tests/search/test_runner.py::test_baseline_outside_the_space_is_still_trial_0": 14,
    "tests/search/export/test_export.py::test_a_verification_mismatch_marks_the_files_unverified": 14,
    "tests/search/export/test_export.py::test_export_state_dict_through_the_python_api": 14,
    "tests/search/test_screen.py::test_a_resumed_study_and_a_second_worker_reuse_the_stored_screen": 14,
    "tests/search/test_confirm.py::test_export_verifies_its_latency_against_the_confirmed_figure": 14,
    "tests/search/test_warnings.py::test_a_warning_repeated_in_every_quantized_trial_is_shown_once": 13,
    "tests/search/test_end_to_end.py::test_a_short_study_on_postgresql": 13,
    "tests/search/test_retries.py::test_a_live_trial_judged_lost_keeps_its_measurement_and_the_study_goes_on": 13,
    "tests/search/test_refine.py::test_several_seeds_are_all_stored_and_the_best_on_held_back_images_is_kept": 13,
    "tests/search/test_refine.py::test_balanced_accuracy_is_measured_constrained_and_reported": 12,
    "tests/search/test_confirm.py::test_confirm_command_flags_a_planted_outlier": 10,
    "tests/search/export/test_export.py::test_a_verifier_that_hangs_is_stopped_and_the_files_marked_unverified": 10,
}
DEFAULT_PROCESSES_S = 5.0
DEFAULT_S = 0.1


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _unit(nodeid: str) -> str:
    """What pytest-xdist hands to one worker at once (the scheduler below): a SHARED_SETUP
    module whole, any other test alone."""
    return _module(nodeid) if _module(nodeid) in SHARED_SETUP else nodeid


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest work first (EXPECTED_S; a SHARED_SETUP module counts as the sum of its
    tests): with pytest-xdist the workers then share the slow tests, and short ones fill in at
    the end, instead of one worker ending the run alone on a long test. Ties keep the
    collection order."""
    for item in items:
        if _module(item.nodeid) in RUN_STUDIES:
            item.add_marker(pytest.mark.processes)

    def expected(item: pytest.Item) -> float:
        for nodeid in (item.nodeid, item.nodeid.split("[", 1)[0]):  # a parametrized test, or all of them
            if nodeid in EXPECTED_S:
                return EXPECTED_S[nodeid]
        return DEFAULT_PROCESSES_S if item.get_closest_marker("processes") is not None else DEFAULT_S

    units: dict[str, float] = {}
    for item in items:
        units[_unit(item.nodeid)] = units.get(_unit(item.nodeid), 0.0) + expected(item)
    position = {id(item): index for index, item in enumerate(items)}
    items.sort(key=lambda item: (-units[_unit(item.nodeid)], position[id(item)]))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: without it, never called
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`-n N` (xdist's `--dist load`): tests are handed out one at a time in the order above,
    except that the tests of a SHARED_SETUP module go to one worker together. (xdist's
    `--dist loadgroup` would do this with marks, but with pytest 9 its marks group nothing.)
    A worker holds its running test and the next one, no more (xdist's own keeps up to three
    pending), so that a long test is not queued behind another while a worker goes idle."""
    if config.getvalue("dist") != "load":
        return None  # another --dist asked for by name: xdist's own
    from xdist.scheduler import LoadScopeScheduling

    class SharedSetupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            # a worker runs a test once it has the next (pytest's teardown needs `nextitem`):
            # one pending beyond the running test is the least that never stalls it
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    config.option.loadscopereorder = False  # the collection order above is the schedule
    return SharedSetupScheduling(config, log)


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Baselines trained by tests go to a throwaway cache shared by the whole run: with
    pytest-xdist every worker uses the same folder (beside the workers' own temporary folders),
    so a baseline is trained once, not once per worker. Cache writes are atomic renames."""
    root = tmp_path_factory.getbasetemp()
    xdist = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    if xdist:
        root = root.parent  # shared by the workers of this run
    cache = root / "slimtune-cache"
    cache.mkdir(parents=True, exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIMTUNE_CACHE", str(cache))
    torch.set_num_threads(1 if xdist else 2)  # two xdist workers on two cores: one thread each
    yield
    mp.undo()


@pytest.fixture(scope="session")
def digits_workload():
    from slimtune.objectives import load_workload

    return load_workload("slimtune:small_cnn", "sklearn:digits", (1, 8, 8))


@pytest.fixture(scope="session")
def digits_baseline(digits_workload):
    """A quickly trained small CNN (3 epochs: about 97% on digits), cached for the session."""
    from slimtune.objectives import TrainingRecipe, get_baseline

    return get_baseline(digits_workload, torch.device("cpu"), recipe=TrainingRecipe(epochs=3)).model


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


TINY_STUDY: dict[str, dict[str, Any]] = {
    "study": {"name": "tiny", "sampler": "random", "n_trials": 4, "seed": 0},
    "target": {"device": "cpu", "threads": 2, "runtimes": ["eager"]},
    "workload": {"model": "slimtune:small_cnn", "data": "sklearn:digits", "input_shape": [1, 8, 8], "batch_sizes": [32]},
    "baseline": {"epochs": 3},
    "objectives": {"latency_ms": "minimize", "peak_memory_mb": "minimize", "accuracy": "maximize"},
    "constraints": {"max_accuracy_drop": 0.05},
    # every [space] field stated (an absent one means every value); the screen off, as the
    # tests of other behaviour expect (tests/search/test_screen.py turns it on)
    "space": {"prune_ratio": [0.0, 0.6], "prune_importance": ["l2"], "prune_round_to": [1], "prune_scope": ["uniform"],
              "kd_temperature": [1.0, 8.0], "kd_alpha": [], "quantization": ["none", "int8_weight_only"],
              "precision": ["fp32"], "memory_format": ["contiguous"]},
    "budget": {"finetune_steps": 20, "trial_timeout_s": 60, "latency_warmup": 2, "latency_repeats": 5, "latency_max_s": 0.5,
               "confirm_rounds": 0},  # confirmation has its own tests (tests/search/test_confirm.py)
    "screen": {"enabled": False},
}


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[..., Path]:
    """Write a small, fast study file; `changes` maps section -> {field: value or None to drop}."""

    def write(changes: dict[str, dict[str, Any]] | None = None, name: str = "study.toml") -> Path:
        sections = {k: dict(v) for k, v in TINY_STUDY.items()}
        for section, fields in (changes or {}).items():
            target = sections.setdefault(section, {})
            for key, value in fields.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value
        lines = []
        for section, fields in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {toml_value(value)}" for key, value in fields.items()]
            lines.append("")
        path = tmp_path / name
        path.write_text("\n".join(lines))
        return path

    return write


TINY_BERT_WORDS = ("good bad great awful fine boring superb dull film movie plot actor story the a is was very "
                   "not").split()


def write_tiny_bert(folder: Path, rows: int = 300, layers: int = 2) -> Path:
    """A randomly initialised BERT (hidden 32, 4 heads of 8, `layers` layers) with its own
    word-level tokenizer, saved as a Hugging Face checkpoint folder, and `reviews.csv`: `rows`
    short sentences whose label the sentiment words decide (a model learns it in seconds)."""
    import csv
    import random

    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_BERT_WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(str(folder))
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(folder))
    rng = random.Random(0)
    positive, negative = ["good", "great", "superb", "fine"], ["bad", "awful", "boring", "dull"]
    with open(folder / "reviews.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        for i in range(rows):
            label = i % 2
            words = rng.choices(TINY_BERT_WORDS[8:], k=5) + rng.choices(positive if label else negative, k=2)
            rng.shuffle(words)
            writer.writerow([" ".join(words), label])
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT checkpoint folder with `reviews.csv` beside its files (see write_tiny_bert)."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
