"""``write_plots``: every plot that applies, as a PNG and an offline HTML page beside the shared plotly bundle."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from plotly.offline import get_plotlyjs

from tune_app.plots.base import DPI, HTML_CONFIG, Figures, Plot, _rule_column
from tune_app.plots.curves import curves_by_figures, curves_figures, metric_vs_step_figures
from tune_app.plots.params import importance_figures, parallel_coordinates_figures, slices_figures
from tune_app.plots.progress import best_so_far_figures, cost_figures, pareto_figures
from tune_app.rundir.atomic import atomic_write


def _save(out: Path, name: str, figures: Figures) -> Plot:
    """Write ``<name>.png`` and ``<name>.html`` and close the matplotlib figure."""
    fig, pfig = figures
    png = atomic_write(out / f"{name}.png", lambda p: fig.savefig(p, format="png", dpi=DPI))
    plt.close(fig)
    html = atomic_write(out / f"{name}.html", lambda p: pfig.write_html(
        p, include_plotlyjs="directory", config=HTML_CONFIG, auto_open=False))
    return Plot(name, pfig.layout.title.text, png, html, pfig)


def write_plots(out_dir, trials: pd.DataFrame, history: pd.DataFrame, metric: str, mode: str, study=None,
                importance: pd.DataFrame | None = None, best_trial_id: str | None = None,
                curves_by: tuple[str, ...] = (), select: str = "last", pareto: pd.DataFrame | None = None,
                objectives=None) -> list[Plot]:
    """Write every applicable plot into out_dir and return them in a fixed order (skipped ones absent).

    ``select`` is the selection rule the best trial was chosen by ("last", "best-epoch" or "at-epoch", as
    ``tune_app.analyze.selection``): the best-so-far and cost plots count each eligible trial's value under it
    (``trials``' ``final_``, ``best_`` or ``at_epoch_<metric>``), so they end at the best the report names.

    The optuna plots need ``study``; the importance chart needs a non-empty ``importance``; the cost plot needs
    ``trials``' ``device_s`` (the cost ledger); plots whose metric columns are missing from ``history`` are
    skipped. ``curves_by`` names hyperparameters whose values
    get learning curves side by side (their values come from ``trials``' config columns). ``pareto`` and
    ``objectives``: a multi-objective sweep's front (pareto.csv) and [(metric, mode), ...], for the Pareto plot.
    """
    _rule_column(metric, select)  # an unknown rule fails before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    builders = {
        "parallel_coordinates": lambda: study is not None and parallel_coordinates_figures(study, metric),
        "slices": lambda: study is not None and slices_figures(study, metric),
        "metric_vs_step": lambda: metric_vs_step_figures(history, metric),
        "curves": lambda: curves_figures(history, best_trial_id),
        **{f"curves_by_{p}": (lambda p=p: curves_by_figures(history, trials, p)) for p in curves_by},
        "best_so_far": lambda: best_so_far_figures(trials, history, metric, mode, select),
        "cost": lambda: cost_figures(trials, history, metric, mode, select),
        "importance": lambda: importance_figures(importance),
        "pareto": lambda: pareto_figures(trials, pareto, objectives),
    }
    # Write the shared plotly bundle atomically first; write_html then finds it and leaves it alone.
    atomic_write(out / "plotly.min.js", lambda p: p.write_text(get_plotlyjs(), encoding="utf-8"))
    opened = set(plt.get_fignums())
    try:
        return [_save(out, name, figures) for name, build in builders.items() if (figures := build())]
    finally:  # a plot that failed half-way must not leave its figure behind either
        for number in set(plt.get_fignums()) - opened:
            plt.close(number)
