"""One sweep per run directory: a lock held for the sweep's whole life.

The lock is an OS file lock (``filelock``: ``flock`` on Linux) on ``<run dir>/.tune_app.lock``, so it
ends with the process that holds it: a sweep killed outright leaves nothing that blocks ``--resume``.
Next to it ``.tune_app.owner.json`` says who holds it (host, pid, start time), for the one line a second
sweep, ``analyze`` or ``retrain`` of a running sweep gets.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import filelock

from tune_app.errors import UsageError

LOCK_FILE = ".tune_app.lock"
OWNER_FILE = ".tune_app.owner.json"


def _owner(run_dir: Path) -> str:
    try:
        o = json.loads((run_dir / OWNER_FILE).read_text())
        return f"the sweep started {o['started']} on {o['host']} (pid {o['pid']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another sweep"


class RunLock:
    """Held from before Ray starts until the sweep (and its analysis) ends."""

    def __init__(self, run_dir: Path, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.fix = "make it writable to resume it" if resume else "give a --storage-path you can write to"
        self.lock = filelock.FileLock(str(self.run_dir / LOCK_FILE), timeout=0)
        self.created: Path | None = None  # the outermost folder acquire() made (the run dir, or --storage-path)

    def acquire(self) -> None:
        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self.created = missing[-1] if missing else None
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the run directory {self.run_dir} ({e.strerror}); give a --storage-path "
                             f"you can write to") from None
        try:
            self.lock.acquire()
        except filelock.Timeout:
            check_free(self.run_dir)
            raise UsageError(f"{self.run_dir} is in use by another sweep; pick another --name") from None
        except OSError as e:
            raise UsageError(f"cannot lock the run directory {self.run_dir} ({e.strerror}); {self.fix}") from None
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        (self.run_dir / OWNER_FILE).write_text(json.dumps(owner))

    def release(self) -> None:
        if self.lock.is_locked:
            try:
                (self.run_dir / OWNER_FILE).unlink(missing_ok=True)
            except OSError:  # a run directory that is no longer writable: a stale owner file names no holder
                pass
            self.lock.release()


def holder(run_dir) -> str | None:
    """Who holds the run directory's lock now ("the sweep started ... (pid N)"), or None when nobody does."""
    run_dir = Path(run_dir)
    if not (run_dir / LOCK_FILE).is_file():
        return None
    probe = filelock.FileLock(str(run_dir / LOCK_FILE), timeout=0)
    try:
        probe.acquire()
    except filelock.Timeout:
        return _owner(run_dir)
    except OSError:
        return None  # a read-only copy of a run: nothing can be running in it
    probe.release()
    return None


def check_free(run_dir) -> None:
    """A sweep (new or resumed) into a directory another sweep is running in: one line."""
    owner = holder(run_dir)
    if owner is not None:
        raise UsageError(f"{run_dir} is in use by {owner}; wait for it to end, or pick another --name")


def check_idle(run_dir, command: str) -> None:
    """``command`` (analyze, retrain) on a sweep that is still running: one line."""
    owner = holder(run_dir)
    if owner is not None:
        raise UsageError(f"{run_dir}: {owner} is still running there; {command} it when it ends (or stop it with "
                         f"Ctrl+C)")


def check_writable(run_dir, command: str, what: str) -> None:
    """``command`` (analyze, retrain) writes ``what`` into the run directory: one line when it cannot."""
    problem = unwritable(run_dir)
    if problem is not None:
        raise UsageError(f"{run_dir} is not writable ({problem}) and {command} writes {what} there; make it writable, "
                         f"or {command} a copy of it (cp -r {run_dir} SOMEWHERE)")


def unwritable(folder) -> str | None:
    """Why nothing can be written in ``folder`` ("Permission denied", "Read-only file system", "No space left on
    device"), or None when a small file can be written there and removed."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".tune_app.probe.")
        try:
            os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as e:
        return e.strerror or type(e).__name__
    return None
