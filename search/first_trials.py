"""Where a screened search starts: the settings the screen measured fastest, and a prune ladder
that finds how far its pruned winner can go before accuracy gives.

The screen times its best settings pruned at the top of the study's prune range, not fine-tuned:
it knows what the most pruned model costs, not whether fine-tuning keeps its accuracy. An expert
would try it there first and step down when accuracy gives; a sampler reaches that corner late,
if at all (on an H200, ELPV's screen timed prune 0.85 with CUDA graphs at 0.34 ms, and in 10
trials TPE paired the feasible prune 0.81 with compile alone, at 1.5-2.4 ms). So the first trial
is the pruned winner at the top ratio, in the shape it was timed in; when a rung of that ladder
is infeasible (or fails), the next bisects towards the bottom of the range, and when one holds
after a failed one, the next bisects back up, the other parameters unchanged, until a rung holds
at the top or LADDER_RUNGS rungs ran. The sampler sees every rung as a trial of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from slimtune.spaces import SearchSpace
from slimtune.spaces.joint import DEPLOYMENT_FIELDS, DEPLOYMENT_PARAM, deployment_label

#: how many of the screen's winners the search tries first (the ladder's first rung included)
FIRST_TRIALS = 3
#: the most rungs one ladder runs (the top, then up to three bisections)
LADDER_RUNGS = 4
#: the ladder stops when the ratios it brackets are closer than this
LADDER_RESOLUTION = 0.05
#: the user attribute that carries a rung's bracket to the callback that enqueues the next
LADDER_ATTR = "prune_ladder"


@dataclass
class FirstTrial:
    params: dict[str, Any]
    user_attrs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())


def first_trials(space: SearchSpace, result: dict[str, Any]) -> list[FirstTrial]:
    """The first trials after the baseline: the prune ladder's top rung, then each cost axis's
    best kept setting as measured, unpruned and pruned, the ratio left to the sampler
    (deduplicated, at most FIRST_TRIALS in all); the sampler fills in the rest. Among dozens of kept settings, a sampler's first random draws rarely land
    on the one the screen found fastest; an expert would start there, so the search does."""
    rows = [r for r in result["settings"] if r["kept"]]
    top = _top_rung(space, result, rows)
    # the ladder tries its setting at several ratios: no other first trial repeats it
    laddered = [] if top is None else [top.user_attrs[LADDER_ATTR]["setting"]]
    winners: list[tuple] = list(laddered)
    for ratio_key in ("unpruned", "pruned"):
        for axis in result["axes"]:
            measured = [r for r in rows if r[ratio_key] and "error" not in r[ratio_key]]
            if measured:
                best = min(measured, key=lambda r: r[ratio_key][axis])
                setting = tuple(best["setting"][f] for f in DEPLOYMENT_FIELDS)
                if setting not in winners:
                    winners.append(setting)
    trials = [] if top is None else [top]
    for setting in winners[len(laddered):]:
        params = _setting_params(space, setting)
        if params:
            trials.append(FirstTrial(params, {"screen_winner": True}))
    return trials[:FIRST_TRIALS]


def _setting_params(space: SearchSpace, setting: tuple) -> dict[str, Any]:
    """The params that pick `setting` in `space` (empty: nothing to pick)."""
    if space.deployments:
        if setting in space.deployments and len(space.deployments) > 1:
            return {DEPLOYMENT_PARAM: deployment_label(setting)}
        return {}
    return {f: v for f, v in zip(DEPLOYMENT_FIELDS, setting) if len(getattr(space, f)) > 1 and v in getattr(space, f)}


def _top_rung(space: SearchSpace, result: dict[str, Any], rows: list[dict[str, Any]]) -> FirstTrial | None:
    """The setting and ratio the screen timed fastest pruned (on its first cost axis: the top
    ratio, or a step or two below it where the screen timed one setting there too), as the screen
    chose it (`ladder_start`: it keeps that setting for it), in the shape it was timed in; None
    when nothing was measured pruned. A screen stored before `ladder_start` is read as it was:
    the fastest of its kept settings."""
    if len(result["ratios"]) < 2 or space.prune_ratio is None:
        return None
    start = result.get("ladder_start")  # the screen's own choice; screens stored before it have none
    if start is not None:
        return _rung_at(space, result, tuple(start["setting"]), start["ratio"])
    axis = result["axes"][0]
    timed = [(r["pruned"][axis], -result["ratios"][1], tuple(r["setting"][f] for f in DEPLOYMENT_FIELDS))
             for r in rows if r["pruned"] and "error" not in r["pruned"]]
    if not timed:
        return None
    below = result.get("ladder")  # screens stored before it have none
    kept = {t[2] for t in timed}
    if below is not None and axis == "latency_ms" and tuple(below["setting"]) in kept:
        timed += [(latency, -float(ratio), tuple(below["setting"])) for ratio, latency in below["latency_ms"].items()]
    _, negative, setting = min(timed)  # the fastest; at a tie, the higher ratio
    return _rung_at(space, result, setting, -negative)


def _rung_at(space: SearchSpace, result: dict[str, Any], setting: tuple, timed_ratio: float) -> FirstTrial:
    low, high = space.prune_ratio
    ratio = min(max(timed_ratio, low), high)
    params = {**_setting_params(space, setting), "prune_ratio": ratio}
    for name, value in (result.get("prune_shape") or {}).items():  # screens stored before it have none
        if len(getattr(space, name)) > 1 and value in getattr(space, name):
            params[name] = value
    return FirstTrial(params, {"screen_winner": True, LADDER_ATTR: {"rung": 1, "low": low, "high": ratio, "setting": setting}})


def next_rung(trial: FrozenTrial) -> FirstTrial | None:
    """The rung after `trial` (a rung of the ladder), or None when the ladder is done.

    The bracket: `low` is the highest ratio known to hold (the range's bottom until one does),
    `high` the lowest known to give, or the rung itself while untested. A rung that holds at the
    top ends the ladder: nothing is faster to try."""
    ladder = trial.user_attrs.get(LADDER_ATTR)
    if ladder is None or "prune_ratio" not in trial.params:
        return None
    ratio = trial.params["prune_ratio"]
    holds = trial.state == TrialState.COMPLETE and all(c <= 0 for c in trial.constraints.values())
    low, high = (ratio, ladder["high"]) if holds else (ladder["low"], ratio)
    if holds and ratio >= ladder["high"]:
        return None
    if ladder["rung"] >= LADDER_RUNGS or high - low < LADDER_RESOLUTION:
        return None
    params = dict(trial.params, prune_ratio=round((low + high) / 2, 4))
    return FirstTrial(params, {"screen_winner": True, LADDER_ATTR: {**ladder, "rung": ladder["rung"] + 1, "low": low, "high": high}})


@dataclass
class PruneLadder:
    """An optimize callback: after each rung, enqueue the next while the study has room for it
    (a waiting trial past n_trials would outlive the run)."""

    n_trials: int
    log: Callable[[str], None] = print

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        rung = next_rung(trial)
        if rung is None or len(study.get_trials(deepcopy=False)) >= self.n_trials:
            return
        study.enqueue_trial(rung.params, user_attrs=rung.user_attrs)
        verdict = "held" if rung.user_attrs[LADDER_ATTR]["low"] == trial.params["prune_ratio"] else "gave"
        self.log(f"prune ladder: trial {trial.number} at prune {trial.params['prune_ratio']:g} {verdict}; "
                 f"next rung at prune {rung.params['prune_ratio']:g}")
