"""The thin layer between a Ray-free ``fit(config, data, reporter)`` and Ray Tune."""
from __future__ import annotations

import os
import tempfile

import torch
from ray import tune

STATE_FILE = "state.pt"


class RayReporter:
    """``report`` becomes ``tune.report`` with a checkpoint; ``restore`` reads ``tune.get_checkpoint``."""

    def restore(self) -> dict | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as path:
            return torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=False)

    def report(self, metrics: dict, state: dict) -> None:
        with tempfile.TemporaryDirectory() as path:
            torch.save(state, os.path.join(path, STATE_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(path))


def ray_trainable(fit):
    """A Ray function trainable around ``fit``; ``data`` arrives through ``tune.with_parameters``."""

    def trainable(config: dict, data: dict) -> None:
        fit(config, data, RayReporter())

    trainable.__name__ = fit.__module__.rsplit(".", 1)[-1]
    return trainable
