"""`slimtune report STUDY -o report.html`: the study page as one self-contained file to share.

The same template and figures as the served page, with plotly.js, the stylesheet and the
script inlined (nothing is fetched when it is opened, offline included), every trial in the
table, and a click on a point scrolling to its row instead of opening a page.
"""

from __future__ import annotations

import os
from pathlib import Path

from plotly.offline import get_plotlyjs

from slimtune.search.report import rendering
from slimtune.search.report.overview import Catalog


def write_report(study_name: str, storage_url: str, out: str | os.PathLike[str]) -> Path:
    """Write the report; raises `StudyNotFound` (nothing written) for a study that is not there."""
    view = Catalog(storage_url).study(study_name)
    chosen = rendering.axes(view)
    points = view.points()
    rows = rendering.table_rows(points.sort_values("trial")) if not points.empty else []
    static = rendering.HERE / "static"
    html = rendering.environment.get_template("study.html").render(
        **rendering.study_context(view, chosen, rendering.study_plots(view, chosen, importances=True)),
        rows=rows, total=len(rows), page=1, pages=1, page_size=len(rows), sort="trial_number", order="asc",
        running=[], storage=storage_url,
        inline={"css": (static / "slimtune.css").read_text(), "js": (static / "slimtune.js").read_text(),
                "plotly": get_plotlyjs()},
    )
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(html, encoding="utf-8")
    partial.replace(out)  # a reader never sees half a report
    return out
