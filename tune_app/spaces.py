"""Find a search space by name, apply ``--set`` overrides, and validate it all
against the keys its trainable knows, before Ray starts."""
from __future__ import annotations

import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import yaml
from ray import tune
from ray.tune.search.sample import Categorical, Domain, Float, Integer

import search_spaces
from trainables.imports import is_ref
from trainables.params import is_factory_arg, number_or_same
from tune_app import usercode
from tune_app.errors import UsageError
from tune_app.trainable import LoadedTrainable
from tune_app.trainable import load as load_trainable

# A space's SETTINGS: the sweep settings it suggests (the command line's flags win), by name and type.
SETTING_KEYS = {
    "searcher": str, "scheduler": str, "num_samples": int, "max_epochs": int,
    "cpus_per_trial": float, "gpus_per_trial": float, "max_concurrent": int,
    "grace_period": int,  # epochs a trial runs before a scheduler may stop it
    "reduction_factor": int,  # ASHA/HyperBand: keep 1 in this many at each rung
    "estimate_cost": bool,  # probe each configuration's time and memory before the sweep (see --plan)
    "max_failures": int,  # retries of a crashed trial, each from its last checkpoint
    "keep_checkpoints": int,  # checkpoints kept per trial: the best ones by the metric, plus always the latest
    "trial_timeout": float,  # seconds without a report before a trial is stopped; 0 = never
    "checkpoint_every_s": float,  # seconds of training between checkpoints (and at decision epochs); 0 = every epoch
    "budget_hours": float,  # device-hours after which no new trial starts (running ones finish); 0 = no budget
    "reuse_actors": bool,  # a finished trial's worker process trains the next trial (same resources)
    "repeats": int,  # runs per configuration, seeds seed..seed+k-1; the searcher and schedulers see their mean
}


@dataclass
class Space:
    """A loaded, validated space. ``ref`` is what tune_app.json records (a built-in name, a file's absolute path
    or a module name); ``code`` what the sweep ships to Ray's workers (see tune_app.usercode)."""

    name: str
    module: ModuleType
    trainable: LoadedTrainable
    metric: str
    mode: str
    param_space: dict  # key -> value or Ray Tune domain, after --set
    settings: dict  # the space's SETTINGS
    overrides: dict = field(default_factory=dict)
    ref: str = ""
    code: dict = field(default_factory=dict)
    define_by_run: object = None  # SPACE as a function of an Optuna trial (a conditional space), or None
    drawn: list = field(default_factory=list)  # the keys define_by_run draws (trial.suggest_*), seen in samples
    conditional: list = field(default_factory=list)  # those of them some draws leave out (momentum for SGD only)
    drawn_domains: dict = field(default_factory=dict)  # their ranges as Ray domains (what the analysis bins by)
    objectives: list = field(default_factory=list)  # [(metric, mode), ...]: more than one for a multi-objective sweep

    def __post_init__(self) -> None:
        if not self.objectives:
            self.objectives = [(self.metric, self.mode)]

    @property
    def searched(self) -> list[str]:
        """The keys the sweep varies, in the space's order (a define-by-run space's drawn keys first)."""
        return [*self.drawn, *(k for k, v in self.param_space.items() if is_searched(v))]

    @property
    def load_data(self):
        """The space's own ``load_data()`` (for a trainable of the user's), or None."""
        return getattr(self.module, "load_data", None)

    def constant(self, key: str):
        """A fixed entry, or the trainable's default where the space sets none."""
        params = self.trainable.PARAMS or {}
        return self.param_space.get(key, params[key].default if key in params else None)


def list_spaces() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(search_spaces.__path__) if not m.name.startswith("_"))


def is_grid(value) -> bool:
    """A ``tune.grid_search([...])`` entry (a dict Ray expands into one trial per value)."""
    return isinstance(value, dict) and "grid_search" in value


def is_searched(value) -> bool:
    return isinstance(value, Domain) or is_grid(value)


REQUIRED = ("TRAINABLE", "METRIC", "MODE", "SPACE")  # SETTINGS is optional


