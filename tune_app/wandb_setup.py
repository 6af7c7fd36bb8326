"""W&B: one run per trial, grouped by experiment, named from the trial's config.

Offline automatically when no API key is configured; a W&B failure is a warning,
never the end of a sweep.
"""
from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from ray.air.integrations.wandb import WandbLoggerCallback

log = logging.getLogger("tune_app")


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str | None) -> str:
    """The CLI's mode, else $WANDB_MODE, else online with a key and offline without."""
    mode = mode or os.environ.get("WANDB_MODE")
    if mode in ("online", "offline", "disabled"):
        return mode
    return "online" if has_api_key() else "offline"


class SafeWandbCallback(WandbLoggerCallback):
    """Ray's W&B callback with every call guarded: the first W&B failure is logged once
    and turns W&B off for the rest of the sweep, which goes on."""

    failed = False

    def _guard(self, what, fn, *args, **kwargs):
        if self.failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any W&B failure must not end the sweep
            self.failed = True
            log.warning("W&B %s failed (%s: %s); the sweep continues without W&B", what, type(e).__name__, e)
            return None

    def setup(self, *args, **kwargs):
        self._guard("setup", super().setup, *args, **kwargs)

    def log_trial_start(self, trial):
        self._guard("run start", super().log_trial_start, trial)

    def log_trial_result(self, iteration, trial, result):
        self._guard("logging", super().log_trial_result, iteration, trial, result)

    def log_trial_end(self, trial, failed=False):
        self._guard("run end", super().log_trial_end, trial, failed)

    def on_experiment_end(self, trials, **info):
        # Trials cut short by Ctrl+C never get log_trial_end, and Ray's callback would
        # wait its whole upload timeout for their logging actors: tell them to finish first.
        for trial in list(self._trial_queues):
            self._guard("run end", self._signal_logging_actor_stop, trial)
        self._guard("finishing", super().on_experiment_end, trials, **info)


def wandb_callback(mode: str | None, project: str, entity: str | None, group: str, run_dir: Path | None):
    """The callback for ``RunConfig``, or None when W&B is disabled."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return None
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"  # Ray's callback checks it before asking for a key
        where = f"{run_dir}/wandb/offline-run-*" if run_dir is not None else "wandb/offline-run-*"
        print(f"tune_app: W&B runs are kept offline; upload them later with: wandb sync {where}", flush=True)
    # resume="allow": a trial continued by --resume logs to the same W&B run (its id is the trial id).
    kwargs = {"mode": mode, "entity": entity, "resume": "allow"}
    if run_dir is not None:
        kwargs["dir"] = str(run_dir)  # offline runs land in <run dir>/wandb/
    return SafeWandbCallback(project=project, group=group, log_config=False, upload_timeout=300,
                             excludes=["time_this_iter_s", "time_total_s", "timestamp", "pid",
                                       "hostname", "node_ip", "time_since_restore", "iterations_since_restore",
                                       "checkpoint_dir_name", "date", "done"],
                             **{k: v for k, v in kwargs.items() if v is not None})
