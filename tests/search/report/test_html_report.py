"""`slimtune report`: one self-contained HTML file with the study page's figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

from slimtune.search.cli import main
from slimtune.search.report.overview import Catalog

from tests.search.conftest import Served, plotly_array


def test_report_is_self_contained(served_study: Served, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.html"
    assert main(["report", served_study.name, "--storage", served_study.url, "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    html = out.read_text()
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?(https?:)?//""", html)  # nothing fetched
    assert "<script src=" not in html and "<link rel=\"stylesheet\"" not in html
    assert "plotly.js v" in html or "Plotly" in html and len(html) > 3_000_000  # plotly.js inlined
    figures = {m.group(1): json.loads(m.group(2)) for m in re.finditer(
        r'<script type="application/json" data-plot="(\w+)">(.*?)</script>', html, re.S)}
    assert {"front2d", "front3d", "parallel", "hypervolume", "importances"} <= set(figures)
    points = Catalog(served_study.url).study(served_study.name).points()
    front = next(t for t in figures["front2d"]["data"] if t["name"].startswith("feasible Pareto front"))
    assert sorted(plotly_array(front["customdata"])[:, 0].astype(int).tolist()) == sorted(points.loc[points["on_front"], "trial"].tolist())
    for number in points["trial"]:
        assert f'id="trial-{number}"' in html  # every trial has a row the figures scroll to


def test_report_of_a_missing_study_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.html"
    assert main(["report", "nope", "--storage", f"sqlite:///{tmp_path / 'none.db'}", "-o", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "none.db").exists()
