"""tune_app from Python: the command line's four commands as functions, for notebooks and scripts.

    import tune_app
    sweep = tune_app.sweep("spaces/my_space.py", num_samples=20, set={"lr": 1e-3}, name="mine")
    sweep.best_config                       # the winning configuration (best_config.json's "config")
    sweep.trials, sweep.history             # pandas DataFrames: summary/trials.parquet, history.parquet
    tune_app.analyze(sweep.run_dir)         # the same kind of object for a finished run
    tune_app.retrain(sweep.run_dir, seeds=3)
    model = tune_app.load_model(sweep.run_dir)

Settings take the command line's names (``num_samples`` for ``--num-samples``; ``set`` is a dict).
Bad input raises ``tune_app.UsageError`` with the one line the command line prints; nothing here
exits the process, and a sweep can run again in the same process (Ray started for a sweep is shut
down after it, so the next one ships its own code).
"""
from __future__ import annotations

from pathlib import Path

from tune_app.errors import UsageError
from tune_app.results import Sweep
from tune_app.settings import SweepSettings


class SweepInterrupted(Exception):
    """The sweep stopped before every trial finished (Ctrl+C, a budget, a lost cluster): resume it with
    ``tune_app.sweep(resume=run_dir)``."""

    def __init__(self, run_dir: Path, because: str | None = None) -> None:
        super().__init__(f"{because or f'the sweep in {run_dir} was interrupted'}; continue it with "
                         f"tune_app.sweep(resume={str(run_dir)!r})")
        self.run_dir = run_dir


class SweepFailed(Exception):
    """No trial of the sweep finished (the trials table in summary/ and error.txt in each trial say why)."""


def sweep(space=None, **settings) -> Sweep:
    """Run a sweep (or ``resume=run_dir`` one) and analyze it. ``space``: a built-in name, a path to a .py file,
    a dotted module name or a module object. Raises UsageError, SweepInterrupted or SweepFailed."""
    from tune_app import search

    options = SweepSettings.from_kwargs(space, **settings)
    if options.export_wandb_sweep:
        raise UsageError("export_wandb_sweep writes a file and runs no sweep; call tune_app.search.export."
                         "export_wandb_sweep(tune_app.SweepSettings(space, export_wandb_sweep=PATH, ...))")
    if options.resume is True and not options.name:
        raise UsageError("resume=True needs name=NAME (or pass the run directory: resume='runs/NAME')")
    spec = search.spec_of(options)
    code = search.run(spec, resume=bool(options.resume))
    run_dir = Path(spec["run_dir"])
    if code == 130:
        raise SweepInterrupted(run_dir, spec.get("stopped_because"))
    if code != 0:
        raise SweepFailed(f"no trial of the sweep in {run_dir} finished; see {run_dir / 'summary'} and each trial's "
                          f"error.txt")
    return Sweep(run_dir)


def analyze(run_dir, **options) -> Sweep:
    """``tune_app.analyze``: see tune_app.analyze.call."""
    from tune_app import analyze as command

    return command.call(run_dir, **options)


def retrain(run_dir, seeds: int = 3, **options) -> dict:
    """``tune_app.retrain``: see tune_app.retrain.call."""
    from tune_app import retrain as command

    return command.call(run_dir, seeds, **options)


def load_model(path, device: str = "cpu"):
    """The retrained model of a run directory (its retrain/model.pt) or a model file: ``.predict(images)``,
    ``.evaluate(images, labels)``, ``.module`` (the torch network)."""
    from tune_app import retrain as command

    path = Path(path).expanduser()
    file = path / command.RETRAIN_DIR / command.MODEL_FILE if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        raise UsageError(f"{path}: no {command.RETRAIN_DIR}/{command.MODEL_FILE}; retrain the winner first "
                         f"(tune_app.retrain({str(path)!r}))")
    try:
        return command.load_model(file, device)
    except ValueError as e:
        raise UsageError(str(e)) from None
