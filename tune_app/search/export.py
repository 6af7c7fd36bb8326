"""``python -m tune_app.search --space digits --export-wandb-sweep digits.yaml``: a space, after ``--set``, with the
searcher, scheduler and number of trials its SETTINGS and the flags give, written as a W&B sweep file
(tune_app.wandb_sweep); nothing is trained and Ray is not started. ``--space digits.yaml`` runs the file again."""
from __future__ import annotations

import sys
from pathlib import Path

from tune_app.errors import UsageError
from tune_app.search.plan import check_settings, resolve_settings
from tune_app.settings import SweepSettings
from tune_app.spaces import list_spaces, load_space
from tune_app.wandb_sweep import to_sweep, write_sweep


def export_wandb_sweep(options: SweepSettings) -> Path:
    """Write ``options.space`` as the W&B sweep file ``options.export_wandb_sweep``; returns its path. Raises
    UsageError for what W&B cannot express (a custom sampler, a median or PBT scheduler, a repeated grid)."""
    if options.resume:
        raise UsageError("--export-wandb-sweep writes a new sweep's space; it takes no --resume")
    if not options.space:
        raise UsageError(f"--export-wandb-sweep needs --space; known spaces: {', '.join(list_spaces())}")
    space = load_space(options.space, options.set)
    settings = resolve_settings(space, options)  # what a sweep would run with
    check_settings(settings)
    config = to_sweep(space, settings)
    if settings["searcher"] == "hyperopt":
        print("tune_app: note: W&B has one model-based method, bayes; the file reads back as --searcher optuna",
              file=sys.stderr)
    if settings["scheduler"] == "hyperband":
        print("tune_app: note: W&B's hyperband stops runs as they reach each band, as ASHA does; the file reads back "
              "as --scheduler asha", file=sys.stderr)
    return write_sweep(config, options.export_wandb_sweep, space.name)
