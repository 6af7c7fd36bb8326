"""Searcher and scheduler factories: name -> Ray Tune object.

Each factory gets the sweep settings and the (validated) space and returns what
``TuneConfig`` takes. Searchers that cannot express a space entry say so here,
before Ray starts.
"""
from __future__ import annotations

from pathlib import Path

from ray import tune
from ray.tune.search.sample import Categorical, Domain

from trainables.registry import Registry
from tune_app.errors import UsageError

SEARCHERS = Registry("searcher")
SCHEDULERS = Registry("scheduler")


def grid_space(space: dict) -> dict:
    """Every ``tune.choice`` becomes a grid axis; a continuous range cannot be a grid."""
    out = {}
    for key, value in space.items():
        if isinstance(value, Categorical):
            value = tune.grid_search(list(value.categories))
        elif isinstance(value, Domain):
            raise UsageError(f"--searcher grid needs a list of values for {key} (it is a range); "
                             f"use --set {key}=[a,b,c] or another searcher")
        out[key] = value
    return out


def choice_space(space: dict) -> dict:
    """Model-based searchers take no grid axes: a grid becomes a choice."""
    return {k: tune.choice(list(v["grid_search"])) if isinstance(v, dict) and "grid_search" in v else v
            for k, v in space.items()}


@SEARCHERS.register("grid")
def grid(space, settings, run_dir):
    return None, grid_space(space)


@SEARCHERS.register("random")
def random(space, settings, run_dir):
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=settings["seed"]), space


@SEARCHERS.register("optuna")
def optuna(space, settings, run_dir):
    import optuna as _optuna
    from ray.tune.search.optuna import OptunaSearch

    _optuna.logging.set_verbosity(_optuna.logging.WARNING)
    storage = None
    if run_dir is not None:
        # A file-backed study in the run directory: optuna-dashboard can open it.
        from optuna.storages.journal import JournalFileBackend

        storage = _optuna.storages.JournalStorage(JournalFileBackend(str(Path(run_dir) / "optuna.journal")))
    sampler = _optuna.samplers.TPESampler(seed=settings["seed"])
    return OptunaSearch(sampler=sampler, storage=storage, study_name=settings["name"]), choice_space(space)


@SEARCHERS.register("hyperopt")
def hyperopt(space, settings, run_dir):
    from ray.tune.search.hyperopt import HyperOptSearch

    initial = max(1, min(20, settings["num_samples"] // 2))  # random points before TPE takes over
    return HyperOptSearch(random_state_seed=settings["seed"], n_initial_points=initial), choice_space(space)


@SCHEDULERS.register("fifo")
def fifo(settings, searched):
    return tune.schedulers.FIFOScheduler()


@SCHEDULERS.register("asha")
def asha(settings, searched):
    return tune.schedulers.ASHAScheduler(
        time_attr="epoch", max_t=settings["max_epochs"],
        grace_period=min(settings["grace_period"], settings["max_epochs"]),
        reduction_factor=settings["reduction_factor"])


@SCHEDULERS.register("hyperband")
def hyperband(settings, searched):
    return tune.schedulers.HyperBandScheduler(
        time_attr="epoch", max_t=settings["max_epochs"], reduction_factor=settings["reduction_factor"])


@SCHEDULERS.register("median")
def median(settings, searched):
    return tune.schedulers.MedianStoppingRule(
        time_attr="epoch", grace_period=settings["grace_period"], min_samples_required=3)


PBT_MUTABLE = ("lr", "weight_decay", "momentum")


@SCHEDULERS.register("pbt")
def pbt(settings, searched):
    mutations = {k: v for k, v in searched.items() if k in PBT_MUTABLE}
    if not mutations:
        raise UsageError(f"--scheduler pbt mutates {', '.join(PBT_MUTABLE)}, and the space searches none of them")
    return tune.schedulers.PopulationBasedTraining(
        time_attr="epoch", perturbation_interval=settings["grace_period"],
        hyperparam_mutations=mutations, quantile_fraction=0.25)


def check(settings: dict, space: dict) -> None:
    """What ``build`` would refuse, without building anything (no files, no Ray)."""
    if settings["scheduler"] == "pbt" and settings["searcher"] not in ("random", "grid"):
        raise UsageError("--scheduler pbt explores by itself and takes no model-based searcher; "
                         "use --searcher random (or grid)")
    if settings["searcher"] == "grid":
        grid_space(space)


def build(settings: dict, space: dict, searched: dict, run_dir):
    """(search_alg, scheduler, param_space) for ``TuneConfig`` / ``Tuner``."""
    check(settings, space)
    search_alg, param_space = SEARCHERS.get(settings["searcher"])(space, settings, run_dir)
    scheduler = SCHEDULERS.get(settings["scheduler"])(settings, searched)
    return search_alg, scheduler, param_space
