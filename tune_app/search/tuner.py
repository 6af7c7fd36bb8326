"""The Ray Tune Tuner of a new sweep: searcher, scheduler, callbacks (W&B, --trial-timeout, out-of-memory
retries, --budget-hours, ASHA's state, an unwritable run directory), checkpoints and the status table."""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import ray
from ray.tune import Callback

from tune_app.rundir.layout import SPEC_FILE
from tune_app.rundir.reader import TIMEOUT_FILE
from tune_app.search.plan import expected_trials


def trial_name(trainable: str, trial) -> str:
    from tune_app.trainable import named

    return named(trainable).run_name(trial.config)


def trial_dirname(trainable: str, trial) -> str:
    return f"{trial_name(trainable, trial)}_{trial.trial_id}"[:120]


def new_tuner(spec: dict, space, config: dict, trainable, run_dir: Path, extra_callbacks=()):
    """A Tuner for a new sweep; writes the sweep's spec (what --resume reads back)."""
    from ray import tune

    from tune_app.cluster.adapter import KeepReports, RestoreNotes, StopWhenUnwritable
    from tune_app.cost.budget import wrap_scheduler
    from tune_app.integrations.wandb_runs import wandb_callback
    from tune_app.search import algorithms

    settings = spec["settings"]
    searched = {k: space.param_space[k] for k in space.searched if k in space.param_space}
    search_alg, scheduler, param_space = algorithms.build(settings, config, searched, run_dir, spec.get("points", []),
                                                          space.define_by_run, space.objectives)
    if len(space.objectives) > 1 and settings["scheduler"] != "fifo":
        print(f"tune_app: note: --scheduler {settings['scheduler']} stops trials by {space.metric} "
              f"({space.mode}), the first objective; the searcher ranks by all "
              f"{len(space.objectives)}", flush=True)
    budget = sweep_budget(settings, run_dir)
    spec["expected_trials"] = expected_trials(param_space, settings["num_samples"])
    spec.update(metric=space.metric, mode=space.mode, searched=list(space.searched),
                objectives=[list(o) for o in space.objectives])
    (run_dir / SPEC_FILE).write_text(json.dumps({k: v for k, v in spec.items() if k not in ("run_dir", "run_uri")},
                                                indent=2))
    callback = wandb_callback(settings["wandb_mode"], settings["wandb_project"], settings["wandb_entity"],
                              settings["name"], run_dir)
    oom = OomRetry(settings["cpus_per_trial"]) if settings["gpus_per_trial"] == "auto" else None
    callbacks = [c for c in (StopWhenUnwritable(), callback, trial_timeout(settings.get("trial_timeout") or 0),
                             algorithms.scheduler_state(scheduler), oom, budget, RestoreNotes(), KeepReports(),
                             *extra_callbacks)
                 if c is not None]
    reporter = tune.CLIReporter(
        parameter_columns=[k for k in space.searched if k not in space.conditional],  # Ray's table needs them all
        metric_columns={"epoch": "epoch", "train_loss": "train_loss", space.metric: space.metric,
                        "epoch_time_s": "s/epoch"},
        sort_by_metric=True, max_report_frequency=15, max_progress_rows=12)
    module = space.trainable.name
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, search_alg=search_alg, scheduler=wrap_scheduler(scheduler, budget),
            num_samples=settings["num_samples"], max_concurrent_trials=settings.get("max_concurrent"),
            # A finished trial's worker process trains the next one with the same resources: a new process
            # per trial (imports, torch's first optimizer) costs seconds, more than a small model's epochs.
            reuse_actors=settings.get("reuse_actors", True),
            trial_name_creator=functools.partial(trial_name, module),
            trial_dirname_creator=functools.partial(trial_dirname, module)),
        run_config=tune.RunConfig(
            name=run_dir.name, storage_path=spec["run_uri"].rsplit("/", 1)[0] if spec.get("run_uri")
            else str(run_dir.parent), callbacks=callbacks,
            progress_reporter=reporter, verbose=1,
            checkpoint_config=checkpoint_config(settings, space.metric, space.mode),
            failure_config=tune.FailureConfig(max_failures=settings.get("max_failures", 2))))


def check_wandb_runs(run_dir: Path, settings: dict) -> None:
    """Every trial that reported must have a W&B run holding its history; say which ones W&B lost (their results
    are in the run directory all the same)."""
    trials_file = run_dir / "summary" / "trials.parquet"
    if settings.get("wandb_mode") == "disabled" or not (run_dir / "wandb").is_dir() or not trials_file.is_file():
        return
    import pandas as pd

    from tune_app.integrations.wandb_files import missing_runs

    trials = pd.read_parquet(trials_file, columns=["trial_id", "epochs"])
    lost = missing_runs(run_dir, dict(zip(trials["trial_id"].astype(str), trials["epochs"].astype(int))))
    if lost:
        print(f"tune_app: warning: W&B holds no full run for {len(lost)} of {len(trials)} trials ({', '.join(lost)}); "
              f"their results are in {run_dir} and summary/", file=sys.stderr)


