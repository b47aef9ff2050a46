"""The Pareto front as a plotly figure: every trial measured, the feasible front highlighted,
and below it the front's hypervolume after each completed trial.

optuna-dashboard's Pareto plot ignores feasibility, so slimtune draws its own from
`pareto_front` (feasible front), `trials_frame` (everything measured) and the Pareto
snapshots (hypervolume history).
"""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def hypervolume_history(snapshots: Iterable[Any]) -> pd.DataFrame:
    """(trial, hypervolume) from the stored Pareto snapshots, those with a hypervolume only."""
    rows = [(s.after_trial_number, s.hypervolume) for s in snapshots if s.hypervolume is not None]
    return pd.DataFrame(rows, columns=["trial", "hypervolume"])


def pareto_figure(
    trials: pd.DataFrame, front: pd.DataFrame, title: str, accuracy_floor: float | None = None,
    hypervolume: pd.DataFrame | None = None,
) -> go.Figure:
    """Latency against accuracy, marker area by peak memory, the front in red; a dashed line
    at `accuracy_floor` (baseline minus the allowed drop) when the study has that constraint;
    under it, when `hypervolume` (trial, hypervolume) has rows, its history."""
    measured = trials[trials["status"] == "complete"].copy()
    on_front = measured["trial"].isin(front["trial"])
    baseline = measured[measured["is_baseline"]]
    size = 8 + 30 * (measured["peak_memory_mb"] / measured["peak_memory_mb"].max()) ** 0.5

    def hover(rows: pd.DataFrame) -> list[str]:
        return [
            f"trial {r.trial}<br>latency {r.latency_ms:.3f} ms<br>memory {r.peak_memory_mb:.2f} MB"
            f"<br>accuracy {r.accuracy:.4f}" for r in rows.itertuples()
        ]

    history = hypervolume is not None and not hypervolume.empty
    if history:
        figure = make_subplots(rows=2, cols=1, row_heights=[0.72, 0.28], vertical_spacing=0.14, subplot_titles=(
            "", "hypervolume of the feasible front after each completed trial (as slimtune pareto reports it)"))
        figure.update_annotations(font_size=12)
    else:
        figure = go.Figure()
    others = measured[~on_front]
    figure.add_trace(go.Scatter(
        x=others["latency_ms"], y=100 * others["accuracy"], mode="markers", name="other trials",
        marker=dict(size=size[~on_front], color="lightgrey", line=dict(width=1, color="grey")),
        hovertext=hover(others), hoverinfo="text",
    ))
    front_rows = measured[on_front].sort_values("latency_ms")
    figure.add_trace(go.Scatter(
        x=front_rows["latency_ms"], y=100 * front_rows["accuracy"], mode="markers+lines+text",
        name="feasible Pareto front", text=[f"#{t}" for t in front_rows["trial"]],
        # front points often differ only in memory and sit on top of each other: alternate labels
        textposition=["top left" if i % 2 else "bottom right" for i in range(len(front_rows))],
        marker=dict(size=size[on_front].loc[front_rows.index], color="#d62728", line=dict(width=1, color="black")),
        line=dict(dash="dot", color="#d62728"), hovertext=hover(front_rows), hoverinfo="text",
    ))
    figure.add_trace(go.Scatter(
        x=baseline["latency_ms"], y=100 * baseline["accuracy"], mode="markers+text", name="baseline",
        text=["baseline"], textposition="bottom center",
        marker=dict(size=14, symbol="star", color="#1f77b4"), hovertext=hover(baseline), hoverinfo="text",
    ))
    if accuracy_floor is not None:
        figure.add_hline(
            y=100 * accuracy_floor, line=dict(dash="dash", color="grey"),
            annotation_text="max_accuracy_drop", annotation_position="bottom right",
            **(dict(row=1, col=1) if history else {}),
        )
    figure.update_layout(
        title=f"{title}  (marker size: peak memory)", xaxis_title="latency per batch, median (ms)", yaxis_title="top-1 accuracy (%)",
        xaxis_type="log", template="plotly_white", width=900, height=520,
        legend=dict(orientation="h", y=-0.18), margin=dict(l=60, r=30, t=60, b=80),
    )
    if history:
        last = hypervolume.iloc[-1]
        figure.add_trace(go.Scatter(
            x=hypervolume["trial"], y=hypervolume["hypervolume"], mode="lines+markers", line_shape="hv",
            name=f"hypervolume ({last.hypervolume:.4f} after trial {int(last.trial)})", marker=dict(size=5, color="#2ca02c"),
            line=dict(color="#2ca02c"),
        ), row=2, col=1)
        figure.update_xaxes(title_text="trial", row=2, col=1)
        figure.update_yaxes(title_text="hypervolume", rangemode="tozero", row=2, col=1)
        figure.update_layout(height=760, legend=dict(orientation="h", y=-0.1))
    return figure
