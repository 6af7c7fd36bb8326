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

import argparse
import json
import types
from functools import cached_property
from pathlib import Path

from tune_app.errors import UsageError
from tune_app.settings import SweepSettings


class SweepInterrupted(Exception):
    """The sweep stopped before every trial finished (Ctrl+C, a budget, a lost cluster): resume it with
    ``tune_app.sweep(resume=run_dir)``."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"the sweep in {run_dir} was interrupted; continue it with tune_app.sweep(resume="
                         f"{str(run_dir)!r})")
        self.run_dir = run_dir


class SweepFailed(Exception):
    """No trial of the sweep finished (the trials table in summary/ and error.txt in each trial say why)."""


class Sweep:
    """A finished sweep's results, read from its run directory."""

    def __init__(self, run_dir) -> None:
        self.run_dir = Path(run_dir)

    def __repr__(self) -> str:
        return f"Sweep({str(self.run_dir)!r})"

    @property
    def summary_dir(self) -> Path:
        return self.run_dir / "summary"

    @cached_property
    def best(self) -> dict:
        """best_config.json: the config, the selection rule, the metric and its provenance."""
        path = self.summary_dir / "best_config.json"
        if not path.is_file():
            raise UsageError(f"{self.run_dir}: no summary/best_config.json; analyze the run first "
                             f"(tune_app.analyze({str(self.run_dir)!r}))")
        return json.loads(path.read_text())

    @property
    def best_config(self) -> dict:
        return self.best["config"]

    @cached_property
    def trials(self):
        import pandas as pd

        return pd.read_parquet(self.summary_dir / "trials.parquet")

    @cached_property
    def history(self):
        import pandas as pd

        return pd.read_parquet(self.summary_dir / "history.parquet")

    @property
    def report(self) -> Path:
        return self.summary_dir / "report.html"


def sweep(space=None, **settings) -> Sweep:
    """Run a sweep (or ``resume=run_dir`` one) and analyze it. ``space``: a built-in name, a path to a .py file,
    a dotted module name or a module object. Raises UsageError, SweepInterrupted or SweepFailed."""
    from tune_app import search

    options = SweepSettings.from_kwargs(space, **settings)
    if options.resume is True and not options.name:
        raise UsageError("resume=True needs name=NAME (or pass the run directory: resume='runs/NAME')")
    spec = search.spec_of(options)
    code = search.run(spec, resume=bool(options.resume))
    run_dir = Path(spec["run_dir"])
    if code == 130:
        raise SweepInterrupted(run_dir)
    if code != 0:
        raise SweepFailed(f"no trial of the sweep in {run_dir} finished; see {run_dir / 'summary'} and each trial's "
                          f"error.txt")
    return Sweep(run_dir)


def analyze(run_dir, **options) -> Sweep:
    """Analyze a run directory again (``metric``, ``mode``, ``at_epoch``, ``select``, ``top_k``, ``pairs``,
    ``curves_by``, ``wandb_mode`` as the command line's flags); returns its results."""
    from tune_app import analyze as command

    known = ("metric", "mode", "at_epoch", "pairs", "select", "top_k", "curves_by", "wandb_mode", "wandb_project",
             "wandb_entity", "quiet")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; known: {', '.join(known)}")
    from tune_app.runlock import check_idle

    path = Path(run_dir).expanduser().resolve()
    check_idle(path, "analyze")
    command.run(path, **options)
    return Sweep(path)


def retrain(run_dir, seeds: int = 3, **options) -> dict:
    """Retrain the sweep's best configuration with ``seeds`` seeds and measure it on the test set; returns
    retrain.json (per configuration and seed: validation and test metrics). Options are the command line's:
    ``top_k``, ``seed_list``, ``epochs``, ``train_on``, ``cpus_per_trial``, ``gpus_per_trial``, ``wandb_mode``..."""
    from tune_app import retrain as command

    args = command.build_parser().parse_args([str(run_dir)])
    unknown = sorted(set(options) - set(vars(args)) - {"seeds"})
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; known: {', '.join(sorted(vars(args)))}")
    if options.get("train_on", "train") not in ("train", "train+val"):
        raise UsageError(f"train_on={options['train_on']!r}: use 'train' or 'train+val'")
    if options.get("evaluate") is not None:
        raise UsageError("evaluate= trains nothing; measure a model file with tune_app.load_model(path).evaluate("
                         "images, labels)")
    if isinstance(options.get("seed_list"), (list, tuple)):
        options["seed_list"] = ",".join(str(seed) for seed in options["seed_list"])
    namespace = argparse.Namespace(**{**vars(args), **options, "seeds": seeds})
    out = command.run(namespace)
    return json.loads((out / "retrain.json").read_text())


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


class CommandModule(types.ModuleType):
    """``tune_app.analyze`` and ``tune_app.retrain`` are both a command's module (``python -m tune_app.analyze``,
    ``tune_app.analyze.run``) and the Python function above: calling the module calls the function."""

    def __call__(self, *args, **kwargs):
        return globals()[self.__name__.rsplit(".", 1)[-1]](*args, **kwargs)


def callable_command(module: types.ModuleType) -> None:
    module.__class__ = CommandModule
