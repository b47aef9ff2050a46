"""Confirmation: the figures from interleaved rounds, the flag on a planted outlier, the study's
end and `slimtune confirm`, and studies measured before intervals existed still reading."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from markupsafe import escape

from slimtune.search.cli import main
from slimtune.search.config import load_config
from slimtune.search.confirm import summarise
from slimtune.search.report.html_report import write_report
from slimtune.search.report.overview import Catalog
from slimtune.search.report.rendering import number
from slimtune.search.results import (
    FLAGGED_NOTE, format_table, open_study, pareto_front, trials_frame, trials_table,
)
from slimtune.search.runner import run_study
from slimtune.storage import TrialRecord

from tests.conftest import TINY_STUDY
from tests.search.conftest import study_toml


def _record(number: int, latency: float, low: float | None = None, high: float | None = None) -> TrialRecord:
    measurement = {"latency_ms": latency}
    if low is not None:
        measurement |= {"latency_ci_low_ms": low, "latency_ci_high_ms": high}
    return TrialRecord(number, "complete", None, {}, measurement, 0.0)


def test_summarise_pairs_rounds_and_flags_a_planted_outlier():
    base = [10.0, 10.2, 9.8, 10.1, 9.9, 10.0]
    agrees = [5.0, 5.1, 4.9, 5.05, 4.95, 5.0]
    outlier = [2.5, 2.55, 2.45, 2.5, 2.52, 2.48]  # its trial said 3.0 ms: 20% off
    old = [4.0, 4.1, 3.9, 4.0, 4.0, 4.0]  # measured before intervals: the trial's median alone
    rows = summarise([base, agrees, outlier, old],
                     [_record(0, 10.0, 9.9, 10.1), _record(3, 5.0, 4.97, 5.06), _record(5, 3.0, 2.97, 3.03),
                      _record(7, 4.0)], blocks=[1, 1, 2, 2], batch_size=32)
    by_trial = {row["trial_number"]: row for row in rows}
    assert by_trial[0]["is_baseline"] and by_trial[0]["speedup_x"] == 1.0 and not by_trial[0]["flagged"]
    assert by_trial[3]["latency_ms"] == pytest.approx(5.0)
    assert (by_trial[3]["latency_ci_low_ms"], by_trial[3]["latency_ci_high_ms"]) == (4.9, 5.1)  # 6 rounds: min..max
    assert by_trial[3]["speedup_x"] == pytest.approx(2.0, rel=0.01)
    assert by_trial[3]["speedup_ci_low_x"] <= by_trial[3]["speedup_x"] <= by_trial[3]["speedup_ci_high_x"]
    assert not by_trial[3]["flagged"]
    assert by_trial[5]["flagged"] and by_trial[5]["trial_latency_ms"] == 3.0  # speed-up 3.33 in the trial, 3.93-4.04 confirmed
    assert not by_trial[7]["flagged"]  # speed-up 2.5 both ways
    assert by_trial[7]["details"] == {"round_medians_ms": old, "block": 2, "batch_size": 32}


def test_a_whole_trial_run_under_load_is_no_mark():
    """Every trial timed 1.4x slower than the confirmation (a shared CPU busier then): each trial's
    latency lies outside its confirmed interval, yet ranks and speed-ups are the confirmed ones."""
    base = [10.0, 12.0, 8.0, 11.0, 9.0, 10.0]
    fast = [5.0, 6.5, 4.2, 5.8, 4.5, 5.0]
    slow = [8.0, 9.5, 6.5, 8.8, 7.2, 8.0]
    rows = summarise([base, fast, slow], [_record(0, 14.0, 13.9, 14.1), _record(1, 7.0, 6.95, 7.05),
                                         _record(2, 11.2, 11.1, 11.3)])
    for row in rows:
        assert not row["latency_ci_low_ms"] <= row["trial_latency_ms"] <= row["latency_ci_high_ms"]
    assert not any(row["flagged"] for row in rows)


def test_a_baseline_timed_off_in_its_trial_is_marked_alone():
    """The digits demo, idle, 2026-12-06: the baseline's trial said 9.48 ms, confirmed 7.17; every
    point's trial agreed with its confirmation. Every trial speed-up was 1.3x off, and the old rule
    marked all 8 points; the baseline's figure is the one that was off."""
    base = [7.1, 7.2, 7.15, 7.25, 7.1, 7.2]
    fast = [1.42, 1.45, 1.40, 1.43, 1.41, 1.44]  # its trial said 1.41
    slow = [2.40, 2.45, 2.35, 2.42, 2.38, 2.41]  # its trial said 2.42
    rows = summarise([base, fast, slow], [_record(0, 9.48), _record(15, 1.41), _record(20, 2.42)])
    assert [row["flagged"] for row in rows] == [True, False, False]


