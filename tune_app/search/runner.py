"""Running a planned sweep: claim its run directory, join Ray, load the data once, fit the Tuner (new or
restored), then analyze; the exit code says how it ended (0 done, 1 no trial finished, 130 stopped and
resumable, 143 stopped by SIGTERM and resumable)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path

from tune_app.cluster import console
from tune_app.cluster.session import check_shared_storage, join_ray
from tune_app.errors import UsageError
from tune_app.rundir.layout import SPEC_FILE
from tune_app.rundir.reader import trial_counts
from tune_app.search.tuner import check_wandb_runs, checkpoint_cadence, new_tuner
from tune_app.sweep_data import OwnData, check_models, load_data
from tune_app.usercode import local_paths


def plan_table(space, config: dict, settings: dict, dataset, points=(), gpus=()) -> tuple[list[dict], str]:
    """Estimated cost of every configuration (see tune_app.cost.estimate), and the table that shows it, with the
    wall time projected through the scheduler, here and on ``gpus`` GPUs (tune_app.cost.schedule)."""
    import ray

    from tune_app.cost import estimate, schedule
    from tune_app.search import algorithms

    param_space = algorithms.grid_space(config) if settings["searcher"] == "grid" else config
    points = [{**config, **p} for p in points]  # --from-run's configurations come first
    configs = points + estimate.configurations(param_space, settings["num_samples"] - len(points), settings["seed"])
    trainable = space.trainable
    configs = [trainable_config(trainable, c) for c in configs]
    concurrency = trials_at_once(settings)
    print(f"tune_app: probing {len({estimate.cost_key(trainable, c) for c in configs})} distinct configurations "
          f"({estimate.PROBE_STEPS} steps each, {concurrency} at a time as the sweep will run them) to estimate "
          f"{len(configs)} trials...", flush=True)
    probes = estimate.probe_all(trainable, configs, ray.put(dataset.sweep_view()), len(dataset.y_train),
                            dataset.x_train.nbytes, settings["cpus_per_trial"], settings["gpus_per_trial"], concurrency,
                            local_paths(space.code))
    rows = estimate.estimate(trainable, configs, probes, len(dataset.y_train), settings.get("repeats", 1))
    return rows, estimate.table(rows, concurrency) + "\n" + schedule.projection(rows, settings, concurrency, gpus)


def trials_at_once(settings: dict) -> int:
    """How many trials the cluster runs at once: its CPUs and GPUs over a trial's, at most --max-concurrent."""
    import ray

    cluster = ray.cluster_resources()
    concurrency = min(cluster.get("CPU", 1) / settings["cpus_per_trial"],
                      cluster.get("GPU", 0) / settings["gpus_per_trial"] if settings["gpus_per_trial"] else math.inf,
                      settings.get("max_concurrent") or math.inf)
    return max(1, math.floor(concurrency))


PENDING_ENV = "TUNE_MAX_PENDING_TRIALS_PG"  # Ray Tune's limit on trials waiting for resources


@contextlib.contextmanager
def pending_trials(n: int | None):
    """Ray Tune lets a searcher (Optuna, HyperOpt, ...) keep one trial waiting for resources at a time, so a slot
    that frees while that trial waits for its worker stays empty, and a small sweep runs one trial at a time for
    stretches (docs/BENCHMARKS.md). As many waiting as run at once keep every slot busy. For the length of a
    sweep's fit, unless the user set it."""
    if n is None or PENDING_ENV in os.environ:
        yield
        return
    os.environ[PENDING_ENV] = str(n)
    try:
        yield
    finally:
        os.environ.pop(PENDING_ENV, None)


def auto_gpus(space, config: dict, settings: dict, dataset, run_dir: Path, resume: bool, plan_only: bool):
    """--gpus-per-trial auto: CPU trials on a cluster without GPUs; else every cost-relevant configuration is
    probed alone on a GPU (see gpu_share.gpu_plan) and each trial asks for its own configuration's fraction. The
    plan is kept in the run directory, so a resumed sweep asks for the same fractions without probing again.
    Returns (resources for tune.with_resources, settings with gpus_per_trial as the largest fraction)."""
    import ray

    from tune_app.cost import gpu_share
    from tune_app.rundir.layout import GPU_PLAN_FILE
    from tune_app.search import algorithms

    settings = dict(settings)
    if not ray.cluster_resources().get("GPU", 0):
        print("tune_app: --gpus-per-trial auto: the Ray cluster has no GPU; trials run on CPUs", flush=True)
        settings["gpus_per_trial"] = 0.0
        return {"cpu": settings["cpus_per_trial"], "gpu": 0}, settings
    saved = run_dir / GPU_PLAN_FILE
    if resume and saved.is_file():
        gpu_plan = json.loads(saved.read_text())
    else:
        param_space = algorithms.grid_space(config) if settings["searcher"] == "grid" else config
        print("tune_app: --gpus-per-trial auto: probing each configuration's GPU memory...", flush=True)
        gpu_plan = gpu_share.gpu_plan(space.trainable, param_space, settings["seed"], ray.put(dataset.sweep_view()),
                                 len(dataset.y_train), dataset.x_train.nbytes, settings["cpus_per_trial"],
                                 local_paths(space.code), settings.get("repeats", 1))
        if not plan_only:
            run_dir.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(gpu_plan, indent=1))
    print(gpu_share.gpu_table(gpu_plan), flush=True)
    settings["gpus_per_trial"] = max(r["fraction"] for r in gpu_plan["rows"])
    settings["gpus_shown"] = settings["gpus_per_trial"]
    return gpu_share.gpu_resources(space.trainable, gpu_plan, settings["cpus_per_trial"]), settings


