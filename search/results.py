"""What a study found, read from storage only: the feasible Pareto front against the baseline,
and every trial as a pandas DataFrame."""

from __future__ import annotations

from statistics import median
from typing import Any

import optuna
import pandas as pd

from slimtune.spaces import Recipe
from slimtune.storage import (
    DatabaseMissing, Repository, StorageError, TrialRecord, connect, has_optuna_schema, optuna_storage, safe_url,
)

from slimtune.search.config import CONFIG_ATTR, TEST_ATTR


class StudyNotFound(LookupError):
    pass


def open_study(study_name: str, storage_url: str) -> tuple[optuna.Study, Repository]:
    """Load an existing study and slimtune's tables without creating anything."""
    try:
        engine = connect(storage_url, must_exist=True)
    except DatabaseMissing as error:
        raise StudyNotFound(f"study {study_name!r} not found: {str(error).removeprefix('storage: ')}") from None
    if not has_optuna_schema(engine):  # RDBStorage would create Optuna's tables
        raise StudyNotFound(f"study {study_name!r} not found: {safe_url(storage_url)!r} holds no studies")
    storage = optuna_storage(storage_url)
    if study_name not in optuna.get_all_study_names(storage):
        raise StudyNotFound(f"study {study_name!r} not found in {safe_url(storage_url)!r}")
    repository = Repository(engine)
    repository.check_schema()
    return optuna.load_study(study_name=study_name, storage=storage), repository


def baseline_record(records: list[TrialRecord]) -> TrialRecord | None:
    for record in records:
        if record.status == "complete" and Recipe.from_dict(record.recipe).is_baseline:
            return record
    return None


def accuracy_floor(study: optuna.Study, repository: Repository) -> float | None:
    """The lowest feasible accuracy: the baseline's minus the study's max_accuracy_drop."""
    max_drop = study.user_attrs.get(CONFIG_ATTR, {}).get("constraints", {}).get("max_accuracy_drop")
    baseline = baseline_record(repository.trials(study.study_name))
    if max_drop is None or baseline is None:
        return None
    return baseline.measurement["accuracy"] - max_drop


def _row(number: int, record: TrialRecord | None, baseline: TrialRecord | None,
         confirmed: dict[str, Any] | None = None, test: dict[str, Any] | None = None) -> dict[str, Any]:
    measurement = (record.measurement if record else None) or {}
    row: dict[str, Any] = {
        "trial": number,
        "recipe": Recipe.from_dict(record.recipe).describe(record.measurement) if record else "",
        "latency_ms": measurement.get("latency_ms"),
        "latency_p95_ms": measurement.get("latency_p95_ms"),
        "peak_memory_mb": measurement.get("peak_memory_mb"),
        "weight_mb": measurement.get("weight_mb"),
        "accuracy": measurement.get("accuracy"),
        "balanced_accuracy": measurement.get("balanced_accuracy"),
    }
    base = (baseline.measurement if baseline else None) or {}
    ready = measurement and base
    row["speedup_x"] = base["latency_ms"] / measurement["latency_ms"] if ready else None
    row["memory_x"] = base["peak_memory_mb"] / measurement["peak_memory_mb"] if ready else None
    row["accuracy_drop_pts"] = 100 * (base["accuracy"] - measurement["accuracy"]) if ready else None
    row.update(accuracy_columns(measurement, number, test))
    row.update(interval_columns(measurement, confirmed))
    if confirmed:  # the interleaved re-measurement replaces the trial's own latency and speed-up
        row["latency_ms"], row["speedup_x"] = confirmed["latency_ms"], confirmed["speedup_x"]
    return row


#: the columns `accuracy_columns` adds: the drop's paired interval on the split the trial was judged
#: on (validation), and the figures measured once on the test split when the search ended
ACCURACY_COLUMNS = ("accuracy_drop_ci_low_pts", "accuracy_drop_ci_high_pts", "judged_on", "test_accuracy",
                    "test_balanced_accuracy", "test_accuracy_drop_pts", "test_accuracy_drop_ci_low_pts",
                    "test_accuracy_drop_ci_high_pts", "test_balanced_accuracy_drop_pts",
                    "test_balanced_accuracy_drop_ci_low_pts", "test_balanced_accuracy_drop_ci_high_pts")


def _pts(value: Any) -> float | None:
    return None if value is None else 100 * value


