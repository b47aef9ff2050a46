"""`slimtune serve`: one FastAPI application with the JSON API (OpenAPI at /docs and
/openapi.json) and the dashboard pages (search/pages.py), over one storage URL.

Reads are open; every call that changes something (create, launch, stop, export) needs
`Authorization: Bearer <SLIMTUNE_API_TOKEN>`, and a server started without a token refuses
them all (it may then listen on loopback only: search/security.py). Read routes never create
a database. Bad bodies get 422 with the field's location, as FastAPI reports its own.
"""

from __future__ import annotations

import json
import time
import tomllib
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as ApiPath
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from slimtune.objectives import WorkloadError
from slimtune.objectives.artifacts import FORMATS
from slimtune.storage import StorageError

from slimtune.search.config import (
    DEFAULT_OBJECTIVES, OBJECTIVE_NAMES, StudyConfig, StudyFileError, WorkloadSection,
)
from slimtune.search.web.launches import Launches
from slimtune.search.web.state import Settings, catalog, launches, open_view, settings
from slimtune.search.report.overview import SORTABLE, Catalog
from slimtune.search.results import StudyNotFound
from slimtune.search.web import pages
from slimtune.search.web.security import (
    Refused, check_builtin_workload, confine, data_pattern, model_names, token_matches,
)
from slimtune.search.studies import StudyExists, create_study

MAX_PAGE = 500
#: trial numbers and offsets: the storage's integers (32-bit on PostgreSQL)
MAX_NUMBER = 2**31
#: FastAPI's 400 for a body it cannot decode; answered 422 like every other bad body
UNREADABLE_BODY = "There was an error parsing the body"


_bearer = HTTPBearer(auto_error=False, description="the server's SLIMTUNE_API_TOKEN")


def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Changes need the token; a server without one refuses every change."""
    token = settings(request).token
    if not token:
        raise HTTPException(403, "this server has no API token: changes are refused (set SLIMTUNE_API_TOKEN and restart)")
    if credentials is None:
        raise HTTPException(401, "missing 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    if not token_matches(f"{credentials.scheme} {credentials.credentials}", token):
        raise HTTPException(401, "wrong token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class Unprocessable(Exception):
    """Answered 422 in FastAPI's own shape (`detail[].loc` names the field) plus a one-line `message`."""

    def __init__(self, field: str, message: str, prefix: str = "body"):
        super().__init__(message)
        self.errors = [{"type": "value_error", "loc": [prefix, *field.split(".")] if field else [prefix], "msg": message}]

    @classmethod
    def from_errors(cls, errors: list[dict[str, Any]]) -> "Unprocessable":
        """From pydantic's errors on a body validated by hand (the TOML route)."""
        error = cls("", errors[0]["msg"])
        error.errors = [{"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"]} for e in errors]
        return error


def _answer_422(errors: list[dict[str, Any]]) -> JSONResponse:
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    message = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg'].removeprefix('Value error, ')}"
    return JSONResponse({"detail": errors, "message": message}, status_code=422)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records")) if len(frame) else []


# ---------------------------------------------------------------- response and request models

class ErrorOut(BaseModel):
    """Every refusal but 422: FastAPI's `HTTPException` body."""

    detail: str


class FieldErrorOut(BaseModel):
    type: str
    loc: list[str | int] = Field(description="where: 'body', 'query' or 'path', then the field's path")
    msg: str


class UnprocessableOut(BaseModel):
    """422: FastAPI's own shape (`detail[].loc` names the field) plus a one-line `message`."""

    detail: list[FieldErrorOut]
    message: str


_ERRORS: dict[int, tuple[type[BaseModel], str]] = {
    401: (ErrorOut, "no `Authorization: Bearer <token>`, or the wrong token"),
    403: (ErrorOut, "this server was started without SLIMTUNE_API_TOKEN: it refuses every change"),
    404: (ErrorOut, "no such study (or trial)"),
    422: (UnprocessableOut, "invalid request; `detail[].loc` names the field"),
    501: (ErrorOut, "this slimtune lacks the feature"),
    503: (ErrorOut, "the storage cannot be reached"),
}


