"""``--budget-hours H``: a sweep starts no new trial once it has spent H device-hours; the running ones finish.

Device-seconds are what the cost ledger counts (``tune_app.rundir.tables.ledger``): every report's wall seconds
(``epoch_time_s``, else Ray's ``time_this_iter_s``) times the devices its trial held, its GPUs where it held
any, else its CPUs: as the report says (``gpus``/``cpus``, what Ray assigned the trial), else as the sweep asked
(``devices_per_trial``). So the budget and ``device_s`` in trials.parquet count alike.

Two pieces share one ``Budget``:

- ``budget_callback(hours, devices_per_trial, kind, run_dir)``: a Tune ``Callback`` that adds up every report,
  says once when the budget is spent, keeps ``budget.json`` in the run directory (the report reads it), and
  carries what was spent and which trials started through ``--resume`` (Tune saves callback state with the
  experiment).
- ``wrap_scheduler(scheduler, callback)``: the sweep's scheduler, wrapped. Once the budget is spent it ends the
  search (``search_alg.set_finished()``: no trial is made any more) and stops every trial that is queued but
  never started (``stop_trial``); running, paused and retried trials go on as the wrapped scheduler says. Tune
  hands a scheduler the controller with exactly these calls allowed (``TrialRunnerWrapper``'s whitelist:
  ``search_alg``, ``get_trials``, ``stop_trial``), and asks the scheduler which trial to run before it starts
  any queued one in each step, so none slips through.

Why not the other mechanisms: a ``Searcher`` returning ``Searcher.FINISHED`` stops only the trials not made yet,
but random and grid search (``BasicVariantGenerator``) make all their trials up front (up to 200 queued), and a
model-based searcher's next trial is made, and queued, before a slot is free; ``Stopper.stop_all()`` (and
``TuneConfig(time_budget_s=...)``) stop the running trials too.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tune_app.rundir.atomic import atomic_write
from tune_app.rundir.layout import BUDGET_FILE
from tune_app.rundir.tables import held_devices, number

KINDS = ("gpu", "cpu")
log = logging.getLogger("tune_app")


class Budget:
    """What a sweep may spend and has spent, shared by the callback (which counts) and the scheduler wrapper
    (which stops). ``stop`` is None until the budget is spent, then what it was like at that moment."""

    def __init__(self, hours: float, devices_per_trial: float, kind: str, run_dir=None) -> None:
        if not (math.isfinite(hours) and hours > 0):
            raise ValueError(f"budget hours {hours!r}: must be more than 0")
        if not (math.isfinite(devices_per_trial) and devices_per_trial > 0):
            raise ValueError(f"devices per trial {devices_per_trial!r}: must be more than 0")
        if kind not in KINDS:
            raise ValueError(f"device kind {kind!r}: use one of {', '.join(KINDS)}")
        self.hours, self.devices_per_trial, self.kind = float(hours), float(devices_per_trial), kind
        self.run_dir = str(run_dir) if run_dir is not None else None
        self.spent_s = 0.0
        self.started: set[str] = set()  # trials that ever started (they may finish, retry, resume)
        self.not_started: set[str] = set()  # trials queued when the budget ran out, stopped before they started
        self.stop: dict | None = None
        self._search_alg = None  # the running sweep's search algorithm (never pickled)
        self._announced = False  # the line was printed in this process

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_search_alg", "_announced")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _search_alg=None, _announced=False)

    @property
    def limit_s(self) -> float:
        return self.hours * 3600

    @property
    def spent(self) -> bool:
        return self.spent_s >= self.limit_s

    def seconds(self, result: dict) -> float:
        """The device-seconds one report stands for."""
        wall = number(result.get("epoch_time_s"))
        if wall is None:
            wall = number(result.get("time_this_iter_s")) or 0.0
        _, count = held_devices(result, self.devices_per_trial if self.kind == "gpu" else 0,
                                self.devices_per_trial if self.kind == "cpu" else None)
        return wall * (count if math.isfinite(count) else self.devices_per_trial)

    def attach(self, tune_controller) -> None:
        """Remember the sweep's search algorithm (the scheduler wrapper sees the controller)."""
        self._search_alg = tune_controller.search_alg

    def finish_search(self) -> None:
        if self._search_alg is not None and not self._search_alg.is_finished():
            self._search_alg.set_finished()

    def state(self) -> dict:
        return {"hours": self.hours, "devices_per_trial": self.devices_per_trial, "kind": self.kind,
                "spent_s": self.spent_s, "trials_started": len(self.started), "started": sorted(self.started),
                "not_started": len(self.not_started), "stopped_at": None, "spent_s_at_stop": None,
                "running_at_stop": None, **(self.stop or {})}

    def load(self, state: dict) -> None:
        self.spent_s = float(state["spent_s"])
        self.started = set(state.get("started", ()))
        self.not_started = set(state.get("not_started_ids", ()))
        self.stop = ({k: state[k] for k in ("stopped_at", "spent_s_at_stop", "running_at_stop")}
                     if state.get("stopped_at") else None)

    def line(self) -> str:
        running = self.stop["running_at_stop"] if self.stop else 0
        return (f"tune_app: budget of {self.hours:g} device-hours spent ({self.spent_s / 3600:.3g} h); "
                f"no new trials are started, {running} running ones finish")

    def write(self) -> Path | None:
        """budget.json in the run directory (when there is one)."""
        if self.run_dir is None:
            return None
        path = Path(self.run_dir) / BUDGET_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in self.state().items() if k != "started"}
        return atomic_write(path, lambda p: p.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8"))


class BudgetCallback(Callback):
    """Counts the device-seconds of every report; once the budget is spent, ends the search, prints one line and
    writes budget.json (again when the sweep ends, with what the running trials spent after)."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget

    def on_step_begin(self, iteration, trials, **info):
        if self.budget.stop is not None:  # also after --resume, before Tune asks the searcher for a trial
            self.budget.finish_search()
            self._announce()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.budget.started.add(trial.trial_id)
        if self.budget.run_dir is None:  # no run directory given: the experiment's, where it is a local one
            folder = Path(trial.remote_experiment_path or "")
            self.budget.run_dir = str(folder) if folder.is_absolute() and folder.is_dir() else None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        budget = self.budget
        budget.started.add(trial.trial_id)
        budget.spent_s += budget.seconds(result)
        if budget.spent and budget.stop is None:
            running = sum(t.trial_id in budget.started and t.status not in (Trial.TERMINATED, Trial.ERROR)
                          for t in trials)
            budget.stop = {"stopped_at": time.strftime("%Y-%m-%d %H:%M:%S"), "spent_s_at_stop": budget.spent_s,
                           "running_at_stop": running}
            budget.finish_search()
            self._announce()
            budget.write()

    def on_experiment_end(self, trials, **info):
        self.budget.write()

    def _announce(self) -> None:
        if not self.budget._announced:
            self.budget._announced = True
            line = self.budget.line()
            log.info(line)
            print(line, flush=True)

    def get_state(self) -> dict:
        return {**self.budget.state(), "not_started_ids": sorted(self.budget.not_started)}

    def set_state(self, state: dict) -> None:
        self.budget.load(state)


class BudgetScheduler(TrialScheduler):
    """The sweep's scheduler, unchanged until the budget is spent; then, whenever Tune asks which trial to run,
    the search is ended and every queued trial that never started is stopped first."""

    def __init__(self, scheduler: TrialScheduler | None, budget: Budget) -> None:
        super().__init__()
        self.scheduler = scheduler or FIFOScheduler()
        self.budget = budget

    def __getattr__(self, name):  # anything else Tune or tune_app reads off the scheduler: the wrapped one's
        if name.startswith("__") or name in ("scheduler", "budget"):
            raise AttributeError(name)
        return getattr(self.scheduler, name)

    @property
    def metric(self):
        return self.scheduler.metric

    @property
    def supports_buffered_results(self):
        return self.scheduler.supports_buffered_results

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return self.scheduler.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller, trial):
        self.budget.attach(tune_controller)
        return self.scheduler.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        return self.scheduler.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self.scheduler.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        return self.scheduler.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        return self.scheduler.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller):
        if self.budget.stop is not None:
            self.budget.attach(tune_controller)
            self.budget.finish_search()
            for trial in list(tune_controller.get_trials()):
                # (not trial.has_reported_at_least_once: reading a trial's last_result, as the CLIReporter does,
                # puts its trial_id there; a real report always carries training_iteration)
                new = (trial.trial_id not in self.budget.started
                       and "training_iteration" not in trial.run_metadata.last_result)
                if trial.status == Trial.PENDING and new:
                    self.budget.not_started.add(trial.trial_id)
                    tune_controller.stop_trial(trial)
                    self._no_value(trial)
        return self.scheduler.choose_trial_to_run(tune_controller)

    def _no_value(self, trial) -> None:
        """A stopped trial that never reported has no metric, and Tune's CLIReporter (sort_by_metric) cannot order
        a finished trial whose metric is missing (None against numbers): it gets NaN, which every reporter and
        analysis reads as no value."""
        metric = self.scheduler.metric
        if metric and metric not in trial.run_metadata.last_result:
            trial.run_metadata.last_result = {**trial.run_metadata.last_result, metric: math.nan}

    def debug_string(self) -> str:
        return self.scheduler.debug_string()

    def save(self, checkpoint_path: str):
        return self.scheduler.save(checkpoint_path)

    def restore(self, checkpoint_path: str):
        return self.scheduler.restore(checkpoint_path)


def budget_callback(hours: float | None, devices_per_trial: float, kind: str, run_dir=None) -> BudgetCallback | None:
    """The Tune callback that keeps a sweep's budget of ``hours`` device-hours, where each trial holds
    ``devices_per_trial`` devices of ``kind`` ("gpu": GPUs, a share such as 0.25 included; "cpu": CPUs) unless its
    reports say what it held; None when ``hours`` is 0 or None (no budget). ``run_dir`` is where budget.json goes
    (default: the experiment's directory, where it is a local one). It counts; stopping needs the sweep's scheduler
    wrapped with ``wrap_scheduler(scheduler, callback)``."""
    if not hours:
        return None
    return BudgetCallback(Budget(hours, devices_per_trial, kind, run_dir))


def wrap_scheduler(scheduler: TrialScheduler | None, callback: BudgetCallback | None) -> TrialScheduler | None:
    """``scheduler`` made to start no queued trial once ``callback``'s budget is spent (unchanged when there is no
    budget). Give Tune the wrapped scheduler and keep using the wrapped one's own object elsewhere."""
    if callback is None:
        return scheduler
    return BudgetScheduler(scheduler, callback.budget)


def read_budget(run_dir) -> dict | None:
    """A run directory's budget.json (what --budget-hours did), or None when there is none or it is unreadable."""
    path = Path(run_dir) / BUDGET_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
