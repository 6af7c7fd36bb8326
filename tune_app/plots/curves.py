"""The metric per epoch: every trial's reports as one line, the learning curves (best trial bold) and the curves
grouped by one hyperparameter's values."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tune_app.plots.base import (
    BEST_COLOUR,
    CURVE_PANELS,
    CURVES_SIZE,
    FAINT,
    Figures,
    _colours,
    _finish,
    _hover,
    _label,
    _mpl,
    _scale,
    _valid,
)


def metric_vs_step_figures(history: pd.DataFrame, metric: str) -> Figures | None:
    """Every trial's reported epochs as one line with a point per epoch, one colour per trial. A diverged epoch is
    left out: its metric is the trainable's placeholder, not a measurement."""
    data = _valid(history, metric)
    if data.empty:
        return None
    title, scale, colours = f"{metric} vs epoch, all trials", _scale(metric), _colours(history["trial_id"])
    fig, ax = _mpl()
    pfig = go.Figure()
    for trial_id, rows in data.groupby("trial_id", sort=True):
        y = rows[metric] * scale
        ax.plot(rows["epoch"], y, color=colours[trial_id], lw=1.2, marker="o", ms=3, alpha=0.8)
        pfig.add_trace(go.Scatter(x=rows["epoch"], y=y, mode="lines+markers", name=rows["name"].iloc[0],
                                  line={"color": colours[trial_id], "width": 1.5},
                                  marker={"size": 5, "color": colours[trial_id]},
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