def sweep_budget(settings: dict, run_dir: Path):
    """--budget-hours: the callback that counts the sweep's device-hours (None without a budget). A trial holds
    its GPUs where the sweep asks for any, else its CPUs; each report says what Ray gave it (--gpus-per-trial
    auto), so the count here is only a fallback."""
    from tune_app.cost.budget import budget_callback

    gpus = settings["gpus_per_trial"]
    if gpus == "auto":
        import ray

        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
    kind, devices = ("gpu", gpus) if gpus else ("cpu", settings["cpus_per_trial"])
    return budget_callback(settings.get("budget_hours"), devices, kind, run_dir)


class TrialTimeout(Callback):
    """--trial-timeout: stops a running trial which has reported nothing for ``seconds`` (a hung data loader, a
    deadlocked collective): it marks the trial's folder, then kills its actor, which Ray treats as a crash
    (retried up to --max-failures, then status timeout)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.last[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = time.monotonic()

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        for trial in trials:
            silent = now - self.last.get(trial.trial_id, now)
            actor = trial.temporary_state.ray_actor
            if trial.status == "RUNNING" and silent > self.seconds and actor is not None:
                # The trial's folder; with s3:// storage, its copy on the driver, which Ray uploads.
                folder = Path(trial.path if Path(trial.path).is_absolute() else trial.local_path)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / TIMEOUT_FILE).write_text(
                    f"no report for {silent:.0f} s (--trial-timeout {self.seconds:g}); stopped\n")
                ray.kill(actor)
                self.last[trial.trial_id] = now


def trial_timeout(seconds: float) -> TrialTimeout | None:
    """The --trial-timeout callback; None when off."""
    return TrialTimeout(seconds) if seconds else None


class OomRetry(Callback):
    """--gpus-per-trial auto: a trial that runs out of GPU memory all the same is retried (as a crash is, up to
    --max-failures) with twice its share of a GPU, up to a whole one, so that fewer neighbours share it."""

    def __init__(self, cpus: float) -> None:
        self.cpus = cpus

    def on_trial_recover(self, iteration, trials, trial, **info):
        from tune_app.cost import gpu_share

        error = Path(trial.error_file) if trial.error_file else None
        last = error.read_text().rsplit("Failure #", 1)[-1] if error and error.is_file() else ""
        held = trial.placement_group_factory.required_resources.get("GPU", 0)
        if "OutOfMemoryError" not in last or not 0 < held < 1:
            return
        more = gpu_share.larger_share(held)
        trial.update_resources({"CPU": self.cpus, "GPU": more})
        print(f"tune_app: trial {trial} ran out of GPU memory on {held:g} GPU; retrying it on {more:g}", flush=True)


def checkpoint_cadence(settings: dict):
    """Which reports of a trial carry a checkpoint (cluster.adapter.Cadence): every ``checkpoint_every_s`` seconds,
    at the trial's last epoch, and at the epochs where the scheduler decides on it: ASHA's rungs (``grace_period``
    times powers of ``reduction_factor``, as Ray's ASHA places them, and ``max_epochs``) and PBT's perturbations
    (multiples of ``grace_period``, where PBT copies a trial's latest checkpoint to another); every epoch for
    HyperBand (it pauses a trial at a milestone that depends on its bracket, and the trial continues from the
    checkpoint taken there). FIFO and median stopping decide nothing that needs a checkpoint."""
    from tune_app.cluster.adapter import Cadence

    every_s, top = float(settings.get("checkpoint_every_s", 30)), int(settings["max_epochs"])
    scheduler = settings["scheduler"]
    if scheduler in ("fifo", "median"):
        epochs = ()
    elif scheduler == "asha":
        grace, factor, epochs = min(settings["grace_period"], top), settings["reduction_factor"], {top}
        while grace <= top:
            epochs.add(int(grace))
            grace *= factor
        epochs = tuple(sorted(epochs))
    elif scheduler in ("pbt", "pb2"):
        epochs = tuple(range(settings["grace_period"], top + 1, settings["grace_period"]))
    else:
        epochs = None
    return Cadence(every_s=every_s, epochs=epochs, max_epochs=top)


def checkpoint_config(settings: dict, metric: str, mode: str):
    """The best ``keep_checkpoints`` checkpoints of a trial by the sweep's metric; Ray always keeps the latest as
    well, which resumes and retries start from. PBT copies the latest of other trials: it keeps at least 4."""
    from ray import tune

    keep = settings.get("keep_checkpoints", 2)
    if settings["scheduler"] == "pbt":
        return tune.CheckpointConfig(num_to_keep=max(keep, 4))
    return tune.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=metric, checkpoint_score_order=mode)
