"""A sweep's spec, checked before Ray starts: settings from the command line, the space's SETTINGS and the
fallbacks; the run directory; --resume's saved spec; --from-run's configurations. What tune_app.json keeps."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

from tune_app.errors import UsageError
from tune_app.rundir.layout import SPEC_FILE
from tune_app.search.algorithms import SCHEDULERS, SEARCHERS
from tune_app.settings import SweepSettings
from tune_app.spaces import SETTING_KEYS, is_grid, list_spaces, with_objectives
from tune_app.usercode import is_path

SETTING_FLAGS = tuple(SETTING_KEYS)
# What a space's SETTINGS may leave out (max_epochs falls back to the space's largest epochs).
FALLBACK_SETTINGS = {"searcher": "optuna", "scheduler": "fifo", "num_samples": 10, "cpus_per_trial": 1,
                     "gpus_per_trial": 0, "grace_period": 1, "reduction_factor": 3, "max_failures": 2,
                     "keep_checkpoints": 2, "trial_timeout": 0, "checkpoint_every_s": 30,
                     "reuse_actors": True, "budget_hours": 0, "repeats": 1}
TRANSFER_TOP_K = 3  # --from-run without --from-top: study 3's budget on MNIST
PAUSING = ("hyperband", "bohb")  # schedulers that pause trials in brackets (saved by algorithms.HyperBandState)
USER_MAX_EPOCHS = 100  # the schedulers' horizon (max_t) for a trainable with no epochs key and no max_epochs


def check_settings(settings: dict) -> None:
    for key, registry in (("searcher", SEARCHERS), ("scheduler", SCHEDULERS)):
        if settings.get(key) not in registry:
            raise UsageError(f"{key} {settings.get(key)!r}: choose one of {', '.join(registry.names())}")
    rules = {
        "num_samples": (1, "at least 1"), "max_epochs": (1, "at least 1"), "grace_period": (1, "at least 1"),
        "reduction_factor": (2, "at least 2"), "max_concurrent": (1, "at least 1"),
        "cpus_per_trial": (1e-9, "more than 0"), "gpus_per_trial": (0, "0 or more"),
        "max_failures": (0, "0 or more"), "keep_checkpoints": (1, "at least 1"), "trial_timeout": (0, "0 or more"),
        "checkpoint_every_s": (0, "0 (every epoch) or more"),
        "budget_hours": (0, "0 (no budget) or more"), "repeats": (1, "at least 1 (1 trains each configuration once)"),
    }
    for key, (low, text) in rules.items():
        value = settings.get(key)
        if key == "gpus_per_trial" and value == "auto":
            continue
        if value is not None and not math.isfinite(value):
            raise UsageError(f"--{key.replace('_', '-')} {value:g}: must be a finite number, {text}")
        if value is not None and value < low:
            raise UsageError(f"--{key.replace('_', '-')} {value:g}: must be {text}")
    gpus = settings["gpus_per_trial"]
    if gpus != "auto" and gpus > 1 and gpus != int(gpus):
        raise UsageError(f"--gpus-per-trial {gpus:g}: use a fraction up to 1 or a whole number of GPUs")


def resolve_run_dir(args) -> tuple[Path, str | None]:
    """(the run directory on this machine, the run's URI when it lives in object storage, else None)."""
    from tune_app.cluster import storage

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
    from tune_app.cluster import storage

    return storage.is_uri(path)


def check_against_space(space, args: SweepSettings) -> None:
    """Settings that contradict the space: a validation metric with no validation split, a GPU device with no
    GPU asked for."""
    from tune_app.spaces import domain_values

    params = space.trainable.PARAMS or {}
    if "val_fraction" in params and space.metric.startswith("val_") and space.constant("val_fraction") == 0:
        raise UsageError(f"val_fraction=0 leaves no validation split, and the space ranks by {space.metric}: give "
                         f"val_fraction > 0 (the default is {params['val_fraction'].default:g})")
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else space.settings.get("gpus_per_trial", 0)
    if "device" in params and "cuda" in domain_values(space.param_space.get("device", "auto")) and gpus == 0:
        raise UsageError("device=cuda needs a GPU per trial: give --gpus-per-trial (a fraction such as 0.25, or "
                         "auto), or device=auto")


def plan_resume(args: SweepSettings) -> dict:
    run_dir, run_uri = resolve_run_dir(args)
    if run_uri:
        from tune_app.cluster import storage

        storage.check_writable(run_uri, "--resume")
        storage.download(run_uri, run_dir)  # spec, results and searcher state; Ray reads checkpoints from there
    spec_path = run_dir / SPEC_FILE
    from tune_app.rundir.lock import check_free

    check_free(run_dir)
    if not spec_path.is_file() or not any(run_dir.glob("experiment_state*.json")):
        raise UsageError(f"--resume: {run_uri or run_dir} holds no tune_app sweep (no {SPEC_FILE} and Ray state); "
                         f"start one with --space NAME --name NAME")
    from tune_app.rundir.reader import read_json

    spec = read_json(spec_path, "restore it from a copy (it records the sweep's space and settings)")
    saved = {"space": spec["space"], **spec["settings"]}
    given = {k: getattr(args, k) for k in ("space", "seed", *SETTING_FLAGS) if getattr(args, k, None) is not None}
    if isinstance(given.get("space"), str) and is_path(given["space"]):
        given["space"] = str(Path(given["space"]).expanduser().resolve())
    changed = sorted(k for k, v in given.items() if saved.get(k) != v)
    changed += sorted(k for k, v in args.set.items() if spec["overrides"].get(k) != v)
    recorded = spec.get("objectives") or [[spec.get("metric"), spec.get("mode")]]
    for key, i in (("metric", 0), ("mode", 1)):
        given_value = getattr(args, key)
        if given_value is not None and [s.strip() for s in str(given_value).split(",")] != [o[i] for o in recorded]:
            changed.append(key)
    transfer = {"from_run": str(Path(args.from_run).expanduser().resolve()) if args.from_run else None,
                "top_k": args.top_k}
    changed += [k for k, v in transfer.items() if v is not None and spec.get(k) != v]
    if changed:
        raise UsageError(f"--resume continues the sweep as it was started; these differ: {', '.join(changed)} "
                         f"(start a new sweep with another --name to change them)")
    from tune_app.rundir.reader import ray_statuses

    paused = sorted(t for t, status in ray_statuses(run_dir).items() if status == "PAUSED")
    if spec["settings"].get("scheduler") in PAUSING and paused and not saved_brackets(run_dir):
        raise UsageError(f"--resume: {len(paused)} trials of this sweep wait paused in HyperBand's brackets "
                         f"(--scheduler {spec['settings']['scheduler']}), which the tune_app that ran it did not save, "
                         f"so they would never run again; start a new sweep that begins with this one's best "
                         f"configurations: --from-run {run_uri or run_dir}")
    spec["run_dir"], spec["run_uri"] = str(run_dir), run_uri
    return spec


def saved_brackets(run_dir: Path) -> bool:
    """Whether Ray's newest callback checkpoint of a sweep holds HyperBand's brackets (algorithms.HyperBandState,
    which sweeps started before tune_app saved them lack: resumed, their paused trials would wait forever)."""
    states = sorted(run_dir.glob("callback-states-*.pkl"))  # the one Ray's restore reads: the last by name
    if not states:
        return False
    import cloudpickle

    try:
        saved = cloudpickle.loads(states[-1].read_bytes())
    except Exception:  # unreadable: Ray's restore says why
        return True
    return any(isinstance(state, dict) and "bands" in state for state in saved.values())


MULTI_OBJECTIVE = ("optuna", "nsga2")  # the searchers that rank by several objectives (Optuna's)


def check_objectives(space, settings: dict) -> None:
    """Several objectives need a multi-objective searcher and no PBT; NSGA-II needs several."""
    many = len(space.objectives) > 1
    names = ", ".join(f"{m} ({d})" for m, d in space.objectives)
    if settings["searcher"] == "nsga2" and not many:
        raise UsageError(f"--searcher nsga2 is for several objectives and the sweep has one ({names}); give more "
                         f"with --metric a,b --mode max,min, or use --searcher optuna")
    if many and settings["searcher"] not in MULTI_OBJECTIVE:
        raise UsageError(f"--searcher {settings['searcher']} ranks by one metric and the sweep has {names}; use "
                         f"--searcher {' or '.join(MULTI_OBJECTIVE)}")
    if many and settings["scheduler"] in ("pbt", "pb2"):
        raise UsageError(f"--scheduler {settings['scheduler']} copies the best trials by one metric and the sweep has "
                         f"{names}; use --scheduler asha, hyperband, median or fifo")


def check_define_by_run(space, settings: dict, args: SweepSettings) -> None:
    """A define-by-run SPACE runs only under an Optuna searcher, and has no domains to probe for costs."""
    from tune_app.search.algorithms import DEFINE_BY_RUN

    if space.define_by_run is None:
        return
    if settings["searcher"] not in DEFINE_BY_RUN:
        raise UsageError(f"--searcher {settings['searcher']}: SPACE in {space.ref} is a function of an Optuna trial, "
                         f"which only Optuna's samplers run; use --searcher {', '.join(DEFINE_BY_RUN[:-1])} or "
                         f"{DEFINE_BY_RUN[-1]}")
    probes = [flag for flag, on in (("--plan", args.plan), ("--gpus-per-trial auto", settings["gpus_per_trial"] ==
                                                             "auto"), ("estimate_cost", settings.get("estimate_cost")))
              if on]
    if probes:
        raise UsageError(f"{probes[0]} probes the configurations a space's domains allow, and SPACE in {space.ref} is "
                         f"a function with none; give --gpus-per-trial a number")


def resolve_settings(space, args: SweepSettings) -> dict:
    """The settings a new sweep runs with: the flags, then the space's SETTINGS, then tune_app's fallbacks."""
    settings = {**FALLBACK_SETTINGS, "max_epochs": max_epochs_of(space), **space.settings}
    settings.update({k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None})
    if settings["searcher"] == "bohb" and args.scheduler is None:
        settings["scheduler"] = "bohb"  # BOHB's model needs its own HyperBand
    if args.searcher == "grid" and args.num_samples is None:
        settings["num_samples"] = 1  # the grid itself defines the trials
    return settings


def plan_new(args: SweepSettings) -> dict:
    from tune_app.spaces import load_space

    if not args.space:
        raise UsageError(f"--space is required; known spaces: {', '.join(list_spaces())}")
    if args.top_k is not None and not args.from_run:
        raise UsageError("--from-top needs --from-run RUN_DIR, the sweep whose top configurations to begin with")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--from-top {args.top_k}: must be at least 1")
    check_name(args.name)
    if args.from_run and not storage_is_uri(args.from_run) and not Path(args.from_run).expanduser().is_dir():
        raise UsageError(f"--from-run {args.from_run}: no such directory; give a finished sweep's run directory")
    space = with_objectives(load_space(args.space, args.set), args.metric, args.mode)
    check_against_space(space, args)
    settings = resolve_settings(space, args)
    if space.trainable.COST_KEYS is None:
        probes = [flag for flag, on in (("--plan", args.plan), ("--gpus-per-trial auto", args.gpus_per_trial == "auto"),
                                        ("estimate_cost", space.settings.get("estimate_cost"))) if on]
        if probes:
            raise UsageError(f"{probes[0]} probes the built-in trainers' cost keys; trainable {space.trainable.name} "
                             f"has none: give --gpus-per-trial a number")
    top_k = TRANSFER_TOP_K if args.top_k is None else args.top_k
    if args.from_run and args.num_samples is None:
        settings["num_samples"] = top_k  # the budget is the transferred configurations
    check_settings(settings)
    check_define_by_run(space, settings, args)
    check_objectives(space, settings)
    params = space.trainable.PARAMS
    if settings["repeats"] > 1 and params is not None and "seed" not in params:
        raise UsageError(f"--repeats {settings['repeats']}: trainable {space.trainable.name} has no 'seed' "
                         f"parameter, so its repeats would all be the same run; give it a seed in PARAMS that seeds "
                         f"its model and data order, or leave --repeats at 1")
    transferred = transfer(args.from_run, top_k, space, settings) if args.from_run else {}
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    args = dataclasses.replace(args, name=name)
    run_dir, run_uri = resolve_run_dir(args)
    if run_uri and not args.plan:
        from tune_app.cluster import storage

        storage.check_writable(run_uri, "--storage-path")
        taken = storage.exists(run_uri, SPEC_FILE)
    else:
        from tune_app.rundir.lock import check_free

        check_free(run_dir)
        taken = any(run_dir.glob("experiment_state*.json"))  # a spec alone: a start that never ran a trial
    if not args.plan and taken:
        raise UsageError(f"{run_uri or run_dir} already holds a sweep; continue it with --resume {run_uri or run_dir}, "
                         f"or pick another --name")
    return {
        "space": space.ref, "code": space.code, "overrides": space.overrides, "run_dir": str(run_dir),
        "objectives": [list(o) for o in space.objectives],
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
    from tune_app.search.algorithms import check, point_value

    if settings["num_samples"] < k:
        raise UsageError(f"--num-samples {settings['num_samples']}: fewer than the {k} configurations --from-run "
                         f"transfers; give at least {k}, or --from-top {settings['num_samples']}")
    try:
        sweep, top = top_configs(from_run, k, "--from-top")
    except UsageError as e:
        raise UsageError(str(e) if str(e).startswith("--") else f"--from-run {from_run}: {e}") from None
    source = sweep.space
    if space.define_by_run is not None:
        raise UsageError(f"--from-run: SPACE in {space.ref} is a function that draws its own values, which the "
                         f"transferred configurations cannot be checked against; use a dict SPACE to begin with "
                         f"another sweep's best")
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
                point[key] = point_value(space.param_space[key], config[key])
            except ValueError as e:
                takes, widened = e.args
                raise UsageError(f"--from-run {from_run}: trial {trial['trial_name']} ({trial['trial_id']}) has "
                                 f"{key}={config[key]}, which space {space.name} cannot take ({takes}); widen it "
                                 f"with --set {key}=[{','.join(map(str, widened))}]") from None
        points.append(point)
    check(settings, space.param_space, points)
    return {"from_run": str(sweep.path), "top_k": k, "from_trials": [t["trial_id"] for t in top["trials"]],
            "points": points}


def max_epochs_of(space) -> int:
    from tune_app.spaces import domain_values

    epochs = space.constant("epochs")
    if epochs is None:  # a trainable of the user's without an epochs key: its SETTINGS' max_epochs, else this
        return USER_MAX_EPOCHS
    return int(max(domain_values(epochs)))


def expected_trials(param_space: dict, num_samples: int) -> int:
    grid = [len(v["grid_search"]) for v in param_space.values() if is_grid(v)]
    return num_samples * math.prod(grid)


def plan_gpus(value, plan: bool, gpus_per_trial) -> list[int]:
    """--gpus N[,N...] as a list of cluster sizes; it goes with --plan and GPU trials."""
    if value is None:
        return []
    text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--gpus {text}: give whole numbers of GPUs, at least 1, such as 4 or 1,4")
    if not plan:
        raise UsageError(f"--gpus {text} goes with --plan: it projects the sweep's wall time on that many GPUs; "
                         f"add --plan, or leave --gpus out")
    if gpus_per_trial == 0:
        raise UsageError(f"--gpus {text}: the trials hold no GPU (--gpus-per-trial 0); give --gpus-per-trial, such "
                         f"as 0.25 for 4 trials a GPU, or auto")
    return sizes


def spec_of(settings: SweepSettings) -> dict:
    """Check everything that can be checked before Ray starts; the sweep's spec (what tune_app.json keeps)."""
    if settings.retry_errored and not settings.resume:
        raise UsageError("--retry-errored goes with --resume RUN_DIR: it re-runs that sweep's errored trials")
    spec = plan_resume(settings) if settings.resume else plan_new(settings)
    spec["plan_only"] = bool(settings.plan)
    spec["plan_gpus"] = plan_gpus(settings.gpus, bool(settings.plan), spec["settings"]["gpus_per_trial"])
    spec["retry_errored"] = bool(settings.retry_errored)
    return spec
