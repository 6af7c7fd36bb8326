"""What every plot shares: sizes and colours, the ``Plot`` a report embeds, the helpers that select a metric's
valid rows and label its axis (accuracies in percent), and the atomic write of a file."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.ticker import MaxNLocator

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
