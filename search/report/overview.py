"""What the dashboard, the JSON API and `slimtune report` show, read from storage only.

Pages are drawn on every request and refreshed while a study runs, so the hot paths read
slimtune's own table (one row per trial, with every measurement) and the latest stored Pareto
snapshot, not Optuna's trials: loading 3,000 Optuna trials takes about a second, the same rows
from slimtune's table a few tens of milliseconds. Optuna's trials are loaded only for what
needs them (a trial's params and times, parameter importances).

Nothing here writes, and nothing creates a database: a SQLite path that does not exist, or a
database without Optuna's tables, holds no studies.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from slimtune.spaces import Recipe
from slimtune.storage import DatabaseMissing, Repository, TrialRecord, connect, has_optuna_schema, optuna_storage, safe_url
from slimtune.storage.schema import Fingerprint, ParetoSnapshot

from slimtune.search.config import CONFIG_ATTR, TEST_ATTR
from slimtune.search.hypervolume import HYPERVOLUME_ATTR, HypervolumeHistory, hypervolume_history, hypervolume_settings
from slimtune.search.results import StudyNotFound, _row, baseline_record, confirmations
from slimtune.search.studies import N_TRIALS_ATTR, STUDY_FILE_ATTR

#: measurement keys a trial table can show and sort by, with their column titles (units included)
MEASURED = {
    "latency_ms": "latency median (ms)",
    "latency_p95_ms": "latency p95 (ms)",
    "peak_memory_mb": "peak memory (MB)",
    "weight_mb": "weights (MB)",
    "accuracy": "accuracy (%)",
    "balanced_accuracy": "balanced accuracy (%)",
    "params": "params",
    "macs": "MACs",
    "seconds": "trial time (s)",
}
#: objective names as axis titles
AXIS_TITLES = {
    "latency_ms": "latency per batch, median (ms)",
    "latency_p95_ms": "latency per batch, p95 (ms)",
    "peak_memory_mb": "peak memory (MB)",
    "weight_mb": "weights (MB)",
    "accuracy": "top-1 accuracy (%)",
    "balanced_accuracy": "balanced accuracy (%)",
    "params": "parameters",
    "macs": "MACs per input",
}
SORTABLE = ["trial_number", "status", "accuracy_drop", *MEASURED]
FAILED_STATUSES = ("failed", "stopped", "interrupted")


@dataclass(frozen=True)
class StudySummary:
    name: str
    state: str  # running | finished | stopped
    device: str | None
    device_name: str | None
    objectives: dict[str, str]  # name -> minimize | maximize
    n_trials: int | None  # the finished trials the last run asked for
    complete: int
    failed: int  # failed, stopped as hopeless, or interrupted
    running: int
    best: dict[str, float]  # best feasible value of each objective (the front's extremes)
    front_size: int
    last_update: datetime | None
    #: whether `best`'s latency is the confirmed one (`slimtune confirm` re-measured the whole front)
    confirmed: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["last_update"] = self.last_update.isoformat() if self.last_update else None
        return data


@dataclass
class TrialDetail:
    number: int
    state: str
    status: str | None
    reason: str | None
    recipe: dict[str, Any]
    measurement: dict[str, Any]
    accuracy_drop: float | None
    feasible: bool | None
    on_front: bool
    is_baseline: bool
    params: dict[str, Any]
    values: list[float] | None
    datetime_start: datetime | None
    datetime_complete: datetime | None
    fingerprint: dict[str, Any] | None
    #: its row of the study's latest confirmation (search/confirm.py), None when not confirmed
    confirmed: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("datetime_start", "datetime_complete"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


class Catalog:
    """The studies of one storage URL. Holds one Optuna storage and one engine for the
    server's life, opened the first time the database is found, never creating it."""

    def __init__(self, storage_url: str):
        self.storage_url = storage_url
        self._lock = threading.Lock()
        self._storage: optuna.storages.RDBStorage | None = None
        self._repository: Repository | None = None
        self._cache: dict[tuple[Any, ...], Any] = {}

    def _open(self) -> tuple[optuna.storages.RDBStorage, Repository] | None:
        with self._lock:
            if self._storage is None:
                try:
                    engine = connect(self.storage_url, must_exist=True)
                except DatabaseMissing:
                    return None
                if not has_optuna_schema(engine):  # RDBStorage would create Optuna's tables
                    engine.dispose()
                    return None
                self._repository = Repository(engine)
                self._storage = optuna_storage(self.storage_url)
            return self._storage, self._repository

    def forget(self) -> None:
        """Drop cached derived figures (after a write through this server)."""
        self._cache.clear()

    def names(self) -> list[str]:
        opened = self._open()
        return sorted(optuna.get_all_study_names(opened[0])) if opened else []

    def summaries(self, launched: set[str] = frozenset()) -> list[StudySummary]:
        opened = self._open()
        if opened is None:
            return []
        return [self._summary_and_front(_Info.load(name, opened[0]), *opened, launched)[0] for name in self.names()]

    def study(self, name: str, launched: set[str] = frozenset()) -> "StudyView":
        opened = self._open()
        if opened is None:
            raise StudyNotFound(f"study {name!r} not found: {safe_url(self.storage_url)!r} holds no studies")
        if name not in self.names():
            raise StudyNotFound(f"study {name!r} not found in {safe_url(self.storage_url)!r}")
        info = _Info.load(name, opened[0])
        summary, snapshot = self._summary_and_front(info, *opened, launched)
        return StudyView(self, info, *opened, summary, _snapshot=snapshot)

    def _summary_and_front(
        self, study: "_Info", storage: optuna.storages.RDBStorage, repository: Repository, launched: set[str]
    ) -> tuple[StudySummary, ParetoSnapshot | None]:
        config = study.user_attrs.get(CONFIG_ATTR, {})
        objectives = study.objectives
        counts: dict[str, int] = {}
        last_update = snapshot = fingerprint = None
        if repository.has_tables():
            counts, last_update = repository.status_counts(study.study_name)
            snapshot = repository.latest_snapshot(study.study_name)
            fingerprint = repository.latest_fingerprint(study.study_name)
        running = storage.get_n_trials(study.study_id, state=TrialState.RUNNING)
        front = snapshot.front if snapshot else []
        best: dict[str, float] = {}
        for index, (name, direction) in enumerate(objectives.items()):
            values = [point["values"][index] for point in front]
            if values:
                best[name] = max(values) if direction == "maximize" else min(values)
        confirmed = False
        if "latency_ms" in best:  # as the study page and `slimtune pareto` state it, once confirmed
            rows = repository.confirmations(study.study_name)
            latencies = [rows[p["trial_number"]]["latency_ms"] for p in front if p["trial_number"] in rows]
            if len(latencies) == len(front):
                best["latency_ms"], confirmed = min(latencies), True
        n_trials = study.user_attrs.get(N_TRIALS_ATTR)
        finished = sum(n for status, n in counts.items() if status != "interrupted")  # a result, not a stop
        if running or study.study_name in launched:
            state = "running"
        elif n_trials is not None and finished >= n_trials:
            state = "finished"
        else:
            state = "stopped"
        return StudySummary(
            name=study.study_name, state=state, device=config.get("target", {}).get("device"),
            device_name=fingerprint.device_name if fingerprint else None, objectives=objectives, n_trials=n_trials,
            complete=counts.get("complete", 0), failed=sum(counts.get(s, 0) for s in FAILED_STATUSES),
            running=running, best=best, front_size=len(front), last_update=last_update, confirmed=confirmed,
        ), snapshot


