"""The dashboard's pages through the test client: the study list, a study (figures, trial
table sorted and paged), a trial (recipe, measurements, fingerprint, failure reason), and the
auto-refresh of a running study."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Iterator

import optuna
import pytest

pytest.importorskip("fastapi", reason="the pages need the 'serve' extra")
from fastapi.testclient import TestClient  # noqa: E402

from slimtune.search.web.service import Settings, create_app  # noqa: E402
from slimtune.storage import Repository, connect  # noqa: E402

from tests.search.conftest import Served, plotly_array  # noqa: E402


def figures(html: str) -> dict[str, dict]:
    return {m.group(1): json.loads(m.group(2)) for m in re.finditer(
        r'<script type="application/json" data-plot="(\w+)">(.*?)</script>', html, re.S)}


@pytest.fixture
def client(served_study: Served, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(served_study.url, export_root=tmp_path))) as test_client:
        yield test_client


def test_studies_page(client: TestClient, served_study: Served) -> None:
    html = client.get("/").text
    assert f'href="/studies/{served_study.name}"' in html
    assert 'class="pill finished"' in html
    assert "top-1 accuracy (%)" in html and "data-refresh" not in html  # nothing runs


def test_study_page_draws_every_figure(client: TestClient, served_study: Served) -> None:
    page = client.get(f"/studies/{served_study.name}")
    assert page.status_code == 200
    plots = figures(page.text)
    assert set(plots) == {"front2d", "front3d", "parallel", "hypervolume"}
    names = [t["name"] for t in plots["front2d"]["data"]]
    assert any(n.startswith("feasible Pareto front") for n in names) and "baseline" in names
    assert any(n.startswith("infeasible") for n in names) and any(n.startswith("feasible, off") for n in names)
    layout = plots["front2d"]["layout"]
    assert layout["xaxis"]["title"]["text"] == "latency per batch, median (ms)"
    assert layout["yaxis"]["title"]["text"] == "top-1 accuracy (%)"
    assert any("accuracy floor" in a["text"] for a in layout["annotations"])  # the floor is drawn
    baseline = next(t for t in plots["front2d"]["data"] if t["name"] == "baseline")
    assert plotly_array(baseline["customdata"])[:, 0].tolist() == [0] and baseline["text"] == ["baseline"]
    assert "%{text}" in baseline["hovertemplate"]  # hover shows the recipe
    assert '<script src="/static/plotly.min.js">' in page.text and "cdn" not in page.text.lower()


def test_the_axes_can_be_chosen(client: TestClient, served_study: Served) -> None:
    plots = figures(client.get(f"/studies/{served_study.name}?x=peak_memory_mb&y=latency_ms&z=accuracy").text)
    assert plots["front2d"]["layout"]["xaxis"]["title"]["text"] == "peak memory (MB)"
    assert plots["front2d"]["layout"]["yaxis"]["title"]["text"] == "latency per batch, median (ms)"
    assert "annotations" not in plots["front2d"]["layout"]  # no accuracy axis, no floor line
    scene = plots["front3d"]["layout"]["scene"]
    assert scene["zaxis"]["title"]["text"] == "top-1 accuracy (%)"
    # an unknown axis falls back to the default instead of failing
    assert figures(client.get(f"/studies/{served_study.name}?x=secret").text)["front2d"]["layout"]["xaxis"]["title"]


def test_trial_page(client: TestClient, served_study: Served) -> None:
    html = client.get(f"/studies/{served_study.name}/trials/0").text
    assert "<h1>Trial 0</h1>" in html and "baseline" in html
    for text in ("latency per batch, median (ms)", "peak memory (MB)", "torch_version", "prune_ratio", "Hardware and software"):
        assert text in html
    assert client.get(f"/studies/{served_study.name}/trials/77").status_code == 404


@pytest.fixture
def big(tmp_path: Path, served_study: Served) -> Iterator[tuple[TestClient, str]]:
    """The served study plus 130 recorded trials (half of them failed), to page through."""
    path = tmp_path / "big.db"
    # SQLite's backup API, not a file copy: the served database is in WAL mode, and its last
    # writes may still sit in served.db-wal (a copy of served.db alone would lack the study).
    with sqlite3.connect(served_study.folder / "served.db") as source, sqlite3.connect(path) as target:
        source.backup(target)
    url = f"sqlite:///{path}"
    repository = Repository(connect(url))
    study = optuna.load_study(study_name=served_study.name, storage=url)
    baseline = repository.trial(served_study.name, 0)
    for i in range(130):
        trial = study.ask()
        if i % 2:
            repository.record_trial(served_study.name, trial.number, status="failed", recipe=baseline.recipe,
                                    reason=f"RuntimeError: failure number {i}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            measurement = {**baseline.measurement, "latency_ms": 1.0 + i, "weight_mb": 0.01 * (i + 1)}
            repository.record_trial(served_study.name, trial.number, status="complete", recipe=baseline.recipe,
                                    measurement=measurement, accuracy_drop=0.0)
            trial.set_constraint("accuracy_drop", -0.05)
            study.tell(trial, [measurement["latency_ms"], measurement["peak_memory_mb"], measurement["accuracy"]])
    running = study.ask()  # one trial still running
    with TestClient(create_app(Settings(url, export_root=tmp_path))) as client:
        yield client, served_study.name
    study.tell(running, state=optuna.trial.TrialState.FAIL)


def rows(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr id="trial-(\d+)"', html)]


def test_the_trial_table_is_sorted_and_paged(big: tuple[TestClient, str]) -> None:
    client, name = big
    first = client.get(f"/studies/{name}").text
    assert rows(first) == list(range(50)) and "page 1 / 3" in first and "rows 1–50 of 136" in first
    last = client.get(f"/studies/{name}?page=3").text
    assert rows(last) == list(range(100, 136))
    assert rows(client.get(f"/studies/{name}?page=99").text) == rows(last)  # clamped
    by_weight = rows(client.get(f"/studies/{name}?sort=weight_mb&order=desc").text)
    every = client.get(f"/api/studies/{name}/trials", params={"limit": 500}).json()["trials"]
    measured = sorted((t for t in every if t["weight_mb"] is not None), key=lambda t: (-t["weight_mb"], t["trial"]))
    assert by_weight == [t["trial"] for t in measured][:50]
    headers = re.findall(r'<th class="num sortable[^"]*"><a href="([^"]+)">([^<]+)</a>', first)
    assert ("latency median (ms)" in [h[1] for h in headers]) and ("weights (MB)" in [h[1] for h in headers])
    assert "RuntimeError: failure number 1" in first
    assert ">nan<" not in first.lower() and ">none<" not in first.lower()  # missing values are blank or a dash


def test_a_running_study_refreshes_itself(big: tuple[TestClient, str]) -> None:
    client, name = big
    html = client.get(f"/studies/{name}").text
    assert f'data-refresh="/api/studies/{name}"' in html and 'class="pill running"' in html
    assert "Running now" in html
    assert 'data-refresh="/api/studies"' in client.get("/").text


def test_a_failed_trial_shows_its_reason(big: tuple[TestClient, str]) -> None:
    client, name = big
    html = client.get(f"/studies/{name}/trials/7").text
    assert "Why it failed" in html and "RuntimeError: failure number 1" in html
    assert "Nothing measured" in html


def test_plotly_js_comes_from_the_installed_package(client: TestClient) -> None:
    import plotly

    answer = client.get("/static/plotly.min.js")
    local = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    assert answer.status_code == 200 and answer.content == local
