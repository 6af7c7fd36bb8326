"""Plots of a finished sweep, each written as a static PNG (matplotlib) and an offline HTML page (plotly).

Every ``*_figures`` function returns ``(matplotlib_figure, plotly_figure)``, or None when its inputs hold
nothing to draw; the caller owns the matplotlib figure and must close it. ``write_plots`` writes them all.
"""

from __future__ import annotations

import math
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import optuna
import optuna.visualization as ov
import optuna.visualization.matplotlib as ovm
import pandas as pd
import plotly.graph_objects as go
from matplotlib.ticker import MaxNLocator
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

DPI = 110
SIZE = (8, 5)  # inches
CURVES_SIZE = (10, 7)
CURVE_PANELS = ("train_loss", "val_loss", "train_acc", "val_acc")
HTML_CONFIG = {"displaylogo": False}
FAINT, BEST_COLOUR = 0.25, "black"
Figures = tuple[plt.Figure, go.Figure]


@dataclass
class Plot:
    """One written plot; ``figure`` is kept so a report can embed it."""

    name: str
    title: str
    png: Path
    html: Path
    figure: go.Figure


def _is_acc(column: str) -> bool:
    return column.endswith("acc")


def _label(column: str) -> str:
    return f"{column} (%)" if _is_acc(column) else column


def _scale(column: str) -> float:
    return 100.0 if _is_acc(column) else 1.0


def _valid(history: pd.DataFrame, column: str, drop_diverged: bool = True) -> pd.DataFrame:
    """Rows with a finite ``column`` (outside diverged epochs unless told otherwise), sorted by trial and epoch."""
    if column not in history.columns:
        return history.iloc[0:0]
    keep = np.isfinite(pd.to_numeric(history[column], errors="coerce").astype(float))
    if drop_diverged and "diverged" in history.columns:
        keep &= ~history["diverged"].eq(True)
    return history[keep].sort_values(["trial_id", "epoch"], kind="mergesort")


def _colours(trial_ids) -> dict[str, str]:
    """One stable colour per trial, shared by every plot."""
    cycle = plt.get_cmap("tab10").colors
    return {t: matplotlib.colors.to_hex(cycle[i % len(cycle)]) for i, t in enumerate(sorted(set(trial_ids)))}


def _hover(xlabel: str, ylabel: str) -> str:
    """Plotly hover text: the trace (trial) name, then both coordinates."""
    return f"%{{fullData.name}}<br>{xlabel} %{{x:.4~g}}<br>{ylabel} %{{y:.4~g}}<extra></extra>"


def _mpl(size=SIZE, **kwargs):
    return plt.subplots(figsize=size, dpi=DPI, layout="constrained", **kwargs)


def _finish(ax, title: str, xlabel: str, ylabel: str) -> None:
    """Titles, a light grid and, for epoch axes, integer ticks."""
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _percent_study(study):
    """A copy of ``study`` with its values in percent, so optuna's axes and colours read like the other plots."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        copy = optuna.create_study(direction=study.direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=100 * t.value,
                                               user_attrs=t.user_attrs)
                     for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))])
    return copy


def _optuna(plot, mpl_plot, study, metric: str, title: str):
    """Run an optuna plot pair, without its ExperimentalWarning or its global ggplot style leaking."""
    study = _percent_study(study) if _is_acc(metric) else study
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Attempting to set identical")  # one value on an axis
        axes = np.ravel(mpl_plot(study, target_name=_label(metric)))
        pfig = plot(study, target_name=_label(metric))
    fig = axes[0].figure
    fig.suptitle(title)
    pfig.update_layout(title=title)
    return fig, axes, pfig


def parallel_coordinates_figures(study, metric: str) -> Figures:
    """Every searched hyperparameter against the metric, one line per trial."""
    fig, axes, pfig = _optuna(ov.plot_parallel_coordinate, ovm.plot_parallel_coordinate, study, metric,
                              f"Parallel coordinates: hyperparameters to {metric}")
    axes[0].set_title("")
    fig.set_size_inches(*SIZE)
    fig.set_dpi(DPI)
    return fig, pfig


def slices_figures(study, metric: str) -> Figures:
    """One scatter per hyperparameter: the metric against the sampled value."""
    fig, axes, pfig = _optuna(ov.plot_slice, ovm.plot_slice, study, metric, f"{metric} by hyperparameter value")
    fig.set_size_inches(max(SIZE[0], 4 * len(axes)), SIZE[1])
    fig.set_dpi(DPI)
    return fig, pfig


def metric_vs_step_figures(history: pd.DataFrame, metric: str) -> Figures | None:
    """Every reported epoch of every trial as a point, one colour per trial. A diverged epoch is left out:
    its metric is the trainable's placeholder, not a measurement."""
    data = _valid(history, metric)
    if data.empty:
        return None
    title, scale, colours = f"{metric} vs epoch, all trials", _scale(metric), _colours(history["trial_id"])
    fig, ax = _mpl()
    pfig = go.Figure()
    for trial_id, rows in data.groupby("trial_id", sort=True):
        y = rows[metric] * scale
        ax.scatter(rows["epoch"], y, s=12, color=colours[trial_id], alpha=0.8)
        pfig.add_trace(go.Scatter(x=rows["epoch"], y=y, mode="markers", name=rows["name"].iloc[0],
                                  marker={"size": 6, "color": colours[trial_id]},
                                  hovertemplate=_hover("epoch", _label(metric))))
    _finish(ax, title, "epoch", _label(metric))
    pfig.update_layout(title=title, xaxis_title="epoch", yaxis_title=_label(metric), hovermode="closest")
    return fig, pfig


