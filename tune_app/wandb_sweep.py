"""W&B sweep files as tune_app spaces, and tune_app spaces as W&B sweep files.

    python -m tune_app.search --space sweep.yaml                                # run a W&B sweep file as it is
    python -m tune_app.search --space digits --export-wandb-sweep digits.yaml   # write a space as one

A sweep file's ``method`` becomes the searcher (grid, random; bayes -> Optuna's TPE), its ``metric`` METRIC and
MODE, each of its ``parameters`` a SPACE entry (a ``value``, a list of ``values``, or a ``distribution`` as the
Ray Tune domain that samples the same numbers), ``early_terminate: {type: hyperband}`` ASHA, and ``run_cap`` the
number of trials. ``trainable:`` (tune_app's own key) names the trainable the parameters go to, by default
``image_classifier``. The keys about how W&B launches a program (``program``, ``command``, ``project``, ...) are
ignored; anything else tune_app cannot run as W&B would is refused in one line, before Ray starts. The table of
the mapping is in docs/own-code.md.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import yaml
from ray import tune
from ray.tune.search.sample import Categorical, Domain, Float, Integer

from trainables.params import number_or_same
from tune_app.errors import UsageError

METHODS = {"grid": "grid", "random": "random", "bayes": "optuna"}  # W&B method -> tune_app searcher
GOALS = {"maximize": "max", "minimize": "min"}
# How W&B launches and files a sweep: nothing tune_app needs, and never an error.
IGNORED = ("program", "command", "project", "entity", "name", "description", "controller", "apiVersion", "kind",
           "job", "image_uri")
KEYS = ("method", "metric", "parameters", "early_terminate", "run_cap", "trainable", *IGNORED)
DEFAULT_TRAINABLE = "image_classifier"
DEFAULT_METRIC = ("val_acc", "max")  # a built-in trainable's ranking when the file names no metric

# Each distribution tune_app runs, with the keys it takes besides `distribution` (W&B's schema).
DISTRIBUTIONS = {
    "constant": ("value",),
    "categorical": ("values",),
    "int_uniform": ("min", "max"),
    "uniform": ("min", "max"),
    "q_uniform": ("min", "max", "q"),
    "log_uniform_values": ("min", "max"),
    "q_log_uniform_values": ("min", "max", "q"),
    "inv_log_uniform_values": ("min", "max"),
    "log_uniform": ("min", "max"),  # min and max are natural logs of the bounds
    "q_log_uniform": ("min", "max", "q"),
    "inv_log_uniform": ("min", "max"),
    "normal": ("mu", "sigma"),
    "q_normal": ("mu", "sigma", "q"),
}
NUMBER_DEFAULTS = {"q": 1.0, "mu": 0.0, "sigma": 1.0}  # W&B's defaults for the keys a file may leave out
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")  # what W&B's grid method takes


def _fail(shown: str, message: str) -> UsageError:
    return UsageError(f"W&B sweep {shown}: {message}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _load_yaml(path: Path, shown: str) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise _fail(shown, f"cannot be read ({e.strerror or e})") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise _fail(shown, f"is not valid YAML ({where}{problem}); a W&B sweep file is YAML with method, metric "
                           f"and parameters") from None
    if not isinstance(config, dict):
        held = "nothing" if config is None else f"a {type(config).__name__}"
        raise _fail(shown, f"holds {held}, not a mapping; a W&B sweep file maps method, metric and parameters, "
                           f"e.g. 'method: random' on its first line")
    return config


def read_sweep(path) -> ModuleType:
    """A W&B sweep YAML file as a space module: TRAINABLE, METRIC, MODE, SPACE and SETTINGS, with a docstring.
    Raises UsageError (one line naming the file) for what tune_app cannot run as W&B would."""
    path = Path(path)
    shown = str(path)
    config = _load_yaml(path, shown)
    unknown = [k for k in config if k not in KEYS]
    if unknown:
        raise _fail(shown, f"unknown key {unknown[0]!r}; a sweep file has {', '.join(KEYS[:6])} (and W&B's "
                           f"{', '.join(IGNORED[:6])}, which tune_app ignores)")
    method = config.get("method")
    if not isinstance(method, str) or method not in METHODS:
        given = f"method {method!r} is not supported" if "method" in config else "no method"
        raise _fail(shown, f"{given}; give method: grid, random or bayes (bayes runs Optuna's TPE)")
    trainable = config.get("trainable", DEFAULT_TRAINABLE)
    if not isinstance(trainable, str) or not trainable:
        raise _fail(shown, f"trainable {trainable!r}: give a built-in name (image_classifier, numpy_mlp) or "
                           f"'module:function'")
    metric, mode = _metric(config, method, trainable, shown)
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise _fail(shown, "no parameters; give parameters: with one entry per key, e.g. lr: {distribution: "
                           "log_uniform_values, min: 0.0001, max: 0.1}")
    space = {}
    for name, spec in parameters.items():
        space[str(name)] = parameter(str(name), spec, method, shown)
    settings = {"searcher": METHODS[method], **_early_terminate(config, shown)}
    run_cap = config.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        raise _fail(shown, f"run_cap {run_cap!r}: give a whole number of runs, at least 1")
    if method == "grid":
        combinations = math.prod(len(v.categories) for v in space.values() if isinstance(v, Categorical))
        if run_cap is not None and run_cap < combinations:
            raise _fail(shown, f"run_cap {run_cap} is smaller than the grid's {combinations} combinations, and "
                               f"tune_app runs every combination of a grid: remove run_cap, or use method: random "
                               f"with run_cap: {run_cap}")
        settings["num_samples"] = 1  # the grid itself defines the trials
    elif run_cap is not None:
        settings["num_samples"] = run_cap
    searched = sum(isinstance(v, Domain) for v in space.values())
    module = ModuleType(path.stem, f"W&B sweep {path.name}: method {method} ({METHODS[method]}), {searched} searched "
                                   f"of {len(space)} parameters, {metric} ({mode}).\n\n"
                                   f"    python -m tune_app.search --space {shown}\n")
    module.__file__ = str(path.resolve())
    module.TRAINABLE, module.METRIC, module.MODE = trainable, metric, mode
    module.SPACE, module.SETTINGS = space, settings
    return module


def _metric(config: dict, method: str, trainable: str, shown: str) -> tuple[str, str]:
    metric = config.get("metric")
    if metric is None:
        if method == "bayes":
            raise _fail(shown, "method bayes needs a metric to model; add metric: {name: val_acc, goal: maximize}")
        if trainable not in _builtin_trainables():
            raise _fail(shown, "no metric, and tune_app ranks trials by one; add metric: {name: ..., goal: "
                               "maximize or minimize} naming one your trainable reports")
        return DEFAULT_METRIC
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        raise _fail(shown, f"metric {metric!r}: give metric: {{name: val_acc, goal: maximize}}")
    goal = metric.get("goal", "minimize")  # W&B's default
    if not isinstance(goal, str) or goal not in GOALS:
        raise _fail(shown, f"metric goal {goal!r}: give maximize or minimize")
    return metric["name"], GOALS[goal]


def _builtin_trainables() -> list[str]:
    from trainables.catalog import TRAINABLES

    return list(TRAINABLES)


def _early_terminate(config: dict, shown: str) -> dict:
    """W&B's hyperband (it stops a run at each band as soon as the run reaches it) as ASHA's SETTINGS."""
    stop = config.get("early_terminate")
    if stop is None:
        return {"scheduler": "fifo"}
    if not isinstance(stop, dict) or stop.get("type") != "hyperband":
        given = stop.get("type") if isinstance(stop, dict) else stop
        raise _fail(shown, f"early_terminate type {given!r} is not supported; give type: hyperband with min_iter "
                           f"(epochs before the first stop) and eta, or leave early_terminate out")
    extra = [k for k in stop if k not in ("type", "min_iter", "max_iter", "s", "eta", "strict")]
    if extra:
        raise _fail(shown, f"early_terminate: unknown key {extra[0]!r}; hyperband takes min_iter, max_iter, s, eta "
                           f"and strict")
    for key in ("min_iter", "max_iter", "s", "eta"):
        value = stop.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            whole = "a whole number, at least 2 (ASHA keeps 1 in eta)" if key == "eta" else "a whole number, at least 1"
            raise _fail(shown, f"early_terminate {key} {value!r}: give {whole}")
    eta = stop.get("eta", 3)
    if eta < 2:
        raise _fail(shown, f"early_terminate eta {eta}: give at least 2 (ASHA keeps 1 in eta runs at each band)")
    settings = {"scheduler": "asha", "reduction_factor": eta}
    if stop.get("max_iter") is not None:
        settings["max_epochs"] = stop["max_iter"]  # ASHA's max_t: trials stop there
    if stop.get("max_iter") is not None and stop.get("s") is not None:
        # W&B's bands count down from max_iter (max_iter / eta, ..., / eta^s) and win over min_iter
        bands = [int(stop["max_iter"] / eta ** k) for k in range(1, stop["s"] + 1) if stop["max_iter"] / eta ** k >= 1]
        if not bands:
            raise _fail(shown, f"early_terminate: max_iter {stop['max_iter']} / eta {eta} is below 1, so hyperband "
                               f"has no band; raise max_iter or give min_iter")
        settings["grace_period"] = min(bands)
    elif stop.get("min_iter") is not None:
        settings["grace_period"] = stop["min_iter"]
    else:
        raise _fail(shown, "early_terminate hyperband needs min_iter (epochs before the first stop), or max_iter "
                           "and s")
    return settings


def _distribution_of(spec: dict) -> str | None:
    """W&B's reading of a parameter without `distribution`: values, value, or integer / real min and max."""
    if "distribution" in spec:
        return spec["distribution"]
    if "values" in spec:
        return "categorical"
    if "value" in spec:
        return "constant"
    if "min" in spec and "max" in spec:
        low, high = number_or_same(spec["min"]), number_or_same(spec["max"])
        both_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
        return "int_uniform" if both_int else "uniform"
    return None