def accuracy_columns(measurement: dict[str, Any], number: int, test: dict[str, Any] | None) -> dict[str, Any]:
    """The validation drop's interval (None for trials of older slimtunes), what the trial was
    judged on, and the point's test figures (None until the study ended and measured them)."""
    judged = measurement.get("judged_on") or {}
    low, high = judged.get("accuracy_drop_ci") or (None, None)
    point = ((test or {}).get("points") or {}).get(str(number)) or {}
    t_low, t_high = point.get("accuracy_drop_ci") or (None, None)
    b_low, b_high = point.get("balanced_accuracy_drop_ci") or (None, None)
    return {"accuracy_drop_ci_low_pts": _pts(low), "accuracy_drop_ci_high_pts": _pts(high),
            "judged_on": judged.get("split"), "test_accuracy": point.get("accuracy"),
            "test_balanced_accuracy": point.get("balanced_accuracy"),
            "test_accuracy_drop_pts": _pts(point.get("accuracy_drop")), "test_accuracy_drop_ci_low_pts": _pts(t_low),
            "test_accuracy_drop_ci_high_pts": _pts(t_high),
            "test_balanced_accuracy_drop_pts": _pts(point.get("balanced_accuracy_drop")),
            "test_balanced_accuracy_drop_ci_low_pts": _pts(b_low), "test_balanced_accuracy_drop_ci_high_pts": _pts(b_high)}


#: the columns `interval_columns` adds (json/csv carry them; the table folds them into ranges)
INTERVAL_COLUMNS = ("latency_ci_low_ms", "latency_ci_high_ms", "latency_repeats", "speedup_ci_low_x",
                    "speedup_ci_high_x", "confirmed", "flagged")


def interval_columns(measurement: dict[str, Any], confirmed: dict[str, Any] | None) -> dict[str, Any]:
    """The latency median's 95% interval and sample count (None for trials measured before
    slimtune stored them), or the confirmed figures' intervals where the point was confirmed,
    and whether its trial's latency disagrees with the confirmation (`flagged`)."""
    if confirmed:
        return {"latency_ci_low_ms": confirmed["latency_ci_low_ms"], "latency_ci_high_ms": confirmed["latency_ci_high_ms"],
                "latency_repeats": measurement.get("latency_repeats"), "speedup_ci_low_x": confirmed["speedup_ci_low_x"],
                "speedup_ci_high_x": confirmed["speedup_ci_high_x"], "confirmed": True, "flagged": confirmed["flagged"]}
    return {"latency_ci_low_ms": measurement.get("latency_ci_low_ms"), "latency_ci_high_ms": measurement.get("latency_ci_high_ms"),
            "latency_repeats": measurement.get("latency_repeats"), "speedup_ci_low_x": None, "speedup_ci_high_x": None,
            "confirmed": False, "flagged": False}


#: the line under a table whose points carry the mark (`slimtune pareto`, the dashboard, the report)
FLAGGED_NOTE = ("FLAGGED: the trial's own latency would rank this point elsewhere on the front than the confirmed "
                "intervals do, or is off its confirmed latency by more than the confirmed interval spans (beyond the "
                "shift all trials share); the figures shown are the confirmed ones")


def _confirmed_range(row: dict[str, Any], low: str, high: str, values: list[float] | None) -> tuple[float, float] | None:
    """A confirmed interval; with fewer than 6 rounds (no interval), the range of the rounds' values."""
    if row.get(low) is not None and row.get(high) is not None:
        return row[low], row[high]
    return (min(values), max(values)) if values else None


