"""The sweep's progress: the running best metric against cumulative compute seconds, and against the sweep's
cost in device-hours (the cost ledger), as frames and as figures."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from tune_app.plots.base import BEST_COLOUR, Figures, _colours, _finish, _hover, _label, _mpl, _scale, _valid


def best_so_far_frame(history: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """All reports in chronological order with cumulative compute seconds and the running best metric.

    Ordered by ``timestamp`` when every report has one, else by epoch then trial_id. ``compute_s`` sums
    ``epoch_time_s`` (missing counts as 0) up to and including each report; ``value`` is the metric where
    finite and not diverged (else NaN) and ``best`` its running max/min (NaN until the first valid value).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    timed = "timestamp" in history.columns and history["timestamp"].notna().all()
    keys = ["timestamp", "epoch", "trial_id"] if timed else ["epoch", "trial_id"]
    frame = history.sort_values(keys, kind="mergesort").reset_index(drop=True)
    seconds = (pd.to_numeric(frame["epoch_time_s"], errors="coerce").astype(float) if "epoch_time_s" in frame
               else pd.Series(0.0, index=frame.index))
    valid = frame.index.isin(_valid(frame, metric).index)
    value = pd.to_numeric(frame[metric], errors="coerce").astype(float).where(valid)
    best = value.cummax() if mode == "max" else value.cummin()
    return pd.DataFrame({"trial_id": frame["trial_id"], "name": frame["name"], "epoch": frame["epoch"],
                         "compute_s": seconds.where(np.isfinite(seconds), 0.0).cumsum(),
                         "value": value, "best": best.ffill()})


def best_so_far_figures(history: pd.DataFrame, metric: str, mode: str) -> Figures | None:
    """Running best metric against cumulative compute time, with each trial's reports as faint points."""
    if metric not in history.columns or "epoch_time_s" not in history.columns:
        return None
    frame = best_so_far_frame(history, metric, mode)
    line = frame.dropna(subset=["best"])
    if line.empty:
        return None
    title, scale, colours = f"Best {metric} so far vs compute time", _scale(metric), _colours(frame["trial_id"])
    fig, ax = _mpl()
    pfig = go.Figure()
    for trial_id, rows in frame.dropna(subset=["value"]).groupby("trial_id", sort=True):
        ax.scatter(rows["compute_s"], rows["value"] * scale, s=10, color=colours[trial_id], alpha=0.35)
        pfig.add_trace(go.Scatter(x=rows["compute_s"], y=rows["value"] * scale, mode="markers",
                                  name=rows["name"].iloc[0], marker={"size": 5, "color": colours[trial_id]},
                                  opacity=0.45, showlegend=False, hovertemplate=_hover("seconds", _label(metric))))
    ax.step(line["compute_s"], line["best"] * scale, where="post", color=BEST_COLOUR, lw=2, label="best so far")
    pfig.add_trace(go.Scatter(x=line["compute_s"], y=line["best"] * scale, mode="lines", name="best so far",
                              line={"shape": "hv", "color": BEST_COLOUR, "width": 2.5}))
    _finish(ax, title, "cumulative training seconds", _label(metric))
    ax.legend(loc="best")
    pfig.update_layout(title=title, xaxis_title="cumulative training seconds", yaxis_title=_label(metric),
                       hovermode="closest")
    return fig, pfig


DEVICE_HOURS = {"gpu": "GPU-hours (wall time x GPUs held)", "cpu": "device-hours (wall time x CPUs held)"}


def cost_frame(trials: pd.DataFrame, history: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Trials in the order they finished, with the sweep's cumulative device-hours and the running best metric.

    A trial finished at its last report's ``timestamp``; when some report has none, trials go by trial_id.
    ``device_h`` is the trial's ``device_s`` / 3600 (a trial without one counts as 0), ``cum_device_h`` their
    running sum; ``value`` is the trial's best metric outside diverged epochs (NaN when it has none) and ``best``
    its running max/min (NaN until the first value). Only trials with at least one report appear; empty when no
    trial has a ``device_s``."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
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
    valid = _valid(reported, metric)
    values = pd.to_numeric(valid[metric], errors="coerce").astype(float).groupby(valid["trial_id"])
    frame["value"] = frame["trial_id"].map(values.max() if mode == "max" else values.min())
    if frame["finished"].notna().all():
        frame = frame.sort_values(["finished", "trial_id"], kind="mergesort")
    frame = frame.reset_index(drop=True)
    frame["device_h"] = frame["trial_id"].map(cost).fillna(0.0)
    frame["cum_device_h"] = frame["device_h"].cumsum()
    frame["best"] = (frame["value"].cummax() if mode == "max" else frame["value"].cummin()).ffill()
    return frame[columns]


def cost_figures(trials: pd.DataFrame, history: pd.DataFrame, metric: str, mode: str) -> Figures | None:
    """Running best metric against the sweep's cumulative device-hours, trial by trial as they finished, with each
    trial's best as a point where it ended. Skipped when no trial has a cost (device_s)."""
    if metric not in history.columns:
        return None
    frame = cost_frame(trials, history, metric, mode)
    line = frame.dropna(subset=["best"])
    if line.empty:
        return None
    kinds = set(trials["device_kind"].dropna()) if "device_kind" in trials else set()
    xlabel = f"cumulative {DEVICE_HOURS[kinds.pop()] if len(kinds) == 1 else 'device-hours'}"
    title, scale, colours = f"Best {metric} so far vs cost", _scale(metric), _colours(frame["trial_id"])
    fig, ax = _mpl()
    pfig = go.Figure()
    for _, row in frame.dropna(subset=["value"]).iterrows():
        ax.scatter(row["cum_device_h"], row["value"] * scale, s=18, color=colours[row["trial_id"]], alpha=0.6)
        pfig.add_trace(go.Scatter(x=[row["cum_device_h"]], y=[row["value"] * scale], mode="markers",
                                  name=row["name"], marker={"size": 7, "color": colours[row["trial_id"]]},
                                  opacity=0.7, showlegend=False, hovertemplate=_hover("device-hours", _label(metric))))
    ax.step(line["cum_device_h"], line["best"] * scale, where="post", color=BEST_COLOUR, lw=2, label="best so far")
    pfig.add_trace(go.Scatter(x=line["cum_device_h"], y=line["best"] * scale, mode="lines+markers",
                              name="best so far", line={"shape": "hv", "color": BEST_COLOUR, "width": 2.5},
                              marker={"size": 5, "color": BEST_COLOUR}))
    _finish(ax, title, xlabel, _label(metric))
    ax.legend(loc="best")
    pfig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=_label(metric), hovermode="closest")
    return fig, pfig