def _spans_decades(values: pd.Series, decades: float = 2.0) -> bool:
    """True for positive values whose largest is over 10**decades times the smallest (losses only)."""
    values = values[values > 0]
    return bool(len(values)) and values.max() / values.min() > 10 ** decades


def curves_figures(history: pd.DataFrame, best_trial_id: str | None = None) -> Figures | None:
    """Loss and accuracy curves, every trial faint, the best one bold; diverged epochs are dropped."""
    panels = [c for c in CURVE_PANELS if not _valid(history, c).empty]
    if not panels:
        return None
    title, colours = "Learning curves, all trials", _colours(history["trial_id"])
    fig, axes = _mpl(CURVES_SIZE, nrows=2, ncols=2)
    pfig = make_subplots(rows=2, cols=2, subplot_titles=CURVE_PANELS, horizontal_spacing=0.08)
    best_line = None
    for i, (column, ax) in enumerate(zip(CURVE_PANELS, axes.flat)):
        cell = {"row": i // 2 + 1, "col": i % 2 + 1}
        if column not in panels:
            ax.set_axis_off()
            continue
        for trial_id, rows in _valid(history, column).groupby("trial_id", sort=True):
            best = trial_id == best_trial_id
            name = f"best: {rows['name'].iloc[0]}" if best else rows["name"].iloc[0]
            colour, width, alpha = (BEST_COLOUR, 2.5, 1.0) if best else (colours[trial_id], 1.0, FAINT)
            y = rows[column] * _scale(column)
            (line,) = ax.plot(rows["epoch"], y, color=colour, lw=width, alpha=alpha, label=name, zorder=2 + best)
            best_line = line if best else best_line
            pfig.add_trace(go.Scatter(x=rows["epoch"], y=y, mode="lines", name=name, opacity=alpha,
                                      line={"color": colour, "width": width}, legendgroup=trial_id,
                                      showlegend=best and column == panels[0],
                                      hovertemplate=_hover("epoch", _label(column))), **cell)
        _finish(ax, column, "epoch", _label(column))
        log = column.endswith("loss") and _spans_decades(_valid(history, column)[column])
        if log:  # one exploding trial would flatten every other curve on a linear axis
            ax.set_yscale("log")
        pfig.update_yaxes(title_text=_label(column), type="log" if log else "linear", **cell)
        pfig.update_xaxes(title_text="epoch", **cell)
    if best_line is not None:
        fig.legend(handles=[best_line], loc="outside lower center")
    fig.suptitle(title)
    pfig.update_layout(title=title, hovermode="closest")
    return fig, pfig


def curves_by_figures(history: pd.DataFrame, trials: pd.DataFrame, param: str) -> Figures | None:
    """Training and validation accuracy per epoch grouped by one hyperparameter's values (study 3: cross-entropy
    against squared error): every trial faint in its value's colour, the value's mean over the trials that reached
    each epoch bold. Accuracy, because losses of different kinds do not share a scale."""
    column = f"config/{param}"
    if column not in trials or trials[column].nunique(dropna=True) < 2:
        return None
    value_of = dict(zip(trials["trial_id"], trials[column].astype(str)))
    panels = [c for c in ("train_acc", "val_acc") if not _valid(history, c).empty]
    if not panels:
        return None
    values = sorted(set(value_of.values()))
    cycle = plt.get_cmap("tab10").colors
    colour = {v: matplotlib.colors.to_hex(cycle[i % len(cycle)]) for i, v in enumerate(values)}
    title = f"Learning curves by {param}"
    fig, axes = _mpl((CURVES_SIZE[0], CURVES_SIZE[1] / 1.6), nrows=1, ncols=len(panels), squeeze=False)
    pfig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.08)
    for i, (panel, ax) in enumerate(zip(panels, axes.flat)):
        data = _valid(history, panel).assign(value=lambda d: d["trial_id"].map(value_of))
        data = data[data["value"].notna()]
        scale = _scale(panel)
        for (value, _), rows in data.groupby(["value", "trial_id"], sort=True):
            ax.plot(rows["epoch"], rows[panel] * scale, color=colour[value], lw=1, alpha=FAINT)
            pfig.add_trace(go.Scatter(x=rows["epoch"], y=rows[panel] * scale, mode="lines", opacity=FAINT,
                                      name=rows["name"].iloc[0], line={"color": colour[value], "width": 1},
                                      legendgroup=value, showlegend=False,
                                      hovertemplate=_hover("epoch", _label(panel))), row=1, col=i + 1)
        for value, rows in data.groupby("value", sort=True):
            mean = rows.groupby("epoch")[panel].agg(["mean", "count"])
            label = f"{param}={value} (mean of {rows['trial_id'].nunique()})"
            ax.plot(mean.index, mean["mean"] * scale, color=colour[value], lw=2.5, label=label)
            pfig.add_trace(go.Scatter(x=mean.index, y=mean["mean"] * scale, mode="lines+markers", name=label,
                                      line={"color": colour[value], "width": 3}, legendgroup=value,
                                      showlegend=i == 0, customdata=mean["count"],
                                      hovertemplate="epoch %{x}<br>" + _label(panel) + " %{y:.4g}<br>"
                                                    "%{customdata} trials<extra></extra>"), row=1, col=i + 1)
        _finish(ax, panel, "epoch", _label(panel))
        pfig.update_yaxes(title_text=_label(panel), row=1, col=i + 1)
        pfig.update_xaxes(title_text="epoch", row=1, col=i + 1)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)))
    fig.suptitle(title)
    pfig.update_layout(title=title, hovermode="closest")
    return fig, pfig


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


