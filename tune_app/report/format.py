"""Numbers for people, one way everywhere: accuracies in percent, other metrics to 4 significant digits."""
from __future__ import annotations

import math

from tune_app.rundir.tables import is_accuracy as is_acc
from tune_app.rundir.tables import missing


def fmt(value, metric: str, unit: bool = False) -> str:
    """A metric value: accuracies in percent (``unit``: with the sign), other metrics to 4 significant digits."""
    if missing(value) or (isinstance(value, float) and math.isinf(value)):
        return "n/a"
    return (f"{100 * value:.2f} %" if unit else f"{100 * value:.2f}") if is_acc(metric) else f"{value:.4g}"


def rank(value) -> str:
    return "n/a" if missing(value) else f"{value:g}"


def plus_minus(stats: dict, metric: str) -> str:
    """``mean ± std`` of a {"mean", "std"} summary."""
    if stats["mean"] is None:
        return "n/a"
    text = fmt(stats["mean"], metric, unit=True)
    if stats["std"] is not None:
        text += f" ± {100 * stats['std']:.2f}" if is_acc(metric) else f" ± {stats['std']:.3g}"
    return text


def points(value, metric: str) -> str:
    """A difference: in percentage points for an accuracy."""
    if value is None:
        return "n/a"
    return f"{100 * value:+.2f} points" if is_acc(metric) else f"{value:+.4g}"
