"""The sweep's progress: the running best against cumulative compute seconds, and against the sweep's cost in
device-hours (the cost ledger), as frames and as figures.

Both count what the selection counts: each eligible trial's value under the selection rule (its last epoch, its
best epoch or the equal-length epoch: the trials table's ``final_``, ``best_`` or ``at_epoch_<metric>``), from the
moment the trial finished, so the line ends at the value the report calls the best."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from tune_app.plots.base import (
    BEST_COLOUR,
    Figures,
    _colours,
    _finish,
    _hover,
    _label,
    _mpl,
    _rule_column,
    _rule_words,
    _scale,
    _selected,
)
from tune_app.rundir.tables import ELIGIBLE, objective_column


def _check(mode: str, metric: str, select: str) -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    _rule_column(metric, select)


def _running_best(values: pd.Series, mode: str) -> pd.Series:
    return (values.cummax() if mode == "max" else values.cummin()).ffill()


def best_so_far_frame(trials: pd.DataFrame, history: pd.DataFrame, metric: str, mode: str,
                      select: str = "last") -> pd.DataFrame:
    """Trials in the order they finished, with the compute seconds spent by then and the running best of their
    values under the selection rule ``select``.

    Reports go in chronological order: by ``timestamp`` when every report has one, else by epoch then trial_id; a
    trial finished at its last report. ``compute_s`` sums every report's ``epoch_time_s`` (missing counts as 0) up
    to and including it; ``value`` is the trial's value under ``select`` when it is eligible (else NaN) and
    ``best`` the running max/min of ``value`` (NaN until the first). Trials without a report are left out.
    """
    _check(mode, metric, select)
    timed = "timestamp" in history.columns and history["timestamp"].notna().all()
    keys = ["timestamp", "epoch", "trial_id"] if timed else ["epoch", "trial_id"]
    reports = history.assign(trial_id=history["trial_id"].astype(str)).sort_values(keys, kind="mergesort")
    seconds = (pd.to_numeric(reports["epoch_time_s"], errors="coerce").astype(float) if "epoch_time_s" in reports
               else pd.Series(0.0, index=reports.index))
    reports = reports.assign(compute_s=seconds.where(np.isfinite(seconds), 0.0).cumsum())
    frame = reports.groupby("trial_id", sort=False).tail(1)  # each trial's last report, in finishing order
    frame = pd.DataFrame({"trial_id": frame["trial_id"],
                          "name": frame["name"] if "name" in frame else frame["trial_id"],
                          "compute_s": frame["compute_s"]}).reset_index(drop=True)
    frame["value"] = frame["trial_id"].map(_selected(trials, metric, select)).astype(float)
    frame["best"] = _running_best(frame["value"], mode)
    return frame


def _ylabel(trials: pd.DataFrame, metric: str, select: str) -> str:
    return f"{_label(metric)}, {_rule_words(select, trials.attrs.get('at_epoch'))}"


def _trials_and_running_best(frame, line, x: str, unit: str, ylabel: str, scale: float, colours: dict, mode: str):
    """Each trial's value a point at ``x`` where it finished, and the running best as a step line: (matplotlib
    figure, its axes, plotly figure)."""
    fig, ax = _mpl()
    pfig = go.Figure()
    for _, row in frame.dropna(subset=["value"]).iterrows():
        ax.scatter(row[x], row["value"] * scale, s=18, color=colours[row["trial_id"]], alpha=0.6)
        pfig.add_trace(go.Scatter(x=[row[x]], y=[row["value"] * scale], mode="markers",
                                  name=row["name"], marker={"size": 7, "color": colours[row["trial_id"]]},
                                  opacity=0.7, showlegend=False, hovertemplate=_hover(unit, ylabel)))
    ax.step(line[x], line["best"] * scale, where="post", color=BEST_COLOUR, lw=2, label="best so far")
    pfig.add_trace(go.Scatter(x=line[x], y=line["best"] * scale, mode=mode, name="best so far",
                              line={"shape": "hv", "color": BEST_COLOUR, "width": 2.5},
                              **({"marker": {"size": 5, "color": BEST_COLOUR}} if "markers" in mode else {})))
    return fig, ax, pfig


def best_so_far_figures(trials: pd.DataFrame, history: pd.DataFrame, metric: str, mode: str,
                        select: str = "last") -> Figures | None:
    """Running best against cumulative compute time, each eligible trial's value a point where it finished.
    Skipped without timings (epoch_time_s) or without the selection rule's column in ``trials``."""
    if "epoch_time_s" not in history.columns or _rule_column(metric, select) not in trials.columns:
        return None
    frame = best_so_far_frame(trials, history, metric, mode, select)
    line = frame.dropna(subset=["best"])
    if line.empty:
        return None
    title, scale, colours = f"Best {metric} so far vs compute time", _scale(metric), _colours(frame["trial_id"])
    ylabel = _ylabel(trials, metric, select)
    fig, ax, pfig = _trials_and_running_best(frame, line, "compute_s", "seconds", ylabel, scale, colours, "lines")
    _finish(ax, title, "cumulative training seconds", ylabel)
    ax.legend(loc="best")
    pfig.update_layout(title=title, xaxis_title="cumulative training seconds", yaxis_title=ylabel,
                       hovermode="closest")
    return fig, pfig


DEVICE_HOURS = {"gpu": "GPU-hours (wall time x GPUs held)", "cpu": "device-hours (wall time x CPUs held)"}


