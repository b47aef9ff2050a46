"""The dashboard's pages, drawn on the server (search/rendering.py: Jinja2 + plotly figures as
JSON) from the same read model as the API; a little JavaScript (static/slimtune.js) draws the
figures, opens a trial on click, sends the actions with the token, and reloads a running study
when it moves.

plotly.js comes from the installed plotly package, never a CDN: clusters are often offline.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import plotly
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from slimtune.search.report import figures, rendering
from slimtune.search.report.overview import SORTABLE, TrialDetail, describe
from slimtune.search.results import StudyNotFound
from slimtune.search.web.state import catalog, launches, open_view, settings

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
PAGE_SIZE = 50
templates = Jinja2Templates(env=rendering.environment)
router = APIRouter(include_in_schema=False)


def render(request: Request, template: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, template, {"storage": settings(request).storage_url, **context})


@router.get("/", response_class=HTMLResponse)
def studies_page(request: Request) -> HTMLResponse:
    summaries = catalog(request).summaries(launches(request).running())
    return render(request, "studies.html", studies=summaries, running=any(s.state == "running" for s in summaries))


@router.get("/studies/{name}", response_class=HTMLResponse)
def study_page(
    request: Request, name: str, x: str | None = None, y: str | None = None, z: str | None = None,
    sort: str = "trial_number", order: str = "asc", page: int = 1,
) -> HTMLResponse:
    view = open_view(request, name)
    chosen = rendering.axes(view, x, y, z)
    sort = sort if sort in SORTABLE else "trial_number"
    order = "desc" if order == "desc" else "asc"
    pages = max(1, math.ceil((view.summary.complete + view.summary.failed) / PAGE_SIZE))
    page = min(max(page, 1), pages)
    rows, total = view.trial_page(sort, order == "desc", (page - 1) * PAGE_SIZE, PAGE_SIZE)
    return render(
        request, "study.html", **rendering.study_context(view, chosen, rendering.study_plots(view, chosen)),
        rows=rendering.table_rows(rows), total=total, page=page, pages=pages, page_size=PAGE_SIZE, sort=sort,
        order=order, running=view.running_trials(),
    )


@router.get("/studies/{name}/figures/importances")
def importances_figure(request: Request, name: str) -> JSONResponse:
    """Drawn on demand: ranking needs every trial from Optuna, seconds on a large study."""
    values = open_view(request, name).importances()
    if not values:
        return JSONResponse({"empty": "Not enough completed trials to rank parameters yet."})
    return JSONResponse(json.loads(rendering.figure_json(figures.importance_figure(values))))


@router.get("/studies/{name}/trials/{number}", response_class=HTMLResponse)
def trial_page(request: Request, name: str, number: int) -> HTMLResponse:
    view = open_view(request, name)
    try:
        detail = view.trial(number)
    except StudyNotFound as error:
        raise HTTPException(404, str(error)) from None
    baseline = view.baseline()
    return render(
        request, "trial.html", view=view, summary=view.summary, trial=detail, recipe_text=describe(detail.recipe, detail.measurement),
        baseline=(baseline.measurement or {}) if baseline and baseline.trial_number != number else None,
        exports=exports_of(settings(request).export_root, name, number), duration=_duration(detail),
    )


def _duration(detail: TrialDetail) -> float | None:
    if detail.datetime_start and detail.datetime_complete:
        return (detail.datetime_complete - detail.datetime_start).total_seconds()
    return None


def exports_of(root: Path, study: str, trial: int) -> list[dict[str, Any]]:
    """Exports of this trial under the export root, found by the manifest.json beside each
    (an export's folder is whatever `out` its request named)."""
    if not root.is_dir():
        return []
    found = []
    for manifest_path in sorted(root.glob("**/manifest.json")):
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("study") == study and manifest.get("trial") == trial:
            found.append({"path": str(manifest_path.parent.relative_to(root)), "manifest": manifest})
    return found


def mount_static(app: FastAPI) -> None:
    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=rendering.HERE / "static"), name="static")