def test_a_trial_figure_that_swaps_two_points_the_confirmation_tells_apart_marks_both():
    base = [10.0, 11.5, 8.5, 10.8, 9.2, 10.0]  # wide speed-up intervals: the rank alone marks
    first = [3.3, 3.4, 3.25, 3.35, 3.3, 3.3]  # its trial said 3.0: fastest; confirmed 3.25-3.4, second
    second = [3.1, 3.2, 3.0, 3.15, 3.05, 3.1]  # its trial said 3.2; confirmed 3.0-3.2
    rows = summarise([base, first, second], [_record(0, 10.0), _record(1, 3.0), _record(2, 3.2)])
    assert [row["flagged"] for row in rows] == [False, True, True]


def test_a_swap_inside_overlapping_confirmed_intervals_is_no_mark():
    base = [10.0, 10.6, 9.4, 10.3, 9.7, 10.0]
    first = [3.15, 3.05, 3.3, 3.1, 3.2, 3.15]  # its trial said 3.10, confirmed 3.05-3.3
    second = [3.1, 3.25, 3.0, 3.05, 3.15, 3.1]  # its trial said 3.15, confirmed 3.0-3.25: the order is noise
    rows = summarise([base, first, second], [_record(0, 10.0), _record(1, 3.1), _record(2, 3.15)])
    assert not any(row["flagged"] for row in rows)


def _front(flagged: list[bool]) -> pd.DataFrame:
    n = len(flagged)
    return pd.DataFrame({
        "trial": range(1, n + 1), "recipe": ["prune 0.5"] * n, "latency_ms": [2.0 + i for i in range(n)],
        "latency_ci_low_ms": [1.9 + i for i in range(n)], "latency_ci_high_ms": [2.1 + i for i in range(n)],
        "latency_repeats": [50] * n, "speedup_x": [5.0 - i for i in range(n)], "speedup_ci_low_x": [4.8 - i for i in range(n)],
        "speedup_ci_high_x": [5.2 - i for i in range(n)], "confirmed": [True] * n, "flagged": flagged,
    })


def test_the_table_says_under_it_what_the_mark_means_when_a_point_has_it():
    marked = format_table(_front([False, True, False])).splitlines()
    assert [line.split()[-1] for line in marked[1:4]] == ["yes", "FLAGGED", "yes"]
    assert marked[-1] == FLAGGED_NOTE and FLAGGED_NOTE.startswith("FLAGGED: ")
    assert FLAGGED_NOTE not in format_table(_front([False, False]))


def test_fewer_than_six_rounds_give_no_interval_but_still_a_flag():
    [base, point] = summarise([[10.0, 10.0], [5.0, 5.2]], [_record(0, 10.0), _record(1, 6.0, 5.9, 6.1)])
    assert point["latency_ci_low_ms"] is None and point["speedup_ci_low_x"] is None
    assert point["flagged"]  # speed-up 1.67 in the trial against 1.92-2.0, the rounds' ratios


@pytest.fixture(scope="module")
def confirmed_study(tmp_path_factory):
    """A tiny study whose run ends with a confirmation of 6 rounds."""
    folder = tmp_path_factory.mktemp("confirm")
    sections = {k: dict(v) for k, v in TINY_STUDY.items()}
    sections["study"] |= {"name": "confirm", "n_trials": 4}
    sections["budget"] |= {"confirm_rounds": 6, "finetune_steps": 10}
    path = folder / "study.toml"
    path.write_text(study_toml(sections))
    storage = f"sqlite:///{folder / 'study.db'}"
    lines: list[str] = []
    run_study(load_config(str(path)), storage, log=lines.append, progress=False)
    return storage, lines