def parameter(name: str, spec, method: str, shown: str = "file"):
    """One W&B parameter as a SPACE entry: a constant, a tune.choice, or the Ray Tune domain of its distribution."""
    where = f"parameters.{name}"
    if not isinstance(spec, dict):
        raise _fail(shown, f"{where}: {spec!r} is not a mapping; give {{value: ...}}, {{values: [...]}} or "
                           f"{{distribution: ..., min: ..., max: ...}}")
    if "parameters" in spec:
        raise _fail(shown, f"{where}: nested parameters are not supported; give each its own top-level name, "
                           f"e.g. model.width for the width of your model")
    if "probabilities" in spec:
        raise _fail(shown, f"{where}: values with probabilities are not supported (tune_app's choices are "
                           f"equally likely); repeat a value in values to weight it")
    dist = _distribution_of(spec)
    if dist is None:
        raise _fail(shown, f"{where}: give value, values, or min and max (with a distribution)")
    if not isinstance(dist, str) or dist not in DISTRIBUTIONS:
        raise _fail(shown, f"{where}: distribution {dist!r} is not supported; supported: "
                           f"{', '.join(DISTRIBUTIONS)}")
    takes = DISTRIBUTIONS[dist]
    extra = [k for k in spec if k != "distribution" and k not in takes]
    if extra:
        raise _fail(shown, f"{where}: distribution {dist} takes {', '.join(takes)}, not {extra[0]}")
    missing = [k for k in takes if k not in spec and k not in NUMBER_DEFAULTS]
    if missing:
        raise _fail(shown, f"{where}: distribution {dist} needs {' and '.join(missing)}")
    if method == "grid" and dist not in GRID_DISTRIBUTIONS:
        raise _fail(shown, f"{where}: method grid runs every combination of values, and distribution {dist} has "
                           f"none to list; give values: [...], or use method random or bayes")
    if dist == "constant":
        return number_or_same(spec["value"])
    if dist == "categorical":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise _fail(shown, f"{where}: values {values!r}: give a list of at least one value")
        return tune.choice([number_or_same(v) for v in values])
    numbers = {k: number_or_same(spec.get(k, NUMBER_DEFAULTS.get(k))) for k in takes}
    for key, value in numbers.items():
        if not _is_number(value):
            raise _fail(shown, f"{where}: {key} {spec.get(key)!r} is not a number")
    if "q" in numbers and numbers["q"] <= 0:
        raise _fail(shown, f"{where}: q {numbers['q']:g} must be above 0")
    if "sigma" in numbers and numbers["sigma"] < 0:
        raise _fail(shown, f"{where}: sigma {numbers['sigma']:g} must be 0 or more")
    if "min" in numbers:
        low, high = numbers["min"], numbers["max"]
        if low >= high:
            raise _fail(shown, f"{where}: min {low:g} must be below max {high:g}")
        if dist.endswith("_values") and low <= 0:
            raise _fail(shown, f"{where}: {dist} needs min above 0 (the bounds are the values themselves), not "
                               f"{low:g}")
    return _domain(dist, numbers, method, where, shown)


