"""What a retrain will do, decided and checked before any data is read or Ray started: the configurations to
retrain (``Candidate``), their seeds and epochs, the settings and the corrupted test sets to score (``Plan``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tune_app.errors import UsageError


@dataclass
class Candidate:
    """One configuration to retrain: where it came from in the search, and the seeds it gets."""
    rank: int
    trial_id: str
    trial_name: str
    search: dict  # the search's numbers for it: value, last_value, best_epoch_value, epochs, status
    config: dict  # the trial's config, resolved against the trainable (seed and epochs set per run)
    seeds: list[int]
    own_seed: int  # the seed the trial ran with in the sweep
    own_epochs: int  # the length the trial was configured for (its schedule's length)
    runs: list[dict] = field(default_factory=list)


@dataclass
class Plan:
    run_dir: Path
    sweep: object
    trainable: object
    settings: dict
    candidates: list[Candidate]
    epochs: int | None
    train_on: str
    rule: str
    ood: dict | None = None  # {"names", "severities", "source", "seed"}: the corrupted test sets to score
    predict: str | None = None  # images for submission.csv
    chosen: str = ""  # how the configurations were chosen: "--configs K", or those within noise of the best


def parse_seeds(args, own_seed: int) -> list[int]:
    if args.seed_list is not None:
        try:
            seeds = [int(part) for part in args.seed_list.split(",") if part.strip()]
        except ValueError:
            raise UsageError(f"--seed-list {args.seed_list}: give whole numbers separated by commas, "
                             f"e.g. --seed-list 1,2,3") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise UsageError(f"--seed-list {args.seed_list}: give one or more different seeds, e.g. 1,2,3")
        return seeds
    if args.seeds < 1:
        raise UsageError(f"--seeds {args.seeds}: must be at least 1")
    return [own_seed + i for i in range(args.seeds)]


def run_config(trainable, config: dict, seed: int, epochs: int | None) -> dict:
    """The trial's config for one retrain: its seed, and its epochs (the sweep's cap folded in, or --epochs)."""
    from trainables.params import resolve

    if trainable.PARAMS is None:  # a trainable of the user's that declares no keys: its config as it ran
        return {**config, "seed": seed, **({"epochs": epochs} if epochs else {})}
    c = resolve(trainable.PARAMS, config)
    if "epochs" in c:
        c["epochs"] = epochs or min(c["epochs"], c.get("max_epochs") or c["epochs"])
    return {**c, "seed": seed, **({"max_epochs": 0} if "max_epochs" in c else {})}


def make_plan(args) -> Plan:
    """Everything the retrain will do, checked before any data is read or Ray started."""
    from tune_app.analyze import top_configs

    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs {args.epochs}: must be at least 1")
    for flag in ("cpus_per_trial", "gpus_per_trial"):
        value = getattr(args, flag)
        if value is not None and (not math.isfinite(value) or value < (0 if flag == "gpus_per_trial" else 1e-9)):
            raise UsageError(f"--{flag.replace('_', '-')} {value:g}: must be more than 0 (GPUs: 0 or more)")
    sweep, top = top_configs(args.run_dir, args.top_k, "--configs")
    trainable = sweep.space.trainable
    candidates = []
    for entry in top["trials"]:
        params = trainable.PARAMS or {}
        own_seed = int(entry["config"].get("seed", params["seed"].default if "seed" in params else 0))
        try:
            config = run_config(trainable, entry["config"], own_seed, args.epochs)
        except ValueError as e:
            raise UsageError(f"{sweep.path.name}: trial {entry['trial_name']}'s configuration is not accepted by "
                             f"this version of tune_app: {str(e).splitlines()[0]}") from None
        own_epochs = run_config(trainable, entry["config"], own_seed, None).get("epochs")
        search = {k: entry.get(k) for k in ("value", "last_value", "best_epoch_value", "best_epoch", "epochs",
                                            "status")}
        candidates.append(Candidate(entry["rank"], entry["trial_id"], entry["trial_name"], search, config,
                                    parse_seeds(args, own_seed), own_seed, own_epochs))
    settings = dict(sweep.spec["settings"])
    for key in ("address", "cpus_per_trial", "gpus_per_trial", "wandb_mode", "wandb_project", "wandb_entity"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.data_dir is not None:
        settings["data_dir"] = str(Path(args.data_dir).resolve())
    if not trainable.builtin:
        for flag in ("predict", "corruptions", "corruption_dir", "evaluate"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} is for the built-in trainers' image models; "
                                 f"{trainable.name} is your own trainable")
        if args.train_on != "train":
            raise UsageError(f"--train-on {args.train_on}: tune_app cannot merge the splits of your own "
                             f"load_data(); train on what it returns")
    return Plan(sweep.path, sweep, trainable, settings, candidates, args.epochs, args.train_on, top["selection_rule"],
                ood_plan(args, sweep.metric, candidates[0].config) if trainable.builtin else None, args.predict,
                top["chosen"])


def ood_plan(args, metric: str, config: dict) -> dict | None:
    """Which corrupted test sets to score: asked for by flag, or the sweep's own (its ood_corruptions, or
    every corruption when it ranked by ood_acc). None when robustness is not part of this sweep."""
    from trainables import corruptions

    configured = config.get("ood_corruptions", "none")
    if args.corruptions is None and args.corruption_dir is None and configured == "none" and metric != "ood_acc":
        if args.severities is not None:
            raise UsageError("--severities needs corrupted test sets: add --corruptions all (or a list)")
        return None
    names_text = args.corruptions or (configured if configured != "none" else "all")
    severities_text = args.severities or config.get("ood_severities", "1-5")
    try:
        names = corruptions.parse_names(names_text)
        severities = corruptions.parse_severities(str(severities_text))
    except ValueError as e:
        flag = "--corruptions" if args.corruptions else "--severities" if args.severities else "the trial's config"
        raise UsageError(f"{flag}: {e}") from None
    source = None if args.corruption_dir is None else str(Path(args.corruption_dir).resolve())
    return {"names": list(names), "severities": list(severities), "source": source,
            "seed": int(config.get("split_seed", 0))}
