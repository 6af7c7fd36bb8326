"""The keys a trainable knows: type, default, allowed values, unit.

tune_app validates search spaces and ``--set`` overrides against these before
anything runs, so a typo or an impossible value fails in a second, not an hour in.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    default: Any
    type: type
    help: str
    choices: Callable[[], list] | None = None  # a callable, so registries can grow after import
    low: float | None = None  # inclusive
    high: float | None = None  # exclusive
    data: bool = False  # fixed for the whole sweep: the driver prepares data with it

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
        if self.choices is not None and value not in self.choices():
            raise ValueError(f"{key}={value!r}: choose one of {', '.join(map(str, self.choices()))}")
        if self.type in (int, float):
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{key}={value!r}: must be a finite number")
            if self.low is not None and value < self.low:
                raise ValueError(f"{key}={value!r}: must be >= {self.low:g} ({self.help})")
            if self.high is not None and value >= self.high:
                raise ValueError(f"{key}={value!r}: must be < {self.high:g} ({self.help})")
        return value


def resolve(params: dict[str, Param], config: dict) -> dict:
    """Defaults filled in, every value checked; unknown keys are an error."""
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; known keys: {', '.join(sorted(params))}")
    return {key: p.check(key, config.get(key, p.default)) for key, p in params.items()}
