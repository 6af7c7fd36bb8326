"""tune_app: hyperparameter search for PyTorch image classifiers on Ray Tune.

The command line (``python -m tune_app.search``, ``analyze``, ``retrain``, ``train``) is a thin layer over
these functions; see ``tune_app.api`` and docs/own-code.md.
"""
import importlib

from tune_app.api import Sweep, SweepFailed, SweepInterrupted, load_model, sweep
from tune_app.errors import UsageError
from tune_app.settings import SweepSettings
from tune_app.trainable import Trainable

__all__ = ["sweep", "analyze", "retrain", "load_model", "Sweep", "SweepSettings", "SweepInterrupted", "SweepFailed",
           "Trainable", "UsageError"]


def __getattr__(name: str):
    # tune_app.analyze and tune_app.retrain are their commands' modules, callable as the API's functions; imported
    # on first use, so that `python -m tune_app.analyze` does not find its module imported already.
    if name in ("analyze", "retrain"):
        return importlib.import_module(f"tune_app.{name}")
    raise AttributeError(f"module 'tune_app' has no attribute {name!r}")
