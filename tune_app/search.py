"""Run a hyperparameter search: ``python -m tune_app.search --space digits``.

Everything the user can get wrong is checked before Ray starts (space, overrides,
settings, data); then the driver loads the data once, Ray Tune runs the trials,
and the results become ``<run dir>/summary/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

from tune_app import ray_output  # noqa: F401  (before Ray is imported)
from tune_app.cluster import check_shared_storage, join_ray
from tune_app.errors import OneLineParser, UsageError, file_error
from tune_app.layout import SPEC_FILE
from tune_app.settings import SweepSettings
from tune_app.spaces import DEFAULT_KEYS, list_spaces
from tune_app.sweep_data import OwnData, check_models, load_data
from tune_app.tuning import SCHEDULERS, SEARCHERS
from tune_app.usercode import is_path, local_paths

SETTING_FLAGS = tuple(DEFAULT_KEYS)
# What a space's DEFAULTS may leave out (max_epochs falls back to the space's largest epochs).
FALLBACK_SETTINGS = {"searcher": "optuna", "scheduler": "fifo", "num_samples": 10, "cpus_per_trial": 1,
                     "gpus_per_trial": 0, "grace_period": 1, "reduction_factor": 3, "max_failures": 2,
                     "keep_checkpoints": 2, "trial_timeout": 0, "reuse_actors": True, "budget_hours": 0}
TRANSFER_TOP_K = 3  # --from-run without --top-k: study 3's budget on MNIST
USER_MAX_EPOCHS = 100  # the schedulers' horizon (max_t) for a trainable with no epochs key and no max_epochs


def gpus_arg(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a number such as 0.25, or auto") from None


def build_parser(prog: str = "python -m tune_app.search") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--space", help="search space module in search_spaces/ (see --list-spaces)")
    p.add_argument("--list-spaces", action="store_true", help="list the spaces and exit")
    p.add_argument("--plan", action="store_true",
                   help="print each configuration's parameters, estimated memory and time (measured by a short "
                        "probe) and the total, then exit without training")
    p.add_argument("--searcher", choices=SEARCHERS.names(), help="default: the space's DEFAULTS, else optuna")
    p.add_argument("--scheduler", choices=SCHEDULERS.names(), help="default: the space's DEFAULTS, else fifo")
    p.add_argument("--num-samples", type=int,
                   help="trials to run (grid: repeats of the grid); default: the space's DEFAULTS, else 10")
    p.add_argument("--max-epochs", type=int, help="epochs cap per trial; the schedulers' max_t")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=gpus_arg,
                   help="fractions such as 0.25 pack trials per GPU; auto measures each configuration's peak GPU "
                        "memory in a short probe and packs by it (CPU trials where the cluster has no GPU)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default: as resources allow)")
    p.add_argument("--max-failures", type=int,
                   help="retry a crashed trial this many times, each from its last checkpoint (default 2)")
    p.add_argument("--keep-checkpoints", type=int,
                   help="checkpoints kept per trial: the best N by the metric, and always the latest (default 2)")
    p.add_argument("--trial-timeout", type=float,
                   help="stop a trial that reports nothing for this many seconds (status timeout; retried as a "
                        "crash is); default 0 = never")
    p.add_argument("--budget-hours", type=float,
                   help="start no new trial once the sweep has spent this many device-hours (wall time x the GPUs "
                        "each trial holds, or its CPUs without GPUs); running trials finish. Default 0 = no budget")
    p.add_argument("--reuse-actors", action=argparse.BooleanOptionalAction, default=None,
                   help="train the next trial in a finished trial's worker process (default on; --no-reuse-actors "
                        "starts a fresh process per trial)")
    p.add_argument("--retry-errored", action="store_true",
                   help="with --resume: run the trials that ended in error again, from their last checkpoint")
    p.add_argument("--address", help="Ray cluster to join: auto, or ray://host:10001 (default: start a local Ray)")
    p.add_argument("--storage-path", default="./runs",
                   help="where run directories go: a directory (shared by all machines for a multi-node run), "
                        "s3://bucket/path or gs://bucket/path (default ./runs)")
    p.add_argument("--name", help="run directory name (default <space>-<date>-<time>)")
    p.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR",
                   help="continue an interrupted sweep: a run directory or its s3:// / gs:// URI, or the one "
                        "--name names")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a space entry; a list (key=[a,b]) becomes a searched choice")
    p.add_argument("--from-run", metavar="RUN_DIR",
                   help="begin with the top configurations of this finished sweep (same trainable), restricted "
                        "to the keys this space searches")
    p.add_argument("--top-k", type=int, help=f"how many configurations --from-run transfers (default "
                                             f"{TRANSFER_TOP_K}); --num-samples defaults to it")
    p.add_argument("--data-dir", default="./data", help="dataset files (default ./data)")
    p.add_argument("--seed", type=int,
                   help="searcher seed, and the trials' seed where the space sets none (default 0)")
    p.add_argument("--wandb-project", default="tune_app")
    p.add_argument("--wandb-entity")
    p.add_argument("--wandb-mode", choices=("online", "offline", "disabled"),
                   help="default: online with an API key, offline without")
    return p


# ---------------------------------------------------------------- planning (no Ray)

def check_settings(s: dict) -> None:
    for key, registry in (("searcher", SEARCHERS), ("scheduler", SCHEDULERS)):
        if s.get(key) not in registry:
            raise UsageError(f"{key} {s.get(key)!r}: choose one of {', '.join(registry.names())}")
    rules = {
        "num_samples": (1, "at least 1"), "max_epochs": (1, "at least 1"), "grace_period": (1, "at least 1"),
        "reduction_factor": (2, "at least 2"), "max_concurrent": (1, "at least 1"),
        "cpus_per_trial": (1e-9, "more than 0"), "gpus_per_trial": (0, "0 or more"),
        "max_failures": (0, "0 or more"), "keep_checkpoints": (1, "at least 1"), "trial_timeout": (0, "0 or more"),
        "budget_hours": (0, "0 (no budget) or more"),
    }
    for key, (low, text) in rules.items():
        value = s.get(key)
        if key == "gpus_per_trial" and value == "auto":
            continue
        if value is not None and not math.isfinite(value):
            raise UsageError(f"--{key.replace('_', '-')} {value:g}: must be a finite number, {text}")
        if value is not None and value < low:
            raise UsageError(f"--{key.replace('_', '-')} {value:g}: must be {text}")
    gpus = s["gpus_per_trial"]
    if gpus != "auto" and gpus > 1 and gpus != int(gpus):
        raise UsageError(f"--gpus-per-trial {gpus:g}: use a fraction up to 1 or a whole number of GPUs")


def resolve_run_dir(args) -> tuple[Path, str | None]:
    """(the run directory on this machine, the run's URI when it lives in object storage, else None)."""
    from tune_app import storage

    if isinstance(args.resume, str):
        where, flag = args.resume, "--resume"
    elif args.resume and not args.name:
        raise UsageError("--resume needs the run directory (--resume runs/NAME) or --name NAME")
    elif storage.is_uri(args.storage_path):
        storage.check_scheme(args.storage_path, "--storage-path")
        where, flag = storage.join(args.storage_path, args.name), "--storage-path"
    else:
        return (Path(args.storage_path).expanduser() / args.name).resolve(), None
    if not storage.is_uri(where):
        return Path(where).expanduser().resolve(), None
    if storage.check_scheme(where, flag) == "file":
        return storage.local_path(where), None
    return storage.mirror_dir(where), where.rstrip("/")


def check_name(name: str | None) -> None:
    """A run directory's name: one folder inside --storage-path, never a path out of it."""
    if name is None:
        return
    if not name.strip() or name in (".", "..") or "/" in name or os.sep in name or name.startswith("~"):
        raise UsageError(f"--name {name!r}: give a plain folder name (no '/', not '.' or '..'); the run directory is "
                         f"--storage-path/NAME")


def storage_is_uri(path: str) -> bool:
    from tune_app import storage

    return storage.is_uri(path)


def check_against_space(space, args: SweepSettings) -> None:
    """Settings that contradict the space: a validation metric with no validation split, a GPU device with no
    GPU asked for."""
    from tune_app.spaces import domain_values

    params = space.trainable.PARAMS or {}
    if "val_fraction" in params and space.metric.startswith("val_") and space.constant("val_fraction") == 0:
        raise UsageError(f"val_fraction=0 leaves no validation split, and the space ranks by {space.metric}: give "
                         f"val_fraction > 0 (the default is {params['val_fraction'].default:g})")
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else space.defaults.get("gpus_per_trial", 0)
    if "device" in params and "cuda" in domain_values(space.space.get("device", "auto")) and gpus == 0:
        raise UsageError("device=cuda needs a GPU per trial: give --gpus-per-trial (a fraction such as 0.25, or "
                         "auto), or device=auto")


def plan_resume(args: SweepSettings) -> dict:
    run_dir, run_uri = resolve_run_dir(args)
    if run_uri:
        from tune_app import storage

        storage.check_writable(run_uri, "--resume")
        storage.download(run_uri, run_dir)  # spec, results and searcher state; Ray reads checkpoints from there
    spec_path = run_dir / SPEC_FILE
    from tune_app.runlock import check_free

    check_free(run_dir)
    if not spec_path.is_file() or not any(run_dir.glob("experiment_state*.json")):
        raise UsageError(f"--resume: {run_uri or run_dir} holds no tune_app sweep (no {SPEC_FILE} and Ray state); "
                         f"start one with --space NAME --name NAME")
    from tune_app.rundir import read_json

    spec = read_json(spec_path, "restore it from a copy (it records the sweep's space and settings)")
    saved = {"space": spec["space"], **spec["settings"]}
    given = {k: getattr(args, k) for k in ("space", "seed", *SETTING_FLAGS) if getattr(args, k, None) is not None}
    if isinstance(given.get("space"), str) and is_path(given["space"]):
        given["space"] = str(Path(given["space"]).expanduser().resolve())
    changed = sorted(k for k, v in given.items() if saved.get(k) != v)
    changed += sorted(k for k, v in args.set.items() if spec["overrides"].get(k) != v)
    transfer = {"from_run": str(Path(args.from_run).expanduser().resolve()) if args.from_run else None,
                "top_k": args.top_k}
    changed += [k for k, v in transfer.items() if v is not None and spec.get(k) != v]
    if changed:
        raise UsageError(f"--resume continues the sweep as it was started; these differ: {', '.join(changed)} "
                         f"(start a new sweep with another --name to change them)")
    spec["run_dir"], spec["run_uri"] = str(run_dir), run_uri
    return spec


def plan_new(args: SweepSettings) -> dict:
    from tune_app.spaces import load_space

    if not args.space:
        raise UsageError(f"--space is required; known spaces: {', '.join(list_spaces())}")
    if args.top_k is not None and not args.from_run:
        raise UsageError("--top-k needs --from-run RUN_DIR, the sweep whose top configurations to begin with")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k}: must be at least 1")
    check_name(args.name)
    if args.from_run and not storage_is_uri(args.from_run) and not Path(args.from_run).expanduser().is_dir():
        raise UsageError(f"--from-run {args.from_run}: no such directory; give a finished sweep's run directory")
    space = load_space(args.space, args.set)
    check_against_space(space, args)
    settings = {**FALLBACK_SETTINGS, "max_epochs": max_epochs_of(space), **space.defaults}
    if space.trainable.COST_KEYS is None:
        probes = [flag for flag, on in (("--plan", args.plan), ("--gpus-per-trial auto", args.gpus_per_trial == "auto"),
                                        ("estimate_cost", space.defaults.get("estimate_cost"))) if on]
        if probes:
            raise UsageError(f"{probes[0]} probes the built-in trainers' cost keys; trainable {space.trainable.name} "
                             f"has none: give --gpus-per-trial a number")
    for key in SETTING_FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if args.searcher == "grid" and args.num_samples is None:
        settings["num_samples"] = 1  # the grid itself defines the trials
    top_k = TRANSFER_TOP_K if args.top_k is None else args.top_k
    if args.from_run and args.num_samples is None:
        settings["num_samples"] = top_k  # the budget is the transferred configurations
    check_settings(settings)
    transferred = transfer(args.from_run, top_k, space, settings) if args.from_run else {}
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    args = dataclasses.replace(args, name=name)
    run_dir, run_uri = resolve_run_dir(args)
    if run_uri and not args.plan:
        from tune_app import storage

        storage.check_writable(run_uri, "--storage-path")
        taken = storage.exists(run_uri, SPEC_FILE)
    else:
        from tune_app.runlock import check_free

        check_free(run_dir)
        taken = any(run_dir.glob("experiment_state*.json"))  # a spec alone: a start that never ran a trial
    if not args.plan and taken:
        raise UsageError(f"{run_uri or run_dir} already holds a sweep; continue it with --resume {run_uri or run_dir}, "
                         f"or pick another --name")
    return {
        "space": space.ref, "code": space.code, "overrides": space.overrides, "run_dir": str(run_dir),
        "run_uri": run_uri, "workdir": os.getcwd(),
        **transferred,
        "options": args.to_json(),
        "settings": {**settings, "seed": args.seed or 0, "name": name, "data_dir": str(Path(args.data_dir).resolve()),
                     "address": args.address, "wandb_project": args.wandb_project,
                     "wandb_entity": args.wandb_entity, "wandb_mode": args.wandb_mode},
    }


