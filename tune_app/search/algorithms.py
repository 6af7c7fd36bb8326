"""Searcher and scheduler factories: name -> Ray Tune object.

Each factory gets the sweep settings and the (validated) space and returns what
``TuneConfig`` takes. Searchers that cannot express a space entry say so here,
before Ray starts.
"""
from __future__ import annotations

from pathlib import Path

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search.sample import Categorical, Domain, Float, Integer

from trainables.registry import Registry
from tune_app.cluster import ray_private
from tune_app.errors import UsageError
from tune_app.rundir.layout import JOURNAL_FILE
from tune_app.spaces import is_grid, is_searched

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
    return {k: tune.choice(list(v["grid_search"])) if is_grid(v) else v
            for k, v in space.items()}


def point_value(domain, value):
    """`value` as the space entry `domain` holds it (64, not the 64.0 a table may give back).
    Raises ValueError(what the entry takes, the values a widened entry would list) when it cannot take it."""
    if is_grid(domain):
        domain = Categorical(list(domain["grid_search"]))
    if isinstance(domain, Categorical):
        for category in domain.categories:
            if category == value and isinstance(category, bool) == isinstance(value, bool):  # True == 1
                return category
        raise ValueError(f"choose from {', '.join(map(str, domain.categories))}", [*domain.categories, value])
    if isinstance(domain, (Float, Integer)):
        upper = domain.upper - 1 if isinstance(domain, Integer) else domain.upper  # randint's upper is exclusive
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and domain.lower <= value <= upper and (isinstance(domain, Float) or value == int(value)):
            return float(value) if isinstance(domain, Float) else int(value)
        raise ValueError(f"a range from {domain.lower:g} to {upper:g}", [domain.lower, upper, value])
    return value  # a custom sampler: the trial checks the value when it runs


# Each searcher factory takes `points`: configurations to evaluate before the searcher's own,
# counted in num_samples (Ray's points_to_evaluate).
@SEARCHERS.register("grid")
def grid(space, settings, run_dir, points=()):
    return None, grid_space(space)


@SEARCHERS.register("random")
def random(space, settings, run_dir, points=()):
    from ray.tune.search import BasicVariantGenerator

    # Ray applies --max-concurrent (max_concurrent_trials) to Searchers only: this generator takes it itself.
    return BasicVariantGenerator(points_to_evaluate=list(points), random_state=settings["seed"],
                                 max_concurrent=settings.get("max_concurrent") or 0), space


def optuna_search(sampler, space, settings, run_dir, points=(), define_by_run=None, objectives=None):
    """Ray's Optuna searcher around ``sampler``, its study in the run directory (resumable; optuna-dashboard opens
    it); ``points`` are enqueued in the study: its first trials, and the sampler learns from them.
    ``define_by_run``: a space's SPACE that is a function of an Optuna trial, which the searcher calls for each
    trial. ``objectives`` [(metric, mode), ...]: with more than one, the study is multi-objective. Either way the
    searcher holds the search space itself, so that Ray's single metric (the first objective, for the
    schedulers) does not replace its own, and the Tuner gets the constants."""
    import optuna as _optuna

    from tune_app.search.optuna_resume import ResumableOptunaSearch

    storage = None
    if run_dir is not None:
        from optuna.storages.journal import JournalFileBackend

        storage = _optuna.storages.JournalStorage(JournalFileBackend(str(Path(run_dir) / JOURNAL_FILE)))
    if define_by_run is not None or (objectives and len(objectives) > 1):
        metrics, modes = [m for m, _ in objectives], [d for _, d in objectives]
        metric, mode = (metrics, modes) if len(objectives) > 1 else (metrics[0], modes[0])
        searched = define_by_run or choice_space({k: v for k, v in space.items() if is_searched(v)})
        constants = {k: v for k, v in space.items() if not is_searched(v)}
        return ResumableOptunaSearch(space=searched, metric=metric, mode=mode, points_to_evaluate=list(points),
                                     sampler=sampler, storage=storage, study_name=settings["name"]), constants
    return ResumableOptunaSearch(points_to_evaluate=list(points), sampler=sampler, storage=storage,
                                 study_name=settings["name"]), choice_space(space)


