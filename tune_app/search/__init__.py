"""Run a hyperparameter search: ``python -m tune_app.search --space digits``.

Everything the user can get wrong is checked before Ray starts (space, overrides,
settings, data); then the driver loads the data once, Ray Tune runs the trials,
and the results become ``<run dir>/summary/``.
"""

from tune_app.cluster import console

console.quiet()  # Ray's and W&B's console settings: before Ray is imported (the modules below import it)

from tune_app.rundir.layout import SPEC_FILE  # noqa: E402
from tune_app.search.cli import build_parser, main, settings_of  # noqa: E402
from tune_app.search.plan import spec_of  # noqa: E402
from tune_app.search.runner import run  # noqa: E402

__all__ = ["SPEC_FILE", "build_parser", "main", "run", "settings_of", "spec_of"]
