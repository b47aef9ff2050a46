"""optuna-dashboard (its Python API, the WSGI app) reads a slimtune database: the study, its
metric names, trials with their values and slimtune's user attributes."""

from __future__ import annotations

import io
import json
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from .conftest import Served

optuna_dashboard = pytest.importorskip("optuna_dashboard")


def get(app: Any, path: str) -> tuple[str, Any]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], json.loads(body)


def test_optuna_dashboard_reads_the_study(served_study: Served) -> None:
    app = optuna_dashboard.wsgi(served_study.url)
    status, studies = get(app, "/api/studies")
    assert status.startswith("200")
    [study] = studies["study_summaries"]
    assert study["study_name"] == served_study.name
    status, detail = get(app, f"/api/studies/{study['study_id']}")
    assert status.startswith("200")
    assert detail["name"] == served_study.name
    assert detail["objective_names"] == ["latency_ms", "peak_memory_mb", "accuracy"]
    assert detail["directions"] == ["minimize", "minimize", "maximize"]
    assert len(detail["trials"]) == 6
    baseline = detail["trials"][0]
    assert baseline["state"] == "Complete" and len(baseline["values"]) == 3
    attrs = {a["key"]: a["value"] for a in baseline["user_attrs"]}
    assert attrs["baseline"] == "True" and attrs["status"] == "complete"
    assert json.loads(attrs["recipe"])["prune_ratio"] == 0.0
    study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert json.loads(study_attrs["slimtune_config"])["workload"]["model"] == "slimtune:small_cnn"
