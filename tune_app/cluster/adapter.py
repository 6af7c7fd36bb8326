"""The thin layer between a Ray-free ``fit(config, data, reporter)`` and Ray Tune.

Fault drills: when ``TUNE_APP_FAULTS`` names a JSON file (a list of ``{"epoch": k, "times": n,
"kind": "crash"|"oom"|"hang", "where": {key: value, ...}}``), a trial whose config matches
``where``, when it is about to report epoch ``k``, raises ``FaultDrill`` (crash), raises
torch's CUDA ``OutOfMemoryError`` (oom) or stops reporting (hang), at most ``n`` times over all
its retries (each injection is appended to ``<file>.log``). Nothing happens without the
variable; it exists so that crashes and retries can be rehearsed on a real sweep, as the tests do.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray import tune

from tune_app.rundir.layout import GPU_PLAN_FILE, JOURNAL_FILE, PLAN_FILE, SPEC_FILE

STATE_FILE = "state.pt"
EPOCH_FILE = "epoch.txt"  # the epoch a checkpoint was taken after
DEVICE_FILE = "device_s.txt"  # the trial's device-seconds up to that checkpoint
RESTORE_NOTE = "restore_note"  # a report's note that the latest checkpoint was unreadable
FAULTS_ENV = "TUNE_APP_FAULTS"


class FaultDrill(RuntimeError):
    """The exception a fault drill injects."""


def inject_faults(config: dict, epoch: int) -> None:
    path = os.environ.get(FAULTS_ENV)
    if not path or not os.path.isfile(path):
        return
    with open(path) as f:
        faults = json.load(f)
    trial_id = tune.get_context().get_trial_id()
    log = path + ".log"
    for i, fault in enumerate(faults):
        if fault["epoch"] != epoch or any(config.get(k) != v for k, v in fault.get("where", {}).items()):
            continue
        done = Path(log).read_text().split().count(f"{i}:{trial_id}") if os.path.isfile(log) else 0
        if done < fault.get("times", 1):
            with open(log, "a") as f:
                f.write(f"{i}:{trial_id}\n")
            what = f"fault drill {i}: trial {trial_id} {{}} at epoch {epoch} ({done + 1} of {fault.get('times', 1)})"
            kind = fault.get("kind", "crash")
            if kind == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB; "
                                             + what.format("runs out of GPU memory"))
            if kind == "hang":
                time.sleep(24 * 3600)
            raise FaultDrill(what.format("crashes"))


@dataclass(frozen=True)
class Cadence:
    """Which of a trial's reports carry a checkpoint (``--checkpoint-every-s``): those at the scheduler's decision
    epochs (``epochs``: ASHA's rungs, PBT's perturbations; None: every epoch, as HyperBand, which pauses trials at
    milestones that differ by bracket, needs), the trial's last epoch (its planned epochs, else ``max_epochs``, or
    a report that says ``early_stopped`` or ``diverged``), and the first report after ``every_s`` seconds since the
    trial's last checkpoint (or its start in this process); ``every_s`` 0: every report. A resumed or retried
    trial continues from its last checkpoint, so it trains again at most about ``every_s`` seconds of epochs."""

    every_s: float = 30.0  # tune_app's default (search.plan.FALLBACK_SETTINGS)
    epochs: tuple[int, ...] | None = ()
    max_epochs: int | None = None

    def due(self, config: dict, metrics: dict, seconds: float) -> bool:
        from tune_app.trainable import planned_epochs

        if self.epochs is None or self.every_s <= 0 or seconds >= self.every_s:
            return True
        epoch = metrics.get("epoch")
        last = planned_epochs(config.get) or self.max_epochs
        return bool(metrics.get("early_stopped") or metrics.get("diverged") or epoch in self.epochs
                    or (last is not None and epoch is not None and epoch >= last))


class RayReporter:
    """``report`` becomes ``tune.report``, with a checkpoint when the ``Cadence`` says so; ``restore`` reads
    ``tune.get_checkpoint``."""

    def __init__(self, config: dict | None = None, cadence: Cadence = Cadence()) -> None:
        self.config = config or {}
        self.cadence = cadence
        self.saved_at = time.monotonic()  # when the report of the trial's last checkpoint came (or this process began)
        self.reports = 0
        self.first_epoch = None  # the epochs a restored trial had reported before (for trainables without "epoch")
        self.note = None  # said with the first report after a restore from an older checkpoint
        self.device_s = 0.0  # device-seconds so far (as the cost ledger counts them), reported as device_s

    def restore(self) -> dict | None:
        """The state of the trial's latest checkpoint; when that file does not load (cut short by a crash, a full
        disk, a bad copy), the newest older checkpoint of the trial that does, and the epochs after it are
        trained again; the first report says which file was bad (``RestoreNotes`` prints it once)."""
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        try:
            with checkpoint.as_directory() as path:
                return self._load(Path(path))
        except Exception as e:  # noqa: BLE001 - any unreadable file: fall back, and say which
            bad = f"{Path(checkpoint.path) / STATE_FILE} is unreadable ({type(e).__name__}: " \
                  f"{(str(e).splitlines() or [''])[0][:200]})"
        here = Path(checkpoint.path)
        older = sorted((p for p in here.parent.glob("checkpoint_*") if p.name < here.name), reverse=True)
        for candidate in older if here.is_dir() else ():  # a local run directory; object storage is not searched
            try:
                state = self._load(candidate)
            except Exception:  # noqa: BLE001 - that one is bad too: try the one before
                continue
            self.note = f"{bad}; resumed from {candidate.name} (after epoch {self.first_epoch})"
            return state
        self.note = f"{bad}; no older checkpoint loads, so the trial starts over"
        self.first_epoch = None
        return None

    def _load(self, folder: Path) -> dict:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
        epoch_file, device_file = folder / EPOCH_FILE, folder / DEVICE_FILE
        self.first_epoch = int(epoch_file.read_text()) if epoch_file.is_file() else \
            (state.get("epoch") if isinstance(state, dict) else None)
        self.device_s = float(device_file.read_text()) if device_file.is_file() else 0.0
        return state

    def report(self, metrics: dict, state: dict) -> None:
        self.reports += 1
        if "epoch" not in metrics:  # the schedulers count epochs: a trainable that does not say, counts reports
            metrics = {**metrics, "epoch": self.reports + (self.first_epoch or 0)}
        inject_faults(self.config, metrics.get("epoch"))
        # Which Ray node trained this epoch (on a cluster, where a trial ran and where it moved after a failure),
        # and the CPUs and share of a GPU it held there (what its time cost; --gpus-per-trial auto varies it).
        context = ray.get_runtime_context()
        held = context.get_assigned_resources()
        cpus, gpus = float(held.get("CPU", 0.0)), float(held.get("GPU", 0.0))
        seconds = metrics.get("epoch_time_s")
        if isinstance(seconds, (int, float)) and seconds == seconds:  # the ledger's rule: GPUs held, else CPUs
            self.device_s += float(seconds) * (gpus or cpus)
        metrics = {**metrics, "node_id": context.get_node_id(), "cpus": cpus, "gpus": gpus,
                   "device_s": self.device_s}
        if self.note:
            metrics[RESTORE_NOTE], self.note = self.note, None
        now = time.monotonic()  # the interval is between reports, not counting the time tune.report waits for Ray
        if not self.cadence.due(self.config, metrics, now - self.saved_at):
            tune.report(metrics)
            return
        self.saved_at = now
        with tempfile.TemporaryDirectory() as path:
            # written whole, then renamed: a crash mid-write never leaves a cut-short state.pt to resume from
            torch.save(state, os.path.join(path, STATE_FILE + ".part"))
            os.replace(os.path.join(path, STATE_FILE + ".part"), os.path.join(path, STATE_FILE))
            with open(os.path.join(path, EPOCH_FILE), "w") as f:
                f.write(str(metrics["epoch"]))
            with open(os.path.join(path, DEVICE_FILE), "w") as f:
                f.write(repr(self.device_s))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(path))


def ray_trainable(ref: str, code_paths: list[str] = (), repeats: int = 1, cadence: Cadence = Cadence()):
    """A Ray function trainable around the ``fit`` that ``ref`` ("module:function") names; ``data`` arrives
    through ``tune.with_parameters``. ``fit`` is imported in the worker, by name, so the user's code is found
    there: shipped by Ray's runtime_env, or, when tune_app did not start Ray, from ``code_paths`` where this
    machine has them. ``repeats`` > 1: each trial trains its configuration that many times and reports the mean
    (tune_app.repeats). ``cadence``: which reports carry a checkpoint."""
    module_name, attr = ref.split(":")

    def trainable(config: dict, data) -> None:
        from trainables.imports import import_attr
        from tune_app.usercode import use_paths

        use_paths(code_paths)
        fit = import_attr(ref, "trainable")
        if repeats > 1:
            from tune_app.repeats import fit_repeats

            fit_repeats(fit, config, data, RayReporter(config, cadence), repeats)
        else:
            fit(config, data, RayReporter(config, cadence))

    trainable.__name__ = module_name.rsplit(".", 1)[-1] if attr == "fit" else attr.rsplit(".", 1)[-1]
    return trainable


class RestoreNotes(tune.Callback):
    """Prints, on the driver, the note a trial's first report carries when it resumed from an older checkpoint."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(RESTORE_NOTE):
            print(f"tune_app: trial {trial}: {result[RESTORE_NOTE]}", flush=True)


