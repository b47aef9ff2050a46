"""HTML for a study: the Jinja2 templates, their number formats, and the study page's figures.

Shared by the served pages (search/pages.py) and the self-contained report
(search/html_report.py), so both show the same figures; it needs Jinja2 and plotly only,
not the web server.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import plotly.graph_objects as go

from slimtune.storage import safe_url

from slimtune.search.report import figures
from slimtune.search.report.overview import AXIS_TITLES, MEASURED, StudyView
from slimtune.search.results import FLAGGED_NOTE

HERE = Path(__file__).parent
environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=jinja2.select_autoescape(["html"]),
    trim_blocks=True, lstrip_blocks=True,
)


def figure_json(figure: go.Figure) -> str:
    """A figure as JSON that is safe inside <script>: '<' escaped (hover texts hold '<br>')."""
    return figure.to_json().replace("<", "\\u003c")


def age(when: datetime | None) -> str:
    if when is None:
        return "–"
    seconds = (datetime.now(timezone.utc) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{max(seconds, 0):.0f} s ago"


COUNTS = ("params", "macs", "latency_repeats", "batch_size", "finetune_steps_run")


def number(name: str, value: Any) -> str:
    """A measurement as a table shows it; the unit is in the column title (accuracy in %,
    accuracy drop in points)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if name in ("accuracy", "balanced_accuracy"):
        return f"{100 * value:.2f}"
    if name == "accuracy_drop":
        return f"{100 * value:+.2f}"
    if name == "accuracy_drop_pts":
        return f"{value:+.2f}"
    if name in COUNTS:
        return f"{int(value):,}"
    if name in ("speedup_x", "memory_x"):
        return f"{value:.2f}×"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def drop_with_interval(figures: dict[str, Any] | None, name: str = "accuracy") -> str:
    """A stored drop with its paired interval, in points: '+0.61 [-1.20, +2.42]', or '–'."""
    if not figures or figures.get(f"{name}_drop") is None:
        return "–"
    text = f"{100 * figures[f'{name}_drop']:+.2f}"
    low, high = figures.get(f"{name}_drop_ci") or (None, None)
    return text if low is None or high is None else f"{text} [{100 * low:+.2f}, {100 * high:+.2f}]"


#: what a trial page calls each measurement (units in the label)
LABELS = {
    **AXIS_TITLES, "latency_repeats": "latency repeats", "batch_size": "batch size",
    "finetune_steps_run": "fine-tuning steps run", "seconds": "trial time (s)",
}

environment.filters["age"] = age
environment.globals.update(number=number, drop_with_interval=drop_with_interval, titles=AXIS_TITLES, labels=LABELS, measured=MEASURED, storage_safe=safe_url,
                           flagged_note=FLAGGED_NOTE.removeprefix("FLAGGED: "))


def table_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows for a template, pandas' NaN (a missing value) as None."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records") if len(frame) else []


def axes(view: StudyView, x: str | None = None, y: str | None = None, z: str | None = None) -> tuple[str, str, str | None]:
    """The objectives on the 2-D plot's axes (accuracy up by default) and the 3-D plot's third."""
    names = list(view.objectives)
    pick = lambda value, default: value if value in names else default  # noqa: E731
    default_y = "accuracy" if "accuracy" in names else names[-1]
    default_x = next((n for n in names if n != default_y), default_y)
    x, y = pick(x, default_x), pick(y, default_y)
    rest = [n for n in names if n not in (x, y)]
    third = pick(z, rest[0] if rest else None) if len(names) >= 3 else None
    return x, y, third


def study_plots(view: StudyView, chosen: tuple[str, str, str | None], importances: bool = False) -> dict[str, str]:
    """The study page's figures as JSON, by element id; built once per state of the study
    (a page reloaded while nothing changed costs no figure work)."""
    return view.cached(f"plots:{chosen}:{importances}", lambda: _study_plots(view, chosen, importances))


def _study_plots(view: StudyView, chosen: tuple[str, str, str | None], importances: bool) -> dict[str, str]:
    points = view.points()
    x, y, z = chosen
    plots = {"front2d": figure_json(figures.front_figure(points, view.objectives, x, y, view.accuracy_floor()))}
    if z is not None and len({x, y, z}) == 3:
        plots["front3d"] = figure_json(figures.front_3d_figure(points, view.objectives, (x, y, z)))
    if not points.empty and (points["status"] == "complete").sum() >= 2:
        plots["parallel"] = figure_json(figures.parallel_figure(points, view.objectives))
    history = view.hypervolume()
    if history.trial_numbers:
        plots["hypervolume"] = figure_json(figures.hypervolume_figure(history))
    if importances:
        values = view.importances()
        if values:
            plots["importances"] = figure_json(figures.importance_figure(values))
    return plots


def study_context(view: StudyView, chosen: tuple[str, str, str | None], plots: dict[str, str]) -> dict[str, Any]:
    """What study.html needs besides the trial table."""
    from slimtune.search.report.overview import describe

    points = view.points()
    return dict(
        view=view, summary=view.summary, plots=plots, axes=chosen, axis_choices=list(view.objectives),
        baseline=view.baseline(), floor=view.accuracy_floor(), describe=describe,
        front_size=int(points["on_front"].sum()) if not points.empty else 0, screen=view.screen(),
        refined=view.refined_rows(), headline=view.headline(), judged_split=view.judged_split(),
        test_split=view.test_split(),
        balanced="balanced_accuracy" in view.objectives or view.max_balanced_accuracy_drop is not None,
    )
