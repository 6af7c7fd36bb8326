"""The hyperparameters' plots: parallel coordinates (Optuna's, coloured by rank), slices (one panel per
hyperparameter, wrapped into rows) and the fANOVA / PED-ANOVA importance bars; accuracies in percent."""
from __future__ import annotations

import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import optuna
import optuna.visualization as ov
import optuna.visualization.matplotlib as ovm
import pandas as pd
import plotly.graph_objects as go
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize, to_hex
from matplotlib.ticker import MaxNLocator
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from tune_app.plots.base import CMAP, COLORSCALE, DPI, SIZE, Figures, _finish, _is_acc, _label, _mpl, _scale

SLICE_COLUMNS = 3  # panels per row of the slices plot
RANK_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)


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


def _ranks(values, minimize: bool) -> np.ndarray:
    """Each value's place among ``values`` in [0, 1]: 0 the worst, 1 the best; ties share their mean place."""
    places = pd.Series(values, dtype=float).rank(method="average", ascending=not minimize).to_numpy()
    return np.ones(len(places)) if len(places) < 2 else (places - 1) / (len(places) - 1)


def _rank_ticks(values, minimize: bool) -> list[str]:
    """The value at each of RANK_TICKS' places, so a colour bar by rank still reads in the metric's units."""
    quantiles = [1 - q if minimize else q for q in RANK_TICKS]
    return [f"{v:.4g}" for v in np.quantile(np.asarray(values, dtype=float), quantiles)]


def parallel_coordinates_figures(study, metric: str) -> Figures:
    """Every searched hyperparameter against the metric, one line per trial, coloured by the trial's rank rather
    than its value: on a value scale one diverged trial would leave every other line the same dark blue. The
    colour bar's ticks give the metric at those ranks; the weakest line is still a visible blue."""
    fig, axes, pfig = _optuna(ov.plot_parallel_coordinate, ovm.plot_parallel_coordinate, study, metric,
                              f"Parallel coordinates: hyperparameters to {metric}")
    axes[0].set_title("")
    fig.set_size_inches(*SIZE)
    fig.set_dpi(DPI)
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    values = [t.value * _scale(metric) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not values:
        return fig, pfig
    ticks, title = _rank_ticks(values, minimize), f"{_label(metric)} (colour by rank)"
    # Optuna draws a trial per line, its objective first: the line's first point orders it in both renderings.
    lines = [t for t in pfig.data if t.mode == "lines" and t.y and t.y[0] is not None]
    for trace, rank in zip(lines, _ranks([t.y[0] for t in lines], minimize)):
        trace.line.color, trace.opacity = to_hex(CMAP(rank)), 0.8
    scale = pfig.data[-1].marker  # optuna's colour-bar trace
    scale.update(color=[0, 1], cmin=0, cmax=1, colorscale=COLORSCALE, reversescale=False,
                 colorbar={"title": {"text": title}, "tickvals": list(RANK_TICKS), "ticktext": ticks})
    for collection in axes[0].collections:
        if isinstance(collection, LineCollection) and collection.colorbar is not None:
            collection.set_array(_ranks([s[0, 1] for s in collection.get_segments()], minimize))
            collection.set(cmap=CMAP, norm=Normalize(0, 1))
            collection.colorbar.update_normal(collection)
            collection.colorbar.set_ticks(list(RANK_TICKS), labels=ticks)
            collection.colorbar.set_label(title)
    return fig, pfig


def _slice_values(trials, name: str) -> tuple[list, list[str] | None, bool]:
    """A hyperparameter's sampled values as x positions, its category labels (None when numeric: the value is the
    position) and whether its axis is logarithmic. Categories keep the distribution's order and print plainly:
    elu, not 'elu'."""
    having = [t for t in trials if name in t.params]
    distribution = having[-1].distributions[name]
    if not isinstance(distribution, CategoricalDistribution):
        return [t.params[name] for t in having], None, bool(getattr(distribution, "log", False))
    labels = [str(c) for c in distribution.choices]
    labels += sorted({str(t.params[name]) for t in having} - set(labels))
    return [labels.index(str(t.params[name])) for t in having], labels, False


def slices_figures(study, metric: str) -> Figures | None:
    """One scatter per hyperparameter, at most SLICE_COLUMNS to a row: the metric against the sampled value, each
    trial coloured by its number (when the search sampled it)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = sorted({name for t in trials for name in t.params})
    if not names:
        return None
    title, scale, ylabel = f"{metric} by hyperparameter value", _scale(metric), _label(metric)
    cols = min(SLICE_COLUMNS, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = _mpl((max(SIZE[0], 3.2 * cols + 1.6), 1.2 + 3.0 * rows), nrows=rows, ncols=cols, squeeze=False,
                     sharey=True)
    pfig = make_subplots(rows=rows, cols=cols, subplot_titles=names, shared_yaxes=True, horizontal_spacing=0.04,
                         vertical_spacing=0.12 if rows > 1 else 0.0)
    numbers = [t.number for t in trials]
    colour = {"cmap": CMAP, "vmin": min(numbers), "vmax": max(max(numbers), min(numbers) + 1)}
    for i, (name, ax) in enumerate(zip(names, axes.flat)):
        cell = {"row": i // cols + 1, "col": i % cols + 1}
        having = [t for t in trials if name in t.params]
        x, labels, log = _slice_values(trials, name)
        y = [t.value * scale for t in having]
        points = ax.scatter(x, y, c=[t.number for t in having], s=22, edgecolors="grey", linewidths=0.4, **colour)
        _finish(ax, name, "", ylabel if cell["col"] == 1 else "")
        if labels is not None:
            slanted = max(map(len, labels)) > 6
            ax.set_xticks(range(len(labels)), labels, rotation=30 if slanted else 0,
                          ha="right" if slanted else "center")
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif log:
            ax.set_xscale("log")
        pfig.add_trace(go.Scatter(x=[labels[p] for p in x] if labels else x, y=y, mode="markers", name=name,
                                  text=[t.user_attrs.get("name", f"trial {t.number}") for t in having],
                                  marker={"color": [t.number for t in having], "colorscale": COLORSCALE,
                                          "cmin": colour["vmin"], "cmax": colour["vmax"], "size": 8,
                                          "line": {"color": "grey", "width": 0.5}, "showscale": i == 0,
                                          "colorbar": {"title": {"text": "trial"}}},
                                  showlegend=False, hovertemplate=f"%{{text}}<br>{name} %{{x}}<br>{ylabel} "
                                                                  "%{y:.4~g}<extra></extra>"), **cell)
        pfig.update_xaxes(type="category" if labels else "log" if log else "linear",
                          **({"categoryorder": "array", "categoryarray": labels} if labels else {}), **cell)
        if cell["col"] == 1:
            pfig.update_yaxes(title_text=ylabel, **cell)
    for ax in axes.flat[len(names):]:
        ax.set_axis_off()
    fig.colorbar(points, ax=axes, label="trial", shrink=0.8).locator = MaxNLocator(integer=True)
    fig.suptitle(title)
    pfig.update_layout(title=title, hovermode="closest", height=320 * rows + 140)
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