def cost_frame(trials: pd.DataFrame, history: pd.DataFrame, metric: str, mode: str,
               select: str = "last") -> pd.DataFrame:
    """Trials in the order they finished, with the sweep's cumulative device-hours and the running best of their
    values under the selection rule ``select``.

    A trial finished at its last report's ``timestamp``; when some report has none, trials go by trial_id.
    ``device_h`` is the trial's ``device_s`` / 3600 (a trial without one counts as 0), ``cum_device_h`` their
    running sum; ``value`` is the trial's value under ``select`` when it is eligible (else NaN) and ``best`` its
    running max/min (NaN until the first value). Only trials with at least one report appear; empty when no trial
    has a ``device_s``."""
    _check(mode, metric, select)
    columns = ["trial_id", "name", "finished", "device_h", "cum_device_h", "value", "best"]
    cost = pd.to_numeric(trials["device_s"], errors="coerce").astype(float) if "device_s" in trials else None
    if cost is None or not np.isfinite(cost).any() or "trial_id" not in history:
        return pd.DataFrame(columns=columns)
    cost = dict(zip(trials["trial_id"].astype(str), cost.where(np.isfinite(cost), 0.0) / 3600))
    reported = history.assign(trial_id=history["trial_id"].astype(str))
    names = reported.groupby("trial_id", sort=True)["name"].last() if "name" in reported else None
    frame = pd.DataFrame({"trial_id": sorted(set(reported["trial_id"]))})
    frame["name"] = frame["trial_id"].map(names) if names is not None else frame["trial_id"]
    stamps = (pd.to_numeric(reported["timestamp"], errors="coerce").astype(float) if "timestamp" in reported
              else pd.Series(np.nan, index=reported.index))
    frame["finished"] = frame["trial_id"].map(stamps.groupby(reported["trial_id"]).max())
    frame["value"] = frame["trial_id"].map(_selected(trials, metric, select)).astype(float)
    if frame["finished"].notna().all():
        frame = frame.sort_values(["finished", "trial_id"], kind="mergesort")
    frame = frame.reset_index(drop=True)
    frame["device_h"] = frame["trial_id"].map(cost).fillna(0.0)
    frame["cum_device_h"] = frame["device_h"].cumsum()
    frame["best"] = _running_best(frame["value"], mode)
    return frame[columns]


def cost_figures(trials: pd.DataFrame, history: pd.DataFrame, metric: str, mode: str,
                 select: str = "last") -> Figures | None:
    """Running best against the sweep's cumulative device-hours, trial by trial as they finished, each eligible
    trial's value a point where it ended. Skipped when no trial has a cost (device_s) or ``trials`` lacks the
    selection rule's column."""
    if _rule_column(metric, select) not in trials.columns:
        return None
    frame = cost_frame(trials, history, metric, mode, select)
    line = frame.dropna(subset=["best"])
    if line.empty:
        return None
    kinds = set(trials["device_kind"].dropna()) if "device_kind" in trials else set()
    xlabel = f"cumulative {DEVICE_HOURS[kinds.pop()] if len(kinds) == 1 else 'device-hours'}"
    title, scale, colours = f"Best {metric} so far vs cost", _scale(metric), _colours(frame["trial_id"])
    ylabel = _ylabel(trials, metric, select)
    fig, ax, pfig = _trials_and_running_best(frame, line, "cum_device_h", "device-hours", ylabel, scale, colours,
                                             "lines+markers")
    _finish(ax, title, xlabel, ylabel)
    ax.legend(loc="best")
    pfig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, hovermode="closest")
    return fig, pfig


def pareto_figures(trials: pd.DataFrame, pareto: pd.DataFrame | None, objectives) -> Figures | None:
    """A multi-objective sweep's first two objectives: every eligible trial a grey point, the Pareto front (``pareto``,
    as pareto.csv holds it) joined in order along the first objective, the picked configuration starred. Skipped
    without a front or with one objective."""
    if pareto is None or pareto.empty or objectives is None or len(objectives) < 2:
        return None
    (x, x_mode), (y, y_mode) = objectives[0], objectives[1]
    column = {m: objective_column(m) for m in (x, y)}
    pool = trials[trials["status"].isin(ELIGIBLE)]
    if any(c not in pool for c in column.values()):
        return None
    sx, sy = _scale(x), _scale(y)
    front = pareto.sort_values(x)
    picked = pareto[pareto["picked"]]
    xlabel, ylabel = f"{_label(x)} ({x_mode})", f"{_label(y)} ({y_mode})"
    title = f"Pareto front: {x} and {y}"
    fig, ax = _mpl()
    ax.scatter(pool[column[x]] * sx, pool[column[y]] * sy, color="0.6", s=22, label="trials")
    ax.plot(front[x] * sx, front[y] * sy, "o-", color="tab:blue", label="Pareto front")
    if len(picked):
        ax.scatter(picked[x] * sx, picked[y] * sy, marker="*", s=260, color="tab:orange", zorder=3,
                   label="picked")
    _finish(ax, title, xlabel, ylabel)
    ax.legend(loc="best")
    pfig = go.Figure()
    pfig.add_trace(go.Scatter(x=pool[column[x]] * sx, y=pool[column[y]] * sy, mode="markers", name="trials",
                              marker={"color": "lightgray"}, text=pool["name"], hovertemplate=_hover(xlabel, ylabel)))
    pfig.add_trace(go.Scatter(x=front[x] * sx, y=front[y] * sy, mode="lines+markers", name="Pareto front",
                              text=front["name"], hovertemplate=_hover(xlabel, ylabel)))
    if len(picked):
        pfig.add_trace(go.Scatter(x=picked[x] * sx, y=picked[y] * sy, mode="markers", name="picked",
                                  marker={"symbol": "star", "size": 16}, text=picked["name"],
                                  hovertemplate=_hover(xlabel, ylabel)))
    pfig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, hovermode="closest")
    return fig, pfig