def test_the_study_pages_headline_states_the_confirmed_figures_the_table_states(confirmed_study, tmp_path):
    """The cards above the trial table: the front's fastest latency and its speed-up as confirmed,
    against the confirmed baseline; the other objectives are the trials' own."""
    storage, _ = confirmed_study
    study, repository = open_study("confirm", storage)
    confirmed = repository.confirmations("confirm")
    front = pareto_front(study, repository)
    fastest = front.iloc[0]
    view = Catalog(storage).study("confirm")
    cards = view.headline()
    assert view.summary.best["latency_ms"] == fastest["latency_ms"] and view.summary.confirmed  # the studies list
    assert cards["latency_ms"] == {"best": fastest["latency_ms"], "baseline": confirmed[0]["latency_ms"],
                                   "ratio": fastest["speedup_x"], "confirmed": True,
                                   "throughput": view.throughput(fastest["latency_ms"])}
    assert cards["latency_ms"]["throughput"].endswith("images/s at batch 32")
    best_accuracy = front["accuracy"].max()
    baseline_accuracy = repository.trial("confirm", 0).measurement["accuracy"]
    assert cards["accuracy"] == {"best": best_accuracy, "baseline": baseline_accuracy,
                                 "ratio": best_accuracy / baseline_accuracy, "confirmed": False}
    page = write_report("confirm", storage, tmp_path / "report.html").read_text()
    assert (f"best on the front, confirmed · baseline {number('latency_ms', confirmed[0]['latency_ms'])}" in page
            and f"<b>{fastest['speedup_x']:.2f}×</b>" in page)


def test_a_study_is_confirmed_when_its_run_ends(confirmed_study):
    storage, lines = confirmed_study
    assert any(line.startswith("confirming the baseline and") for line in lines)
    study, repository = open_study("confirm", storage)
    confirmed = repository.confirmations("confirm")
    front = pareto_front(study, repository)
    assert set(confirmed) >= set(front["trial"]) - {0} and 0 in confirmed  # the baseline and every front point
    assert confirmed[0]["is_baseline"] and confirmed[0]["speedup_x"] == 1.0
    for number in front["trial"]:
        row = confirmed[number]
        assert row["rounds"] == 6 and row["latency_ci_low_ms"] <= row["latency_ms"] <= row["latency_ci_high_ms"]
    assert front["confirmed"].all()
    assert front.set_index("trial").loc[front["trial"].iloc[0], "latency_ms"] == confirmed[front["trial"].iloc[0]]["latency_ms"]
    table = format_table(front)
    assert "latency_ci_ms" in table and "speedup_ci_x" in table and "confirmed" in table


