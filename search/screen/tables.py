"""The screen in words: the few lines `slimtune run` prints before the first trial, and the
whole table `slimtune screen STUDY` prints."""

from __future__ import annotations

import math
from typing import Any

from .settings import DEPLOYMENT, SHAPE, label


def summary(result: dict[str, Any]) -> list[str]:
    """A few lines for `slimtune run`: what was kept, and the drops' reasons, briefest first."""
    rows = result["settings"]
    kept = [r for r in rows if r["kept"]]
    lines = [f"screen: {len(rows)} deployment settings in {result['seconds']:.0f} s: kept {len(kept)} "
             f"({', '.join(r['label'] for r in kept[:6])}{', ...' if len(kept) > 6 else ''}), dropped {len(rows) - len(kept)}"]
    dropped = [r for r in rows if not r["kept"]]
    for row in dropped[:5]:
        lines.append(f"screen: dropped {row['label']}: {row['reason']}")
    if len(dropped) > 5:
        lines.append(f"screen: ... {len(dropped) - 5} more dropped (`slimtune screen STUDY` lists them)")
    lines.append(f"screen: the search's choices: {choices_line(result)}")
    return lines


def choices_line(result: dict[str, Any]) -> str:
    """What the search samples: the kept settings as one choice (a version-2 screen), and the
    shape's values."""
    kept = result["kept"]
    per_factor = "; ".join(f"{name} {values}" for name, values in kept.items())
    settings = result.get("deployments")
    if settings is None or len(settings) == math.prod(len(kept[f]) for f in DEPLOYMENT):
        return per_factor
    names = [label(dict(zip(DEPLOYMENT, s))) for s in settings]
    shown = ", ".join(names[:4]) + (f", ... {len(names) - 4} more" if len(names) > 4 else "")
    shapes = "".join(f"; {name} {values}" for name, values in kept.items() if name in SHAPE)
    return f"{len(names)} settings as one choice ({shown}){shapes}"


def _figures(figures: dict[str, Any] | None, estimated: bool = False) -> tuple[str, str, str]:
    if figures is None:
        return "-", "-", "-"
    if "error" in figures:
        return "failed", "", ""
    mark = "~" if estimated else ""
    return (f"{mark}{figures['latency_ms']:.3f}", f"{mark}{figures['peak_memory_mb']:.1f}", f"{mark}{figures['weight_mb']:.2f}")


def table(result: dict[str, Any]) -> list[str]:
    """Every setting and shape with its figures and verdict (`slimtune screen STUDY`)."""
    high = result["ratios"][1] if len(result["ratios"]) > 1 else None
    header = ["setting", "latency_ms", "peak_mb", "weight_mb", "accuracy"]
    if high is not None:
        header.append(f"latency_ms@{high:g}")
    header += ["verdict", "why"]
    body = []
    for row in ordered(result["settings"]):
        latency, peak, weights = _figures(row["unpruned"] or row.get("estimate"), estimated=row["unpruned"] is None)
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        cells = [row["label"], latency, peak, weights, accuracy]
        if high is not None:
            cells.append(_figures(row["pruned"])[0])
        cells += ["kept" if row["kept"] else "dropped", row["reason"]]
        body.append(cells)
    lines = _aligned([header] + body)
    lines.insert(0, f"Target screen: {len(result['settings'])} deployment settings in {result['seconds']:.1f} s "
                    f"(budget {result['budget_s']:g} s, margin {100 * result['margin']:g}%, axes {', '.join(result['axes'])}; "
                    f"~ = estimated from its factors, not measured)")
    if result["shapes"]:
        ratios = result["shape_ratios"]
        shape_rows = [["shape"] + [f"latency_ms@{r:g}" for r in ratios] + ["verdict", "why"]]
        for row in result["shapes"]:
            cells = [row["label"]] + [_figures(row["latency"].get(str(r)))[0] for r in ratios]
            shape_rows.append(cells + ["kept" if row["kept"] else "dropped", row["reason"]])
        lines += ["", f"Pruning shapes, pruned and not fine-tuned, in {result['shape_setting']}:"] + _aligned(shape_rows)
    below = ladder_line(result)
    if below:
        lines += ["", below]
    lines += ["", "Search choices: " + choices_line(result)]
    return lines


def ladder_line(result: dict[str, Any]) -> str | None:
    """The first pruned setting timed at and below the top ratio, where the search's first trial
    starts (the study page shows it too); None when the screen timed it at one ratio only."""
    below = result.get("ladder")
    if not below or len(below["latency_ms"]) < 2:
        return None
    timed = ", ".join(f"{latency:.3f} ms at prune {ratio}" for ratio, latency in below["latency_ms"].items())
    return (f"Below the top ratio, in {label(dict(zip(DEPLOYMENT, below['setting'])))}: {timed} "
            "(the search's prune ladder starts at the fastest setting and ratio timed pruned)")


def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kept settings first, each group fastest first (measured, else estimated)."""
    return sorted(rows, key=lambda r: (not r["kept"], _sort_key(r)))


def _sort_key(row: dict[str, Any]) -> float:
    figures = row["unpruned"] if row["unpruned"] and "error" not in row["unpruned"] else row.get("estimate")
    return figures["latency_ms"] if figures else math.inf


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + "  " + str(row[-1]) for row in rows]
