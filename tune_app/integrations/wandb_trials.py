"""W&B: one run per trial, every trial's run written from one thread of the driver.

Ray's own W&B callback starts two Ray actor processes for every trial (a queue and a logger), which on a small
machine cost more than the training of a small trial (docs/BENCHMARKS.md, bench_peers.py). W&B holds several runs
in one process (``reinit="create_new"``) and does its writing in its own service process, so here one thread of
the driver starts, logs and finishes every trial's run, taking the work from a queue: Tune's loop only puts
results on it. A W&B failure is a warning: one for a run W&B could not write (that trial goes on), and one, after
which no more results go to W&B, for a failure in the driver's own handling; runs already started are finished
either way, so their files are complete.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
from numbers import Number

from ray.tune.logger import LoggerCallback

log = logging.getLogger("tune_app")

EXCLUDED = ("done", "should_checkpoint", "config", "time_this_iter_s", "time_total_s", "timestamp", "pid", "hostname",
            "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "date",
            "restore_note")  # result keys not logged as history
TO_CONFIG = ("trial_id", "experiment_tag", "node_ip", "hostname", "pid")  # result keys kept in the run's config
_STOP = object()


def loggable(result: dict, prefix: str = "") -> dict:
    """A result as W&B history: nested dicts flattened with "/", numbers only (bools, NumPy scalars included),
    the EXCLUDED keys left out."""
    out = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if not prefix and key in EXCLUDED:
            continue
        if isinstance(value, dict):
            out.update(loggable(value, f"{name}/"))
        elif hasattr(value, "item") and getattr(value, "size", 1) == 1 and not isinstance(value, (str, bytes)):
            item = value.item()
            if isinstance(item, Number):
                out[name] = item
        elif isinstance(value, Number):
            out[name] = value
    return out


def plain_config(config: dict) -> dict:
    """A trial's config as W&B keeps it: JSON-able values as they are, anything else as its text."""
    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if hasattr(value, "item"):
            return plain(value.item())
        return str(value)

    return {k: plain(v) for k, v in config.items() if k != "callbacks"}


class TrialRuns:
    """The writer: a daemon thread that owns every trial's W&B run (``start``/``log``/``finish`` are queued)."""

    def __init__(self, init: dict) -> None:
        self.init, self.runs, self.lost = init, {}, set()
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="tune_app-wandb", daemon=True)
        self.thread.start()

    def put(self, *job) -> None:
        self.jobs.put(job)

    def close(self, timeout: float) -> bool:
        """Finish every run still open and stop the thread; False when that took longer than ``timeout``."""
        self.jobs.put((_STOP,))
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job[0] is _STOP:
                for trial_id in list(self.runs):
                    self._finish(trial_id, "", False)
                return
            getattr(self, f"_{job[0]}")(*job[1:])

    def _start(self, trial_id: str, name: str, config: dict, logdir: str) -> None:
        if trial_id in self.runs or trial_id in self.lost:
            return
        try:
            import wandb

            logging.getLogger("wandb").setLevel(logging.WARNING)  # its INFO lines would flood the console
            run = wandb.init(id=trial_id, name=name, config=config, reinit="create_new", resume="allow",
                             allow_val_change=True, settings=wandb.Settings(silent=True, console="off"), **self.init)
            run.config.update({"trial_log_path": logdir}, allow_val_change=True)
            self.runs[trial_id] = run
        except Exception as e:  # noqa: BLE001 - whatever W&B raised: that trial goes on without a W&B run
            self.lost.add(trial_id)
            self._warn(name, e)

    def _log(self, trial_id: str, name: str, history: dict, config: dict, step: int | None) -> None:
        run = self.runs.get(trial_id)
        if run is None:
            return
        try:
            if config:
                run.config.update(config, allow_val_change=True)
            run.log(history, step=step)
        except Exception as e:  # noqa: BLE001
            self._warn(name, e)

    def _finish(self, trial_id: str, name: str, failed: bool) -> None:
        run = self.runs.pop(trial_id, None)
        if run is None:
            return
        try:
            run.finish(exit_code=1 if failed else 0)
        except Exception as e:  # noqa: BLE001
            self._warn(name or trial_id, e)

    @staticmethod
    def _warn(name: str, e: Exception) -> None:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        log.warning("W&B run of trial %s failed (%s); the trial goes on, its results are in the run directory",
                    name, first)


class WandbTrialRuns(LoggerCallback):
    """Tune's callback: a W&B run per trial (its id the trial id, so ``--resume`` continues the same run), in the
    sweep's group, written by one TrialRuns thread. Picklable (Tune keeps callbacks for --resume): the thread is
    started again on first use."""

    def __init__(self, mode: str, project: str, group: str, entity: str | None = None, dir: str | None = None,
                 upload_timeout: float = 300) -> None:
        self.mode, self.project, self.group, self.entity, self.dir = mode, project, group, entity, dir
        self.upload_timeout = upload_timeout
        self.failed = False
        self._writer: TrialRuns | None = None
        self._started: set[str] = set()  # trials whose run this callback has started (and sent the config of)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_writer": None, "_started": set()}

    def _guard(self, what: str, fn, *args) -> None:
        """The first failure of the driver's own handling is said once and sends nothing more to W&B."""
        if self.failed:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - any W&B failure must not end the sweep
            self.failed = True
            log.warning("W&B %s failed (%s: %s); the sweep continues without W&B", what, type(e).__name__, e)

    def setup(self, *args, **kwargs) -> None:
        self._guard("setup", self.writer)

    def writer(self) -> TrialRuns:
        if self._writer is None:
            if self.mode == "offline":
                os.environ["WANDB_MODE"] = "offline"
            init = {"project": self.project or "tune_app", "group": self.group, "mode": self.mode,
                    "entity": self.entity, "dir": self.dir}
            self._writer = TrialRuns({k: v for k, v in init.items() if v is not None})
        return self._writer

    def log_trial_start(self, trial) -> None:
        self._guard("run start", self._start, trial)

    def _start(self, trial) -> None:
        self.writer().put("start", trial.trial_id, str(trial), plain_config(trial.config), str(trial.local_path))
        self._started.add(trial.trial_id)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        self._guard("logging", self._result, trial, result)

    def _result(self, trial, result: dict) -> None:
        history = loggable(result)
        first = trial.trial_id not in self._started  # a trial restored by --resume, say
        if first:
            self._start(trial)
        config = {k: result[k] for k in TO_CONFIG if k in result} if first or result.get("training_iteration") == 1 \
            else {}
        self.writer().put("log", trial.trial_id, str(trial), history, config, result.get("training_iteration"))

    def log_trial_end(self, trial, failed: bool = False) -> None:
        if self._writer is not None:  # runs already started are finished even after a failure
            self._writer.put("finish", trial.trial_id, str(trial), failed)

    def on_experiment_end(self, trials, **info) -> None:
        """Finish every run still open (trials cut short by Ctrl+C included) and wait for W&B to write them."""
        if self._writer is not None and not self._writer.close(self.upload_timeout):
            log.warning("W&B did not finish writing its runs within %s s; the sweep's results are in the run "
                        "directory", self.upload_timeout)
        self._writer = None