def test_dashboard_and_report_show_intervals_and_confirmation(confirmed_study, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from slimtune.search.web.service import Settings, create_app

    storage, _ = confirmed_study
    study, repository = open_study("confirm", storage)
    number = next(n for n, row in repository.confirmations("confirm").items() if not row["is_baseline"])
    with TestClient(create_app(Settings(storage, export_root=tmp_path))) as client:
        study_page = client.get("/studies/confirm").text
        trial_page = client.get(f"/studies/confirm/trials/{number}").text
    # a loaded machine can move a trial's latency outside its confirmed interval: then the tag says so
    tag = "flagged" if repository.confirmations("confirm")[number]["flagged"] else "confirmed"
    assert "95% interval (ms)" in study_page and f">{tag}</span>" in study_page
    assert "Confirmed against the baseline" in trial_page and "95% interval" in trial_page
    assert "each the per-call time of a block of" in trial_page
    assert main(["report", "confirm", "--storage", storage, "-o", str(tmp_path / "report.html")]) == 0
    assert f">{tag}</span>" in (tmp_path / "report.html").read_text()


def test_export_verifies_its_latency_against_the_confirmed_figure(confirmed_study, tmp_path, capsys):
    storage, _ = confirmed_study
    study, repository = open_study("confirm", storage)
    confirmed = repository.confirmations("confirm")
    number = next(n for n, row in confirmed.items() if not row["is_baseline"])
    out = tmp_path / "export"
    assert main(["export", "confirm", "--storage", storage, "--trial", str(number), "--out", str(out)]) == 0
    assert " ms confirmed (ratio " in capsys.readouterr().out
    verification = json.loads((out / "manifest.json").read_text())["verification"]
    assert verification["latency_against"] == "confirmed"
    assert verification["latency_ratio"] == pytest.approx(verification["latency_ms"] / confirmed[number]["latency_ms"])


def test_confirm_command_flags_a_planted_outlier(confirmed_study, capsys, tmp_path):
    storage, _ = confirmed_study
    study, repository = open_study("confirm", storage)
    number = int(pareto_front(study, repository)["trial"].iloc[0])
    record = repository.trial("confirm", number)
    # 1000x: far outside any interval even on a loaded shared machine (rounds there vary 10x)
    planted = {**record.measurement, "latency_ms": record.measurement["latency_ms"] * 1000,
               "latency_ci_low_ms": record.measurement["latency_ms"] * 990,
               "latency_ci_high_ms": record.measurement["latency_ms"] * 1010}
    repository.record_trial("confirm", number, status="complete", recipe=record.recipe, measurement=planted,
                            accuracy_drop=record.accuracy_drop)
    assert main(["confirm", "confirm", "--storage", storage, "--rounds", "6"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "the trial's own latency would change the rank or speed-up of: " in line)
    assert str(number) in line.rsplit(": ", 1)[1].split(", ")  # (on a loaded machine others may be flagged too)
    assert "FLAGGED" in out and FLAGGED_NOTE in out  # the mark, and under the table what it means
    confirmed = repository.confirmations("confirm")
    assert confirmed[number]["flagged"] and confirmed[number]["trial_latency_ms"] == planted["latency_ms"]
    page = write_report("confirm", storage, tmp_path / "report.html").read_text()  # the dashboard's table, too
    assert ">flagged</span>" in page and str(escape(FLAGGED_NOTE.removeprefix("FLAGGED: "))) in page
    assert main(["confirm", "confirm", "--storage", storage, "--rounds", "0"]) == 2  # bad input: one line, exit 2
    assert capsys.readouterr().err.startswith("slimtune: error: --rounds = 0")


def test_a_mark_stored_by_the_old_rule_is_read_by_the_new_one(confirmed_study, tmp_path):
    """Confirmations stored before this rule carry its `flagged`; `pareto`, the dashboard and the
    report mark by the rule as it is now. Planted figures: ranks and speed-ups agree, every row
    stored flagged."""
    storage, _ = confirmed_study
    study, repository = open_study("confirm", storage)
    stored = repository.confirmations("confirm")
    assert len(stored) >= 2  # the baseline and a front point (this test runs before the one that drops them)
    planted = []
    for rank, (number, row) in enumerate(sorted(stored.items(), key=lambda item: not item[1]["is_baseline"])):
        latency = 10.0 if row["is_baseline"] else float(rank)
        planted.append({**row, "latency_ms": latency, "trial_latency_ms": latency * 1.5, "latency_ci_low_ms": latency * 0.9,
                        "latency_ci_high_ms": latency * 1.1, "speedup_x": 10.0 / latency,
                        "speedup_ci_low_x": 9.0 / latency, "speedup_ci_high_x": 11.0 / latency, "flagged": True})
    repository.record_confirmations("confirm", planted)
    try:
        front = pareto_front(study, repository)
        assert front["confirmed"].all() and not front["flagged"].any()
        assert "FLAGGED" not in format_table(front)
        page = write_report("confirm", storage, tmp_path / "report.html").read_text()
        assert ">flagged</span>" not in page and ">confirmed</span>" in page
    finally:
        repository.record_confirmations("confirm", [{k: v for k, v in row.items()} for row in stored.values()])


def test_trials_measured_before_intervals_still_read(confirmed_study, capsys):
    storage, _ = confirmed_study
    study, repository = open_study("confirm", storage)
    for record in repository.trials("confirm"):
        if record.measurement:
            old = {k: v for k, v in record.measurement.items()
                   if not k.startswith(("latency_ci", "latency_block", "latency_converged"))}
            repository.record_trial("confirm", record.trial_number, status=record.status, recipe=record.recipe,
                                    measurement=old, accuracy_drop=record.accuracy_drop)
    repository.record_confirmations("confirm", [])  # and never confirmed
    front = pareto_front(study, repository)
    assert not front["confirmed"].any() and front["latency_ci_low_ms"].isna().all()
    assert "latency_ci_ms" in format_table(front)
    assert trials_table(trials_frame(study, repository))
    assert main(["pareto", "confirm", "--storage", storage, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out.split("\nhypervolume")[0])
    assert all(row["confirmed"] is False and row["latency_ci_low_ms"] is None for row in rows)
