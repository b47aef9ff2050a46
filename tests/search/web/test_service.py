"""The JSON API through FastAPI's test client: every endpoint on a real study, auth, validation,
module-path injection, export path escapes, paging, and read routes that create nothing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest

fastapi = pytest.importorskip("fastapi", reason="the service needs the 'serve' extra")
from fastapi.testclient import TestClient  # noqa: E402

from slimtune.search.config import CONFIG_ATTR  # noqa: E402
from slimtune.search.results import open_study, pareto_front  # noqa: E402
from slimtune.search.web.service import Settings, create_app  # noqa: E402
from slimtune.search.studies import N_TRIALS_ATTR, STUDY_FILE_ATTR  # noqa: E402
from tests.conftest import TINY_STUDY  # noqa: E402

from tests.search.conftest import Served  # noqa: E402

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SENTINEL = "tests.search.sentinel_module"


def client_for(url: str, tmp_path: Path, token: str | None = TOKEN, **settings: Any) -> TestClient:
    settings.setdefault("export_root", tmp_path / "exports")
    return TestClient(create_app(Settings(storage_url=url, token=token, log_dir=tmp_path / "logs", **settings)))


@pytest.fixture
def client(served_study: Served, tmp_path: Path) -> Iterator[TestClient]:
    with client_for(served_study.url, tmp_path) as test_client:
        yield test_client


def study_body(**changes: dict[str, Any]) -> dict[str, Any]:
    body = {section: dict(fields) for section, fields in TINY_STUDY.items()}
    for section, fields in changes.items():
        body.setdefault(section, {}).update(fields)
    return body


# ---------------------------------------------------------------- reads

def test_list_studies(client: TestClient, served_study: Served) -> None:
    answer = client.get("/api/studies")
    assert answer.status_code == 200
    [study] = answer.json()
    assert study["name"] == served_study.name
    assert study["state"] == "finished" and study["n_trials"] == 6
    assert study["complete"] + study["failed"] == 6 and study["running"] == 0
    assert study["device"] == "cpu"
    assert set(study["objectives"]) == {"latency_ms", "peak_memory_mb", "accuracy"}
    front = pareto_front(*open_study(served_study.name, served_study.url))
    assert study["front_size"] == len(front)
    assert study["best"]["latency_ms"] == pytest.approx(front["latency_ms"].min())
    assert study["best"]["accuracy"] == pytest.approx(front["accuracy"].max())


def test_one_study(client: TestClient, served_study: Served) -> None:
    answer = client.get(f"/api/studies/{served_study.name}").json()
    assert answer["baseline_trial"] == 0
    assert answer["config"]["workload"]["model"] == "slimtune:small_cnn"
    assert answer["accuracy_floor"] is not None and 0 < answer["accuracy_floor"] < 1
    assert client.get("/api/studies/nope").status_code == 404


def test_pareto_matches_the_cli(client: TestClient, served_study: Served) -> None:
    front = pareto_front(*open_study(served_study.name, served_study.url))
    answer = client.get(f"/api/studies/{served_study.name}/pareto").json()
    assert [row["trial"] for row in answer] == list(front["trial"])
    assert all(row["feasible"] and row["on_front"] for row in answer)


def test_trials_are_paged_and_sorted(client: TestClient, served_study: Served) -> None:
    url = f"/api/studies/{served_study.name}/trials"
    everything = client.get(url, params={"limit": 500}).json()
    assert everything["total"] == 6 and [t["trial"] for t in everything["trials"]] == list(range(6))
    first = client.get(url, params={"limit": 4}).json()
    second = client.get(url, params={"limit": 4, "offset": 4}).json()
    assert [t["trial"] for t in first["trials"] + second["trials"]] == list(range(6))
    assert first["total"] == second["total"] == 6

    by_latency = client.get(url, params={"sort": "latency_ms", "order": "desc", "limit": 500}).json()["trials"]
    measured = [t["latency_ms"] for t in by_latency if t["latency_ms"] is not None]
    assert measured == sorted(measured, reverse=True)
    assert all(t["latency_ms"] is None for t in by_latency[len(measured):])  # failed ones last
    by_weights = client.get(url, params={"sort": "weight_mb", "limit": 500}).json()["trials"]
    weights = [t["weight_mb"] for t in by_weights if t["weight_mb"] is not None]
    assert weights == sorted(weights)


@pytest.mark.parametrize("params, field", [
    ({"sort": "password"}, "sort"), ({"limit": 0}, "limit"), ({"limit": 501}, "limit"), ({"offset": -1}, "offset"),
    ({"order": "sideways"}, "order"),
])
def test_bad_paging_is_422_naming_the_parameter(client: TestClient, served_study: Served, params: dict, field: str) -> None:
    answer = client.get(f"/api/studies/{served_study.name}/trials", params=params)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", field]
    assert answer.json()["message"].startswith(f"query.{field}: ")


def test_one_trial(client: TestClient, served_study: Served) -> None:
    trial = client.get(f"/api/studies/{served_study.name}/trials/0").json()
    assert trial["is_baseline"] and trial["state"] == "COMPLETE" and trial["status"] == "complete"
    assert trial["measurement"]["latency_ms"] > 0 and trial["fingerprint"]["device"] == "cpu"
    assert trial["recipe"]["prune_ratio"] == 0.0
    assert client.get(f"/api/studies/{served_study.name}/trials/99").status_code == 404


def test_hypervolume_and_importances(client: TestClient, served_study: Served) -> None:
    history = client.get(f"/api/studies/{served_study.name}/hypervolume").json()
    assert history["trial_numbers"][0] == 0 and len(history["hypervolumes"]) == len(history["trial_numbers"])
    assert history["hypervolumes"] == sorted(history["hypervolumes"])  # a front only grows
    importances = client.get(f"/api/studies/{served_study.name}/importances").json()
    assert "reaching the front" in importances
    assert set(importances) >= {"latency_ms", "peak_memory_mb", "accuracy"}


def test_openapi_lists_every_endpoint_and_the_bearer_scheme(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/api/studies", "/api/studies/{name}", "/api/studies/{name}/trials", "/api/studies/{name}/pareto",
                 "/api/studies/{name}/launch", "/api/studies/{name}/stop", "/api/studies/{name}/export"):
        assert path in paths
    assert "post" in paths["/api/studies"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_read_routes_never_create_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with client_for(f"sqlite:///{missing}", tmp_path) as client:
        assert client.get("/api/studies").json() == []
        assert client.get("/").status_code == 200
        for path in ("/api/studies/x", "/studies/x", "/api/studies/x/trials", "/api/studies/x/pareto",
                     "/studies/x/trials/0"):
            assert client.get(path).status_code == 404, path
        assert client.post("/api/studies/x/launch", headers=AUTH).status_code == 404
    assert not missing.exists()


def test_read_routes_create_no_tables_in_an_empty_postgres_database(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, inspect

    from tests.storage.postgres import temporary_database

    with temporary_database() as url:
        with client_for(url, tmp_path) as client:
            assert client.get("/api/studies").json() == []
            assert client.get("/studies/x").status_code == 404
        engine = create_engine(url)
        assert inspect(engine).get_table_names() == []
        engine.dispose()


# ---------------------------------------------------------------- auth

@pytest.mark.parametrize("headers, status", [
    ({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": f"Bearer {TOKEN}x"}, 401),
    ({"Authorization": f"Basic {TOKEN}"}, 401),
])
def test_changes_need_the_right_token(client: TestClient, served_study: Served, headers: dict, status: int) -> None:
    name = served_study.name
    for path, body in (("/api/studies", study_body()), (f"/api/studies/{name}/launch", {"workers": 1}),
                       (f"/api/studies/{name}/stop", {}), (f"/api/studies/{name}/export", {"trial": 0})):
        answer = client.post(path, json=body, headers=headers)
        assert answer.status_code == status, path
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_a_server_without_a_token_refuses_every_change(served_study: Served, tmp_path: Path) -> None:
    with client_for(served_study.url, tmp_path, token=None) as client:
        answer = client.post("/api/studies", json=study_body(), headers={"Authorization": "Bearer anything"})
        assert answer.status_code == 403 and "SLIMTUNE_API_TOKEN" in answer.json()["detail"]
        assert client.get("/api/studies").status_code == 200  # reads stay open


def test_the_right_token_gets_through(client: TestClient, served_study: Served) -> None:
    # stop with nothing started: past auth, refused for what it is
    answer = client.post(f"/api/studies/{served_study.name}/stop", headers=AUTH)
    assert answer.status_code == 409 and "no workers" in answer.json()["detail"]


# ---------------------------------------------------------------- creating a study

@pytest.fixture
def empty(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    url = f"sqlite:///{tmp_path / 'created.db'}"
    with client_for(url, tmp_path) as client:
        yield client, url


def test_create_a_study(empty: tuple[TestClient, str]) -> None:
    client, url = empty
    body = study_body(study={"name": "over-http", "n_trials": 3})
    answer = client.post("/api/studies", json=body, headers=AUTH)
    assert answer.status_code == 201, answer.text
    assert answer.json()["name"] == "over-http" and answer.json()["state"] == "stopped"
    study = optuna.load_study(study_name="over-http", storage=url)
    assert study.metric_names == ["latency_ms", "peak_memory_mb", "accuracy"]
    assert study.user_attrs[N_TRIALS_ATTR] == 3
    assert study.user_attrs[STUDY_FILE_ATTR]["study"]["n_trials"] == 3
    assert study.user_attrs[CONFIG_ATTR]["workload"]["data"] == "sklearn:digits"
    [baseline] = study.trials
    assert baseline.state == optuna.trial.TrialState.WAITING and baseline.user_attrs == {"baseline": True}
    assert [s["name"] for s in client.get("/api/studies").json()] == ["over-http"]

    again = client.post("/api/studies", json=body, headers=AUTH)
    assert again.status_code == 409 and "already" in again.json()["detail"]


def test_create_a_study_from_the_study_file_itself(empty: tuple[TestClient, str]) -> None:
    from tests.search.conftest import study_toml

    client, url = empty
    text = study_toml(study_body(study={"name": "from-toml", "n_trials": 2}))
    headers = {**AUTH, "Content-Type": "application/toml"}
    answer = client.post("/api/studies/toml", content=text.encode(), headers=headers)
    assert answer.status_code == 201, answer.text
    assert optuna.load_study(study_name="from-toml", storage=url).user_attrs[N_TRIALS_ATTR] == 2
    bad = client.post("/api/studies/toml", content=text.replace("prune_ratio = [0.0, 0.6]", "prune_ratio = [0.0, 2.0]"),
                      headers=headers)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "space", "prune_ratio"]
    assert client.post("/api/studies/toml", content=b"[study", headers=headers).status_code == 422
    assert client.post("/api/studies/toml", content=text.encode(), headers={"Content-Type": "application/toml"}
                       ).status_code == 401


@pytest.mark.parametrize("changes, loc", [
    ({"space": {"prune_ratio": [0.0, 1.5]}}, ["body", "space", "prune_ratio"]),
    ({"study": {"sampler": "bogus"}}, ["body", "study", "sampler"]),
    ({"objectives": {"speed": "minimize"}}, ["body", "objectives"]),
    ({"target": {"device": "tpu"}}, ["body", "target", "device"]),
    ({"budget": {"surprise": 1}}, ["body", "budget", "surprise"]),
])
def test_a_bad_body_is_422_naming_the_field(empty: tuple[TestClient, str], changes: dict, loc: list) -> None:
    client, url = empty
    answer = client.post("/api/studies", json=study_body(**changes), headers=AUTH)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == loc
    assert answer.json()["message"].startswith(".".join(loc) + ": ")
    assert not Path(url.removeprefix("sqlite:///")).exists()  # nothing written


def test_a_missing_section_and_broken_json_are_422(empty: tuple[TestClient, str]) -> None:
    client, _ = empty
    body = study_body()
    del body["workload"]
    answer = client.post("/api/studies", json=body, headers=AUTH)
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "workload"]
    broken = client.post("/api/studies", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert broken.status_code == 422


def test_a_model_that_fails_on_the_study_is_422_with_the_message(empty: tuple[TestClient, str]) -> None:
    """Built-in models only over HTTP, but one can still fail on the study's input: the server
    runs it once before writing, and answers with the CLI's one line."""
    client, url = empty
    body = study_body(workload={"model": "torchvision:vit_b_16"})
    answer = client.post("/api/studies", json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "workload", "model"]
    assert answer.json()["message"].startswith("body.workload.model: 'torchvision:vit_b_16' cannot run a batch of "
                                               "input_shape [1, 8, 8]: AssertionError: Wrong image height!")
    assert not Path(url.removeprefix("sqlite:///")).exists()