def importance_figures(importance: pd.DataFrame) -> Figures | None:
    """fANOVA and PED-ANOVA importance side by side per hyperparameter, most important on top."""
    if importance is None or importance.empty:
        return None
    data = importance.sort_values("fanova", ascending=False, kind="mergesort")
    title, names, y = "Hyperparameter importance", data["hyperparameter"].astype(str), np.arange(len(data))
    fig, ax = _mpl((SIZE[0], max(3, 1 + 0.6 * len(data))))
    ax.barh(y - 0.2, data["fanova"], height=0.4, label="fANOVA")
    ax.barh(y + 0.2, data["ped_anova"], height=0.4, label="PED-ANOVA")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    _finish(ax, title, "importance (each method sums to 1)", "")
    fig.legend(loc="outside right upper")
    pfig = go.Figure([go.Bar(x=data[c], y=names, orientation="h", name=label)
                      for c, label in (("fanova", "fANOVA"), ("ped_anova", "PED-ANOVA"))])
    pfig.update_layout(title=title, barmode="group", xaxis_title="importance (each method sums to 1)",
                       yaxis={"autorange": "reversed"})
    return fig, pfig


def _atomic_write(path: Path, write) -> Path:
    """Write to a hidden sibling temp file, then os.replace, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _save(out: Path, name: str, figures: Figures) -> Plot:
    """Write ``<name>.png`` and ``<name>.html`` and close the matplotlib figure."""
    fig, pfig = figures
    png = _atomic_write(out / f"{name}.png", lambda p: fig.savefig(p, format="png", dpi=DPI))
    plt.close(fig)
    html = _atomic_write(out / f"{name}.html", lambda p: pfig.write_html(
        p, include_plotlyjs="directory", config=HTML_CONFIG, auto_open=False))
    return Plot(name, pfig.layout.title.text, png, html, pfig)


def write_plots(out_dir, trials: pd.DataFrame, history: pd.DataFrame, metric: str, mode: str, study=None,
                importance: pd.DataFrame | None = None, best_trial_id: str | None = None,
                curves_by: tuple[str, ...] = ()) -> list[Plot]:
    """Write every applicable plot into out_dir and return them in a fixed order (skipped ones absent).

    The optuna plots need ``study``; the importance chart needs a non-empty ``importance``; the cost plot needs
    ``trials``' ``device_s`` (the cost ledger); plots whose metric columns are missing from ``history`` are
    skipped. ``curves_by`` names hyperparameters whose values
    get learning curves side by side (their values come from ``trials``' config columns).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    builders = {
        "parallel_coordinates": lambda: study is not None and parallel_coordinates_figures(study, metric),
        "slices": lambda: study is not None and slices_figures(study, metric),
        "metric_vs_step": lambda: metric_vs_step_figures(history, metric),
        "curves": lambda: curves_figures(history, best_trial_id),
        **{f"curves_by_{p}": (lambda p=p: curves_by_figures(history, trials, p)) for p in curves_by},
        "best_so_far": lambda: best_so_far_figures(history, metric, mode),
        "cost": lambda: cost_figures(trials, history, metric, mode),
        "importance": lambda: importance_figures(importance),
    }
    # Write the shared plotly bundle atomically first; write_html then finds it and leaves it alone.
    _atomic_write(out / "plotly.min.js", lambda p: p.write_text(get_plotlyjs(), encoding="utf-8"))
    opened = set(plt.get_fignums())
    try:
        return [_save(out, name, figures) for name, build in builders.items() if (figures := build())]
    finally:  # a plot that failed half-way must not leave its figure behind either
        for number in set(plt.get_fignums()) - opened:
            plt.close(number)