def responses(*codes: int, **conflict: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route: each error code it can answer, with the body the
    server really sends; `conflict=` describes its 409. Write routes get 401 and 403 (the token)."""
    declared: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        model, description = _ERRORS[code]
        declared[code] = {"model": model, "description": description}
    if 401 in codes:
        declared[401]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}
    if conflict:
        declared[409] = {"model": ErrorOut, "description": conflict["conflict"]}
    return declared


#: what every route that changes something may answer first (the token)
WRITE = (401, 403)


class StudyOut(BaseModel):
    name: str
    state: Literal["running", "finished", "stopped"]
    device: str | None
    device_name: str | None
    objectives: dict[str, Literal["minimize", "maximize"]]
    n_trials: int | None = Field(description="finished trials the last run asked for")
    complete: int
    failed: int = Field(description="failed, stopped as hopeless, or interrupted")
    running: int
    best: dict[str, float] = Field(description="best feasible value of each objective")
    front_size: int
    last_update: str | None


class StudyDetailOut(StudyOut):
    config: dict[str, Any]
    accuracy_floor: float | None
    baseline_trial: int | None
    launches: list[dict[str, Any]]


class TrialsPageOut(BaseModel):
    total: int
    offset: int
    limit: int
    sort: str
    order: Literal["asc", "desc"]
    trials: list[dict[str, Any]]


class WorkloadOverHttp(WorkloadSection):
    """A study file's `[workload]` as a client may send it: built-in models and data only (the
    server never imports a module a client names); paths relative to the server's `--data-dir`."""

    model: str = Field(min_length=1, json_schema_extra=lambda schema: schema.update(enum=model_names()),
                       description="'slimtune:<name>' or 'torchvision:<name>' (a torchvision.models builder)")
    data: str = Field(min_length=1, json_schema_extra=lambda schema: schema.update(pattern=data_pattern()),
                      description="'sklearn:digits', 'torchvision:<Dataset>', 'elpv[:4class]' or 'imagefolder:<path>'")


class StudyOverHttp(StudyConfig):
    """A study file's tables as JSON (docs/study-file.md), with the workload rules of HTTP."""

    workload: WorkloadOverHttp
    # as StudyConfig's validator enforces it: at least one objective, each one slimtune measures
    objectives: dict[str, Literal["minimize", "maximize"]] = Field(
        default_factory=lambda: dict(DEFAULT_OBJECTIVES),
        json_schema_extra={"minProperties": 1, "propertyNames": {"enum": list(OBJECTIVE_NAMES)}})


class LaunchIn(BaseModel):
    workers: int = Field(1, ge=1, le=64, description="local worker processes")


class LaunchOut(BaseModel):
    study: str
    workers: int
    pid: int
    alive: bool
    returncode: int | None
    log: str = Field(description="the workers' output, on the server")
    started: float = Field(description="Unix time")


class StopOut(BaseModel):
    stopped: list[int] = Field(description="process ids sent SIGTERM")


class ExportOut(BaseModel):
    out: str = Field(description="the folder, relative to the server's export root")
    manifest: dict[str, Any]


class ExportIn(BaseModel):
    """Which trial (exactly one of trial, pick, knee), in which format, to which folder
    (relative to the server's export root; default `<study>/trial-<N>-<format>`)."""

    # the schema says "exactly one" too, as the validator below enforces it
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["trial"], "properties": {"trial": {"type": "integer"}}},
        {"required": ["pick"], "properties": {"pick": {"type": "string"}}},
        {"required": ["knee"], "properties": {"knee": {"const": True}}},
    ]})

    trial: int | None = Field(None, ge=0)
    pick: str | None = Field(None, min_length=1, max_length=500,
                             description="a rule, e.g. 'min latency where accuracy_drop <= 0.01'")
    knee: bool = False
    format: Literal[FORMATS] = "pt2"  # type: ignore[valid-type]
    out: str | None = Field(None, min_length=1, max_length=500)

    @model_validator(mode="after")
    def _one_choice(self) -> "ExportIn":
        if sum([self.trial is not None, self.pick is not None, self.knee]) != 1:
            raise ValueError("give exactly one of trial, pick, knee")
        return self


def summary_out(view_or_summary: Any) -> dict[str, Any]:
    summary = getattr(view_or_summary, "summary", view_or_summary)
    return summary.to_dict()


# ---------------------------------------------------------------- the API

api = APIRouter(prefix="/api", tags=["api"])


@api.get("/studies", response_model=list[StudyOut], summary="every study in the storage")
def list_studies(request: Request) -> list[dict[str, Any]]:
    return [s.to_dict() for s in catalog(request).summaries(launches(request).running())]


CREATE_ERRORS = responses(*WRITE, 422, 503, conflict="a study of that name exists in the storage")


