"""Run a hyperparameter search: ``python -m tune_app.search --space digits``.

Everything the user can get wrong is checked before Ray starts (space, overrides,
settings, data); then the driver loads the data once, Ray Tune runs the trials,
and the results become ``<run dir>/summary/``.
"""
from tune_app import ray_output  # noqa: F401  (before Ray is imported)
from tune_app.layout import SPEC_FILE
from tune_app.search.cli import build_parser, main, settings_of
from tune_app.search.plan import spec_of
from tune_app.search.runner import run

__all__ = ["SPEC_FILE", "build_parser", "main", "run", "settings_of", "spec_of"]