def load_space(ref, overrides: dict | None = None, code: dict | None = None) -> Space:
    """Import a space (a built-in name, a .py path, a dotted module or a module object), apply overrides,
    validate. ``code``: what a sweep recorded as shipped, put on sys.path first (--resume, analyze, retrain).
    Raises UsageError."""
    for folder in usercode.local_paths(code):
        if not Path(folder).exists():
            raise UsageError(f"the sweep's code folder {folder} is gone; restore it (the space and the modules it "
                             f"names were imported from there)")
        usercode.add_path(folder)
    module, recorded, root = usercode.import_space(ref, list_spaces())
    name = recorded if root is None else (Path(recorded).stem if usercode.is_path(recorded)
                                          else recorded.rsplit(".", 1)[-1])
    where = f"space {recorded!r}"
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if missing:
        raise UsageError(f"{where} is not a space: it has no {', '.join(missing)} (a space module defines TRAINABLE, "
                         f"METRIC, MODE, SPACE and optionally SETTINGS; see docs/own-code.md)")
    define_by_run = module.SPACE if callable(module.SPACE) else None
    if define_by_run is None and not isinstance(module.SPACE, dict):
        raise UsageError(f"{where}: SPACE must be a dict of keys to values or tune domains, or a function of an "
                         f"Optuna trial that draws values with trial.suggest_* and returns a dict of the rest")
    trainable = load_trainable(module.TRAINABLE, where)
    objectives = parse_objectives(module.METRIC, module.MODE, trainable, where)
    if getattr(module, "load_data", None) is not None and trainable.builtin:
        raise UsageError(f"{where}: load_data() is for a trainable of your own; {trainable.name} reads 'dataset' "
                         f"(a built-in name, imagefolder:PATH or npz:PATH)")
    params = trainable.PARAMS
    space = {} if define_by_run else dict(module.SPACE)
    drawn, conditional, sampled, domains = sample_define_by_run(define_by_run, recorded, params, module) \
        if define_by_run else ([], [], {}, {})
    # what the function returns the same in every draw is a constant of the sweep, visible before any trial (the
    # driver prepares the dataset once from it); a data key that varies cannot be prepared once
    space.update({key: seen[0] for key, seen in sampled.items() if key not in drawn and len(seen) == 1})
    for key, seen in sampled.items():
        if params is not None and key in params and params[key].data and (key in drawn or len(seen) > 1):
            raise UsageError(f"space {recorded!r}: SPACE(trial) gives {key} more than one value; {key} is prepared "
                             f"once for the whole sweep: return a single value")
    for key, value in (overrides or {}).items():
        if define_by_run and (key in drawn or isinstance(value, list)):
            raise UsageError(f"--set {key}={value}: SPACE is a function that draws its own values; give --set a "
                             f"single value for a key it does not draw, or change the function")
        if params is not None and not known_key(key, params):
            raise UsageError(f"unknown --set key {key!r}; known keys: {', '.join(sorted(params))}")
        if isinstance(value, list) and not value:
            raise UsageError(f"--set {key}=[]: an empty list; give at least one value, e.g. {key}=[a,b]")
        space[key] = tune.choice(value) if isinstance(value, list) else value
    if params is not None:
        validate(recorded, space, params)
    try:
        trainable.check_space({**sampled, **{key: domain_values(value) for key, value in space.items()}})
    except ValueError as e:  # checks across keys, e.g. weights file x model, a model of the user's
        raise UsageError(f"{where}: {e}") from None
    settings = dict(_settings_of(module, where) or {})
    for key in settings:
        if key not in SETTING_KEYS:
            raise UsageError(f"{where}: unknown SETTINGS key {key!r}; known: {', '.join(SETTING_KEYS)}")
    refs = [trainable.ref, *(v for value in space.values() for v in domain_values(value)
                             if is_ref(v))]
    shipped = code if code is not None else usercode.code_to_ship(root, refs)
    return Space(name, module, trainable, *objectives[0], space, settings, dict(overrides or {}),
                 recorded, shipped, define_by_run, drawn, conditional, domains, objectives)


LEDGER_OBJECTIVES = ("device_s",)  # objectives from the cost ledger (every trial reports its running total)


