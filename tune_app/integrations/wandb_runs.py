"""W&B: one run per trial, grouped by experiment, named from the trial's config.

Offline automatically when no API key is configured, or when the W&B server does not
answer (checked once, within seconds, instead of every run waiting out W&B's own
timeouts); a W&B failure is a warning, never the end of a sweep.
"""
from __future__ import annotations

import functools
import logging
import netrc
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from tune_app.cluster.ray_private import WandbCallbackBase

log = logging.getLogger("tune_app")


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


REACH_TIMEOUT_S = 5


@functools.cache
def server_error(base_url: str) -> str | None:
    """Why the W&B server at ``base_url`` cannot be reached (a TCP connection within REACH_TIMEOUT_S), or None."""
    url = urlparse(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=REACH_TIMEOUT_S).close()
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


MODES = ("online", "offline", "disabled")


def check_env() -> None:
    """$WANDB_MODE as W&B reads it in every process, Ray's workers included: set but empty (``WANDB_MODE= cmd``)
    counts as unset, since W&B itself refuses it; another value W&B does not know is a UsageError."""
    value = os.environ.get("WANDB_MODE")
    if value is not None and not value.strip():
        del os.environ["WANDB_MODE"]
    elif value is not None and value not in MODES:
        from tune_app.errors import UsageError

        raise UsageError(f"WANDB_MODE={value!r}: W&B knows {', '.join(MODES)}; set one of them, or unset it and pass "
                         f"--wandb-mode")


def resolve_mode(mode: str | None) -> str:
    """The CLI's mode, else $WANDB_MODE, else online with a key and offline without; online falls back to
    offline, with a warning, when the W&B server does not answer."""
    check_env()
    mode = mode or os.environ.get("WANDB_MODE")
    if mode not in MODES:
        mode = "online" if has_api_key() else "offline"
    if mode == "online":
        base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        error = server_error(base)
        if error:
            print(f"tune_app: warning: W&B server {base} unreachable ({error}); logging offline instead "
                  f"(upload later with wandb sync)", file=sys.stderr, flush=True)
            return "offline"
    return mode


def start_run(mode: str, *, project: str | None, entity: str | None, name: str, job_type: str, dir: str,
              config: dict, group: str | None = None):
    """A W&B run of tune_app's own (a summary, a retrain seed, a single training), not a sweep trial's (Ray's
    callback starts those): W&B's INFO logging kept off the console, several runs per process allowed."""
    import wandb

    logging.getLogger("wandb").setLevel(logging.WARNING)  # its INFO lines would flood the console
    return wandb.init(project=project or "tune_app", entity=entity, group=group, name=name, job_type=job_type,
                      dir=dir, mode=mode, reinit="create_new", config=config)


class SafeWandbCallback(WandbCallbackBase):
    """Ray's W&B callback with every call guarded: the first W&B failure is logged once and starts no more
    W&B runs or results for the rest of the sweep, which goes on; the runs already started are still finished."""

    failed = False

    def _guard(self, what, fn, *args, finishing: bool = False, **kwargs):
        """``finishing``: a call that ends runs already started (their last results, wandb.finish): made even
        after a failure, or those runs would stay unfinished and be killed at the end, their files empty."""
        if self.failed and not finishing:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any W&B failure must not end the sweep
            if self.failed:
                return None  # said once
            self.failed = True
            log.warning("W&B %s failed (%s: %s); the sweep continues without W&B", what, type(e).__name__, e)
            return None

    def before_reaping(self, futures: dict) -> None:
        # Ray drops a logging actor whose W&B run failed without a word: say so (the trial goes on).
        import ray

        done, _ = ray.wait(list(futures), num_returns=len(futures), timeout=0) if futures else ([], [])
        for future in done:
            try:
                ray.get(future)
            except Exception as e:  # noqa: BLE001 - whatever W&B raised in the actor
                first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                log.warning("W&B run of trial %s failed (%s); the trial goes on, its results are in the run "
                            "directory", futures[future], first)

    def setup(self, *args, **kwargs):
        if self.kwargs.get("mode") == "offline":
            # Ray's callback asks for an API key unless $WANDB_MODE says offline; a callback restored by --resume
            # comes back without the variable wandb_callback() set
            os.environ["WANDB_MODE"] = "offline"
        self._guard("setup", super().setup, *args, **kwargs)

    def logging_actor_options(self) -> dict:
        # Ray's options, but no restarts: the actor takes the trial's queue (an actor handle) as an argument, from
        # which Ray cannot restart it reliably, and says so in an error-level line at every sweep's start. A
        # logging actor that dies is reported (check_wandb_runs), not restarted.
        return {**super().logging_actor_options(), "max_restarts": 0, "max_task_retries": 0}

    def __del__(self):
        # A callback restored by --resume may never have been set up (its actor tables were not pickled): Ray's
        # __del__ then raised AttributeError into "Exception ignored" noise at the end of every resume.
        try:
            super().__del__()
        except Exception:  # noqa: BLE001 - nothing left to clean up
            pass

    def log_trial_start(self, trial):
        self._guard("run start", super().log_trial_start, trial)

    def log_trial_result(self, iteration, trial, result):
        self._guard("logging", super().log_trial_result, iteration, trial, result)

    def log_trial_end(self, trial, failed=False):
        if trial in self.logging_trials():
            self._guard("run end", super().log_trial_end, trial, failed, finishing=True)

    def on_experiment_end(self, trials, **info):
        # Trials cut short by Ctrl+C never get log_trial_end, and Ray's callback would
        # wait its whole upload timeout for their logging actors: tell them to finish first.
        for trial in self.logging_trials():
            self._guard("run end", self.stop_logging, trial, finishing=True)
        self._guard("finishing", super().on_experiment_end, trials, finishing=True, **info)


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
                                       "checkpoint_dir_name", "date", "done", "restore_note"],
                             **{k: v for k, v in kwargs.items() if v is not None})
