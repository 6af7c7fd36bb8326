"""How a trainable reports an epoch and gets back its last checkpoint.

``fit(config, data, reporter)`` only sees this protocol; the Ray adapter in
``tune_app`` maps it onto ``tune.report`` and ``tune.get_checkpoint``, and
``LocalReporter`` keeps everything in memory for single runs and tests.
"""
from __future__ import annotations

import copy
from typing import Protocol


class Reporter(Protocol):
    def restore(self) -> dict | None:
        """The state saved with the last report of an earlier run of this trial, or None."""

    def report(self, metrics: dict, state: dict) -> None:
        """One epoch's metrics and the state needed to continue after it."""


class LocalReporter:
    def __init__(self, state: dict | None = None, stop_after: int | None = None) -> None:
        self.history: list[dict] = []
        self.state = state
        self.stop_after = stop_after  # raise StopTraining after this many reports (tests, probes)

    def restore(self) -> dict | None:
        return copy.deepcopy(self.state)

    def report(self, metrics: dict, state: dict) -> None:
        self.history.append(dict(metrics))
        self.state = copy.deepcopy(state)
        if self.stop_after is not None and len(self.history) >= self.stop_after:
            raise StopTraining


class StopTraining(Exception):
    """Raised by a reporter to end a run early, as a scheduler would."""