def test_a_quantization_that_would_touch_no_layer_is_422(empty: tuple[TestClient, str]) -> None:
    client, url = empty
    body = study_body(workload={"model": "torchvision:squeezenet1_1", "input_shape": [3, 32, 32]},
                      space={"quantization": ["none", "int8_dynamic"]})
    answer = client.post("/api/studies", json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "space", "quantization"]
    assert "'int8_dynamic' would quantize no layer of this model" in answer.json()["message"]
    assert not Path(url.removeprefix("sqlite:///")).exists()


@pytest.mark.parametrize("changes, field", [
    ({"workload": {"model": f"{SENTINEL}:make_model"}}, "model"),
    ({"workload": {"model": "os:system"}}, "model"),
    ({"workload": {"data": f"{SENTINEL}:make_data"}}, "data"),
    ({"workload": {"data": "torchvision:utils"}}, "data"),
    ({"workload": {"data": "imagefolder:/etc"}}, "data"),
    ({"workload": {"data_root": "/etc"}}, "data_root"),
    ({"baseline": {"checkpoint": "/etc/passwd"}}, "checkpoint"),
])
def test_a_client_cannot_make_the_server_import_or_read_what_it_names(
    empty: tuple[TestClient, str], changes: dict, field: str
) -> None:
    client, url = empty
    sys.modules.pop(SENTINEL, None)
    answer = client.post("/api/studies", json=study_body(**changes), headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"][-1] == field
    assert SENTINEL not in sys.modules  # the module was never imported
    assert not Path(url.removeprefix("sqlite:///")).exists()


def test_paths_in_a_created_study_stay_inside_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (tmp_path / "outside").mkdir()
    (data_dir / "escape").symlink_to(tmp_path / "outside")
    with client_for(f"sqlite:///{tmp_path / 'd.db'}", tmp_path, data_dir=data_dir) as client:
        for root in ("../outside", "escape", "/tmp"):
            answer = client.post("/api/studies", json=study_body(workload={"data": "torchvision:CIFAR10", "data_root": root}),
                                 headers=AUTH)
            assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "workload", "data_root"], root
        inside = client.post("/api/studies", json=study_body(workload={"data": "torchvision:CIFAR10", "data_root": "cifar"}),
                             headers=AUTH)
        # confined, then checked like the CLI: the folder holds no CIFAR-10
        assert inside.status_code == 422 and inside.json()["detail"][0]["loc"] == ["body", "workload", "data_root"]
        assert "never downloads" in inside.json()["detail"][0]["msg"]