def disagreeing(rows: dict[int, dict[str, Any]]) -> set[int]:
    """The confirmed points (trial number -> confirmed row, the baseline's included) whose trial's
    own figure would tell another story:

    - rank: by their trials' latencies two points stand in one order, by the confirmed latencies
      in the other, and the confirmed intervals do not overlap (the confirmation tells them apart;
      a swap inside overlapping intervals is no change of rank it can vouch for): both are marked;
    - speed-up: the trial's own latency, against its confirmed one, is off by a larger factor
      than the confirmed speed-up's interval spans (high / low), once the shift all trials share is
      taken out (the median of trial over confirmed latency: a search run on a busier machine
      moves every figure alike and no ranking or speed-up). The baseline is judged against its
      own latency interval: its trial figure, when off, moves every trial's speed-up, and marking
      it says so once, where marking every point would blame them.

    With fewer than 6 rounds the intervals are the ranges of the round medians and ratios. That a
    trial's latency lies outside the confirmed interval alone is no mark: on a shared CPU it is the
    normal case."""
    timed = {n: r for n, r in rows.items() if r.get("trial_latency_ms") is not None and r.get("latency_ms") is not None}
    rounds = {n: (r.get("details") or {}).get("round_medians_ms") for n, r in timed.items()}
    spans = {n: _confirmed_range(r, "latency_ci_low_ms", "latency_ci_high_ms", rounds[n]) for n, r in timed.items()}
    marked: set[int] = set()
    for a in timed:
        for b in timed:
            trial_order = timed[a]["trial_latency_ms"] < timed[b]["trial_latency_ms"]
            apart = spans[a] is not None and spans[b] is not None and spans[b][1] < spans[a][0]  # b surely faster
            if trial_order and apart:
                marked |= {a, b}
    base = next((n for n, r in timed.items() if r.get("is_baseline")), None)
    if base is None:
        return marked
    # the shift every trial shares (the machine busier or quieter during the search than during
    # the confirmation) is no story of one point; what is left of a trial's figure is its own
    # (with fewer than three rows there is no majority to tell a shared shift from one point's: the
    # baseline's factor is the shift, and the points' speed-ups are judged as they stand)
    factors = [r["trial_latency_ms"] / r["latency_ms"] for r in timed.values() if r["latency_ms"] > 0]
    few = len(factors) < 3
    shift = timed[base]["trial_latency_ms"] / timed[base]["latency_ms"] if few else median(factors)
    for number, row in timed.items():
        if number == base and few:
            continue
        if number == base:  # the baseline's figure moves every speed-up: judged by its own interval
            span = spans[base]
        else:
            ratios = [b / m for b, m in zip(rounds[base], rounds[number])] if rounds[base] and rounds[number] else None
            span = _confirmed_range(row, "speedup_ci_low_x", "speedup_ci_high_x", ratios)
        if span is None or min(span[0], row["trial_latency_ms"], row["latency_ms"]) <= 0:
            continue
        own = row["trial_latency_ms"] / row["latency_ms"] / shift
        # a ratio's distance is a factor: 0.01x against 3x is as far off as 300x against 3x
        if max(own, 1 / own) > span[1] / span[0]:
            marked.add(number)
    return marked