def transfer(from_run: str, k: int, space, settings: dict) -> dict:
    """The k best configurations of the sweep `from_run`, as points this space's searcher evaluates first:
    each holds the keys this space searches (what it fixes stays as it is), with values it can take."""
    from tune_app.analyze import top_configs
    from tune_app.tuning import check, point_value

    if settings["num_samples"] < k:
        raise UsageError(f"--num-samples {settings['num_samples']}: fewer than the {k} configurations --from-run "
                         f"transfers; give at least {k}, or --top-k {settings['num_samples']}")
    try:
        sweep, top = top_configs(from_run, k)
    except UsageError as e:
        raise UsageError(str(e) if str(e).startswith("--") else f"--from-run {from_run}: {e}") from None
    source = sweep.space
    if source.trainable.ref != space.trainable.ref:
        raise UsageError(f"--from-run {from_run}: that sweep's space {source.name} trains {source.trainable.name}, "
                         f"space {space.name} trains {space.trainable.name}; configurations transfer only "
                         f"between spaces of one trainable")
    defaults = {key: p.default for key, p in (space.trainable.PARAMS or {}).items()}
    points = []
    for trial in top["trials"]:
        config = {**defaults, **trial["config"]}  # a key the source space left out ran with its default
        point = {}
        for key in space.searched:
            try:
                point[key] = point_value(space.space[key], config[key])
            except ValueError as e:
                takes, widened = e.args
                raise UsageError(f"--from-run {from_run}: trial {trial['trial_name']} ({trial['trial_id']}) has "
                                 f"{key}={config[key]}, which space {space.name} cannot take ({takes}); widen it "
                                 f"with --set {key}=[{','.join(map(str, widened))}]") from None
        points.append(point)
    check(settings, space.space, points)
    return {"from_run": str(sweep.path), "top_k": k, "from_trials": [t["trial_id"] for t in top["trials"]],
            "points": points}