@dataclass(frozen=True)
class _Info:
    """What pages read of Optuna's study row, read once per request: through `optuna.Study`
    each `user_attrs` is a query, and its `get_trials` loads every trial first."""

    study_name: str
    study_id: int
    objectives: dict[str, str]
    user_attrs: dict[str, Any]

    @classmethod
    def load(cls, name: str, storage: optuna.storages.RDBStorage) -> "_Info":
        with warnings.catch_warnings():  # metric_names is "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.load_study(study_name=name, storage=storage)
            names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
            objectives = {n: "maximize" if d == StudyDirection.MAXIMIZE else "minimize"
                          for n, d in zip(names, study.directions)}
            return cls(name, storage.get_study_id_from_name(name), objectives, study.user_attrs)


@dataclass
class StudyView:
    """One study, as the pages and the API read it."""

    catalog: Catalog
    study: _Info
    storage: optuna.storages.RDBStorage
    repository: Repository
    summary: StudySummary
    _records: list[TrialRecord] | None = field(default=None, repr=False)
    _points: pd.DataFrame | None = field(default=None, repr=False)
    _snapshot: ParetoSnapshot | None = field(default=None, repr=False)  # the latest, read with the summary

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def objectives(self) -> dict[str, str]:
        return self.summary.objectives

    @property
    def config(self) -> dict[str, Any]:
        """The whole study file where it was stored, else what decides results (no [study] counts)."""
        return self.study.user_attrs.get(STUDY_FILE_ATTR) or self.study.user_attrs.get(CONFIG_ATTR, {})

    @property
    def max_accuracy_drop(self) -> float | None:
        return self.study.user_attrs.get(CONFIG_ATTR, {}).get("constraints", {}).get("max_accuracy_drop")

    @property
    def max_balanced_accuracy_drop(self) -> float | None:
        return self.study.user_attrs.get(CONFIG_ATTR, {}).get("constraints", {}).get("max_balanced_accuracy_drop")

    def within_constraints(self, record: TrialRecord) -> bool:
        """The study's constraints on a complete trial: accuracy and balanced accuracy drops."""
        if self.max_accuracy_drop is not None and (record.accuracy_drop or 0.0) - self.max_accuracy_drop > 0:
            return False
        balanced_drop = (record.measurement or {}).get("balanced_accuracy_drop")
        limit = self.max_balanced_accuracy_drop
        return limit is None or balanced_drop is None or balanced_drop - limit <= 0

    def records(self) -> list[TrialRecord]:
        if self._records is None:
            self._records = self.repository.trials(self.name) if self.repository.has_tables() else []
        return self._records

    def refined_rows(self) -> list[dict[str, Any]]:
        """Each refined model (`slimtune refine`), newest first, beside its trial's short figures."""
        return self.cached("refined", self._refined_rows)

    def _refined_rows(self) -> list[dict[str, Any]]:
        if not self.repository.has_tables():
            return []
        refined = self.repository.refined(self.name)
        records = {r.trial_number: r for r in self.records()} if refined else {}
        baseline = self.baseline()
        base = (baseline.measurement if baseline else None) or {}
        rows = []
        for row in reversed(refined):
            record = records.get(row.trial_number)
            short = (record.measurement if record else None) or {}
            long = row.measurement or {}
            rows.append({
                "trial": row.trial_number, "recipe": describe(record.recipe) if record else "", "status": row.status,
                "reason": row.reason, "short_steps": short.get("finetune_steps_run"), "steps": row.steps,
                **{f"short_{k}": short.get(k) for k in ("accuracy", "balanced_accuracy", "latency_ms")},
                **{f"refined_{k}": long.get(k) for k in ("accuracy", "balanced_accuracy", "latency_ms")},
                "refined_accuracy_drop": (base["accuracy"] - long["accuracy"]) if "accuracy" in long and "accuracy" in base else None,
                "test": long.get("test") or None,
            })
        return rows

    def judged_split(self) -> str | None:
        """What the trials' accuracy figures were measured on: "validation", "held-out" (a study
        without a validation split), or None before any trial."""
        for record in self.records():
            split = ((record.measurement or {}).get("judged_on") or {}).get("split")
            if split:
                return split
        return None

    def test_split(self) -> dict[str, Any] | None:
        """The baseline and each feasible front point measured once on the test split when the
        search ended (search/holdout.py), beside the validation drop each point was judged by:
        {"examples", "baseline_accuracy", "baseline_balanced_accuracy", "ci_level", "rows"}; None
        when the study stored none (no validation split, or not measured yet)."""
        test = self.study.user_attrs.get(TEST_ATTR)
        if not test:
            return None
        records = {r.trial_number: r for r in self.records()}
        rows = []
        for number, figures in sorted(test["points"].items(), key=lambda item: int(item[0])):
            if int(number) == test.get("baseline_trial"):
                continue
            record = records.get(int(number))
            judged = ((record.measurement if record else None) or {}).get("judged_on") or {}
            rows.append({"trial": int(number), "recipe": describe(record.recipe) if record else "",
                         "validation": judged, "test": figures})
        return {key: test.get(key) for key in ("examples", "baseline_accuracy", "baseline_balanced_accuracy", "ci_level")} | {
            "rows": rows}

    def baseline(self) -> TrialRecord | None:
        """The measured baseline: trial 0 (it is enqueued first), else the first baseline recipe."""
        if self._records is None and self.repository.has_tables():
            first = self.repository.trial(self.name, 0)
            if first is not None and baseline_record([first]) is not None:
                return first
        return baseline_record(self.records())

    def screen(self) -> dict[str, Any] | None:
        """The target screen stored with the study (search/screen/), its settings kept ones
        first and fastest first; None for a study that was not screened."""
        from slimtune.search.screen.tables import ladder_line, ordered

        stored = self.repository.screen(self.name) if self.repository.has_tables() else None
        if stored is None:
            return None
        return {**stored.result, "settings": ordered(stored.result["settings"]), "ladder_line": ladder_line(stored.result)}

    def accuracy_floor(self) -> float | None:
        baseline = self.baseline()
        if self.max_accuracy_drop is None or baseline is None:
            return None
        return baseline.measurement["accuracy"] - self.max_accuracy_drop

    def headline(self) -> dict[str, dict[str, Any]]:
        """Each objective's best value on the feasible front, the baseline's and their ratio, as
        the trial table below them shows them: where `confirm` re-measured the front interleaved
        with the baseline, those latencies (and the confirmed speed-up) replace the trials' own,
        so the study page does not state two figures for one thing. Empty before the baseline."""
        points = self.points()
        if points.empty or not points["is_baseline"].any():
            return {}
        base = points[points["is_baseline"]].iloc[0]
        front = points[points["on_front"]]
        cards: dict[str, dict[str, Any]] = {}
        for name, direction in self.objectives.items():
            values = front[name].dropna() if name in front else pd.Series(dtype=float)
            baseline = base.get(name)
            if values.empty:
                cards[name] = {"best": None, "baseline": baseline, "ratio": None, "confirmed": False}
                continue
            best = front.loc[values.idxmax() if direction == "maximize" else values.idxmin()]
            confirmed = name == "latency_ms" and bool(best.get("confirmed")) and bool(base.get("confirmed"))
            if confirmed:
                ratio = best["speedup_x"]
            elif baseline and best[name]:
                ratio = baseline / best[name] if direction == "minimize" else best[name] / baseline
            else:
                ratio = None
            cards[name] = {"best": best[name], "baseline": baseline, "ratio": ratio, "confirmed": confirmed}
            if name == "latency_ms":
                cards[name]["throughput"] = self.throughput(best[name])
        return cards

    def throughput(self, latency_ms: float | None) -> str | None:
        """What a latency per batch means to someone serving the model: images per second, or for
        text sequences and tokens per second (the study's first batch size and sequence length)."""
        workload = self.config.get("workload") or {}
        batches, shape = workload.get("batch_sizes") or [], workload.get("input_shape") or []
        if not latency_ms or not batches:
            return None
        per_s = batches[0] * 1000.0 / latency_ms
        if len(shape) == 1:
            return f"{per_s:,.0f} sequences/s, {per_s * shape[0]:,.0f} tokens/s at batch {batches[0]} x {shape[0]}"
        return f"{per_s:,.0f} images/s at batch {batches[0]}"

    def front_numbers(self) -> list[int]:
        return [point["trial_number"] for point in self._snapshot.front] if self._snapshot else []

    def version(self) -> tuple[Any, ...]:
        """Changes whenever a trial is recorded or the front moves: the key of derived caches."""
        snapshot = self._snapshot
        summary = self.summary
        confirmed = self.repository.confirmation_stamp(self.name) if self.repository.has_tables() else None
        return (self.name, summary.complete, summary.failed, summary.last_update, snapshot.id if snapshot else None,
                confirmed)

    def cached(self, what: str, make: Any) -> Any:
        """`make()`, computed once per `version()` and kept by the catalog (the newest 32)."""
        key = (what, *self.version())
        cache = self.catalog._cache
        if key not in cache:
            value = make()  # outside the lock: two requests may both compute, neither waits
            with self.catalog._lock:
                while len(cache) >= 32:
                    cache.pop(next(iter(cache)))
                cache[key] = value
        return cache[key]

    def points(self) -> pd.DataFrame:
        """Every recorded trial: recipe, every scalar measurement, the comparison with the
        baseline, feasibility (the study's accuracy constraint), and whether it is on the front."""
        if self._points is None:
            self._points = self.cached("points", self._make_points)
        return self._points

    def _make_points(self) -> pd.DataFrame:
        records = self.records()
        baseline = baseline_record(records)
        front = set(self.front_numbers())
        rows = []
        confirmed = self.confirmations()
        for record in records:
            row = _row(record.trial_number, record, baseline, confirmed.get(record.trial_number))
            row["status"], row["reason"] = record.status, record.reason
            row.update({f"recipe.{k}": v for k, v in record.recipe.items()})
            row.update({k: v for k, v in (record.measurement or {}).items()
                        if not isinstance(v, (dict, list)) and k not in row})  # confirmed figures stay
            row["accuracy_drop"] = record.accuracy_drop
            complete = record.status == "complete"
            row["feasible"] = complete and self.within_constraints(record)
            row["on_front"] = record.trial_number in front
            row["is_baseline"] = baseline is not None and record.trial_number == baseline.trial_number
            rows.append(row)
        columns = ["trial", "recipe", "status", "reason", "accuracy_drop", "feasible", "on_front", "is_baseline"]
        return pd.DataFrame(rows, columns=None if rows else columns)

    def trial_page(self, sort: str, descending: bool, offset: int, limit: int) -> tuple[pd.DataFrame, int]:
        """One page of the trial table (sorted and paged in the database)."""
        if not self.repository.has_tables():
            return pd.DataFrame(), 0
        records, total = self.repository.trial_page(
            self.name, sort=sort, descending=descending, offset=offset, limit=limit
        )
        baseline = self.baseline()
        front = set(self.front_numbers())
        rows = []
        confirmed = self.confirmations()
        for record in records:
            row = _row(record.trial_number, record, baseline, confirmed.get(record.trial_number))
            row.update({k: (record.measurement or {}).get(k) for k in MEASURED if k not in row})
            row.update(status=record.status, reason=record.reason, accuracy_drop=record.accuracy_drop,
                       on_front=record.trial_number in front,
                       is_baseline=baseline is not None and record.trial_number == baseline.trial_number)
            rows.append(row)
        return pd.DataFrame(rows), total

    def confirmations(self) -> dict[int, dict[str, Any]]:
        """The latest confirmation's rows by trial number (search/confirm.py); empty when none."""
        if not self.repository.has_tables():
            return {}
        return self.cached("confirmations", lambda: confirmations(self.repository, self.name))

    def running_trials(self) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self.study.study_id, deepcopy=False, states=(TrialState.RUNNING,))

    def trial(self, number: int) -> TrialDetail:
        try:
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study.study_id, number)
        except KeyError:
            raise StudyNotFound(f"study {self.name!r} has no trial {number}") from None
        trial = self.storage.get_trial(trial_id)
        record = self.repository.trial(self.name, number) if self.repository.has_tables() else None
        baseline = self.baseline()
        fingerprint = None
        if record is not None and record.fingerprint_id is not None:
            fingerprint = self.repository.fingerprint(record.fingerprint_id)
        drop = record.accuracy_drop if record else None
        complete = record is not None and record.status == "complete"
        return TrialDetail(
            number=number, state=trial.state.name,
            status=record.status if record else trial.user_attrs.get("status"),
            reason=record.reason if record else trial.user_attrs.get("reason") or trial.system_attrs.get("fail_reason"),
            recipe=record.recipe if record else trial.user_attrs.get("recipe", {}),
            measurement=(record.measurement or {}) if record else {},
            accuracy_drop=drop,
            feasible=self.within_constraints(record) if complete else None,
            on_front=number in set(self.front_numbers()),
            is_baseline=baseline is not None and baseline.trial_number == number,
            params=dict(trial.params), values=list(trial.values) if trial.values else None,
            datetime_start=trial.datetime_start, datetime_complete=trial.datetime_complete,
            fingerprint=_fingerprint_dict(fingerprint) if fingerprint else None,
            confirmed=self.confirmations().get(number),
        )

    def hypervolume(self) -> HypervolumeHistory:
        """From the stored snapshots (read only when the front moved since the last call)."""
        return self.cached("hypervolume", self._hypervolume)

    def _hypervolume(self) -> HypervolumeHistory:
        baseline = self.baseline()
        snapshots = self.repository.snapshot_fronts(self.name) if self.repository.has_tables() else []
        if baseline is None or baseline.measurement is None or not snapshots:
            return HypervolumeHistory([], [], [])
        # the study's own normalisation and reference point, as `slimtune pareto` uses them
        settings = self.study.user_attrs.get(HYPERVOLUME_ATTR) or hypervolume_settings(
            self.objectives, self.max_accuracy_drop)
        return hypervolume_history(snapshots, [float(baseline.measurement[name]) for name in self.objectives], settings)

    def importances(self) -> dict[str, dict[str, float]]:
        """Optuna's parameter importances (PED-ANOVA, its default, which also rates conditional
        parameters such as the KD temperature): for reaching the front, and for each objective
        alone. Empty until enough trials completed."""
        return self.cached("importances", self._importances)

    def _importances(self) -> dict[str, dict[str, float]]:
        study = optuna.load_study(study_name=self.name, storage=self.storage)
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(trials) < 2 or not any(t.params for t in trials):
            return {}
        result: dict[str, dict[str, float]] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                result["reaching the front"] = optuna.importance.get_param_importances(study)
                for index, (name, direction) in enumerate(self.objectives.items()):
                    sign = -1.0 if direction == "maximize" else 1.0
                    result[name] = optuna.importance.get_param_importances(
                        study, target=lambda t, i=index, s=sign: s * t.values[i]
                    )
            except (RuntimeError, ValueError, ZeroDivisionError):  # too few distinct trials to rank
                return {}
        return {name: {k: float(v) for k, v in values.items() if np.isfinite(v)} for name, values in result.items()}


def _fingerprint_dict(fingerprint: Fingerprint) -> dict[str, Any]:
    return {
        "device": fingerprint.device, "device_name": fingerprint.device_name, "threads": fingerprint.threads,
        "torch_version": fingerprint.torch_version, "cuda_version": fingerprint.cuda_version,
        **(fingerprint.details or {}),
    }


def describe(recipe: dict[str, Any], measurement: dict[str, Any] | None = None) -> str:
    """The recipe in words; with the trial's measurement, what its quantization covered."""
    return Recipe.from_dict(recipe).describe(measurement) if recipe else ""