# ---------------------------------------------------------------- retrain figures (PNG only)

def confusion_png(path: Path, confusion: np.ndarray, classes: list[str], title: str) -> Path:
    """The test set's confusion matrix, each row as shares of its true class; counts written in the cells
    when there are few enough classes to read them."""
    k = len(classes)
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    side = min(18.0, max(5.0, 0.45 * k + 2))
    fig, ax = _mpl((side + 1.5, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ticks = np.arange(k) if k <= 40 else np.arange(0, k, max(1, k // 20))
    ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=90 if k > 10 else 45,
                  ha="right" if k <= 10 else "center")
    ax.set_yticks(ticks, [classes[i] for i in ticks])
    if k <= 20:
        for (t, p), count in np.ndenumerate(confusion):
            ax.text(p, t, str(int(count)), ha="center", va="center", fontsize=8,
                    color="white" if shares[t, p] > 0.5 else "black")
    _finish(ax, title, "predicted", "true")
    ax.grid(False)
    try:
        return _atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI))
    finally:
        plt.close(fig)


def samples_png(path: Path, images: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                classes: list[str]) -> Path:
    """One test image per class (the first of each), titled with its class and the model's prediction
    (green when right, red when wrong)."""
    k = len(classes)
    cols = min(10, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False, layout="constrained")
    for c, ax in enumerate(axes.flat):
        ax.set_axis_off()
        found = np.flatnonzero(labels == c)
        if c >= k or not len(found):
            continue
        i = found[0]
        picture = images[i].transpose(1, 2, 0)
        ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray" if picture.shape[-1] == 1
                  else None, vmin=0, vmax=255, interpolation="nearest")
        right = predicted[i] == c
        ax.set_title(f"{classes[c][:14]}\n-> {classes[predicted[i]][:14]}", fontsize=7,
                     color="green" if right else "red")
    fig.suptitle("One test image per class: true -> predicted")
    try:
        return _atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI))
    finally:
        plt.close(fig)