def _domain(dist: str, n: dict, method: str, where: str, shown: str):
    if dist == "int_uniform":
        if not all(isinstance(n[k], int) for k in ("min", "max")):
            raise _fail(shown, f"{where}: int_uniform needs whole numbers for min and max, not {n['min']:g} and "
                               f"{n['max']:g}; use uniform for a real range")
        if method == "grid":  # W&B's grid lists every integer
            return tune.choice(list(range(n["min"], n["max"] + 1)))
        return tune.randint(n["min"], n["max"] + 1)  # Ray's upper bound is exclusive, W&B's inclusive
    if dist == "q_uniform" and method == "grid":  # W&B's grid: min, min + q, ... below max
        return tune.choice(_steps(n["min"], n["max"], n["q"]))
    exp = math.exp
    domains = {
        "uniform": lambda: tune.uniform(n["min"], n["max"]),
        "q_uniform": lambda: tune.quniform(n["min"], n["max"], n["q"]),
        "log_uniform_values": lambda: tune.loguniform(n["min"], n["max"]),
        "q_log_uniform_values": lambda: tune.qloguniform(n["min"], n["max"], n["q"]),
        "inv_log_uniform_values": lambda: tune.loguniform(n["min"], n["max"]),  # 1/X of a log-uniform X
        "log_uniform": lambda: tune.loguniform(exp(n["min"]), exp(n["max"])),
        "q_log_uniform": lambda: tune.qloguniform(exp(n["min"]), exp(n["max"]), n["q"]),
        "inv_log_uniform": lambda: tune.loguniform(exp(-n["max"]), exp(-n["min"])),  # exp(-U(min, max))
        "normal": lambda: tune.randn(n["mu"], n["sigma"]),
        "q_normal": lambda: tune.qrandn(n["mu"], n["sigma"], n["q"]),
    }
    try:
        return domains[dist]()
    except ValueError as e:  # Ray's quantized ranges need bounds that are multiples of q (Optuna's steps do)
        fix = ("use q_log_uniform_values with min and max that are multiples of q" if dist == "q_log_uniform"
               else "give min and max that are multiples of q")
        raise _fail(shown, f"{where}: {str(e).rstrip('.')}; {fix}") from None