# ---------------------------------------------------------------- launch, stop, export

def test_launch_and_export_refuse_bad_bodies(client: TestClient, served_study: Served) -> None:
    name = served_study.name
    for body, loc in (({"workers": 0}, ["body", "workers"]), ({"workers": 65}, ["body", "workers"])):
        answer = client.post(f"/api/studies/{name}/launch", json=body, headers=AUTH)
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == loc
    for body in ({}, {"trial": 1, "knee": True}, {"format": "pt2"}):
        answer = client.post(f"/api/studies/{name}/export", json=body, headers=AUTH)
        assert answer.status_code == 422 and "exactly one of" in answer.json()["message"]
    assert client.post("/api/studies/nope/export", json={"trial": 0}, headers=AUTH).status_code == 404


@pytest.mark.parametrize("out", ["../escaped", "a/../../escaped", "/tmp/escaped", "link/inside-the-link", "..", ""])
def test_export_paths_stay_inside_the_export_root(served_study: Served, tmp_path: Path, out: str) -> None:
    root = tmp_path / "exports"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    with client_for(served_study.url, tmp_path, export_root=root) as client:
        answer = client.post(f"/api/studies/{served_study.name}/export", json={"trial": 0, "out": out}, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "out"]
    assert list((tmp_path / "elsewhere").iterdir()) == [] and not (tmp_path / "escaped").exists()


