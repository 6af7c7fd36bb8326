"""A sweep's settings, typed: the command line's names and defaults, built once and serialised once.

``python -m tune_app.search --num-samples 20 --set lr=0.001`` and
``tune_app.sweep(space, num_samples=20, set={"lr": 0.001})`` both become one ``SweepSettings``;
``tune_app.json`` keeps it (``"options"``) next to the settings the sweep resolved from it and the
space's SETTINGS (``"settings"``). ``None`` means "the space's SETTINGS, else tune_app's default".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import ModuleType

from tune_app.errors import UsageError


@dataclass(frozen=True)
class SweepSettings:
    """Every setting of ``tune_app.search`` / ``tune_app.sweep``; see ``python -m tune_app.search --help``."""

    space: str | ModuleType | None = None  # built-in name, path to a .py file, dotted module, or a module
    set: dict = field(default_factory=dict)  # overrides of space entries; a list becomes a searched choice
    searcher: str | None = None  # grid, random, optuna, hyperopt
    scheduler: str | None = None  # fifo, asha, hyperband, median, pbt
    num_samples: int | None = None  # trials (grid: repeats of the grid)
    max_epochs: int | None = None  # epochs cap per trial; the schedulers' max_t
    cpus_per_trial: float | None = None
    gpus_per_trial: float | str | None = None  # a fraction packs trials per GPU; "auto" measures memory
    max_concurrent: int | None = None  # trials at once (default: as resources allow)
    max_failures: int | None = None  # retries of a crashed trial, each from its last checkpoint
    keep_checkpoints: int | None = None  # the best N by the metric, plus the latest
    trial_timeout: float | None = None  # seconds without a report before a trial is stopped; 0 = never
    checkpoint_every_s: float | None = None  # (default 30) seconds of training between a trial's checkpoints, besides
    #   the scheduler's decision epochs and the last epoch; 0 = a checkpoint every epoch
    budget_hours: float | None = None  # device-hours after which no new trial starts; 0 = no budget
    reuse_actors: bool | None = None  # a finished trial's worker process trains the next trial
    repeats: int | None = None  # (default 1) runs per configuration with seeds seed..seed+k-1, reported as their mean
    retry_errored: bool = False  # with resume: run errored trials again
    address: str | None = None  # Ray cluster: auto, ray://host:10001; None = a local Ray
    storage_path: str = "./runs"  # where run directories go: a directory, s3://bucket/path or gs://bucket/path
    name: str | None = None  # run directory name (default <space>-<date>-<time>)
    resume: bool | str = False  # True (with name) or a run directory: continue an interrupted sweep
    from_run: str | None = None  # begin with the top configurations of this finished sweep
    top_k: int | None = None  # how many configurations from_run transfers
    data_dir: str = "./data"  # dataset files
    seed: int | None = None  # (default 0) searcher seed, and the trials' seed where the space sets none
    wandb_project: str = "tune_app"
    wandb_entity: str | None = None
    wandb_mode: str | None = None  # online, offline, disabled; default: online with an API key, else offline
    plan: bool = False  # print the estimated cost of each configuration, train nothing
    gpus: int | str | list | None = None  # with plan: also project the wall time on this many GPUs ("1,4" or [1, 4])
    metric: str | list | None = None  # what ranks trials (default: the space's METRIC); "val_acc,params" or a list
    mode: str | list | None = None  # max or min per metric (default: the space's MODE)
    export_wandb_sweep: str | None = None  # write the space as this W&B sweep YAML file, train nothing

    @classmethod
    def from_kwargs(cls, space=None, **kwargs) -> SweepSettings:
        """Keyword arguments by the command line's names (``num_samples=20``); an unknown one is a UsageError."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise UsageError(f"unknown setting {unknown[0]!r}; known: {', '.join(n for n in names if n != 'space')}")
        if not isinstance(kwargs.get("set", {}), dict):
            raise UsageError(f"set={kwargs['set']!r}: give a dict of space keys to values, e.g. set={{'lr': 0.001}}")
        return cls(space=space, **kwargs)

    def to_json(self) -> dict:
        """What tune_app.json keeps (a module given as the space is kept by its name)."""
        out = dataclasses.asdict(self)
        if isinstance(self.space, ModuleType):
            out["space"] = self.space.__name__
        return out