def max_epochs_of(space) -> int:
    from tune_app.spaces import domain_values

    epochs = space.constant("epochs")
    if epochs is None:  # a trainable of the user's without an epochs key: its DEFAULTS' max_epochs, else this
        return USER_MAX_EPOCHS
    return int(max(domain_values(epochs)))


def expected_trials(param_space: dict, num_samples: int) -> int:
    grid = [len(v["grid_search"]) for v in param_space.values() if isinstance(v, dict) and "grid_search" in v]
    return num_samples * math.prod(grid)


# ---------------------------------------------------------------- running (Ray)

def trial_name(trainable: str, trial) -> str:
    from tune_app.trainable import named

    return named(trainable).run_name(trial.config)


def trial_dirname(trainable: str, trial) -> str:
    return f"{trial_name(trainable, trial)}_{trial.trial_id}"[:120]


def new_tuner(spec: dict, space, config: dict, trainable, run_dir: Path, extra_callbacks=()):
    """A Tuner for a new sweep; writes the sweep's spec (what --resume reads back)."""
    from ray import tune

    from tune_app import tuning
    from tune_app.budget import wrap_scheduler
    from tune_app.ray_adapter import RestoreNotes, StopWhenUnwritable
    from tune_app.wandb_setup import wandb_callback

    s = spec["settings"]
    searched = {k: space.space[k] for k in space.searched}
    search_alg, scheduler, param_space = tuning.build(s, config, searched, run_dir, spec.get("points", []))
    budget = sweep_budget(s, run_dir)
    spec["expected_trials"] = expected_trials(param_space, s["num_samples"])
    spec.update(metric=space.metric, mode=space.mode, searched=list(space.searched))
    (run_dir / SPEC_FILE).write_text(json.dumps({k: v for k, v in spec.items() if k not in ("run_dir", "run_uri")},
                                                indent=2))
    callback = wandb_callback(s["wandb_mode"], s["wandb_project"], s["wandb_entity"], s["name"], run_dir)
    oom = oom_retry(s["cpus_per_trial"]) if s["gpus_per_trial"] == "auto" else None
    callbacks = [c for c in (StopWhenUnwritable(), callback, trial_timeout(s.get("trial_timeout") or 0),
                             tuning.scheduler_state(scheduler), oom, budget, RestoreNotes(), *extra_callbacks)
                 if c is not None]
    reporter = tune.CLIReporter(
        parameter_columns=space.searched,
        metric_columns={"epoch": "epoch", "train_loss": "train_loss", space.metric: space.metric,
                        "epoch_time_s": "s/epoch"},
        sort_by_metric=True, max_report_frequency=15, max_progress_rows=12)
    module = space.trainable.name
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, search_alg=search_alg, scheduler=wrap_scheduler(scheduler, budget),
            num_samples=s["num_samples"], max_concurrent_trials=s.get("max_concurrent"),
            # A finished trial's worker process trains the next one with the same resources: a new process
            # per trial (imports, torch's first optimizer) costs seconds, more than a small model's epochs.
            reuse_actors=s.get("reuse_actors", True),
            trial_name_creator=functools.partial(trial_name, module),
            trial_dirname_creator=functools.partial(trial_dirname, module)),
        run_config=tune.RunConfig(
            name=run_dir.name, storage_path=spec["run_uri"].rsplit("/", 1)[0] if spec.get("run_uri")
            else str(run_dir.parent), callbacks=callbacks,
            progress_reporter=reporter, verbose=1,
            checkpoint_config=checkpoint_config(s, space.metric, space.mode),
            failure_config=tune.FailureConfig(max_failures=s.get("max_failures", 2))))