def _steps(low, high, q) -> list:
    """W&B's grid over q_uniform: numpy.arange(min, max, q), floating-point steps and all."""
    import numpy as np

    return np.arange(low, high, q).tolist()


# ---------------------------------------------------------------- a space as a W&B sweep file

def _plain(value, key: str):
    """A value as YAML writes and reads it back (lists for tuples); anything else is refused naming the key."""
    if isinstance(value, (list, tuple)):
        return [_plain(v, key) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, key) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise UsageError(f"--export-wandb-sweep: {key} holds {type(value).__name__} {value!r}, which a YAML file cannot "
                     f"hold; give it a number, a string or a list of them")


def entry(key: str, value, method: str) -> dict:
    """One SPACE entry as a W&B parameter; what W&B cannot express is refused naming the key."""
    def refuse(what: str) -> UsageError:
        return UsageError(f"--export-wandb-sweep: {key} is {what}, which a W&B sweep cannot express; give it values "
                          f"(--set {key}=[a,b]) or a uniform, log-uniform or normal range")

    if isinstance(value, dict) and "grid_search" in value:  # tune.grid_search([...])
        if method == "random":
            raise UsageError(f"--export-wandb-sweep: {key} is a tune.grid_search, which W&B's random method would "
                             f"sample instead of running every value; use --searcher grid, or tune.choice")
        return {"values": _plain(list(value["grid_search"]), key)}
    if isinstance(value, Categorical):
        return {"values": _plain(list(value.categories), key)}
    if not isinstance(value, Domain):
        return {"value": _plain(value, key)}
    if method == "grid":
        raise UsageError(f"--export-wandb-sweep: {key} is a range, and a grid needs a list of values; use "
                         f"--set {key}=[a,b,c] or another searcher")
    sampler = value.get_sampler()
    q = getattr(sampler, "q", None)
    inner = type(getattr(sampler, "sampler", sampler)).__name__
    if isinstance(value, Integer):
        if inner != "_Uniform" or q not in (None, 1):
            raise refuse("an integer range sampled log-uniformly or in steps")
        return {"distribution": "int_uniform", "min": int(value.lower), "max": int(value.upper) - 1}
    if not isinstance(value, Float):
        raise refuse(f"a custom sampler ({type(value).__name__})")
    base = {"_Uniform": "uniform", "_LogUniform": "log_uniform_values", "_Normal": "normal"}.get(inner)
    if base is None:
        raise refuse(f"a range sampled by {inner.strip('_')}")
    if base == "normal":
        inner_sampler = getattr(sampler, "sampler", sampler)
        out = {"distribution": "normal", "mu": float(inner_sampler.mean), "sigma": float(inner_sampler.sd)}
    else:
        out = {"distribution": base, "min": float(value.lower), "max": float(value.upper)}
    if q is not None:
        out["distribution"] = f"q_{base}"
        out["q"] = q
    return out


