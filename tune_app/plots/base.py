"""What every plot shares: sizes and colours, the ``Plot`` a report embeds, the helpers that select a metric's
valid rows and label its axis (accuracies in percent), and each trial's value under a selection rule."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.colors import ListedColormap
from matplotlib.ticker import MaxNLocator

from tune_app.rundir.tables import ELIGIBLE

DPI = 110
SIZE = (8, 5)  # inches
CURVES_SIZE = (10, 7)
CURVE_PANELS = ("train_loss", "val_loss", "train_acc", "val_acc")
HTML_CONFIG = {"displaylogo": False}
FAINT, BEST_COLOUR = 0.25, "black"
Figures = tuple[plt.Figure, go.Figure]
# Blues without its white end, which would hide the weakest trial on a white page; best is dark, as in Optuna.
CMAP = ListedColormap(plt.get_cmap("Blues")(np.linspace(0.35, 1.0, 256)), name="tune_app_blues")
COLORSCALE = [[i / 8, matplotlib.colors.to_hex(CMAP(i / 8))] for i in range(9)]  # the same, for plotly

# The trials-table column each selection rule ranks by: tune_app.analyze.selection.rule_column's names (plots sit
# below analyze and cannot import it; tests/test_plots.py checks that the two agree).
RULE_PREFIX = {"last": "final", "best-epoch": "best", "at-epoch": "at_epoch"}


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


def _rule_column(metric: str, select: str) -> str:
    if select not in RULE_PREFIX:
        raise ValueError(f"select must be one of {', '.join(RULE_PREFIX)}, not {select!r}")
    return f"{RULE_PREFIX[select]}_{metric}"


def _rule_words(select: str, at_epoch=None) -> str:
    """Which of a trial's epochs the selection rule reads, for an axis label."""
    if select == "at-epoch":
        return f"each trial at epoch {at_epoch}" if at_epoch is not None else "each trial at the equal-length epoch"
    return {"last": "each trial's last epoch", "best-epoch": "each trial's best epoch"}[select]


def _selected(trials: pd.DataFrame, metric: str, select: str) -> dict[str, float]:
    """trial_id -> the value the selection rule ranks the trial by, for the eligible trials that have one (as
    tune_app.analyze.selection.ranked: a diverged or failed trial never counts, however good its numbers)."""
    column = _rule_column(metric, select)
    if not {column, "trial_id", "status"} <= set(trials.columns):
        return {}
    values = pd.to_numeric(trials[column], errors="coerce").astype(float)
    keep = np.isfinite(values) & trials["status"].isin(ELIGIBLE)
    return dict(zip(trials.loc[keep, "trial_id"].astype(str), values[keep]))
