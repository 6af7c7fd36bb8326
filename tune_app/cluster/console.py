"""Ray Tune's and W&B's console output as tune_app wants it, and the watch on a sweep's run directory.

``quiet()`` sets the variables Ray and W&B read when they are imported or a run starts (Ray's slow-step threshold
is read as ``ray.tune`` is imported), so each command calls it before it imports Ray: ``tune_app.search``,
``tune_app.retrain`` and ``tune_app.analyze`` do so as their package is imported. setdefault leaves anything the
user set alone.
"""
import contextlib
import logging
import os

from tune_app.cluster.ray_private import TOKEN_AUTH_LOGGER


def quiet() -> None:
    """Ray's and W&B's console settings for tune_app's commands."""
    # Ray's compact table reporter (trials done/running/pending, best so far, elapsed time) is the legacy output
    # path; the new one cannot show parameters and the best trial.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # A checkpoint every epoch is the point (ASHA, PBT and --resume continue mid-trial); Ray's warning about the
    # resulting experiment-state snapshots is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune warns whenever a step of its loop (callbacks, experiment checkpoints) takes over 0.5 s, which on a small
    # machine some do; warn only about slower steps.
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "3")
    # W&B's banners (a dozen lines per run: version, sync hints, run links) would bury tune_app's own lines, a
    # retrain's in particular; tune_app says where offline runs are and how to sync them.
    os.environ.setdefault("WANDB_SILENT", "true")
    # Ray 2.5x+ warns on every start of a local Ray that it uses token authentication (a line before any of
    # tune_app's own); the setting itself is left as Ray chose it.
    logging.getLogger(TOKEN_AUTH_LOGGER).setLevel(logging.ERROR)


class RunDirWatch(logging.Filter):
    """A run directory that stops being writable mid-sweep (its permissions changed, its disk was remounted
    read-only or filled up) fails every trial's next checkpoint, each with a page of Ray's traceback. While a sweep
    runs this watch sits on Ray's log handler: an error Ray logs makes it look whether the run directory can
    still be written to, and once it cannot, Ray's records are dropped (the sweep ends, and tune_app says why in
    one line). ``cluster.adapter.StopWhenUnwritable`` ends the sweep at the first failed trial."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.run_dir = None
        self.problem: str | None = None

    def start(self, run_dir) -> None:
        """Watch ``run_dir`` (None: a sweep into object storage, where there is nothing local to watch)."""
        self.active, self.run_dir, self.problem = True, run_dir, None
        for handler in logging.getLogger("ray").handlers:
            if self not in handler.filters:
                handler.addFilter(self)

    @contextlib.contextmanager
    def watching(self, run_dir):
        """Watch ``run_dir`` for the length of a ``with`` block (see start)."""
        self.start(run_dir)
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        """After Ray has shut down (it reports the failed trials' results nobody fetched as it ends)."""
        self.active, self.run_dir, self.problem = False, None, None

    def check(self) -> str | None:
        if self.problem is None and self.run_dir is not None:
            from tune_app.rundir.lock import unwritable

            self.problem = unwritable(self.run_dir)
        return self.problem

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.active or record.levelno < logging.WARNING:
            return True
        if noise(record):
            return False
        if record.levelno >= logging.ERROR:
            self.check()
        return self.problem is None


def noise(record: logging.LogRecord) -> bool:
    """Ray's records that say nothing a user of tune_app can act on."""
    message, error = str(record.msg), record.exc_info[1] if record.exc_info else None
    # Ray's experiment state lags its trials by a few seconds: a sweep that ended without a last save (a crash, a
    # run directory that stopped being writable) is resumed with a list of checkpoints that names some already
    # deleted; Ray deletes them again on a trial's first new checkpoint, logs the missing folder as an error with
    # a traceback, and carries on as it should.
    if message.startswith("Trial %s: Error handling checkpoint") and isinstance(error, FileNotFoundError):
        return True
    # Resuming, Ray reads the results so far of every trial, and warns about the ones queued but not started
    # (their folder exists, with no result.json yet).
    if message.startswith("Failed to fetch metrics for"):
        failures = message.splitlines()[1:]
        return bool(failures) and all("result.json and progress.csv were not found" in f for f in failures)
    return False


WATCH = RunDirWatch()
