"""A finished sweep's results as Python objects: what ``tune_app.sweep`` and ``tune_app.analyze`` return."""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from tune_app.errors import UsageError


class Sweep:
    """A finished sweep's results, read from its run directory."""

    def __init__(self, run_dir) -> None:
        self.run_dir = Path(run_dir)

    def __repr__(self) -> str:
        return f"Sweep({str(self.run_dir)!r})"

    @property
    def summary_dir(self) -> Path:
        return self.run_dir / "summary"

    @cached_property
    def best(self) -> dict:
        """best_config.json: the config, the selection rule, the metric and its provenance."""
        path = self.summary_dir / "best_config.json"
        if not path.is_file():
            raise UsageError(f"{self.run_dir}: no summary/best_config.json; analyze the run first "
                             f"(tune_app.analyze({str(self.run_dir)!r}))")
        return json.loads(path.read_text())

    @property
    def best_config(self) -> dict:
        return self.best["config"]

    @cached_property
    def trials(self):
        import pandas as pd

        return pd.read_parquet(self.summary_dir / "trials.parquet")

    @cached_property
    def history(self):
        import pandas as pd

        return pd.read_parquet(self.summary_dir / "history.parquet")

    @property
    def report(self) -> Path:
        return self.summary_dir / "report.html"