def check_wandb_runs(run_dir: Path, s: dict) -> None:
    """Every trial that reported must have a W&B run holding its history; say which ones W&B lost (their results
    are in the run directory all the same)."""
    trials_file = run_dir / "summary" / "trials.parquet"
    if s.get("wandb_mode") == "disabled" or not (run_dir / "wandb").is_dir() or not trials_file.is_file():
        return
    import pandas as pd

    from tune_app.wandb_files import missing_runs

    trials = pd.read_parquet(trials_file, columns=["trial_id", "epochs"])
    lost = missing_runs(run_dir, dict(zip(trials["trial_id"].astype(str), trials["epochs"].astype(int))))
    if lost:
        print(f"tune_app: warning: W&B holds no full run for {len(lost)} of {len(trials)} trials ({', '.join(lost)}); "
              f"their results are in {run_dir} and summary/", file=sys.stderr)


def sweep_budget(s: dict, run_dir: Path):
    """--budget-hours: the callback that counts the sweep's device-hours (None without a budget). A trial holds
    its GPUs where the sweep asks for any, else its CPUs; each report says what Ray gave it (--gpus-per-trial
    auto), so the count here is only a fallback."""
    from tune_app.budget import budget_callback

    gpus = s["gpus_per_trial"]
    if gpus == "auto":
        import ray

        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
    kind, devices = ("gpu", gpus) if gpus else ("cpu", s["cpus_per_trial"])
    return budget_callback(s.get("budget_hours"), devices, kind, run_dir)


