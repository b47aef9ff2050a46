"""How fast the dashboard answers for a study of thousands of trials.

Builds a SQLite study with N trials in the shape `slimtune run` leaves (Optuna trials with
params, values, constraints and user attrs; slimtune's measurement rows; a Pareto snapshot after
every completed trial), then times each page and API route through FastAPI's test client
(in-process: no network), median of REPEATS requests after one warm-up: once as the first
request after a trial was recorded (the server's caches emptied before each), once as a reload
while nothing changed.

The trials are synthetic: recipes drawn at random and measurements made up from them (latency
falls with pruning, accuracy with pruning and int4), because the point is the server's time on
N rows, not the numbers in them. One in eight trials fails, as real studies have failures.

    python benchmarks/dashboard.py [--trials 1000 5000] [--out benchmarks/results/dashboard]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from slimtune.search.config import CONFIG_ATTR
from slimtune.search.fingerprint import cpu_name
from slimtune.search.studies import N_TRIALS_ATTR
from slimtune.spaces import Recipe
from slimtune.storage import Repository, connect, optuna_storage

REPEATS = 5
OBJECTIVES = {"latency_ms": "minimize", "peak_memory_mb": "minimize", "accuracy": "maximize"}
MAX_DROP = 0.01


def dominates(a: list[float], b: list[float]) -> bool:
    better_or_equal = (a[0] <= b[0], a[1] <= b[1], a[2] >= b[2])
    strictly = (a[0] < b[0], a[1] < b[1], a[2] > b[2])
    return all(better_or_equal) and any(strictly)


def build(url: str, name: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    repository = Repository(connect(url))
    repository.create_schema()
    storage = optuna_storage(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(study_name=name, storage=storage, directions=list(OBJECTIVES.values()))
        study.set_metric_names(list(OBJECTIVES))
    study.set_user_attr(CONFIG_ATTR, {"target": {"device": "cpu"}, "constraints": {"max_accuracy_drop": MAX_DROP},
                                      "workload": {"model": "slimtune:small_cnn", "data": "sklearn:digits"}})
    study.set_user_attr(N_TRIALS_ATTR, n)
    distributions = {"prune_ratio": FloatDistribution(0.0, 0.9),
                     "quantization": CategoricalDistribution(["none", "int8_weight_only", "int4_weight_only"])}
    base = {"latency_ms": 8.4, "peak_memory_mb": 5.83, "accuracy": 0.9972}
    front: list[tuple[int, list[float]]] = []
    for number in range(n):
        prune = 0.0 if number == 0 else rng.uniform(0.0, 0.9)
        quant = "none" if number == 0 else rng.choice(["none", "int8_weight_only", "int4_weight_only"])
        recipe = Recipe(prune_ratio=prune, quantization=quant, finetune_steps=200 if prune else 0,
                        kd_temperature=rng.uniform(1, 20) if prune else None, kd_alpha=0.5 if prune else 0.0)
        attrs = {"recipe": recipe.to_dict()}
        if number and number % 8 == 0:
            reason = "RuntimeError: synthetic failure for the benchmark"
            repository.record_trial(name, number, status="failed", recipe=recipe.to_dict(), reason=reason)
            study.add_trial(create_trial(state=TrialState.FAIL, params={"prune_ratio": prune, "quantization": quant},
                                         distributions=distributions, user_attrs={**attrs, "status": "failed"}))
            continue
        keep = 1 - prune
        accuracy = min(1.0, base["accuracy"] - 0.06 * prune ** 2 * rng.random() - (0.01 if quant == "int4_weight_only" else 0))
        measurement = {
            "accuracy": accuracy, "latency_ms": base["latency_ms"] * (0.15 + 0.85 * keep ** 2) * rng.uniform(0.95, 1.1),
            "latency_p95_ms": base["latency_ms"] * (0.17 + 0.9 * keep ** 2), "latency_repeats": 50,
            "peak_memory_mb": base["peak_memory_mb"] * keep * (0.3 if quant != "none" else 1.0) + 0.2,
            "weight_mb": 1.62 * keep ** 2 * {"none": 1, "int8_weight_only": 0.25, "int4_weight_only": 0.125}[quant],
            "params": int(404_298 * keep ** 2), "macs": int(9_569_802 * keep ** 2), "batch_size": 64,
            "quantized_layers": [], "unquantized_layers": {}, "finetune_steps_run": recipe.finetune_steps,
            "seconds": rng.uniform(2, 6), "latency_by_batch_size": {},
        }
        drop = base["accuracy"] - accuracy
        values = [measurement[k] for k in OBJECTIVES]
        repository.record_trial(name, number, status="complete", recipe=recipe.to_dict(), measurement=measurement,
                                accuracy_drop=drop)
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, values=values, params={"prune_ratio": prune, "quantization": quant},
            distributions=distributions, user_attrs={**attrs, "status": "complete", "accuracy_drop": drop},
            system_attrs={"constraints:accuracy_drop": drop - MAX_DROP},
        ))
        if drop <= MAX_DROP and not any(dominates(v, values) for _, v in front):
            front = [(t, v) for t, v in front if not dominates(values, v)] + [(number, values)]
        repository.record_snapshot(name, number, [{"trial_number": t, "values": v} for t, v in front])


ROUTES = {
    "studies page": "/",
    "study page": "/studies/{name}",
    "study page, sorted by weights, page 40": "/studies/{name}?sort=weight_mb&order=desc&page=40",
    "trial page": "/studies/{name}/trials/{trial}",
    "API: list studies": "/api/studies",
    "API: trials, sorted, the last 50": "/api/studies/{name}/trials?sort=latency_ms&offset={last}&limit=50",
    "API: Pareto front": "/api/studies/{name}/pareto",
    "API: hypervolume history": "/api/studies/{name}/hypervolume",
}


def measure(url: str, name: str, n: int) -> dict[str, dict[str, float]]:
    from fastapi.testclient import TestClient

    from slimtune.search.web.service import Settings, create_app

    results: dict[str, dict[str, float]] = {}
    with TestClient(create_app(Settings(url))) as client:
        started = time.perf_counter()
        answer = client.get(f"/api/studies/{name}/importances")
        assert answer.status_code == 200
        results["parameter importances, first request (then cached)"] = {
            "changed_median_ms": 1000 * (time.perf_counter() - started), "unchanged_median_ms": float("nan"),
            "bytes": len(answer.content), "gzip_bytes": len(gzip.compress(answer.content))}
        catalog = client.app.state.catalog
        for label, route in ROUTES.items():
            path = route.format(name=name, trial=n // 2 + 1, last=n - 50)
            client.get(path)  # warm-up
            result: dict[str, float] = {}
            # "changed": the first request after a trial was recorded (derived figures rebuilt);
            # "unchanged": a reload while nothing changed (they come from the cache)
            for case in ("changed", "unchanged"):
                times = []
                for _ in range(REPEATS):
                    if case == "changed":
                        catalog.forget()
                    started = time.perf_counter()
                    answer = client.get(path)
                    times.append(1000 * (time.perf_counter() - started))
                    assert answer.status_code == 200, (path, answer.status_code)
                result[f"{case}_median_ms"] = statistics.median(times)
            result["bytes"] = len(answer.content)
            result["gzip_bytes"] = len(gzip.compress(answer.content))
            results[label] = result
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--out", default="benchmarks/results/dashboard")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                          "load_average_at_start": os.getloadavg()},
              "repeats": REPEATS, "runs": {}}
    for n in args.trials:
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{folder}/dashboard.db"
            started = time.perf_counter()
            build(url, "bench", n)
            built = time.perf_counter() - started
            report["runs"][str(n)] = {"build_s": built, "routes": measure(url, "bench", n)}
            print(f"{n} trials: built in {built:.0f} s", flush=True)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    (out / "dashboard.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| route | " + " | ".join(f"{n} trials: ms after a change / unchanged (KB, gzip KB)" for n in args.trials)
             + " |", "|---|" + "---|" * len(args.trials)]

    def cell(c: dict[str, float]) -> str:
        unchanged = "–" if c["unchanged_median_ms"] != c["unchanged_median_ms"] else f"{c['unchanged_median_ms']:.0f}"
        return f"{c['changed_median_ms']:.0f} / {unchanged} ({c['bytes'] / 1024:.1f}, {c['gzip_bytes'] / 1024:.1f})"

    for label in report["runs"][str(args.trials[0])]["routes"]:
        lines.append(f"| {label} | " + " | ".join(cell(report["runs"][str(n)]["routes"][label]) for n in args.trials) + " |")
    (out / "dashboard.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