@api.post("/studies", response_model=StudyOut, status_code=201, dependencies=[Depends(require_token)],
          responses=CREATE_ERRORS, summary="create a study from a study-file body (the TOML file's tables as JSON)")
def create(request: Request, config: Annotated[StudyOverHttp, Body()]) -> dict[str, Any]:
    try:  # the HTTP model is the study file's, narrowed: what it passed, the file passes, but say so if not
        study = StudyConfig.model_validate(config.model_dump())
    except ValidationError as error:
        raise Unprocessable.from_errors(error.errors()) from None
    return _create(request, study)


@api.post("/studies/toml", response_model=StudyOut, status_code=201, dependencies=[Depends(require_token)],
          responses=CREATE_ERRORS, summary="create a study from a study file as it is on disk (TOML)")
def create_from_toml(
    request: Request, text: Annotated[str, Body(media_type="application/toml", description="a study file")],
) -> dict[str, Any]:
    try:
        config = StudyConfig.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as error:
        raise Unprocessable("", f"not valid TOML: {error}") from None
    except ValidationError as error:
        raise Unprocessable.from_errors(error.errors()) from None
    return _create(request, config)


def _create(request: Request, config: StudyConfig) -> dict[str, Any]:
    server = settings(request)
    try:
        config = check_builtin_workload(config, server.data_dir)
        create_study(config, server.storage_url)
    except Refused as error:
        raise Unprocessable(error.field, error.message) from None
    except StudyExists as error:
        raise HTTPException(409, str(error)) from None
    except WorkloadError as error:
        raise Unprocessable(error.field, str(error).removeprefix(f"{error.field}: ")) from None
    except StudyFileError as error:
        field, _, message = str(error).partition(" = ")
        raise Unprocessable(field if message else "", str(error)) from None
    except StorageError as error:
        raise HTTPException(503, str(error)) from None
    catalog(request).forget()
    return summary_out(open_view(request, config.study.name))


@api.get("/studies/{name}", response_model=StudyDetailOut, responses=responses(404, 422),
         summary="one study: summary and configuration")
def study(request: Request, name: str) -> dict[str, Any]:
    view = open_view(request, name)
    baseline = view.baseline()
    return {**summary_out(view), "config": view.config, "accuracy_floor": view.accuracy_floor(),
            "baseline_trial": baseline.trial_number if baseline else None,
            "launches": [l.to_dict() for l in launches(request).history(name)]}


@api.get("/studies/{name}/trials", response_model=TrialsPageOut, responses=responses(404, 422),
         summary="a page of trials, sorted")