def trial_timeout(seconds: float):
    """--trial-timeout: a Tune callback that stops a running trial which has reported nothing for ``seconds``
    (a hung data loader, a deadlocked collective): it marks the trial's folder, then kills its actor, which
    Ray treats as a crash (retried up to --max-failures, then status timeout). None when off."""
    if not seconds:
        return None
    import ray
    from ray.tune import Callback

    from tune_app.rundir import TIMEOUT_FILE

    class TrialTimeout(Callback):
        def __init__(self) -> None:
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
                if trial.status == "RUNNING" and silent > seconds and actor is not None:
                    # The trial's folder; with s3:// storage, its copy on the driver, which Ray uploads.
                    folder = Path(trial.path if Path(trial.path).is_absolute() else trial.local_path)
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / TIMEOUT_FILE).write_text(
                        f"no report for {silent:.0f} s (--trial-timeout {seconds:g}); stopped\n")
                    ray.kill(actor)
                    self.last[trial.trial_id] = now

    return TrialTimeout()


def oom_retry(cpus: float):
    """--gpus-per-trial auto: a trial that runs out of GPU memory all the same is retried (as a crash is, up to
    --max-failures) with twice its share of a GPU, up to a whole one, so that fewer neighbours share it."""
    from ray.tune import Callback

    from tune_app import plan

    class OomRetry(Callback):
        def on_trial_recover(self, iteration, trials, trial, **info):
            error = Path(trial.error_file) if trial.error_file else None
            last = error.read_text().rsplit("Failure #", 1)[-1] if error and error.is_file() else ""
            held = trial.placement_group_factory.required_resources.get("GPU", 0)
            if "OutOfMemoryError" not in last or not 0 < held < 1:
                return
            more = plan.larger_share(held)
            trial.update_resources({"CPU": cpus, "GPU": more})
            print(f"tune_app: trial {trial} ran out of GPU memory on {held:g} GPU; retrying it on {more:g}",
                  flush=True)

    return OomRetry()


