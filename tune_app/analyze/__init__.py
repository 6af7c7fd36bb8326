"""Analyze a sweep: ``python -m tune_app.analyze runs/<name>``.

Reads the run directory (a tune_app sweep, one copied from a cluster, or a plain Ray Tune experiment) and writes
into ``<run dir>/summary/``: trials and history tables, trend tables at equal training length, pairwise tables,
fANOVA and PED-ANOVA importances, plots (PNG and HTML), ``report.html`` and ``report.md``,
``best_config.json``/``.yaml`` and ``topk.json``. Every file is written to a temporary name and renamed, so a
failure leaves the previous files whole. A sweep runs this itself when it ends.

One module per job: ``cli`` (the command line, ``run`` and ``call``), ``build`` (the ``Analysis`` of a run
directory, computed before anything is written), ``selection`` (the best trial and the top k), ``trends`` (trend
and pair tables, importances) and ``outputs`` (the summary folder, the console summary, the W&B summary run).

``python -m tune_app.analyze RUN_A RUN_B`` compares two sweeps of one space instead (``compare``: side-by-side
trend tables and bests, written to ``<parent of RUN_B>/compare-<A>-vs-<B>/``); from Python,
``tune_app.analyze.compare(run_a, run_b)`` (the module is the function, as this package is ``call``).
"""
import sys

from tune_app.cluster import console

console.quiet()  # Ray's and W&B's console settings: before Ray is imported (the modules below import it)

from tune_app.analyze import compare  # noqa: E402  (a module that is also the function compare(run_a, run_b))
from tune_app.analyze.build import Analysis, compute, load_trials, saved_options, top_configs  # noqa: E402
from tune_app.analyze.cli import build_parser, call, main, run  # noqa: E402
from tune_app.analyze.outputs import console_summary, log_wandb, write  # noqa: E402
from tune_app.command import callable_command  # noqa: E402

__all__ = ["Analysis", "build_parser", "call", "compare", "compute", "console_summary", "load_trials", "log_wandb",
           "main", "run", "saved_options", "top_configs", "write"]


callable_command(sys.modules[__name__])  # tune_app.analyze(run_dir) from Python is call(run_dir)