def mark_disagreements(rows: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """`rows` with `flagged` set by `disagreeing` (rows stored by an older slimtune were flagged
    by another rule: the mark is computed where it is read)."""
    marked = disagreeing(rows)
    return {n: {**row, "flagged": n in marked} for n, row in rows.items()}


def confirmations(repository: Repository, study_name: str) -> dict[int, dict[str, Any]]:
    """The study's confirmed rows by trial number, marked (`mark_disagreements`); {} when none."""
    return mark_disagreements(repository.confirmations(study_name))


def pareto_front(study: optuna.Study, repository: Repository) -> pd.DataFrame:
    """The feasible front (Optuna's `best_trials` honours constraints), fastest first."""
    records = {r.trial_number: r for r in repository.trials(study.study_name)}
    baseline = baseline_record(list(records.values()))
    confirmed = confirmations(repository, study.study_name)
    test = study.user_attrs.get(TEST_ATTR)
    rows = [_row(t.number, records.get(t.number), baseline, confirmed.get(t.number), test) for t in study.best_trials]
    frame = pd.DataFrame(rows, columns=list(_row(0, None, None)))
    frame = frame.sort_values(["latency_ms", "trial"]).reset_index(drop=True)
    return with_refined(frame, chosen_refined(repository, study.study_name), baseline)


def selection_score_of(measurement: dict[str, Any] | None) -> float | None:
    """A refined run's score on the training images held back to choose its step; None for a
    run of a slimtune before refine kept its best step (it kept the last)."""
    return ((measurement or {}).get("build") or {}).get("selection_score")


def selection_key(measurement: dict[str, Any] | None) -> float:
    """How refined runs of one trial rank: by their score on the held-back images (never by
    the held-out figures); runs without one rank below any that has one."""
    value = selection_score_of(measurement)
    return float("-inf") if value is None else float(value)


def chosen_refined(repository: Repository, study_name: str) -> dict[int, Any]:
    """The refined record of each trial that the front shows and export takes (`slimtune
    refine`): the complete one with the best score on the held-back images, the newest among
    equals (and among records without that score); {} when none."""
    chosen: dict[int, Any] = {}
    for row in repository.refined(study_name):  # oldest first
        if row.status != "complete":
            continue
        best = chosen.get(row.trial_number)
        if best is None or selection_key(row.measurement) >= selection_key(best.measurement):
            chosen[row.trial_number] = row
    return chosen


#: columns the front gains once some of its points were refined (the long fine-tune's figures)
REFINED_COLUMNS = ["refined_steps", "refined_accuracy", "refined_balanced_accuracy", "refined_latency_ms",
                   "refined_accuracy_drop_pts", "refined_test_accuracy", "refined_test_accuracy_drop_pts"]


def with_refined(frame: pd.DataFrame, refined: dict[int, Any], baseline: TrialRecord | None) -> pd.DataFrame:
    """`frame` (one row per trial) with the refined figures beside the short ones; unchanged for
    a study without refined records."""
    if not refined or frame.empty:
        return frame
    base = (baseline.measurement if baseline else None) or {}
    values: dict[str, list[Any]] = {name: [] for name in REFINED_COLUMNS}
    for number in frame["trial"]:
        row = refined.get(int(number))
        m = (row.measurement if row is not None else None) or {}
        values["refined_steps"].append(row.steps if row is not None else None)
        values["refined_accuracy"].append(m.get("accuracy"))
        values["refined_balanced_accuracy"].append(m.get("balanced_accuracy"))
        values["refined_latency_ms"].append(m.get("latency_ms"))
        values["refined_accuracy_drop_pts"].append(
            100 * (base["accuracy"] - m["accuracy"]) if m and "accuracy" in base else None)
        test = m.get("test") or {}  # refined models are scored on the test split too (refine_spec)
        values["refined_test_accuracy"].append(test.get("accuracy"))
        values["refined_test_accuracy_drop_pts"].append(_pts(test.get("accuracy_drop")))
    frame = frame.copy()
    for name, column in values.items():
        frame[name] = column
    return frame


def trials_frame(study: optuna.Study, repository: Repository) -> pd.DataFrame:
    """Every trial: Optuna's state and values joined with slimtune's measurements and reasons."""
    records = {r.trial_number: r for r in repository.trials(study.study_name)}
    front = {t.number for t in study.best_trials}
    baseline = baseline_record(list(records.values()))
    rows = []
    for trial in study.get_trials(deepcopy=False):
        record = records.get(trial.number)
        recipe = record.recipe if record else trial.user_attrs.get("recipe", {})
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name}
        row["status"] = record.status if record else trial.user_attrs.get("status")
        row["reason"] = record.reason if record else trial.system_attrs.get("fail_reason")
        row["recipe"] = Recipe.from_dict(recipe).describe(record.measurement if record else None) if recipe else ""
        row["is_baseline"] = baseline is not None and trial.number == baseline.trial_number
        row.update({f"recipe.{k}": v for k, v in recipe.items()})
        measurement = (record.measurement if record else None) or {}
        for key, value in measurement.items():
            if not isinstance(value, (dict, list)):
                row[key] = value
        row["quantized_layers"] = len(measurement.get("quantized_layers", []))
        row["accuracy_drop"] = record.accuracy_drop if record else None
        row["on_front"] = trial.number in front
        rows.append(row)
    return pd.DataFrame(rows)


#: what `slimtune trials` shows in a terminal; json and csv carry every column.
TRIALS_TABLE_COLUMNS = [
    "trial", "status", "recipe", "latency_ms", "latency_ci_ms", "peak_memory_mb", "weight_mb", "accuracy", "balanced_accuracy", "on_front",
    "reason",
]


def trials_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(no trials)"
    if "latency_ci_low_ms" in frame:
        frame = frame.assign(latency_ci_ms=[_range(lo, hi, 3) for lo, hi in zip(frame["latency_ci_low_ms"],
                                                                                frame["latency_ci_high_ms"])])
    return format_table(frame[[c for c in TRIALS_TABLE_COLUMNS if c in frame]])


def _range(low: Any, high: Any, digits: int) -> str:
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return "-"
    return f"{low:.{digits}f}-{high:.{digits}f}"


def _drop_with_interval(drop: Any, low: Any, high: Any) -> str:
    """'+0.46 [-0.93,+1.85]': a drop in points with its interval, one column."""
    if drop is None or pd.isna(drop):
        return "-"
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{drop:+.2f}"
    return f"{drop:+.2f} [{low:+.1f},{high:+.1f}]"