def trainable_config(trainable, config: dict) -> dict:
    from trainables.params import resolve

    return resolve(trainable.PARAMS, config)


def sweep_provenance(dataset) -> dict:
    """What the sweep ran with, recorded when it starts (best_config.json carries it)."""
    from tune_app.integrations.provenance import git_commit, versions

    if isinstance(dataset, OwnData):  # the space's load_data(): tune_app does not know its shape
        return {"git_commit": git_commit(), "versions": versions(), "dataset": {"name": dataset.name}}
    return {"git_commit": git_commit(), "versions": versions(),
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint(), "train": len(dataset.y_train),
                        "val": len(dataset.y_val), "test": len(dataset.y_test), "val_fraction": dataset.val_fraction,
                        "split_seed": dataset.split_seed}}


def run(spec: dict, resume: bool) -> int:
    """Run the sweep ``spec`` describes (a new one, or ``resume``); the exit code: 0 done, 1 no trial finished,
    130 interrupted (resumable), 143 stopped by SIGTERM (resumable)."""
    from tune_app.search import algorithms
    from tune_app.spaces import load_space, with_objectives

    settings = spec["settings"]
    space = with_objectives(load_space(spec["space"], spec["overrides"], code=spec.get("code")),
                            *zip(*spec["objectives"]) if spec.get("objectives") else (None, None), "tune_app.json")
    params = space.trainable.PARAMS
    config = dict(space.param_space)
    if params is None or "max_epochs" in params:
        config["max_epochs"] = settings["max_epochs"]
    if params is None or "seed" in params:
        config.setdefault("seed", settings["seed"])
    if params is not None and "epochs" in params:  # every trial's config says its planned length (Optuna's study
        config.setdefault("epochs", params["epochs"].default)  # tells stopped from finished trials by it)
    points = spec.get("points", [])  # --from-run's configurations
    algorithms.check(settings, config, points)  # before any data is read or Ray started
    dataset = load_data(space, settings, spec.get("workdir"))
    check_models(space, dataset)
    from tune_app.integrations.wandb_runs import check_env

    check_env()  # before Ray's workers inherit the environment
    lock = None if spec.get("plan_only") or spec.get("run_uri") else claim(Path(spec["run_dir"]), resume)
    resume_line = f"continue with: python -m tune_app.search --resume {spec.get('run_uri') or spec.get('run_dir')}"
    try:
        from tune_app.cluster.ray_private import driver_keeps_sigterm, saved_state_keeps_every_stop

        driver_keeps_sigterm()  # TermAsInterrupt's handler stays in place until the driver has exited
        saved_state_keeps_every_stop()  # a trial stopped after its actor died is saved as stopped, not RUNNING
        started = join_ray(settings, spec.get("code"))
        with TermAsInterrupt(resume_line) as term:  # after ray.init, whose own SIGTERM handler it replaces
            # The watch lasts until Ray has shut down: Ray reports the failed trials' results nobody fetched as it ends.
            with console.WATCH.watching(None if spec.get("run_uri") else Path(spec["run_dir"])):
                try:
                    return run_on_ray(spec, resume, space, config, points, dataset, term)
                finally:
                    if started:  # a Ray tune_app started ends with the sweep: the next sweep here ships its code
                        import ray

                        ray.shutdown()
    finally:
        if lock is not None:
            release(lock, resume)


def claim(run_dir: Path, resume: bool):
    """The run directory, locked for this sweep (see tune_app.rundir.lock); a new sweep also needs it empty."""
    from tune_app.rundir.lock import RunLock

    lock = RunLock(run_dir, resume)
    lock.acquire()
    if not resume and any(run_dir.glob("experiment_state*.json")):
        lock.release()  # another sweep finished there between planning and now
        raise UsageError(f"{run_dir} already holds a sweep; continue it with --resume {run_dir}, or pick another "
                         f"--name")
    return lock