def _quiet_optuna():
    import optuna as _optuna

    _optuna.logging.set_verbosity(_optuna.logging.WARNING)
    return _optuna


@SEARCHERS.register("optuna")
def optuna(space, settings, run_dir, points=(), define_by_run=None, objectives=None):
    """Optuna's TPE."""
    sampler = _quiet_optuna().samplers.TPESampler(seed=settings["seed"])
    return optuna_search(sampler, space, settings, run_dir, points, define_by_run, objectives)


@SEARCHERS.register("gp")
def gp(space, settings, run_dir, points=(), define_by_run=None, objectives=None):
    """Optuna's Gaussian-process Bayesian optimisation (GPSampler): for budgets of tens of trials; the first
    min(10, half the trials) are random."""
    startup = max(1, min(10, settings["num_samples"] // 2))
    sampler = _quiet_optuna().samplers.GPSampler(seed=settings["seed"], n_startup_trials=startup)
    return optuna_search(sampler, space, settings, run_dir, points, define_by_run, objectives)


@SEARCHERS.register("cmaes")
def cmaes(space, settings, run_dir, points=(), define_by_run=None, objectives=None):
    """Optuna's CMA-ES over the numeric keys; a categorical key is drawn by TPE beside it (CMA-ES has no
    categories). Needs the ``cmaes`` package (tune_app's ``search`` extra)."""
    optuna = _quiet_optuna()
    sampler = optuna.samplers.CmaEsSampler(seed=settings["seed"], warn_independent_sampling=False,
                                           independent_sampler=optuna.samplers.TPESampler(seed=settings["seed"]))
    return optuna_search(sampler, space, settings, run_dir, points, define_by_run, objectives)


@SEARCHERS.register("bohb")
def bohb(space, settings, run_dir, points=()):
    """Ray's BOHB (TuneBOHB: a model over ConfigSpace), run with its own HyperBand (``--scheduler bohb``). Needs
    ConfigSpace and hpbandster (tune_app's ``search`` extra)."""
    from tune_app.search.bohb import PlainBOHB

    return PlainBOHB(points_to_evaluate=list(points) or None, seed=settings["seed"]), choice_space(space)


def require(module: str, package: str, flag: str) -> None:
    """UsageError in one line when an optional package a searcher or scheduler needs is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{flag} needs the {package} package: pip install 'tune_app[search]' (or pip install "
                         f"{package})")


@SEARCHERS.register("nsga2")
def nsga2(space, settings, run_dir, points=(), define_by_run=None, objectives=None):
    """Optuna's NSGA-II, for several objectives (--metric a,b --mode max,min): a population evolving towards the
    Pareto front."""
    sampler = _quiet_optuna().samplers.NSGAIISampler(seed=settings["seed"])
    return optuna_search(sampler, space, settings, run_dir, points, define_by_run, objectives)


@SEARCHERS.register("hyperopt")
def hyperopt(space, settings, run_dir, points=()):
    from ray.tune.search.hyperopt import HyperOptSearch

    initial = max(1, min(20, settings["num_samples"] // 2))  # random points before TPE takes over
    return HyperOptSearch(points_to_evaluate=list(points) or None, random_state_seed=settings["seed"],
                          n_initial_points=initial), choice_space(space)


@SCHEDULERS.register("fifo")
def fifo(settings, searched):
    return tune.schedulers.FIFOScheduler()


@SCHEDULERS.register("asha")
def asha(settings, searched):
    return tune.schedulers.ASHAScheduler(
        time_attr="epoch", max_t=settings["max_epochs"],
        grace_period=min(settings["grace_period"], settings["max_epochs"]),
        reduction_factor=settings["reduction_factor"])


class AshaState(tune.Callback):
    """ASHA's rungs in Ray's callback checkpoints (see scheduler_state)."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return ray_private.asha_state(self.scheduler)

    def set_state(self, state: dict) -> None:
        ray_private.set_asha_state(self.scheduler, state)


class PbtState(tune.Callback):
    """PBT's per-trial state and PB2's GP data in Ray's callback checkpoints (see scheduler_state). Ray's restore
    puts the callback state back before it adds the trials to the scheduler, which makes each trial's state
    afresh; so the saved state waits for the first step of the resumed sweep, before any trial reports."""

    def __init__(self, scheduler) -> None:
        self.scheduler, self.pending = scheduler, None

    def get_state(self) -> dict:
        return ray_private.pbt_state(self.scheduler)

    def set_state(self, state: dict) -> None:
        self.pending = state

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self.pending is not None:
            ray_private.set_pbt_state(self.scheduler, self.pending)
            self.pending = None


class HyperBandState(tune.Callback):
    """HyperBand's brackets (and BOHB's) in Ray's callback checkpoints (see scheduler_state). As with PbtState,
    the saved brackets wait for the first step of the resumed sweep, then replace those the scheduler built afresh
    as Ray re-added the trials; what each re-added trial must be is told to the scheduler at once (see
    ResumedStatus)."""

    def __init__(self, scheduler) -> None:
        self.scheduler, self.pending = scheduler, None

    def get_state(self) -> dict:
        # before the first step of a resumed sweep the scheduler holds brackets built afresh: the saved ones count
        return self.pending if self.pending is not None else ray_private.hyperband_state(self.scheduler)

    def set_state(self, state: dict) -> None:
        self.pending = state
        self.scheduler.resumed_status = {**{t: Trial.TERMINATED for t in state["done"]},
                                         **{t: Trial.PAUSED for t in state["waiting"]}}

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self.pending is not None:
            ray_private.set_hyperband_state(self.scheduler, self.pending, trials)
            self.pending, self.scheduler.resumed_status = None, {}


class ResumedStatus:
    """A HyperBand whose trials come back from --resume as its brackets left them. Ray's restore re-adds every
    unfinished trial as PENDING, which would start at once a trial that waited paused for its bracket's halving
    (running it past its milestone), and one its bracket had stopped while it was paused (which Ray's experiment
    state still calls PAUSED). HyperBandState says which before they are re-added (``resumed_status``): the one
    enters the resumed sweep PAUSED, until its bracket's halving unpauses or stops it, the other TERMINATED."""

    resumed_status: dict = {}

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if self.resumed_status and tune_controller is not None:  # re-added by --resume: see forget_cached_decision
            ray_private.forget_cached_decision(tune_controller, trial.trial_id)
        status = self.resumed_status.get(trial.trial_id)
        if status and trial.status == Trial.PENDING:
            trial.set_status(status)  # before Tune files the trial by its status


class HyperBand(ray_private.FinishedBracketStopsSaving, ResumedStatus, tune.schedulers.HyperBandScheduler):
    """Ray's HyperBandScheduler (see ray_private.FinishedBracketStopsSaving, ResumedStatus)."""


class BOHBHyperBand(ResumedStatus, tune.schedulers.HyperBandForBOHB):
    """Ray's HyperBandForBOHB (see ResumedStatus). It pauses a trial at its bracket's last milestone until every
    other one is PAUSED, and processes a bracket whose trials all wait: it needs no
    ray_private.FinishedBracketStopsSaving."""


def scheduler_state(scheduler):
    """Ray Tune checkpoints the searcher with the experiment but not the scheduler, so ASHA would come back
    from --resume with empty rungs: the trials finished before the interruption would no longer count, and
    weak new trials would not be stopped against them; PBT would forget when each trial was last perturbed and
    which checkpoint to exploit, and PB2 the rewards its GP learns from; HyperBand (and BOHB's) would build its
    brackets afresh from every trial, the finished ones included, so that the trials it had paused would never
    run again, or would run past their milestone. These callbacks keep that state in Ray's own callback
    checkpoints (saved with the experiment state) and put it back on restore. Each is pickled with the scheduler
    in the Tuner's state, so a restored sweep's callback holds the restored scheduler. None for the other
    schedulers (FIFO, median stopping)."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, HyperBandScheduler, PopulationBasedTraining

    if isinstance(scheduler, AsyncHyperBandScheduler):
        return AshaState(scheduler)
    if isinstance(scheduler, PopulationBasedTraining):
        return PbtState(scheduler)
    if isinstance(scheduler, HyperBandScheduler):
        return HyperBandState(scheduler)
    return None


@SCHEDULERS.register("hyperband")
def hyperband(settings, searched):
    return HyperBand(time_attr="epoch", max_t=settings["max_epochs"], reduction_factor=settings["reduction_factor"])


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


@SCHEDULERS.register("bohb")
def bohb_hyperband(settings, searched):
    """HyperBand as BOHB runs it (HyperBandForBOHB); only with --searcher bohb."""
    return BOHBHyperBand(time_attr="epoch", max_t=settings["max_epochs"], reduction_factor=settings["reduction_factor"])


@SCHEDULERS.register("pb2")
def pb2(settings, searched):
    """Ray's PB2: PBT whose explore step is a GP bandit over the continuous keys among PBT_MUTABLE, within their
    searched ranges. Needs GPy (tune_app's ``search`` extra)."""
    from ray.tune.schedulers.pb2 import PB2

    return PB2(time_attr="epoch", perturbation_interval=settings["grace_period"],
               hyperparam_bounds=pb2_bounds(searched), quantile_fraction=0.25)


def pb2_bounds(space: dict) -> dict:
    """PB2's ranges: the continuous keys among PBT_MUTABLE the space searches. Raises UsageError when none."""
    bounds = {k: [v.lower, v.upper] for k, v in space.items() if k in PBT_MUTABLE and isinstance(v, Float)}
    if not bounds:
        raise UsageError(f"--scheduler pb2 tunes the ranges of {', '.join(PBT_MUTABLE)} as it trains, and the space "
                         f"searches none of them as a range; give one a range in the space, e.g. \"lr\": "
                         f"tune.loguniform(1e-4, 1e-1)")
    return bounds


# Optional packages (tune_app's "search" extra) a searcher or scheduler needs: (module, package)
NEEDS = {"cmaes": [("cmaes", "cmaes")], "bohb": [("ConfigSpace", "ConfigSpace"), ("hpbandster", "hpbandster")],
         "pb2": [("GPy", "GPy")]}


EXPLORING = ("pbt", "pb2")  # schedulers that choose configurations themselves


def check(settings: dict, space: dict, points=()) -> None:
    """What ``build`` would refuse, without building anything (no files, no Ray)."""
    scheduler, searcher = settings["scheduler"], settings["searcher"]
    if scheduler in EXPLORING and searcher not in ("random", "grid"):
        raise UsageError(f"--scheduler {scheduler} explores by itself and takes no model-based searcher; "
                         f"use --searcher random (or grid)")
    if (scheduler == "bohb") != (searcher == "bohb"):
        raise UsageError("BOHB is a searcher and a HyperBand that run together: give --searcher bohb with "
                         "--scheduler bohb (--searcher bohb alone picks it)")
    for flag, name in (("--searcher", searcher), ("--scheduler", scheduler)):
        for module, package in NEEDS.get(name, ()):
            require(module, package, f"{flag} {name}")
    if scheduler == "pb2":
        pb2_bounds(space)
    if settings["searcher"] == "grid":
        if points:
            raise UsageError("--searcher grid runs every combination of its lists and takes no configurations "
                             "from --from-run; use --searcher random, optuna or hyperopt")
        grid_space(space)


# The searchers that can run a define-by-run space (SPACE as a function of an Optuna trial)
DEFINE_BY_RUN = ("optuna", "gp", "cmaes", "nsga2")


def build(settings: dict, space: dict, searched: dict, run_dir, points=(), define_by_run=None, objectives=None):
    """(search_alg, scheduler, param_space) for ``TuneConfig`` / ``Tuner``; `points` are evaluated first.
    ``define_by_run`` (a conditional space's function) and ``objectives`` go to the Optuna searchers (see
    optuna_search)."""
    check(settings, space, points)
    factory = SEARCHERS.get(settings["searcher"])
    if settings["searcher"] in DEFINE_BY_RUN:  # Optuna's: they take a conditional space and several objectives
        search_alg, param_space = factory(space, settings, run_dir, points, define_by_run=define_by_run,
                                          objectives=objectives)
    else:
        search_alg, param_space = factory(space, settings, run_dir, points)
    scheduler = SCHEDULERS.get(settings["scheduler"])(settings, searched)
    return search_alg, scheduler, param_space