class KeepReports(tune.Callback):
    """Keeps every report of a trial that restarts from a checkpoint (a crash retried, HyperBand unpausing it, PBT
    exploiting): Ray then replaces the trial's report files on the driver with the run directory's copies, which
    are as old as Ray's last save of its experiment state (up to TUNE_GLOBAL_CHECKPOINT_S, 10 s or more, and, with
    checkpoints now far apart, rarely brought forward by them), so the reports since were lost. This callback runs
    before Ray's loggers (Ray appends them to the sweep's callbacks) and first copies the driver's files, where
    they hold more, into the run directory."""

    def on_trial_start(self, iteration, trials, trial, **info):
        if not trial.checkpoint:  # a trial without one starts over, and Ray leaves its files as they are
            return
        import pyarrow.fs

        from tune_app.cluster.ray_private import trial_logs

        for local, filesystem, remote in trial_logs(trial):  # one file twice: the sizes are equal
            if not local.is_file():
                continue
            found = filesystem.get_file_info(remote)
            if found.type == pyarrow.fs.FileType.File and found.size < local.stat().st_size:
                pyarrow.fs.copy_files(str(local), remote, destination_filesystem=filesystem)


class RunDirUnwritable(Exception):
    """The run directory stopped being writable mid-sweep (see ``StopWhenUnwritable``)."""