def parse_objectives(metric, mode, trainable, where: str) -> list[tuple[str, str]]:
    """A space's METRIC and MODE (or --metric/--mode): one name and max/min, or lists of the same length for a
    multi-objective sweep; each a metric the trainable reports, or the ledger's device_s. Raises UsageError."""
    known = None if trainable.METRICS is None else (*trainable.METRICS, *trainable.OPTIONAL_METRICS)
    metrics = [metric] if isinstance(metric, str) else list(metric) if isinstance(metric, (list, tuple)) else None
    modes = [mode] if isinstance(mode, str) else list(mode) if isinstance(mode, (list, tuple)) else None
    names = f"one of {', '.join((*known, *LEDGER_OBJECTIVES))}" if known else "a metric name"
    if not metrics or not modes or not all(isinstance(m, str) and m for m in metrics):
        raise UsageError(f"{where}: METRIC must be {names} (or a list of them) and MODE max or min, not "
                         f"{metric!r}/{mode!r}")
    if len(metrics) != len(modes):
        raise UsageError(f"{where}: {len(metrics)} metrics ({', '.join(metrics)}) and {len(modes)} modes "
                         f"({', '.join(map(str, modes))}); give one mode, max or min, per metric")
    for m, d in zip(metrics, modes):
        if known is not None and m not in known and m not in LEDGER_OBJECTIVES:
            raise UsageError(f"{where}: metric {m!r} is not one the trainable reports; use {names}")
        if d not in ("max", "min"):
            raise UsageError(f"{where}: mode {d!r} for {m}: use max or min")
    if len(set(metrics)) != len(metrics):
        raise UsageError(f"{where}: a metric given twice in {', '.join(metrics)}")
    return list(zip(metrics, modes))


def with_objectives(space: Space, metric, mode, where: str = "--metric/--mode") -> Space:
    """``space`` ranked by other objectives (--metric val_acc,params --mode max,min, or what tune_app.json
    recorded); either may be None to keep the space's. Raises UsageError."""
    if metric is None and mode is None:
        return space
    split = lambda v: [s.strip() for s in v.split(",")] if isinstance(v, str) else v  # noqa: E731
    metrics = split(metric) if metric is not None else [m for m, _ in space.objectives]
    modes = split(mode) if mode is not None else [d for _, d in space.objectives]
    objectives = parse_objectives(metrics, modes, space.trainable, where)
    from dataclasses import replace

    return replace(space, metric=objectives[0][0], mode=objectives[0][1], objectives=objectives)


DEFINE_BY_RUN_SAMPLES = 300  # draws of a define-by-run SPACE checked before Ray starts


def sample_define_by_run(fn, recorded: str, params: dict | None,
                         module) -> tuple[list[str], list[str], dict[str, list], dict]:
    """A define-by-run SPACE, drawn DEFINE_BY_RUN_SAMPLES times by a throw-away Optuna study (random sampler,
    seed 0) before Ray starts: every key and value it gives is checked against the trainable's PARAMS, so a typo
    fails in a second, not in a trial. Returns (the keys it draws, in the order first seen; those of them some
    draws leave out; every value each key took; each drawn key's range as a Ray domain, widened over the draws).
    Raises UsageError naming the function's line when it raises, and the bad key or value."""
    import optuna

    where = f"space {recorded!r}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values: dict[str, list] = {}
    file = usercode.file_of(module)
    for _ in range(DEFINE_BY_RUN_SAMPLES):
        trial = study.ask()
        try:
            rest = fn(trial)
        except Exception as e:  # noqa: BLE001 - the user's function: its own error, in one line
            line = usercode.line_of(e, file) if file else "in SPACE"
            raise UsageError(f"{where}: SPACE(trial) raised {type(e).__name__} ({line}): {e}") from None
        if rest is not None and not isinstance(rest, dict):
            raise UsageError(f"{where}: SPACE(trial) returned a {type(rest).__name__}; return a dict of the keys it "
                             f"does not draw (or None)")
        for key, value in {**trial.params, **(rest or {})}.items():
            if is_searched(value) or isinstance(value, Domain):
                raise UsageError(f"{where}: SPACE(trial) returned a tune domain for {key!r}; draw it with "
                                 f"trial.suggest_* instead")
            seen = values.setdefault(key, [])
            if value not in seen:
                seen.append(value)
        study.tell(trial, 0.0)
    drawn = list(dict.fromkeys(k for t in study.trials for k in t.params))
    conditional = [k for k in drawn if any(k not in t.params for t in study.trials)]
    if params is not None:
        for key, seen in values.items():
            for value in seen:
                validate(recorded, {key: value}, params)
    return drawn, conditional, values, _as_domains(study.trials)