def to_sweep(space, settings: dict) -> dict:
    """A loaded space (tune_app.spaces.Space) and its resolved settings as a W&B sweep configuration."""
    method = {v: k for k, v in METHODS.items()}.get(settings["searcher"])
    if settings["searcher"] == "hyperopt":
        method = "bayes"  # W&B has one model-based method; it reads back as Optuna's TPE
    if method is None:
        raise UsageError(f"--export-wandb-sweep: searcher {settings['searcher']} has no W&B method; use grid, random "
                         f"or optuna")
    config: dict = {"method": method, "metric": {"name": space.metric,
                                                 "goal": {v: k for k, v in GOALS.items()}[space.mode]}}
    if not (space.trainable.builtin and space.trainable.name == DEFAULT_TRAINABLE):
        config["trainable"] = space.trainable.name if space.trainable.builtin else space.trainable.ref
    config["parameters"] = {key: entry(key, value, method) for key, value in space.param_space.items()}
    scheduler = settings["scheduler"]
    if scheduler in ("asha", "hyperband"):
        # min_iter and eta only: with max_iter W&B counts its bands down from it and needs s
        config["early_terminate"] = {"type": "hyperband", "min_iter": int(settings["grace_period"]),
                                     "eta": int(settings["reduction_factor"])}
    elif scheduler != "fifo":
        raise UsageError(f"--export-wandb-sweep: scheduler {scheduler} has no W&B early_terminate (W&B has "
                         f"hyperband only); use --scheduler asha or fifo")
    if method == "grid":
        if settings["num_samples"] != 1:
            raise UsageError(f"--export-wandb-sweep: --num-samples {settings['num_samples']} repeats the grid, and "
                             f"W&B's grid runs each combination once; export with --num-samples 1")
    else:
        config["run_cap"] = int(settings["num_samples"])
    return config


def write_sweep(config: dict, path, space_name: str) -> Path:
    """``config`` (see to_sweep) as a W&B sweep YAML file at ``path``, written whole; returns the path."""
    from tune_app.rundir.atomic import atomic_write

    path = Path(path).expanduser()
    header = (f"# W&B sweep of tune_app space {space_name}, written by --export-wandb-sweep.\n"
              f"# Run it with tune_app: python -m tune_app.search --space {path}\n")
    text = header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
