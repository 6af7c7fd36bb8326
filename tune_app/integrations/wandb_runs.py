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
    """A W&B run of tune_app's own (a summary, a retrain seed, a single training), not a sweep trial's (those
    runs are wandb_trials'): W&B's INFO logging kept off the console, several runs per process allowed."""
    import wandb

    logging.getLogger("wandb").setLevel(logging.WARNING)  # its INFO lines would flood the console
    return wandb.init(project=project or "tune_app", entity=entity, group=group, name=name, job_type=job_type,
                      dir=dir, mode=mode, reinit="create_new", config=config)


def wandb_callback(mode: str | None, project: str, entity: str | None, group: str, run_dir: Path | None):
    """The callback for ``RunConfig``, or None when W&B is disabled."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return None
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"  # for every W&B run of this process
        where = f"{run_dir}/wandb/offline-run-*" if run_dir is not None else "wandb/offline-run-*"
        print(f"tune_app: W&B runs are kept offline; upload them later with: wandb sync {where}", flush=True)
    from tune_app.integrations.wandb_trials import WandbTrialRuns

    # A trial's run has the trial's id: a trial continued by --resume logs to the same W&B run.
    return WandbTrialRuns(mode, project, group, entity, dir=str(run_dir) if run_dir is not None else None)
