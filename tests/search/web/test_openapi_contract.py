"""The OpenAPI contract, checked the way a client's tester checks it: schemathesis generates
requests from /openapi.json and sends them to the app in-process, on the served tiny study,
with the right token, with none, and to a server that has no token. Every answer must be no
server error, have a status code the schema declares for its route, and match the declared
body, content type and headers.

Kept short and repeatable: a bounded number of examples per route, derandomized. Two things
are made cheap, not skipped: `launch` starts a sleeping process instead of `slimtune launch`
(test_service.py::test_launch_and_stop runs real workers), and `export` chooses and checks
the trial with the real code but writes only a manifest (test_service.py::test_export_a_trial
runs a real export and checks its answer against the schema). Creating a study is real, on the
tiny study's workload: the generator is given that workload (input shapes, models and data the
2-core machine builds in a moment), and the positive cases only: `input_shape` has no upper
bound, and a generated [1, 10^5, 10^5] would have the server resize the digits to it."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra")
schemathesis = pytest.importorskip("schemathesis", reason="the contract test needs the 'test' extra")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
)

from slimtune.search.web.launches import Launches  # noqa: E402
from slimtune.search.web.service import Settings, create_app  # noqa: E402
from tests.search.conftest import Served  # noqa: E402

TOKEN = "contract-token"
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance,
          response_headers_conformance]
#: examples per route and mode (positive cases, and negative ones where the route has inputs)
EXAMPLES = 20
#: (route, status) -> answers, over the module: printed at its end (`pytest -s`)
STATUSES: Counter = Counter()
SEED = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])  # no shrinking

schemathesis.serializer.alias("application/toml", "text/plain")  # the study file as it is on disk


class SleepingLaunches(Launches):
    """`launch` as the server runs it, with a process that sleeps instead of `slimtune launch`."""

    def available(self) -> bool:
        return True

    def command(self, study: str, workers: int) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(120)"]


def quick_export(study_name: str, storage_url: str, *, trial: int | None, pick: str | None, knee: bool, fmt: str,
                 out: Path) -> Any:
    """The real export's choices and refusals (the out folder, the rule or knee, the trial), a
    manifest instead of the rebuilt model."""
    from slimtune.search.export.build import ExportError, ExportResult, _check_out, _choose
    from slimtune.search.export.selection import SelectionError
    from slimtune.search.results import open_study

    _check_out(out)
    study, repository = open_study(study_name, storage_url)
    try:
        number = _choose(study, repository, trial, pick, knee)
    except SelectionError as error:
        raise ExportError(str(error)) from None
    if number >= len(study.trials):
        raise ExportError(f"trial = {number}: not in study {study_name!r}")
    manifest = {"slimtune_export": 1, "study": study_name, "trial": number, "format": fmt, "verified": True}
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return ExportResult(out, manifest)


def tiny_create_bodies(raw: dict[str, Any]) -> dict[str, Any]:
    """The schema with the create route's workload narrowed to what builds in a moment here."""
    from tests.conftest import TINY_STUDY

    workload = raw["components"]["schemas"]["WorkloadOverHttp"]["properties"]
    workload["model"] = {"type": "string", "enum": ["slimtune:small_cnn", "slimtune:strided_cnn"]}
    workload["data"] = {"type": "string", "enum": ["sklearn:digits"]}
    workload["input_shape"] = {"type": "array", "enum": [TINY_STUDY["workload"]["input_shape"]]}
    workload["batch_sizes"] = {"type": "array", "enum": [[32], [16, 64]]}
    workload["data_root"] = {"type": "null"}
    # eager only, as the tiny study: an absent runtimes means every runtime the target supports,
    # and the server then tries a compile on this CPU (about 10 s a created study here)
    raw["components"]["schemas"]["StudyOverHttp"]["required"].append("target")
    target = raw["components"]["schemas"]["TargetSection"]
    target["properties"]["runtimes"] = {"type": "array", "enum": [["eager"]]}
    target["required"] = [*target.get("required", []), "runtimes"]
    return raw


