"""The keys a trainable knows: type, default, allowed values, unit.

tune_app validates search spaces and ``--set`` overrides against these before
anything runs, so a typo or an impossible value fails in a second, not an hour in.

A ``takes_args`` param names a factory: besides its choices it takes a ``module:attr``
reference to the user's own one, and ``KEY.NAME`` entries of a config are passed to that
factory as ``NAME=...``::

    cfg = resolve(PARAMS, {"model": "mymodels:Net", "model.hidden": 64})
    factory_args(cfg, "model")  # {"hidden": 64}
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainables.imports import is_ref


@dataclass(frozen=True)
class Param:
    default: Any
    type: type
    help: str
    choices: Callable[[], list] | None = None  # a callable, so registries can grow after import
    low: float | None = None  # inclusive
    high: float | None = None  # exclusive
    data: bool = False  # fixed for the whole sweep: the driver prepares data with it
    # The value names a factory: one of the choices or a 'module:attr' reference to the user's own, and
    # ``KEY.NAME`` entries are passed to it as NAME=... (unchecked here: only the factory knows them).
    takes_args: bool = False

    def check(self, key: str, value: Any) -> Any:
        """Return ``value`` converted to this param's type, or raise ValueError with one line."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{key}={value!r}: expected true or false")
            return value
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or isinstance(value, bool):
            raise ValueError(f"{key}={value!r}: expected {self.type.__name__} ({self.help})")
        if self.takes_args and is_ref(value):
            return value  # syntax only: importing it is check_space's job, once per sweep
        if self.choices is not None and value not in self.choices():
            also = " or 'module:attr' for your own" if self.takes_args else ""
            raise ValueError(f"{key}={value!r}: choose one of {', '.join(map(str, self.choices()))}{also}")
        if self.type in (int, float):
            if isinstance(value, int) and not -2**63 <= value < 2**63:
                raise ValueError(f"{key}={value!r}: too large ({self.help})")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{key}={value!r}: must be a finite number")
            if self.low is not None and value < self.low:
                raise ValueError(f"{key}={value!r}: must be >= {self.low:g} ({self.help})")
            if self.high is not None and value >= self.high:
                raise ValueError(f"{key}={value!r}: must be < {self.high:g} ({self.help})")
        return value


def is_factory_arg(params: dict[str, Param], key: str) -> bool:
    """True for ``KEY.NAME`` where ``params[KEY]`` takes args: a keyword argument for the user's factory."""
    head, dot, name = key.partition(".")
    return bool(dot and name) and head in params and params[head].takes_args


def factory_args(config: dict, key: str) -> dict:
    """``{NAME: value}`` for the ``KEY.NAME`` entries of ``config``, in sorted order."""
    prefix = f"{key}."
    return {k[len(prefix):]: config[k] for k in sorted(config) if k.startswith(prefix) and len(k) > len(prefix)}


def resolve(params: dict[str, Param], config: dict) -> dict:
    """Defaults filled in, every value checked; unknown keys are an error. The ``KEY.NAME`` entries of a
    ``takes_args`` param are kept as given, sorted, after the regular keys."""
    args = sorted(k for k in config if is_factory_arg(params, k))
    unknown = sorted(set(config) - set(params) - set(args))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; known keys: {', '.join(sorted(params))}")
    resolved = {key: p.check(key, config.get(key, p.default)) for key, p in params.items()}
    return {**resolved, **{k: config[k] for k in args}}


def number_or_same(value):
    """Text as the number people mean by it (``"64"``, ``"1e-3"``, which YAML 1.1 reads as a string), else the
    value unchanged: what ``--set`` and a W&B sweep file's numbers go through."""
    if isinstance(value, str):
        for convert in (int, float):
            try:
                return convert(value)
            except ValueError:
                pass
    return value