def trials(
    request: Request, name: str,
    offset: Annotated[int, Query(ge=0, lt=MAX_NUMBER)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    sort: Literal[tuple(SORTABLE)] = "trial_number",  # type: ignore[valid-type]
    order: Literal["asc", "desc"] = "asc",
) -> dict[str, Any]:
    page, total = open_view(request, name).trial_page(sort, order == "desc", offset, limit)
    return {"total": total, "offset": offset, "limit": limit, "sort": sort, "order": order, "trials": records(page)}


@api.get("/studies/{name}/trials/{number}", responses=responses(404, 422),
         summary="one trial: recipe, measurements, fingerprint, reason")
def trial(request: Request, name: str, number: Annotated[int, ApiPath(ge=0, lt=MAX_NUMBER)]) -> dict[str, Any]:
    try:
        return open_view(request, name).trial(number).to_dict()
    except StudyNotFound as error:
        raise HTTPException(404, str(error)) from None


@api.get("/studies/{name}/pareto", responses=responses(404, 422),
         summary="the feasible Pareto front, fastest first, against the baseline")
def pareto(request: Request, name: str) -> list[dict[str, Any]]:
    points = open_view(request, name).points()
    if points.empty:
        return []
    front = points[points["on_front"]]
    return records(front.sort_values([c for c in ("latency_ms", "trial") if c in front]))


@api.get("/studies/{name}/hypervolume", responses=responses(404, 422),
         summary="hypervolume of the feasible front after each completed trial")
def hypervolume(request: Request, name: str) -> dict[str, Any]:
    return open_view(request, name).hypervolume().__dict__


@api.get("/studies/{name}/importances", responses=responses(404, 422),
         summary="parameter importances (Optuna, PED-ANOVA)")
def importances(request: Request, name: str) -> dict[str, dict[str, float]]:
    return open_view(request, name).importances()


@api.post("/studies/{name}/launch", status_code=202, dependencies=[Depends(require_token)],
          response_model=LaunchOut,
          responses=responses(*WRITE, 404, 422, 501, conflict="workers this server started run on the study"),
          summary="start N local workers on the study (`slimtune launch`)")
def launch(request: Request, name: str, body: LaunchIn = Body(default_factory=LaunchIn)) -> dict[str, Any]:
    open_view(request, name)  # 404 before anything starts
    runner = launches(request)
    if runner.alive(name):
        raise HTTPException(409, f"study {name!r} already has workers started by this server; stop them first")
    if not runner.available():
        raise HTTPException(501, "this slimtune has no 'launch' command (it comes with the many-workers feature)")
    return runner.start(name, body.workers).to_dict()


@api.post("/studies/{name}/stop", dependencies=[Depends(require_token)], response_model=StopOut,
          responses=responses(*WRITE, 404, 422, conflict="no workers this server started run on the study"),
          summary="SIGTERM the workers this server started on the study")
def stop(request: Request, name: str) -> dict[str, Any]:
    open_view(request, name)  # 404 for a study that does not exist, as launch
    stopped = launches(request).stop(name)
    if not stopped:
        raise HTTPException(409, f"no workers started by this server are running on study {name!r}")
    return {"stopped": [l.process.pid for l in stopped]}


@api.post("/studies/{name}/export", status_code=201, dependencies=[Depends(require_token)],
          response_model=ExportOut,
          responses=responses(*WRITE, 404, 422, 501,
                              conflict="written but not verified: the files stay, marked unverified"),
          summary="export a trial as a deployable model into the export root")
def export(request: Request, name: str, body: ExportIn) -> dict[str, Any]:
    open_view(request, name)
    server = settings(request)
    chosen = f"trial-{body.trial}" if body.trial is not None else "knee" if body.knee else "pick"
    relative = body.out or f"{name}/{chosen}-{body.format}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        out = confine(server.export_root, relative, "out")
    except Refused as error:
        raise Unprocessable(error.field, error.message) from None
    try:
        from slimtune.search.export import ExportFailed
        from slimtune.search.export import export as export_trial
    except ImportError:
        raise HTTPException(501, "this slimtune has no export (it comes with the export feature)") from None
    try:
        result = export_trial(name, server.storage_url, trial=body.trial, pick=body.pick, knee=body.knee,
                              fmt=body.format, out=out)
    except (StudyNotFound, LookupError) as error:
        raise HTTPException(404, str(error)) from None
    except ValueError as error:  # a rule nothing satisfies, a failed trial, a format that cannot hold the recipe
        raise Unprocessable("", str(error)) from None
    except ExportFailed as error:  # written, but verification failed: the files stay marked unverified
        raise HTTPException(409, str(error)) from None
    return {"out": str(Path(result.out).resolve().relative_to(server.export_root.resolve())),
            "manifest": result.manifest}


# ---------------------------------------------------------------- the application

def create_app(config: Settings) -> FastAPI:

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.launches.stop_all()  # what this server started ends with it

    app = FastAPI(
        title="slimtune", version=_version(), lifespan=lifespan,
        description="Pareto fronts of model-compression studies: browse, create, launch, export.",
    )
    app.state.settings = config
    app.state.catalog = Catalog(config.storage_url)
    app.state.launches = Launches(config.storage_url, config.log_dir)
    app.add_middleware(GZipMiddleware, minimum_size=2000)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        return _answer_422([{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in error.errors()])

    @app.exception_handler(Unprocessable)
    async def _unprocessable(request: Request, error: Unprocessable) -> JSONResponse:
        return _answer_422(error.errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 400 and error.detail == UNREADABLE_BODY:  # FastAPI's, for a body not UTF-8
            return _answer_422([{"type": "json_invalid", "loc": ["body"],
                                 "msg": "not JSON: the body is not UTF-8 text"}])
        if error.status_code == 405:  # Starlette names the methods of one route; a path may have several
            methods = {m for route in app.routes if isinstance(route, APIRoute) and route.methods
                       and route.path_regex.match(request.scope["path"]) for m in route.methods}
            error.headers = {**(error.headers or {}), "Allow": ", ".join(sorted(methods))}
        return await http_exception_handler(request, error)

    app.include_router(api)
    app.include_router(pages.router)
    pages.mount_static(app)
    return app


def _version() -> str:
    try:
        return metadata.version("slimtune")
    except metadata.PackageNotFoundError:
        return "0"
