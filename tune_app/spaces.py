"""Find a search space by name, apply ``--set`` overrides, and validate it all
against the keys its trainable knows, before Ray starts."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType

import yaml
from ray import tune
from ray.tune.search.sample import Categorical, Domain, Float, Integer

import search_spaces
from trainables.catalog import get_trainable
from trainables.registry import UnknownName
from tune_app.errors import UsageError

DEFAULT_KEYS = {
    "searcher": str, "scheduler": str, "num_samples": int, "max_epochs": int,
    "cpus_per_trial": float, "gpus_per_trial": float, "max_concurrent": int,
    "grace_period": int,  # epochs a trial runs before a scheduler may stop it
    "reduction_factor": int,  # ASHA/HyperBand: keep 1 in this many at each rung
    "estimate_cost": bool,  # probe each configuration's time and memory before the sweep (see --plan)
    "max_failures": int,  # retries of a crashed trial, each from its last checkpoint
    "keep_checkpoints": int,  # checkpoints kept per trial: the best ones by the metric, plus always the latest
    "trial_timeout": float,  # seconds without a report before a trial is stopped; 0 = never
    "budget_hours": float,  # device-hours after which no new trial starts (running ones finish); 0 = no budget
    "reuse_actors": bool,  # a finished trial's worker process trains the next trial (same resources)
}


@dataclass
class Space:
    name: str
    module: ModuleType
    trainable: ModuleType
    metric: str
    mode: str
    space: dict
    defaults: dict
    overrides: dict = field(default_factory=dict)

    @property
    def searched(self) -> list[str]:
        """The keys the sweep varies, in the space's order."""
        return [k for k, v in self.space.items() if is_searched(v)]

    def constant(self, key: str):
        """A fixed entry, or the trainable's default where the space sets none."""
        return self.space.get(key, self.trainable.PARAMS[key].default)


def list_spaces() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(search_spaces.__path__) if not m.name.startswith("_"))


def is_searched(value) -> bool:
    return isinstance(value, Domain) or (isinstance(value, dict) and "grid_search" in value)


def load_space(name: str, overrides: dict | None = None) -> Space:
    """Import ``search_spaces.<name>``, apply overrides, validate. Raises UsageError."""
    known = list_spaces()
    if name not in known:
        raise UsageError(f"unknown space {name!r}; known spaces: {', '.join(known)}")
    module = importlib.import_module(f"search_spaces.{name}")
    for attr in ("TRAINABLE", "METRIC", "MODE", "SPACE", "DEFAULTS"):
        if not hasattr(module, attr):
            raise UsageError(f"space {name!r} has no {attr}; see search_spaces/digits.py for the shape")
    try:
        trainable = get_trainable(module.TRAINABLE)
    except UnknownName as e:
        raise UsageError(f"space {name!r}: {e}") from None
    metrics = (*trainable.METRICS, *getattr(trainable, "OPTIONAL_METRICS", ()))
    if module.METRIC not in metrics or module.MODE not in ("max", "min"):
        raise UsageError(f"space {name!r}: METRIC must be one of {', '.join(metrics)} "
                         f"and MODE max or min, not {module.METRIC!r}/{module.MODE!r}")
    space = dict(module.SPACE)
    for key, value in (overrides or {}).items():
        if key not in trainable.PARAMS:
            raise UsageError(f"unknown --set key {key!r}; known keys: {', '.join(sorted(trainable.PARAMS))}")
        space[key] = tune.choice(value) if isinstance(value, list) else value
    validate(name, space, trainable.PARAMS)
    check_space = getattr(trainable, "check_space", None)  # checks across keys, e.g. weights file x model
    if check_space is not None:
        try:
            check_space({key: domain_values(value) for key, value in space.items()})
        except ValueError as e:
            raise UsageError(f"space {name!r}: {e}") from None
    defaults = dict(module.DEFAULTS)
    for key in defaults:
        if key not in DEFAULT_KEYS:
            raise UsageError(f"space {name!r}: unknown DEFAULTS key {key!r}; known: {', '.join(DEFAULT_KEYS)}")
    return Space(name, module, trainable, module.METRIC, module.MODE, space, defaults, dict(overrides or {}))


def domain_values(value) -> list:
    """The concrete values a space entry can take that can be checked one by one."""
    if isinstance(value, dict) and "grid_search" in value:
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
    if isinstance(value, list):
        return [number_or_same(v) for v in value]
    return number_or_same(value if value is not None else text)


def number_or_same(value):
    if isinstance(value, str):
        for convert in (int, float):
            try:
                return convert(value)
            except ValueError:
                pass
    return value


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected key=value, e.g. --set lr=0.001 or --set activation=[relu,gelu]")
        overrides[key.strip()] = parse_value(text.strip())
    return overrides
