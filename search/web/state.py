"""What every route of the service shares, handed in as FastAPI dependencies: the server's
settings, the read model (`Catalog`) and the studies it launched. The API (service.py) and the
pages (pages.py) both take them from here, so neither imports the other's routes."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request

from slimtune.search.report.overview import Catalog, StudyView
from slimtune.search.results import StudyNotFound
from slimtune.search.web.launches import Launches


@dataclass
class Settings:
    storage_url: str
    token: str | None = None
    export_root: Path = Path("exports")
    data_dir: Path | None = None
    log_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "slimtune-serve-logs")


def settings(request: Request) -> Settings:
    return request.app.state.settings


def catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def launches(request: Request) -> Launches:
    return request.app.state.launches


def open_view(request: Request, name: str) -> StudyView:
    try:
        return catalog(request).study(name, launches(request).running())
    except StudyNotFound as error:
        raise HTTPException(404, str(error)) from None