def test_launch_says_when_this_install_cannot_launch(client: TestClient, served_study: Served) -> None:
    from slimtune.search.web.launches import Launches

    if Launches(served_study.url, Path(".")).available():
        pytest.skip("this install has `slimtune launch`: test_launch_and_stop runs it for real")
    answer = client.post(f"/api/studies/{served_study.name}/launch", json={"workers": 1}, headers=AUTH)
    assert answer.status_code == 501 and "launch" in answer.json()["detail"]


def test_export_a_trial(client: TestClient, served_study: Served, tmp_path: Path) -> None:
    pytest.importorskip("slimtune.search.export", reason="export comes with the export feature (issue 12)")
    front = client.get(f"/api/studies/{served_study.name}/pareto").json()
    number = front[0]["trial"]
    answer = client.post(f"/api/studies/{served_study.name}/export", json={"trial": number, "out": "picked"},
                         headers=AUTH)
    assert answer.status_code == 201, answer.text
    assert answer.json()["out"] == "picked"
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    schema["/api/studies/{name}/export"]["POST"].validate_response(answer)  # the real export, as declared
    assert (tmp_path / "exports" / "picked" / "manifest.json").is_file()
    assert answer.json()["manifest"]["trial"] == number
    page = client.get(f"/studies/{served_study.name}/trials/{number}")
    assert "picked" in page.text  # the trial page lists its export


