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


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start real slimtune processes (seconds to a minute each) run first, the
    modules that share a study before them: with pytest-xdist the workers then share the slow
    work, instead of one of them ending the run alone on the last slow test. The order within
    each group is kept."""
    for item in items:
        if _module(item.nodeid) in RUN_STUDIES:
            item.add_marker(pytest.mark.processes)

    def order(item: pytest.Item) -> int:
        slow = item.get_closest_marker("processes") is not None
        return 0 if slow and _module(item.nodeid) in SHARED_SETUP else 1 if slow else 2

    items.sort(key=order)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: without it, never called
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`-n N` (xdist's `--dist load`): tests are handed out one at a time in the order above,
    except that the tests of a SHARED_SETUP module go to one worker together. (xdist's
    `--dist loadgroup` would do this with marks, but with pytest 9 its marks group nothing.)"""
    if config.getvalue("dist") != "load":
        return None  # another --dist asked for by name: xdist's own
    from xdist.scheduler import LoadScopeScheduling

    class SharedSetupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _module(nodeid) if _module(nodeid) in SHARED_SETUP else nodeid

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