def _as_domains(trials) -> dict:
    """Each key's Optuna distribution over the draws (numeric ranges widened to cover them all) as a Ray domain."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    widest: dict = {}
    for t in trials:
        for key, d in t.distributions.items():
            known = widest.get(key)
            if isinstance(d, (FloatDistribution, IntDistribution)) and isinstance(known, type(d)):
                d = type(d)(min(known.low, d.low), max(known.high, d.high), log=d.log)
            widest[key] = d if known is None or isinstance(d, type(known)) else known
    domains = {}
    for key, d in widest.items():
        if isinstance(d, FloatDistribution):
            domains[key] = (tune.loguniform if d.log else tune.uniform)(d.low, d.high)
        elif isinstance(d, IntDistribution):
            domains[key] = (tune.lograndint if d.log else tune.randint)(d.low, d.high + 1)
        elif isinstance(d, CategoricalDistribution):
            domains[key] = tune.choice(list(d.choices))
    return domains


def _settings_of(module, where: str):
    """A space's SETTINGS; DEFAULTS, their name before this release, still works, with a note."""
    if hasattr(module, "DEFAULTS"):
        if hasattr(module, "SETTINGS"):
            raise UsageError(f"{where}: both SETTINGS and DEFAULTS; keep SETTINGS (DEFAULTS is its old name)")
        print(f"tune_app: note: {where}: DEFAULTS is now SETTINGS; the old name goes in a later release",
              file=sys.stderr)
        return module.DEFAULTS
    return getattr(module, "SETTINGS", None)


def known_key(key: str, params: dict) -> bool:
    """A trainable's key, or ``model.NAME`` where ``model`` passes its ``.NAME`` entries to a factory."""
    return key in params or is_factory_arg(params, key)


def domain_values(value) -> list:
    """The concrete values a space entry can take that can be checked one by one."""
    if is_grid(value):
        return list(value["grid_search"])
    if isinstance(value, Categorical):
        return list(value.categories)
    if isinstance(value, (Float, Integer)):
        # Integer's upper bound is exclusive in Ray; Float's is inclusive.
        return [value.lower, value.upper - 1 if isinstance(value, Integer) else value.upper]
    if isinstance(value, Domain):
        return []  # a custom sampler: checked when a trial resolves it
    return [value]


def validate(space_name: str, space: dict, params: dict) -> None:
    for key, value in space.items():
        if known_key(key, params) and key not in params:
            continue  # model.NAME: the factory's own argument, checked when the model is built
        if key not in params:
            raise UsageError(f"space {space_name!r}: unknown key {key!r}; known keys: {', '.join(sorted(params))}")
        if params[key].data and is_searched(value):
            raise UsageError(f"{key} is prepared once for the whole sweep and cannot be searched; give one value")
        if isinstance(value, Float) and params[key].type is not float:
            raise UsageError(f"{key}: a float range for a {params[key].type.__name__} key; use a list of values")
        values = domain_values(value)
        if isinstance(value, (Float, Integer)) and params[key].type is float:
            values = [float(v) for v in values]
        for v in values:
            try:
                params[key].check(key, v)
            except ValueError as e:
                raise UsageError(str(e)) from None


def parse_value(text: str):
    """YAML for the shape (lists, booleans), then numbers the way people type them ('1e-3')."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if isinstance(value, dict):  # 'imagefolder:' reads as a mapping; a space value is never one
        value = text
    if isinstance(value, list):
        return [number_or_same(v) for v in value]
    return number_or_same(value if value is not None else text)


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected key=value, e.g. --set lr=0.001 or --set activation=[relu,gelu]")
        overrides[key.strip()] = parse_value(text.strip())
    return overrides