def _fold_accuracy(frame: pd.DataFrame) -> pd.DataFrame:
    """The drops with their intervals in one column each: `val_drop_pts` (the split the search
    was judged on) and, once measured, `test_accuracy` and `test_drop_pts` (the untouched split)."""
    if "accuracy_drop_ci_low_pts" not in frame:
        return frame
    validation = (frame["judged_on"] == "validation").any()
    if not frame["accuracy_drop_ci_low_pts"].notna().any():  # measured before intervals: as it was
        return frame[[c for c in frame.columns if c not in ACCURACY_COLUMNS]]
    folded = [_drop_with_interval(d, lo, hi) for d, lo, hi in zip(
        frame["accuracy_drop_pts"], frame["accuracy_drop_ci_low_pts"], frame["accuracy_drop_ci_high_pts"])]
    frame["accuracy_drop_pts"] = folded
    if validation:
        frame = frame.rename(columns={"accuracy": "val_accuracy", "accuracy_drop_pts": "val_drop_pts"})
    if frame["test_accuracy"].notna().any():
        frame["test_drop_pts"] = [_drop_with_interval(d, lo, hi) for d, lo, hi in zip(
            frame["test_accuracy_drop_pts"], frame["test_accuracy_drop_ci_low_pts"], frame["test_accuracy_drop_ci_high_pts"])]
        order = [c for c in frame.columns if c not in ("test_accuracy", "test_drop_pts")]
        at = order.index("val_drop_pts" if validation else "accuracy_drop_pts") + 1
        frame = frame[order[:at] + ["test_accuracy", "test_drop_pts"] + order[at:]]
    return frame[[c for c in frame.columns if c == "test_accuracy" or c == "test_drop_pts"
                  or c not in ACCURACY_COLUMNS]]


def _fold_intervals(frame: pd.DataFrame) -> pd.DataFrame:
    """The terminal's view: each interval as one 'low-high' column beside its figure, and on the
    front, whether each point was confirmed ('yes', 'FLAGGED' where its trial's own figure would
    change its rank or speed-up: `disagreeing`, 'no')."""
    frame = _fold_accuracy(frame.copy())
    if "latency_ci_low_ms" in frame:
        at = frame.columns.get_loc("latency_ms") + 1
        frame.insert(at, "latency_ci_ms", [_range(lo, hi, 3) for lo, hi in zip(frame["latency_ci_low_ms"],
                                                                               frame["latency_ci_high_ms"])])
    if "speedup_ci_low_x" in frame and "speedup_x" in frame:
        at = frame.columns.get_loc("speedup_x") + 1
        frame.insert(at, "speedup_ci_x", [_range(lo, hi, 2) for lo, hi in zip(frame["speedup_ci_low_x"],
                                                                              frame["speedup_ci_high_x"])])
    if "confirmed" in frame and "speedup_x" in frame:
        frame["confirmed"] = ["FLAGGED" if flag else "yes" if done else "no"
                              for done, flag in zip(frame["confirmed"], frame["flagged"])]
    hidden = {"latency_ci_low_ms", "latency_ci_high_ms", "speedup_ci_low_x", "speedup_ci_high_x", "flagged",
              "latency_repeats"}
    return frame[[c for c in frame.columns if c not in hidden]]


def format_table(frame: pd.DataFrame) -> str:
    """The front (or trials) as text; when a point carries the mark, the line that says what it means."""
    if frame.empty:
        return "(no feasible trials)"
    note = "flagged" in frame and "speedup_x" in frame and bool(frame["flagged"].fillna(False).astype(bool).any())
    frame = _fold_intervals(frame)
    formats = {
        "latency_ms": "{:.3f}".format, "latency_p95_ms": "{:.3f}".format, "peak_memory_mb": "{:.2f}".format,
        "weight_mb": "{:.3f}".format, "accuracy": "{:.4f}".format, "speedup_x": "{:.2f}x".format,
        "val_accuracy": "{:.4f}".format, "test_accuracy": "{:.4f}".format,
        "memory_x": "{:.2f}x".format, "accuracy_drop_pts": "{:+.2f}".format,
        "balanced_accuracy": "{:.4f}".format, "refined_accuracy": "{:.4f}".format,
        "refined_balanced_accuracy": "{:.4f}".format, "refined_latency_ms": "{:.3f}".format,
        "refined_accuracy_drop_pts": "{:+.2f}".format, "refined_steps": "{:.0f}".format,
        "refined_test_accuracy": "{:.4f}".format, "refined_test_accuracy_drop_pts": "{:+.2f}".format,
    }
    table = frame.to_string(index=False, formatters={k: v for k, v in formats.items() if k in frame}, na_rep="-")
    return f"{table}\n{FLAGGED_NOTE}" if note else table


__all__ = ["StorageError", "StudyNotFound", "accuracy_floor", "format_table", "trials_table", "open_study", "pareto_front", "trials_frame"]