def checkpoint_config(s: dict, metric: str, mode: str):
    """The best ``keep_checkpoints`` checkpoints of a trial by the sweep's metric; Ray always keeps the latest as
    well, which resumes and retries start from. PBT copies the latest of other trials: it keeps at least 4."""
    from ray import tune

    keep = s.get("keep_checkpoints", 2)
    if s["scheduler"] == "pbt":
        return tune.CheckpointConfig(num_to_keep=max(keep, 4))
    return tune.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=metric, checkpoint_score_order=mode)


def plan_table(space, config: dict, s: dict, dataset, points=()) -> tuple[list[dict], str]:
    """Estimated cost of every configuration (see tune_app.plan), and the table that shows it."""
    import ray

    from tune_app import plan, tuning

    param_space = tuning.grid_space(config) if s["searcher"] == "grid" else config
    points = [{**config, **p} for p in points]  # --from-run's configurations come first
    configs = points + plan.configurations(param_space, s["num_samples"] - len(points), s["seed"])
    trainable = space.trainable
    configs = [trainable_config(trainable, c) for c in configs]
    cluster = ray.cluster_resources()
    concurrency = min(cluster.get("CPU", 1) / s["cpus_per_trial"],
                      cluster.get("GPU", 0) / s["gpus_per_trial"] if s["gpus_per_trial"] else math.inf,
                      s.get("max_concurrent") or math.inf)
    concurrency = max(1, math.floor(concurrency))
    print(f"tune_app: probing {len({plan.cost_key(trainable, c) for c in configs})} distinct configurations "
          f"({plan.PROBE_STEPS} steps each, {concurrency} at a time as the sweep will run them) to estimate "
          f"{len(configs)} trials...", flush=True)
    probes = plan.probe_all(trainable, configs, ray.put(dataset.sweep_view()), len(dataset.y_train),
                            dataset.x_train.nbytes, s["cpus_per_trial"], s["gpus_per_trial"], concurrency,
                            local_paths(space.code))
    rows = plan.estimate(trainable, configs, probes, len(dataset.y_train))
    return rows, plan.table(rows, concurrency)


def auto_gpus(space, config: dict, s: dict, dataset, run_dir: Path, resume: bool, plan_only: bool):
    """--gpus-per-trial auto: CPU trials on a cluster without GPUs; else every cost-relevant configuration is
    probed alone on a GPU (see plan.gpu_plan) and each trial asks for its own configuration's fraction. The
    plan is kept in the run directory, so a resumed sweep asks for the same fractions without probing again.
    Returns (resources for tune.with_resources, settings with gpus_per_trial as the largest fraction)."""
    import ray

    from tune_app import plan, tuning

    s = dict(s)
    if not ray.cluster_resources().get("GPU", 0):
        print("tune_app: --gpus-per-trial auto: the Ray cluster has no GPU; trials run on CPUs", flush=True)
        s["gpus_per_trial"] = 0.0
        return {"cpu": s["cpus_per_trial"], "gpu": 0}, s
    saved = run_dir / plan.GPU_PLAN_FILE
    if resume and saved.is_file():
        gpu_plan = json.loads(saved.read_text())
    else:
        param_space = tuning.grid_space(config) if s["searcher"] == "grid" else config
        print("tune_app: --gpus-per-trial auto: probing each configuration's GPU memory...", flush=True)
        gpu_plan = plan.gpu_plan(space.trainable, param_space, s["seed"], ray.put(dataset.sweep_view()),
                                 len(dataset.y_train), dataset.x_train.nbytes, s["cpus_per_trial"],
                                 local_paths(space.code))
        if not plan_only:
            run_dir.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(gpu_plan, indent=1))
    print(plan.gpu_table(gpu_plan), flush=True)
    s["gpus_per_trial"] = max(r["fraction"] for r in gpu_plan["rows"])
    s["gpus_shown"] = s["gpus_per_trial"]
    return plan.gpu_resources(space.trainable, gpu_plan, s["cpus_per_trial"]), s