def release(lock, resume: bool) -> None:
    """Unlock; a new sweep that failed before writing anything leaves no directory behind (not even the
    --storage-path folder it made)."""
    from tune_app.rundir.lock import LOCK_FILE, OWNER_FILE

    lock.release()
    run_dir = lock.run_dir
    if not resume and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE, OWNER_FILE}:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        for folder in run_dir.parents if lock.created is not None and lock.created != run_dir else ():
            if folder == lock.created.parent or any(folder.iterdir()):
                break
            folder.rmdir()


def run_on_ray(spec: dict, resume: bool, space, config: dict, points: list, dataset, term=None) -> int:
    from ray import tune

    from tune_app.cluster.adapter import ray_trainable
    from tune_app.cluster.console import WATCH

    settings = spec["settings"]
    run_dir = Path(spec["run_dir"])
    run_uri = spec.get("run_uri")
    if not run_uri and not spec.get("plan_only"):
        check_shared_storage(run_dir.parent, str(run_dir.parent))
    if run_uri and not resume and not spec.get("plan_only"):
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # a working copy left from an older run at that URI
    resources = {"cpu": settings["cpus_per_trial"], "gpu": settings["gpus_per_trial"]}
    if settings["gpus_per_trial"] == "auto":
        resources, settings = auto_gpus(space, config, settings, dataset, run_dir, resume, spec.get("plan_only"))
    if spec.get("plan_only"):
        print(plan_table(space, config, settings, dataset, points, spec.get("plan_gpus", ()))[1])
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume and settings.get("estimate_cost"):
        rows, text = plan_table(space, config, settings, dataset, points)
        print(text, flush=True)
        from tune_app.rundir.layout import PLAN_FILE

        (run_dir / PLAN_FILE).write_text(json.dumps(rows, indent=1))
    trainable = tune.with_resources(tune.with_parameters(
        ray_trainable(space.trainable.ref, local_paths(spec.get("code")), settings.get("repeats", 1),
                      checkpoint_cadence(settings)),
        data=dataset.sweep_view()), resources)
    uploads = ()
    if run_uri:
        from tune_app.cluster import storage
        from tune_app.cluster.adapter import Upload

        uploads = (Upload(run_dir, run_uri),)
    if resume:
        tuner = tune.Tuner.restore(run_uri or str(run_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=bool(spec.get("retry_errored")))
        # (a restored Tuner keeps the callbacks it was made with, the uploader among them)
    else:
        spec["provenance"] = sweep_provenance(dataset)
        tuner = new_tuner(spec, space, config, trainable, run_dir, uploads)
        if run_uri:
            storage.upload(run_dir, run_uri, (SPEC_FILE,))
    begins = f", beginning with the top {len(points)} configurations of {spec['from_run']}" if points else ""
    print(f"tune_app: {'resuming' if resume else 'starting'} sweep {settings['name']!r} of space {spec['space']!r}: "
          f"{spec['expected_trials']} trials{begins}, {settings['searcher']} + {settings['scheduler']}, "
          f"{settings['cpus_per_trial']:g} CPU / {settings.get('gpus_shown', settings['gpus_per_trial']):g} GPU each, "
          f"into "
          f"{run_uri or run_dir}", flush=True)
    try:
        # grid and random: Ray's own generator, which keeps plenty waiting; --max-concurrent: Ray keeps that many
        searcher_waits = settings["searcher"] not in ("grid", "random") and not settings.get("max_concurrent")
        with pending_trials(trials_at_once(settings) if searcher_waits else None):
            results = tuner.fit()
    except Exception:
        if WATCH.problem is None:
            raise
    if WATCH.problem is not None:
        return stopped_unwritable(spec, run_dir, WATCH.problem)
    if term is not None and term.received:
        return stopped_by_sigterm(spec, run_dir, run_uri, term.resume_line)

    from tune_app import analyze

    if run_uri:
        storage.download(run_uri, run_dir)  # the trials' results, as Ray left them there
    try:
        analyze.run(run_dir)
        found_best = True
    except UsageError as e:  # every trial failed: the trials table says why, and the sweep can be resumed
        print(f"tune_app: {e}", file=sys.stderr)
        found_best = False
    check_wandb_runs(run_dir, settings)
    if run_uri:
        storage.upload(run_dir, run_uri)
        print(f"tune_app: results in {run_uri}/summary (working copy {run_dir})", flush=True)
    from tune_app.cost.budget import read_budget

    budget = read_budget(run_dir) or {}
    finished, unfinished = trial_counts(run_dir, results.num_terminated)
    if budget.get("stopped_at") and not unfinished:  # no trial made was left unfinished: the budget ended it
        print(f"tune_app: stopped by --budget-hours {budget['hours']:g}: {budget['trials_started']} of "
              f"{spec['expected_trials']} trials started, {budget['spent_s'] / 3600:.3g} device-hours spent",
              flush=True)
    elif finished < spec["expected_trials"] or (budget.get("stopped_at") and unfinished):
        print(f"Interrupted with {finished} of {spec['expected_trials']} trials finished; continue with: "
              f"python -m tune_app.search --resume {run_uri or run_dir}", file=sys.stderr)
        return 130
    return 0 if found_best else 1


def stopped_unwritable(spec: dict, run_dir: Path, problem: str) -> int:
    """A run directory that stopped being writable ended the sweep (cluster.adapter.StopWhenUnwritable): one line,
    and 130, as for any sweep that stopped before its end and can be resumed."""
    finished, _ = trial_counts(run_dir)
    spec["stopped_because"] = f"{run_dir} stopped being writable ({problem})"
    print(f"tune_app: error: {spec['stopped_because']}, so the sweep stopped with {finished} of "
          f"{spec['expected_trials']} trials finished; nothing finished is lost: make it writable again, then "
          f"continue with: python -m tune_app.search --resume {run_dir}", file=sys.stderr, flush=True)
    return 130


TERM_GRACE_ENV = "TUNE_APP_TERM_GRACE_S"  # seconds from SIGTERM to the driver's exit at the latest (default 20)


class TermAsInterrupt:
    """SIGTERM during the fit (Slurm's scancel and time limit, ``kill``, a container's stop) ends the sweep as Ctrl+C
    does: Ray Tune stops the trials, saves its experiment state once more and returns. Without this, the handler
    Ray installs in the driver aborts the process at SIGTERM, with no last save. Later SIGTERMs change nothing (Slurm
    and the job script may both send one; the grace below bounds the stop); a second Ctrl+C stops at once. Only in
    the main thread, where Python runs signal handlers.

    A batch system signals every process of the job at once, Ray's own among them, and Ray Tune's calls into a Ray
    that is shutting down can block for a minute, in C, where Python's handler does not run. So a thread learns of
    the signal through Python's wakeup file descriptor (written by the C-level handler at once) and, whatever Ray
    does, the driver exits with 143 and the resume line TUNE_APP_TERM_GRACE_S seconds (default 20, within Slurm's
    default KillWait of 30) after the signal. Once one SIGTERM came, later ones are ignored until the process ends.
    The run directory holds Ray Tune's last saved experiment state and every trial's checkpoints, so --resume
    continues."""

    def __init__(self, resume_line: str = ""):
        self.received, self.resume_line, self.armed = False, resume_line, False
        self.done = threading.Event()

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self.armed = True
        threading.Thread(target=self._watch, daemon=True, name="tune_app-sigterm").start()
        return self

    def _handle(self, signum, frame):
        if self.received:
            return
        self.received = True
        handler = signal.getsignal(signal.SIGINT)  # Ray Tune's while it fits, then Python's KeyboardInterrupt
        (handler if callable(handler) else signal.default_int_handler)(signal.SIGINT, frame)

    def _watch(self):
        try:
            while signal.SIGTERM not in (read := os.read(self.read_fd, 64)):
                if not read:  # the context ended
                    return
            if self.done.wait(float(os.environ.get(TERM_GRACE_ENV, 20))):
                return
        finally:
            os.close(self.read_fd)  # after the context gave the wakeup fd back: later signals write nowhere
        print(f"tune_app: stopped by SIGTERM; Ray did not stop in time; {self.resume_line}", file=sys.stderr,
              flush=True)
        os._exit(143)

    def __exit__(self, *exc):
        if self.armed:
            signal.set_wakeup_fd(self.previous_fd)
            # After a SIGTERM the driver is on its way out with 143: the job script passing Slurm's signal on, or a
            # batch system's repeats, must not kill it now (at exit Python resets its handlers to the default).
            signal.signal(signal.SIGTERM, signal.SIG_IGN if self.received else
                          signal.SIG_DFL if self.previous is None else self.previous)
            os.close(self.write_fd)  # ends the watching thread's read
        self.done.set()


def stopped_by_sigterm(spec: dict, run_dir: Path, run_uri: str | None, resume_line: str) -> int:
    """The sweep stopped at SIGTERM: no analysis (a batch system kills the job soon after, Slurm 30 s later by
    default), the resume line, and 143."""
    if run_uri:
        from tune_app.cluster import storage

        storage.upload(run_dir, run_uri)
    finished, _ = trial_counts(run_dir)
    print(f"tune_app: stopped by SIGTERM with {finished} of {spec['expected_trials']} trials finished; {resume_line}",
          file=sys.stderr, flush=True)
    return 143

