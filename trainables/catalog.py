"""The trainables tune_app can run, by name.

Each is a module exposing ``fit(config, data, reporter)``, ``PARAMS`` (the keys it
knows) and ``run_name(config)``. Imported lazily: a space names its trainable.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from trainables.registry import UnknownName

TRAINABLES = {
    "image_classifier": "trainables.image_classifier",
    "numpy_mlp": "trainables.numpy_mlp",
}


def get_trainable(name: str) -> ModuleType:
    if name not in TRAINABLES:
        raise UnknownName(f"unknown trainable {name!r}; known: {', '.join(sorted(TRAINABLES))}")
    return importlib.import_module(TRAINABLES[name])