@pytest.fixture(scope="module")
def served_app(served_study: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app on a copy of the served study, with the token (schemathesis runs its lifespan once
    per app; the sleeping launches end with the module). Created studies go into the copy under
    generated names; 'served' itself answers 409."""
    folder = tmp_path_factory.mktemp("contract")
    shutil.copy(served_study.url.removeprefix("sqlite:///"), folder / "served.db")  # the other tests read the original
    url = f"sqlite:///{folder / 'served.db'}"
    app = create_app(Settings(url, token=TOKEN, export_root=folder / "exports", log_dir=folder / "logs"))
    app.state.launches = SleepingLaunches(url, folder / "logs")
    yield app
    app.state.launches.stop_all(grace_s=5)


@pytest.fixture(autouse=True)
def _quick_export(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("slimtune.search.export", reason="export comes with the export feature")
    import slimtune.search.export as package

    monkeypatch.setattr(package, "export", quick_export)


def load_schema(app: Any, *, narrowed: bool = False) -> Any:
    with TestClient(app) as client:
        raw = client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(tiny_create_bodies(raw) if narrowed else raw)
    schema.app = app
    return schema


def exercise(schema: Any, served: str, *, modes: tuple[str, ...], headers: dict[str, str] | None = None,
             statuses_of_changes: set[int] | None = None) -> tuple[list[str], int]:
    """Every operation of `schema`, in each generation mode, once with generated study names and
    once on the served study: EXAMPLES cases each, sent and checked. Returns the failures (one
    line each: route, mode, what schemathesis said) and the number of requests sent."""
    failures: list[str] = []
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        names = [None, {"name": served}] if "{name}" in operation.path else [None]
        if "{number}" in operation.path:
            names.append({"name": served, "number": 0})  # the baseline: a trial that exists
        for mode in modes:
            for path_parameters in names:
                strategy = operation.as_strategy(GenerationMode(mode), path_parameters=path_parameters)

                @SEED
                @given(case=strategy)
                def send(case: Any) -> None:
                    nonlocal sent
                    sent += 1
                    response = case.call_and_validate(headers=headers, checks=CHECKS)
                    STATUSES[(operation.label, response.status_code)] += 1
                    if statuses_of_changes is not None and case.method == "POST":
                        assert response.status_code in statuses_of_changes, (response.status_code, response.text)

                try:
                    send()
                except Unsatisfiable:  # negative mode on a route with nothing to get wrong
                    continue
                except (Exception, BaseExceptionGroup) as error:  # every route's failure is reported
                    where = f"on {path_parameters}" if path_parameters else "generated names"
                    for each in getattr(error, "exceptions", [error]):
                        for one in getattr(each, "exceptions", [each]):
                            lines = [line.strip() for line in str(one).strip().splitlines() if line.strip()]
                            failures.append(f"{operation.label} ({mode}, {where}): {type(one).__name__}: "
                                            f"{' / '.join(lines[:8])[:600]}")
    return failures, sent


def test_every_route_answers_as_declared_with_the_token(served_app: Any, served_study: Served) -> None:
    """Reads, launch, stop and export (creating a study: the test below), with the right token:
    positive and negative cases."""
    schema = load_schema(served_app).exclude(path_regex=r"^/api/studies(/toml)?$", method="POST")
    failures, sent = exercise(schema, served_study.name, modes=("positive", "negative"),
                              headers={"Authorization": f"Bearer {TOKEN}"})
    assert not failures, "\n".join(failures)
    assert sent >= 200


def test_creating_a_study_answers_as_declared(served_app: Any, served_study: Served) -> None:
    schema = load_schema(served_app, narrowed=True).include(path_regex=r"^/api/studies(/toml)?$", method="POST")
    failures, sent = exercise(schema, served_study.name, modes=("positive",),
                              headers={"Authorization": f"Bearer {TOKEN}"})
    assert not failures, "\n".join(failures)
    created = [s["name"] for s in TestClient(served_app).get("/api/studies").json()]
    assert len(created) > 1  # some generated bodies made a study


def test_without_a_token_every_change_is_401(served_app: Any, served_study: Served) -> None:
    failures, _ = exercise(load_schema(served_app, narrowed=True), served_study.name, modes=("positive",),
                           statuses_of_changes={401, 404, 422})
    assert not failures, "\n".join(failures)


def test_a_server_without_a_token_refuses_every_change_with_403(served_study: Served, tmp_path: Path) -> None:
    app = create_app(Settings(served_study.url, token=None, export_root=tmp_path / "exports", log_dir=tmp_path / "logs"))
    failures, _ = exercise(load_schema(app, narrowed=True), served_study.name, modes=("positive",),
                           headers={"Authorization": f"Bearer {TOKEN}"}, statuses_of_changes={403, 404, 422})
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module", autouse=True)
def _print_statuses() -> Iterator[None]:
    yield
    for (route, status), count in sorted(STATUSES.items()):
        print(f"{route:45} {status} x{count}")


MODELS = ["slimtune:small_cnn", "slimtune:", "slimtune:nope", "torchvision:resnet18", "torchvision:", "torchvision:utils",
          "torchvision:resnet18\n", "torchvision:resnet18 ", "Slimtune:small_cnn", "os:system", "slimtune",
          "tests.search.sentinel_module:make_model", ":slimtune:small_cnn"]
DATA = ["sklearn:digits", "sklearn:", "sklearn:iris", "torchvision:CIFAR10", "torchvision:utils", "torchvision:",
        "torchvision:MNIST\n", "elpv", "elpv:4class", "elpv:", "elpv\n", "elpvx", "imagefolder:cells", "imagefolder:",
        "os:system", "tests.search.sentinel_module:make_data", "sklearn"]


def test_the_schema_states_the_workload_rules_the_server_enforces(served_app: Any, tmp_path: Path) -> None:
    """`workload.model` (an enum) and `workload.data` (a pattern, with JSON Schema's regex
    semantics) accept exactly what the server accepts before it loads anything: its HTTP rule
    (security.check_builtin_workload) and, for models, the name resolving (objectives). Paths
    inside data are confined separately (test_service.py), so the samples' paths are relative."""
    import jsonschema_rs

    from slimtune.objectives.workloads import model_factory
    from slimtune.search.config import StudyConfig
    from slimtune.search.web.security import Refused, check_builtin_workload, model_names
    from tests.conftest import TINY_STUDY

    with TestClient(served_app) as client:
        workload = client.get("/openapi.json").json()["components"]["schemas"]["WorkloadOverHttp"]["properties"]

    def server_accepts(model: str, data: str) -> bool:
        config = StudyConfig.model_validate({**TINY_STUDY, "workload": {**TINY_STUDY["workload"], "model": model, "data": data}})
        try:
            check_builtin_workload(config, tmp_path)
            if model != "slimtune:small_cnn":
                model_factory(model, 10, (1, 8, 8))
        except (Refused, ValueError):
            return False
        return True

    model_schema, data_schema = jsonschema_rs.validator_for(workload["model"]), jsonschema_rs.validator_for(workload["data"])
    for model in MODELS + model_names():
        assert model_schema.is_valid(model) == server_accepts(model, "sklearn:digits"), model
    for data in DATA:
        assert data_schema.is_valid(data) == server_accepts("slimtune:small_cnn", data), data