class StopWhenUnwritable(tune.Callback):
    """A trial that fails while the run directory cannot be written to ends the sweep there, instead of Ray
    retrying every trial until its retries are spent: nothing more can be saved anyway. Ray's last experiment
    state stays as it was (the trials it lists as running are resumed) and so does every file written before;
    ``--resume`` continues once the directory is writable again. The sweep says so in one line
    (``cluster.console.WATCH`` holds the reason)."""

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._check()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._check()

    @staticmethod
    def _check() -> None:
        from tune_app.cluster.console import WATCH

        problem = WATCH.check()
        if problem is not None:
            raise RunDirUnwritable(problem)


class Upload(tune.Callback):
    """Copies the Optuna journal up to a sweep's ``uri`` while trials report (at most every
    storage.UPLOAD_EVERY_S) and all of tune_app's own files when the experiment ends, so a sweep resumed from the
    URI on another machine finds the searcher where it was."""

    def __init__(self, local: Path, uri: str) -> None:
        self.local, self.uri, self.last = local, uri, 0.0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from tune_app.cluster.storage import UPLOAD_EVERY_S, upload

        if time.monotonic() - self.last > UPLOAD_EVERY_S:
            upload(self.local, self.uri, (SPEC_FILE, JOURNAL_FILE))
            self.last = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info):
        from tune_app.cluster.storage import upload

        upload(self.local, self.uri, (JOURNAL_FILE,))

    def on_experiment_end(self, trials, **info):
        from tune_app.cluster.storage import upload

        upload(self.local, self.uri, (SPEC_FILE, JOURNAL_FILE, PLAN_FILE, GPU_PLAN_FILE))
