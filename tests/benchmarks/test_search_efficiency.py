"""benchmarks/search_efficiency.py on the CPU: a tiny grid measured (cut short, then resumed in
slimtune's worker process), the samplers replayed against it, and the committed digits grid
(measured before the memory-format and runtime knobs existed) still read."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark

pytestmark = pytest.mark.processes  # starts real slimtune processes: scheduled first (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def benchmark():
    return load_benchmark("search_efficiency")


def _run(*args: str) -> None:
    """The benchmark as a user runs it: its own process (it sets Optuna's log level, warning
    filters and torch's thread count, and starts worker processes)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_efficiency.py"), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_measure_resume_isolated_and_replay(benchmark, write_study, tmp_path: Path) -> None:
    study = write_study({"space": {"quantization": ["none"], "precision": ["fp32", "bf16"]}})
    out = tmp_path / "grid"
    measure = ["measure", "--study", str(study), "--prune-levels", "0.5", "--kd-temperatures", "2", "--results", str(out)]
    _run(*measure, "--limit", "2")  # a run cut short: 2 of the 4 recipes
    first = _rows(out / "grid.csv")
    assert len(first) == 2 and {r["status"] for r in first} == {"complete"}
    (out / "first.csv").write_text((out / "grid.csv").read_text())

    _run(*measure, "--resume", str(out / "first.csv"), "--isolated")
    rows = _rows(out / "grid.csv")
    meta = json.loads((out / "grid.json").read_text())
    assert meta["resumed_rows"] == 2 and meta["isolated"] and meta["worker_restarts"] == 0
    assert meta["levels"]["prune_ratio"] == [0.0, 0.5] and meta["levels"]["precision"] == ["fp32", "bf16"]
    # every point once: unpruned and pruned, in both precisions; the resumed rows kept as measured
    points = {(r["prune_ratio"], r["precision"]) for r in rows}
    assert points == {("0.0", "fp32"), ("0.0", "bf16"), ("0.5", "fp32"), ("0.5", "bf16")} and len(rows) == 4
    assert all(r in rows for r in first)
    assert all(r["status"] == "complete" and float(r["latency_ms"]) > 0 for r in rows)
    assert not (out / "grid.partial.csv").exists()

    _run("replay", "--results", str(out), "--trials", "6", "--seeds", "2", "--samplers", "tpe", "random")
    results = json.loads((out / "results.json").read_text())
    assert set(results["samplers"]) == {"tpe", "random"}
    for sampler in results["samplers"].values():
        for run in sampler["runs"]:
            volumes = run["hypervolume"]
            assert len(volumes) == 6 and volumes == sorted(volumes)  # a front never loses volume
            assert run["best_speedup"][0] == pytest.approx(1.0)  # trial 0 is the baseline
            assert len(run["hypervolume_linear"]) == 6
    assert results["grid_hypervolume"] >= max(r["hypervolume"][-1] for s in results["samplers"].values() for r in s["runs"])
    assert "| random | 2 |" in (out / "results.md").read_text()
    assert (out / "hypervolume.html").exists()

    _run("tpe-settings", "--results", str(out), "--trials", "6", "--seeds", "2")
    variants = json.loads((out / "tpe-settings.json").read_text())
    assert set(variants["hypervolume_at_last_trial"]) == set(benchmark.TPE_VARIANTS)
    assert all(len(v) == 2 for v in variants["hypervolume_at_last_trial"].values()) and len(variants["random"]) == 2
    table = (out / "tpe-settings.md").read_text()
    assert all(f"| {label} |" in table for label in benchmark.TPE_VARIANTS) and "| random sampling |" in table


def test_the_committed_digits_grid_reads_without_the_newer_columns(benchmark) -> None:
    import optuna

    from slimtune.search.config import load_config

    grid = benchmark.Grid(ROOT / "benchmarks" / "results" / "search-efficiency" / "digits")
    assert "memory_format" not in next(iter(grid.rows.values()))  # measured before the knob existed
    assert grid.baseline["quantization"] == "none" and grid.baseline["precision"] == "fp32"
    space = load_config(ROOT / grid.meta["study_file"]).search_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):  # every sampled recipe has a measured grid point
        key = grid.key(space.suggest(study.ask()))
        assert key in grid.rows
        fields = dict(zip(benchmark.KEY_FIELDS, key))
        assert fields["memory_format"] == "contiguous" and fields["runtime"] == "eager"


def test_tpe_overrides_reach_the_sampler(benchmark) -> None:
    """The tpe-settings comparison changes the sampler it says it changes: TPE whose start-up
    outlasts the study is random sampling, draw for draw; slimtune's TPE is not."""
    from slimtune.search.config import load_config

    grid = benchmark.Grid(ROOT / "benchmarks" / "results" / "search-efficiency" / "digits")
    config = load_config(ROOT / grid.meta["study_file"])
    objectives, max_drop = dict(config.objectives), config.constraints.max_accuracy_drop

    def volumes(name: str, overrides=None) -> list[float]:
        return benchmark.replay_one(grid, config, name, 0, 12, max_drop, objectives, overrides)["hypervolume"]

    random_volumes = volumes("random")
    assert volumes("tpe", {"n_startup_trials": 15}) == random_volumes
    assert volumes("tpe") != random_volumes


def test_ratio_interval(benchmark) -> None:
    assert benchmark.ratio_interval([2.0] * 20, [1.0] * 20) == (2.0, 2.0)
    values, reference = [1.0 + 0.1 * i for i in range(30)], [1.0 + 0.08 * i for i in range(30)]
    low, high = benchmark.ratio_interval(values, reference)
    point = (values[14] + values[15]) / (reference[14] + reference[15])
    assert low < point < high
    many = benchmark.ratio_interval([1.0 + 0.01 * i for i in range(300)], [1.0 + 0.008 * i for i in range(300)])
    assert many[0] < point < many[1] and many[1] - many[0] < (high - low) / 2  # ten times the seeds: narrower
    assert benchmark.ratio_interval(values, reference) == (low, high)  # seeded: the committed tables reproduce


def test_the_screened_replay_searches_what_the_screen_keeps_of_the_committed_gpu_grid(benchmark) -> None:
    """The target screen answered from the H100 grid (24 settings) keeps fp16 channels_last
    compile alone; a replay over that space measures the baseline from its recipe as trial 0."""
    from slimtune.search.config import load_config

    grid = benchmark.Grid(ROOT / "benchmarks" / "results" / "search-efficiency" / "resnet18-b256-wide")
    config = load_config(ROOT / grid.meta["study_file"])
    space, result = benchmark.screened_space(grid, config)
    assert [row["label"] for row in result["settings"] if row["kept"]] == ["fp16 channels_last compile"]
    assert (space.precision, space.memory_format, space.runtime) == (("fp16",), ("channels_last",), ("compile",))
    assert not space.contains_baseline()
    run = benchmark.replay_one(grid, config, "random", 0, 6, 0.01, dict(config.objectives), space=space)
    assert len(run["hypervolume"]) == 6 and run["failed"] == 0
    assert run["hypervolume"][-1] > 10 * run["hypervolume"][0]  # the baseline first, then the front