def trainable_config(trainable, config: dict) -> dict:
    from trainables.params import resolve

    return resolve(trainable.PARAMS, config)


def sweep_provenance(dataset) -> dict:
    """What the sweep ran with, recorded when it starts (best_config.json carries it)."""
    from tune_app.provenance import git_commit, versions

    if isinstance(dataset, OwnData):  # the space's load_data(): tune_app does not know its shape
        return {"git_commit": git_commit(), "versions": versions(), "dataset": {"name": dataset.name}}
    return {"git_commit": git_commit(), "versions": versions(),
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint(), "train": len(dataset.y_train),
                        "val": len(dataset.y_val), "test": len(dataset.y_test), "val_fraction": dataset.val_fraction,
                        "split_seed": dataset.split_seed}}


def run(spec: dict, resume: bool) -> int:
    """Run the sweep ``spec`` describes (a new one, or ``resume``); the exit code: 0 done, 1 no trial finished,
    130 interrupted (resumable)."""
    from tune_app import tuning
    from tune_app.spaces import load_space

    s = spec["settings"]
    space = load_space(spec["space"], spec["overrides"], code=spec.get("code"))
    params = space.trainable.PARAMS
    config = dict(space.space)
    if params is None or "max_epochs" in params:
        config["max_epochs"] = s["max_epochs"]
    if params is None or "seed" in params:
        config.setdefault("seed", s["seed"])
    points = spec.get("points", [])  # --from-run's configurations
    tuning.check(s, config, points)  # before any data is read or Ray started
    dataset = load_data(space, s, spec.get("workdir"))
    check_models(space, dataset)
    lock = None if spec.get("plan_only") or spec.get("run_uri") else claim(Path(spec["run_dir"]), resume)
    try:
        started = join_ray(s, spec.get("code"))
        try:
            return run_on_ray(spec, resume, space, config, points, dataset)
        finally:
            if started:  # a Ray tune_app started ends with the sweep: the next sweep in this process ships its code
                import ray

                ray.shutdown()
            ray_output.WATCH.stop()
    finally:
        if lock is not None:
            release(lock, resume)


def claim(run_dir: Path, resume: bool):
    """The run directory, locked for this sweep (see tune_app.runlock); a new sweep also needs it empty."""
    from tune_app.runlock import RunLock

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
    from tune_app.runlock import LOCK_FILE, OWNER_FILE

    lock.release()
    run_dir = lock.run_dir
    if not resume and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE, OWNER_FILE}:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        for folder in run_dir.parents if lock.created is not None and lock.created != run_dir else ():
            if folder == lock.created.parent or any(folder.iterdir()):
                break
            folder.rmdir()