@pytest.mark.processes
def test_launch_and_stop(tmp_path: Path) -> None:
    """A study created over HTTP, run by workers the server launched, then another stopped."""
    from slimtune.search.web.launches import Launches

    url = f"sqlite:///{tmp_path / 'launched.db'}"
    if not Launches(url, tmp_path).available():
        pytest.skip("this install has no `slimtune launch` (the many-workers feature, issue 13)")
    import time

    with client_for(url, tmp_path) as client:
        body = study_body(study={"name": "launched", "n_trials": 2})
        assert client.post("/api/studies", json=body, headers=AUTH).status_code == 201
        started = client.post("/api/studies/launched/launch", json={"workers": 1}, headers=AUTH)
        assert started.status_code == 202, started.text
        assert client.post("/api/studies/launched/launch", json={"workers": 1}, headers=AUTH).status_code == 409
        deadline = time.monotonic() + 240
        while client.get("/api/studies/launched").json()["state"] != "finished" and time.monotonic() < deadline:
            time.sleep(1)
        summary = client.get("/api/studies/launched").json()
        assert summary["state"] == "finished" and summary["complete"] + summary["failed"] == 2

        body = study_body(study={"name": "stopped", "n_trials": 50}, budget={"finetune_steps": 2000})
        assert client.post("/api/studies", json=body, headers=AUTH).status_code == 201
        assert client.post("/api/studies/stopped/launch", json={"workers": 1}, headers=AUTH).status_code == 202
        # stop while a fine-tuning trial runs: trial 0, the baseline, is only measured and can
        # finish between this poll and the stop (it did on a loaded machine), interrupting nothing;
        # its record says complete a moment before Optuna does, so wait for a later trial to run
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = client.get("/api/studies/stopped").json()
            if now["running"] > 0 and now["complete"] >= 1 and any(
                t.number >= 1 for t in optuna.load_study(study_name="stopped", storage=url).get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            ):
                break
            time.sleep(0.5)
        stopped = client.post("/api/studies/stopped/stop", headers=AUTH)
        assert stopped.status_code == 200
        deadline = time.monotonic() + 60
        while client.get("/api/studies/stopped").json()["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
        summary = client.get("/api/studies/stopped").json()
        assert summary["state"] == "stopped" and summary["running"] == 0
        statuses = {t["status"] for t in client.get("/api/studies/stopped/trials").json()["trials"]}
        assert "interrupted" in statuses
