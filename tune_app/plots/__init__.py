"""Plots of a finished sweep, each written as a static PNG (matplotlib) and an offline HTML page (plotly).

Every ``*_figures`` function returns ``(matplotlib_figure, plotly_figure)``, or None when its inputs hold
nothing to draw; the caller owns the matplotlib figure and must close it. ``write_plots`` writes them all.

One module per job: ``base`` (sizes, colours, ``Plot`` and shared helpers), ``params`` (parallel coordinates, slices,
importance), ``curves`` (the metric per epoch), ``progress`` (best so far against compute and cost), ``write``
(``write_plots``) and ``retrain_figures`` (the retrain's confusion matrix and samples).
"""
import matplotlib

matplotlib.use("Agg")  # before any module of the package imports pyplot

import matplotlib.pyplot as plt  # noqa: F401  (plots.plt: callers close the figures they are handed)

from tune_app.plots.base import Figures, Plot
from tune_app.plots.curves import curves_by_figures, curves_figures, metric_vs_step_figures
from tune_app.plots.params import importance_figures, parallel_coordinates_figures, slices_figures
from tune_app.plots.progress import best_so_far_figures, best_so_far_frame, cost_figures, cost_frame
from tune_app.plots.retrain_figures import confusion_png, samples_png
from tune_app.plots.write import write_plots

__all__ = ["Figures", "Plot", "best_so_far_figures", "best_so_far_frame", "confusion_png", "cost_figures",
           "cost_frame", "curves_by_figures", "curves_figures", "importance_figures", "metric_vs_step_figures",
           "parallel_coordinates_figures", "samples_png", "slices_figures", "write_plots"]
