"""benchmarks/multi_gpu.py on the CPU: the same code that runs a worker per GPU runs N CPU
workers against the real PostgreSQL, and its results say exactly N trials, none RUNNING."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark
from tests.storage.postgres import temporary_database

pytestmark = pytest.mark.processes  # starts real slimtune processes: scheduled first (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]


def _benchmark():
    return load_benchmark("multi_gpu")


def test_one_and_two_workers_finish_exactly_n_trials_each(write_study, tmp_path):
    benchmark = _benchmark()
    # a worker with no trial left to claim waits heartbeat_interval_s before it looks again
    # (10 s by default) while the other finishes: 1 s, so the two-worker run ends when its trials do
    study = write_study({"study": {"name": "scaling", "n_trials": 3}, "target": {"threads": 1},
                         "workers": {"heartbeat_interval_s": 1},
                         "space": {"quantization": ["none"]}})  # no torchao imports in the workers
    with temporary_database() as url:
        code = benchmark.main([str(study), "--n-trials", "3", "--counts", "1,2", "--storage", url,
                               "--out", str(tmp_path / "out")])
    assert code == 0
    results = json.loads(next((tmp_path / "out").glob("*-multi-gpu-scaling.json")).read_text())
    assert set(results["runs"]) == {"1", "2"}
    for run in results["runs"].values():
        assert run["exit_code"] == 0
        assert run["finished"] == 3 and run["exactly_n"] and run["running"] == 0
        assert run["trials_per_hour"] > 0
    assert results["runs"]["1"]["scaling_efficiency"] == 1.0
    assert "agreement" not in results  # no GPUs here
    assert "| 2 | 3 | 0 |" in next((tmp_path / "out").glob("*.md")).read_text()
