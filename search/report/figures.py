"""The dashboard's figures (plotly), shared by the pages and `slimtune report`.

Every point carries its trial number first in `customdata`, so a click on it can open the trial;
the feasible Pareto front, feasible trials off the front, infeasible trials (they broke the
accuracy constraint) and the baseline are separate traces, each with its own legend entry.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from slimtune.search.hypervolume import HypervolumeHistory
from slimtune.search.report.overview import AXIS_TITLES

FRONT, FEASIBLE, INFEASIBLE, BASELINE = "#d62728", "#9aa0a6", "#ff7f0e", "#1f77b4"
#: above this many points the other trials are drawn with WebGL, which stays fluid
WEBGL_ABOVE = 1000
LAYOUT = dict(
    template="plotly_white", font=dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=13),
    margin=dict(l=70, r=20, t=40, b=60), legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0),
    hoverlabel=dict(align="left"),
)


def _scale(name: str) -> float:
    return 100.0 if name == "accuracy" else 1.0  # accuracy is shown in percent


def _title(name: str) -> str:
    return AXIS_TITLES.get(name, name)


def _hover(rows: pd.DataFrame, names: Sequence[str]) -> tuple[np.ndarray, list[str], str]:
    """(customdata, text, hovertemplate) for a trace. customdata is one numeric row per point:
    its trial number first (what a click opens), then the values the hover shows; numpy arrays
    travel as binary, so a 5,000-trial page stays small and quick to build. text is the recipe;
    the labels live once, in the template."""
    columns = [rows["trial"].to_numpy(float)]
    columns += [rows[n].to_numpy(float) * _scale(n) if n in rows else np.full(len(rows), np.nan) for n in names]
    drop = rows["accuracy_drop"].to_numpy(float) * 100 if "accuracy_drop" in rows else np.full(len(rows), np.nan)
    custom = np.column_stack([*columns, drop]) if len(rows) else np.zeros((0, len(names) + 2))
    lines = [f"{_title(n)}: %{{customdata[{i + 1}]:{_D3_FORMATS.get(n, '.4g')}}}" for i, n in enumerate(names)]
    template = ("<b>trial %{customdata[0]}</b>: %{text}<br>" + "<br>".join(lines)
                + f"<br>accuracy drop: %{{customdata[{len(names) + 1}]:+.2f}} pts<br><i>click to open</i><extra></extra>")
    return custom, rows["recipe"].tolist(), template


_D3_FORMATS = {"accuracy": ".2f", "params": ",.0f", "macs": ",.0f"}


def _format(name: str, value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if name == "accuracy":
        return f"{100 * float(value):.2f}%"
    if name in ("params", "macs"):
        return f"{int(value):,}"
    return f"{float(value):.4g}"


def _groups(points: pd.DataFrame) -> list[tuple[str, pd.DataFrame, dict]]:
    """(legend name, rows, marker) for each kind of point, the front last so it is drawn on top."""
    if points.empty or "status" not in points:
        return []
    measured = points[points["status"] == "complete"]
    front = measured[measured["on_front"]]
    return [
        ("infeasible (accuracy constraint broken)", measured[~measured["feasible"]],
         dict(color=INFEASIBLE, symbol="x", size=8, opacity=0.8)),
        ("feasible, off the front", measured[measured["feasible"] & ~measured["on_front"]],
         dict(color=FEASIBLE, size=8, opacity=0.7, line=dict(width=0.5, color="#5f6368"))),
        ("feasible Pareto front", front, dict(color=FRONT, size=12, line=dict(width=1, color="black"))),
        ("baseline", measured[measured["is_baseline"]], dict(color=BASELINE, size=18, symbol="star",
                                                            line=dict(width=1, color="black"))),
    ]


def front_figure(
    points: pd.DataFrame, objectives: dict[str, str], x: str, y: str, accuracy_floor: float | None = None,
    height: int = 520,
) -> go.Figure:
    """Two objectives against each other. The front is the feasible front over *all* the
    study's objectives, so in a projection some front points look dominated: they win on an
    objective not drawn. Its points are joined only when the study has exactly these two."""
    figure = go.Figure()
    names = list(dict.fromkeys([x, y, *objectives]))
    for name, rows, marker in _groups(points):
        front = name == "feasible Pareto front"
        if front:
            rows = rows.sort_values(x)
        joined = front and set(objectives) == {x, y}
        trace = go.Scattergl if (not front and name != "baseline" and len(points) > WEBGL_ABOVE) else go.Scatter
        custom, text, template = _hover(rows, names)
        figure.add_trace(trace(
            x=rows[x].to_numpy(float) * _scale(x), y=rows[y].to_numpy(float) * _scale(y),
            name=f"{name} ({len(rows)})" if name != "baseline" else name, mode="markers+lines" if joined else "markers",
            customdata=custom, text=text, hovertemplate=template, marker=marker, line=dict(dash="dot", color=FRONT, width=1),
        ))
    if accuracy_floor is not None and "accuracy" in (x, y):
        line = dict(line=dict(dash="dash", color="#5f6368"), annotation_text="accuracy floor (max_accuracy_drop)")
        if y == "accuracy":
            figure.add_hline(y=100 * accuracy_floor, annotation_position="bottom right", **line)
        else:
            figure.add_vline(x=100 * accuracy_floor, annotation_position="top left", **line)
    measured = points[points["status"] == "complete"] if "status" in points else points
    figure.update_layout(**LAYOUT, height=height, xaxis_title=_title(x), yaxis_title=_title(y), clickmode="event")
    for axis, name in (("xaxis", x), ("yaxis", y)):
        if _axis_type(measured, name) == "log":
            figure.update_layout({axis: dict(type="log", dtick="D2")})  # ticks at 1, 2, 5 of each decade
    return figure


def _axis_type(rows: pd.DataFrame, name: str) -> str:
    """Log when the values span more than 20x (latencies from eager to CUDA graphs do)."""
    values = rows[name].dropna() if name in rows else pd.Series(dtype=float)
    values = values[values > 0]
    return "log" if len(values) and values.max() / values.min() > 20 else "linear"


def front_3d_figure(points: pd.DataFrame, objectives: dict[str, str], axes: Sequence[str], height: int = 620) -> go.Figure:
    x, y, z = axes
    figure = go.Figure()
    names = list(dict.fromkeys([*axes, *objectives]))
    for name, rows, marker in _groups(points):
        marker = {**marker, "size": max(3, marker.get("size", 8) // 2)}
        if marker.get("symbol") == "star":
            marker["symbol"] = "diamond"  # 3-D markers have no star
        custom, text, template = _hover(rows, names)
        figure.add_trace(go.Scatter3d(
            x=rows[x].to_numpy(float) * _scale(x), y=rows[y].to_numpy(float) * _scale(y),
            z=rows[z].to_numpy(float) * _scale(z), mode="markers", name=name,
            customdata=custom, text=text, hovertemplate=template, marker=marker,
        ))
    figure.update_layout(**LAYOUT, height=height, scene=dict(
        xaxis_title=_title(x), yaxis_title=_title(y), zaxis_title=_title(z), aspectmode="cube",
        camera=dict(eye=dict(x=1.5, y=1.5, z=1.0)),
    ))
    figure.update_layout(margin=dict(l=0, r=0, t=40, b=0))
    return figure


#: recipe fields that say nothing a parallel-coordinates axis could show
NOT_AXES = {"recipe.finetune_steps"}


def parallel_figure(points: pd.DataFrame, objectives: dict[str, str], height: int = 460) -> go.Figure:
    """Recipe knobs (every recipe field that varies, so new knobs appear by themselves) then
    objectives, one line per measured trial; the front red."""
    measured = points[points["status"] == "complete"] if "status" in points else points
    dimensions = []
    for column in [c for c in measured.columns if c.startswith("recipe.") and c not in NOT_AXES]:
        if measured[column].nunique(dropna=False) < 2:  # a knob the study did not search
            continue
        label = column.removeprefix("recipe.").replace("_", " ") + (" (0: none)" if column == "recipe.kd_temperature" else "")
        values = measured[column]
        if not pd.api.types.is_numeric_dtype(values):
            categories = sorted(str(v) for v in values.dropna().unique())
            index = {c: i for i, c in enumerate(categories)}
            codes = values.map(lambda v: None if v is None or v != v else index[str(v)])
            dimensions.append(dict(label=label, values=codes, tickvals=list(range(len(categories))), ticktext=categories))
        else:
            dimensions.append(dict(label=label, values=values.astype(float).fillna(0.0)))
    for name in objectives:
        if name in measured:
            dimensions.append(dict(label=_title(name), values=measured[name] * _scale(name)))
    figure = go.Figure(go.Parcoords(
        line=dict(color=measured["on_front"].astype(int) if len(measured) else [],
                  colorscale=[[0, "#c7cbd1"], [1, FRONT]], cmin=0, cmax=1),
        dimensions=dimensions, labelangle=-12, labelside="top",
    ))
    figure.update_layout(**LAYOUT, height=height)
    figure.update_layout(margin=dict(l=60, r=60, t=90, b=30))
    return figure


def hypervolume_figure(history: HypervolumeHistory, height: int = 340) -> go.Figure:
    figure = go.Figure(go.Scatter(
        x=history.trial_numbers, y=history.hypervolumes, mode="lines+markers", line=dict(shape="hv", color=FRONT),
        marker=dict(size=5), name="hypervolume", hovertemplate="after trial %{x}<br>hypervolume %{y:.4g}<extra></extra>",
    ))
    figure.update_layout(
        **LAYOUT, height=height, showlegend=False, xaxis_title="trial number",
        yaxis_title="hypervolume (vs the baseline)",
    )
    return figure


def importance_figure(importances: dict[str, dict[str, float]], height: int = 340) -> go.Figure:
    figure = go.Figure()
    params = sorted({p for values in importances.values() for p in values})
    for target, values in importances.items():
        figure.add_trace(go.Bar(
            y=params, x=[values.get(p, 0.0) for p in params], orientation="h", name=target,
            hovertemplate="%{y}: %{x:.2f}<extra>" + target + "</extra>",
        ))
    figure.update_layout(
        **LAYOUT, height=max(height, 90 + 40 * len(params) * max(1, len(importances)) // 2), barmode="group",
        xaxis_title="importance (share of the total, PED-ANOVA)",
    )
    return figure