def run_on_ray(spec: dict, resume: bool, space, config: dict, points: list, dataset) -> int:
    from ray import tune

    from tune_app.ray_adapter import ray_trainable
    from tune_app.ray_output import WATCH

    s = spec["settings"]
    run_dir = Path(spec["run_dir"])
    run_uri = spec.get("run_uri")
    if not run_uri and not spec.get("plan_only"):
        check_shared_storage(run_dir.parent, str(run_dir.parent))
    if run_uri and not resume and not spec.get("plan_only"):
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # a working copy left from an older run at that URI
    resources = {"cpu": s["cpus_per_trial"], "gpu": s["gpus_per_trial"]}
    if s["gpus_per_trial"] == "auto":
        resources, s = auto_gpus(space, config, s, dataset, run_dir, resume, spec.get("plan_only"))
    if spec.get("plan_only"):
        print(plan_table(space, config, s, dataset, points)[1])
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume and s.get("estimate_cost"):
        rows, text = plan_table(space, config, s, dataset, points)
        print(text, flush=True)
        from tune_app.plan import PLAN_FILE

        (run_dir / PLAN_FILE).write_text(json.dumps(rows, indent=1))
    trainable = tune.with_resources(tune.with_parameters(
        ray_trainable(space.trainable.ref, local_paths(spec.get("code"))), data=dataset.sweep_view()), resources)
    uploads = ()
    if run_uri:
        from tune_app import storage

        uploads = (storage.uploader(run_dir, run_uri),)
    WATCH.start(None if run_uri else run_dir)  # run() stops it when Ray has shut down
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
    print(f"tune_app: {'resuming' if resume else 'starting'} sweep {s['name']!r} of space {spec['space']!r}: "
          f"{spec['expected_trials']} trials{begins}, {s['searcher']} + {s['scheduler']}, "
          f"{s['cpus_per_trial']:g} CPU / {s.get('gpus_shown', s['gpus_per_trial']):g} GPU each, into "
          f"{run_uri or run_dir}", flush=True)
    try:
        results = tuner.fit()
    except Exception:
        if WATCH.problem is None:
            raise
    if WATCH.problem is not None:
        return stopped_unwritable(spec, run_dir, WATCH.problem)

    from tune_app import analyze

    if run_uri:
        storage.download(run_uri, run_dir)  # the trials' results, as Ray left them there
    try:
        analyze.run(run_dir)
        found_best = True
    except UsageError as e:  # every trial failed: the trials table says why, and the sweep can be resumed
        print(f"tune_app: {e}", file=sys.stderr)
        found_best = False
    check_wandb_runs(run_dir, s)
    if run_uri:
        storage.upload(run_dir, run_uri)
        print(f"tune_app: results in {run_uri}/summary (working copy {run_dir})", flush=True)
    from tune_app.budget import read_budget
    from tune_app.rundir import UNFINISHED, ray_statuses

    budget = read_budget(run_dir) or {}
    # Ctrl-C leaves a trial RUNNING in Ray's last experiment state, where the ResultGrid calls it TERMINATED: the
    # experiment state is what counts.
    statuses = ray_statuses(run_dir) or {str(i): "TERMINATED" for i in range(results.num_terminated)}
    unfinished = sum(status in UNFINISHED for status in statuses.values())
    finished = len(statuses) - unfinished
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
    """A run directory that stopped being writable ended the sweep (ray_adapter.StopWhenUnwritable): one line,
    and 130, as for any sweep that stopped before its end and can be resumed."""
    from tune_app.rundir import UNFINISHED, ray_statuses

    statuses = ray_statuses(run_dir)
    finished = sum(status not in UNFINISHED for status in statuses.values())
    spec["stopped_because"] = f"{run_dir} stopped being writable ({problem})"
    print(f"tune_app: error: {spec['stopped_because']}, so the sweep stopped with {finished} of "
          f"{spec['expected_trials']} trials finished; nothing finished is lost: make it writable again, then "
          f"continue with: python -m tune_app.search --resume {run_dir}", file=sys.stderr, flush=True)
    return 130


def settings_of(args: argparse.Namespace) -> SweepSettings:
    """The command line's settings as the typed object the Python API takes."""
    from tune_app.spaces import parse_overrides

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SweepSettings)
             if f.name not in ("set", "resume") and hasattr(args, f.name)}
    return SweepSettings(**given, set=parse_overrides(args.overrides), resume=args.resume or False)


def spec_of(settings: SweepSettings) -> dict:
    """Check everything that can be checked before Ray starts; the sweep's spec (what tune_app.json keeps)."""
    if settings.retry_errored and not settings.resume:
        raise UsageError("--retry-errored goes with --resume RUN_DIR: it re-runs that sweep's errored trials")
    spec = plan_resume(settings) if settings.resume else plan_new(settings)
    spec["plan_only"] = bool(settings.plan)
    spec["retry_errored"] = bool(settings.retry_errored)
    return spec


def main(argv: list[str] | None = None, prog: str = "python -m tune_app.search") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        if args.list_spaces:
            from tune_app.spaces import load_space

            for name in list_spaces():
                doc = (load_space(name).module.__doc__ or "").strip().splitlines()
                print(f"{name:20s} {doc[0] if doc else ''}")
            return 0
        settings = settings_of(args)
        return run(spec_of(settings), resume=bool(settings.resume))
    except UsageError as e:
        print(f"tune_app: error: {e}", file=sys.stderr)
        return UsageError.exit_code
    except OSError as e:
        print(f"tune_app: error: {file_error(e)}", file=sys.stderr)
        return UsageError.exit_code


if __name__ == "__main__":
    sys.exit(main())
