"""The hyperparameters' plots: parallel coordinates and slices (Optuna's, in percent for an accuracy) and the
fANOVA / PED-ANOVA importance bars."""
from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import optuna
import optuna.visualization as ov
import optuna.visualization.matplotlib as ovm
import pandas as pd
import plotly.graph_objects as go
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from tune_app.plots.base import DPI, SIZE, Figures, _finish, _is_acc, _label, _mpl


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
