"""What tune_app needs of a trainable, and how it finds one: a built-in name, ``"module:function"`` or a callable.

A trainable is ``fit(config, data, reporter)``: it trains one configuration, calling
``reporter.report(metrics, state)`` once per epoch and ``reporter.restore()`` once at the start
(the ``state`` of the last report of an earlier run of the same trial, or None). That is the
whole contract; the module that defines ``fit`` may add:

    PARAMS      {key: trainables.params.Param}: the keys it knows (validated before Ray starts);
                without it any key is accepted and passed through
    METRICS     the metric names it reports (METRIC must be one); without it any
    run_name    run_name(config) -> str: the trial's name in Ray's table and W&B
    evaluate    evaluate(state, data) -> {name: number}: test-set metrics for ``tune_app.retrain``
    schedule_spans_run
                schedule_spans_run(config) -> bool: whether the learning rate follows a schedule fitted to the
                planned number of epochs (cosine to the end, OneCycle), so that a trial at epoch K of 20 is not
                comparable with one that finished at K; without it tune_app assumes it does

The built-in trainables (``image_classifier``, ``numpy_mlp``) are modules with more members
(COST_KEYS for ``--plan``/``--gpus-per-trial auto``, predict/evaluate on images, model files).
"""
from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from trainables.catalog import TRAINABLES
from tune_app.errors import UsageError


def planned_epochs(get: Callable[[str], Any]) -> int | None:
    """The epochs a trial is planned to run, from its config (``get(key)``): ``epochs`` capped by ``max_epochs``
    (0: no cap), as rundir.reader counts ``target_epochs``; ``max_epochs`` alone for a trainable without an epochs
    key; None when the config names neither."""
    epochs, cap = get("epochs"), get("max_epochs")
    if not epochs:
        return int(cap) if cap else None
    return int(min(epochs, cap or epochs))


@runtime_checkable
class Trainable(Protocol):
    """The trainable as tune_app uses it: the same members whether it is built in or the user's."""

    ref: str  # how a worker imports fit: "module:function"
    name: str  # "image_classifier", or the user's "module:function"
    builtin: bool
    PARAMS: dict | None  # None: keys are not checked
    METRICS: tuple[str, ...] | None  # None: any metric
    OPTIONAL_METRICS: tuple[str, ...]
    COST_KEYS: tuple[str, ...] | None  # None: no cost probes (--plan, --gpus-per-trial auto)

    def fit(self, config: dict, data: Any, reporter) -> None: ...

    def run_name(self, config: dict) -> str: ...


@dataclass(frozen=True)
class LoadedTrainable:
    """A trainable with every optional member filled in, so callers never ask ``hasattr``."""

    ref: str
    name: str
    builtin: bool
    fit: Callable
    module: ModuleType
    PARAMS: dict | None = None
    METRICS: tuple[str, ...] | None = None
    OPTIONAL_METRICS: tuple[str, ...] = ()
    COST_KEYS: tuple[str, ...] | None = None
    WEIGHT_KEYS: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)  # the built-ins' image members: predict, evaluate, load_model, ...

    def run_name(self, config: dict) -> str:
        own = getattr(self.module, "run_name", None)
        return own(config) if own is not None else self.ref.rsplit(":", 1)[-1].replace(".", "_")

    def schedule_spans_run(self, config: dict) -> bool:
        own = getattr(self.module, "schedule_spans_run", None)
        return True if own is None else bool(own(config))

    def check_space(self, values: dict[str, list]) -> None:
        own = getattr(self.module, "check_space", None) if self.builtin else None
        if own is not None:
            own(values)

    def __getattr__(self, item: str):
        # The built-ins' image members (predict, evaluate, load_model, check_weights, check_models, ...)
        extra = self.__dict__.get("extra") or {}
        if item in extra:
            return extra[item]
        raise AttributeError(item)


def import_attr(ref: str, what: str):
    """``module.path:attr`` imported (trainables.imports.import_attr); its one-line error as a UsageError."""
    from trainables import imports

    try:
        return imports.import_attr(ref, what)
    except ValueError as e:
        raise UsageError(str(e)) from None


def ref_of(fn: Callable, what: str) -> str:
    """The ``module:qualname`` a worker can import ``fn`` by."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in qualname or "<lambda>" in qualname:
        inside = " inside a function" if "<" in qualname else ""
        raise UsageError(f"{what} {fn!r} is defined in {module or 'no module'}{inside}, which Ray's workers cannot "
                         f"import; define it at the top level of a .py file and pass 'module:function' or the function")
    return f"{module}:{qualname}"


def builtin(name: str) -> LoadedTrainable:
    module = importlib.import_module(TRAINABLES[name])
    members = ("predict", "evaluate", "load_model", "check_weights", "check_models")
    return LoadedTrainable(
        ref=f"{module.__name__}:fit", name=name, builtin=True, fit=module.fit, module=module, PARAMS=module.PARAMS,
        METRICS=tuple(module.METRICS), OPTIONAL_METRICS=tuple(getattr(module, "OPTIONAL_METRICS", ())),
        COST_KEYS=tuple(module.COST_KEYS), WEIGHT_KEYS=tuple(module.WEIGHT_KEYS),
        extra={m: getattr(module, m) for m in members if hasattr(module, m)})


def check_fit(fn, what: str) -> None:
    """fit must be callable as fit(config, data, reporter)."""
    if not callable(fn):
        raise UsageError(f"{what}: {fn!r} is not callable; TRAINABLE names a function fit(config, data, reporter)")
    try:
        inspect.signature(fn).bind(None, None, None)
    except TypeError:
        raise UsageError(f"{what}: {getattr(fn, '__qualname__', fn)}{inspect.signature(fn)} cannot be called as "
                         f"fit(config, data, reporter); give it those three parameters") from None
    except ValueError:
        pass  # a builtin without a signature: called as it is


def load(value, where: str) -> LoadedTrainable:
    """A space's TRAINABLE: a built-in name, ``"module:function"`` or a function. Raises UsageError."""
    if isinstance(value, str) and value in TRAINABLES:
        return builtin(value)
    if isinstance(value, str):
        if ":" not in value:
            known = ", ".join(sorted(TRAINABLES))
            raise UsageError(f"{where}: unknown trainable {value!r}; give a built-in ({known}), 'module:function' "
                             f"or a function fit(config, data, reporter)")
        ref, fn = value, import_attr(value, f"{where}: TRAINABLE")
    elif callable(value):
        ref, fn = ref_of(value, f"{where}: TRAINABLE"), value
    else:
        raise UsageError(f"{where}: TRAINABLE is a {type(value).__name__}; give a built-in name, 'module:function' "
                         f"or a function fit(config, data, reporter)")
    check_fit(fn, f"{where}: TRAINABLE {ref}")
    module = importlib.import_module(ref.split(":")[0])
    params = getattr(module, "PARAMS", None)
    metrics = getattr(module, "METRICS", None)
    if params is not None and not isinstance(params, dict):
        raise UsageError(f"{where}: {module.__name__}.PARAMS must be a dict of trainables.params.Param")
    return LoadedTrainable(ref=ref, name=ref, builtin=False, fit=fn, module=module, PARAMS=params,
                           METRICS=tuple(metrics) if metrics is not None else None)


@functools.lru_cache(maxsize=32)
def named(name: str) -> LoadedTrainable:
    """The trainable a sweep recorded by name (a built-in name or 'module:function'), loaded once per process."""
    return load(name, "trainable")
