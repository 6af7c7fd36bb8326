"""Retrain a sweep's best configurations and measure them on the test set:
``python -m tune_app.retrain runs/<name>``.

A sweep's best validation accuracy is partly luck: one seed, one split, the maximum of many
noisy numbers. This retrains the best configuration (or the top k, ``--top-k``) with several
seeds through the same ``fit`` the sweep ran, then evaluates each final model on the test set,
which no part of the search has seen. By default the seeds are the trial's own seed and the
next ones, so the first retrain repeats the sweep's trial: on a CPU it must give the sweep's
numbers to the last digit, and ``retrain.json`` says whether it did.

Selection never looks at the test set: the model kept is the configuration with the best mean
validation metric over its seeds, and its seed with the best validation metric (with
``--train-on train+val`` there is no validation split: the search's ranking and the lowest
training loss decide).

Writes ``<run dir>/retrain/``: ``retrain.json`` (every number and its provenance),
``model.pt`` (load it with ``tune_app.retrain.load_model(path)``), ``confusion_matrix.csv`` and
``.png``, ``per_class.csv`` and ``samples.png`` (one test image per class with its prediction);
with ``--predict PATH`` also ``submission.csv`` (``id,label``) for a folder of images or an ``.npy``
array; and for a robustness sweep (metric ``ood_acc``, study 5) or ``--corruptions``,
``robustness.csv``: the kept model's accuracy per corruption and severity on corrupted copies of
the test set (generated, or CIFAR-100-C's files with ``--corruption-dir``). The folder is built
under a temporary name and swapped in whole; the sweep's report gains a retrain section.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import socket
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tune_app import (
    imageset,
    ray_output,  # noqa: F401  (before Ray is imported)
)
from tune_app.errors import OneLineParser, UsageError, file_error
from tune_app.layout import RETRAIN_DIR
from tune_app.report import fmt, retrain_console

MODEL_FILE = "model.pt"
MODEL_FORMAT = "tune_app.model/1"
CONFUSED_PAIRS = 10  # most-confused (true, predicted) pairs listed


def build_parser(prog: str = "python -m tune_app.retrain") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a sweep's run directory, e.g. runs/<name>, or its s3:// / gs:// URI")
    p.add_argument("--top-k", type=int, default=1, help="retrain the k best configurations (default 1)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=3,
                       help="seeds per configuration: the trial's own seed and the next ones (default 3)")
    seeds.add_argument("--seed-list", help="explicit seeds, e.g. 1,2,3")
    p.add_argument("--epochs", type=int, help="train this many epochs; schedules scale with it (default: as the "
                                              "trial was configured)")
    p.add_argument("--train-on", choices=("train", "train+val"), default="train",
                   help="train+val folds the validation split back into training")
    p.add_argument("--address", help="Ray cluster to run the seeds on (default: the sweep's; a local Ray if none)")
    p.add_argument("--cpus-per-trial", type=float, help="per retrain (default: the sweep's)")
    p.add_argument("--gpus-per-trial", type=float, help="per retrain (default: the sweep's)")
    p.add_argument("--data-dir", help="dataset files (default: the sweep's)")
    p.add_argument("--predict", metavar="PATH",
                   help="also write submission.csv (id,label) for these images: a folder of image files or a .npy")
    p.add_argument("--corruptions", help="score every model on corrupted test images: 'all' or a comma list "
                                         "(default: the trial's ood_corruptions; all for an ood_acc sweep)")
    p.add_argument("--severities", help="corruption severities, e.g. 1-5 or 1,3,5 (default: the trial's)")
    p.add_argument("--corruption-dir", metavar="DIR",
                   help="read the corrupted test set from CIFAR-10-C/100-C .npy files instead of generating it")
    p.add_argument("--evaluate", metavar="MODEL_FILE",
                   help="train nothing: evaluate a model file on the sweep's test set and print the numbers")
    p.add_argument("--wandb-mode", choices=("online", "offline", "disabled"), help="default: as the sweep did")
    p.add_argument("--wandb-project", help="default: the sweep's")
    p.add_argument("--wandb-entity")
    return p


# ---------------------------------------------------------------- planning (no Ray)

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


def parse_seeds(args, own_seed: int) -> list[int]:
    if args.seed_list is not None:
        try:
            seeds = [int(s) for s in args.seed_list.split(",") if s.strip()]
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
    sweep, top = top_configs(args.run_dir, args.top_k)
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
    s = dict(sweep.spec["settings"])
    for key in ("address", "cpus_per_trial", "gpus_per_trial", "wandb_mode", "wandb_project", "wandb_entity"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.data_dir is not None:
        s["data_dir"] = str(Path(args.data_dir).resolve())
    if not trainable.builtin:
        for flag in ("predict", "corruptions", "corruption_dir", "evaluate"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} is for the built-in trainers' image models; "
                                 f"{trainable.name} is your own trainable")
        if args.train_on != "train":
            raise UsageError(f"--train-on {args.train_on}: tune_app cannot merge the splits of your own "
                             f"load_data(); train on what it returns")
    return Plan(sweep.path, sweep, trainable, s, candidates, args.epochs, args.train_on, top["selection_rule"],
                ood_plan(args, sweep.metric, candidates[0].config) if trainable.builtin else None, args.predict)


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


def load_dataset(plan: Plan):
    """The sweep's dataset, read once by the driver; refused when it is not the data the sweep saw."""
    from tune_app.sweep_data import load_data

    dataset = load_data(plan.sweep.space, plan.settings, plan.sweep.spec.get("workdir"))
    recorded = (plan.sweep.spec.get("provenance") or {}).get("dataset", {}).get("fingerprint")
    if recorded and recorded != dataset.fingerprint():
        raise UsageError(f"the dataset under {plan.settings['data_dir']} (fingerprint {dataset.fingerprint()}) is not "
                         f"the one the sweep used ({recorded}); point --data-dir at the sweep's copy")
    return dataset


def training_view(dataset, train_on: str) -> dict:
    """What ``fit`` trains on: the sweep's splits, or train+val merged with an empty validation split."""
    view = dataset.sweep_view()
    if train_on == "train+val":
        view.update(x_train=np.concatenate([dataset.x_train, dataset.x_val]),
                    y_train=np.concatenate([dataset.y_train, dataset.y_val]),
                    x_val=dataset.x_val[:0], y_val=dataset.y_val[:0])
    return view


# ---------------------------------------------------------------- one retrain (a Ray task)

def retrain_one(module: str, config: dict, data: dict, x_test: np.ndarray, y_test: np.ndarray, cpus: float,
                ood: dict | None = None, code_paths=()) -> dict:
    """Train ``config`` through the trainable's own ``fit``, then measure the final model on the test set.

    The thread count follows the resources, as in a sweep's trial, so a CPU retrain repeats the sweep's
    arithmetic exactly. Returns the history, test numbers, confusion matrix and the weights."""
    import torch

    from trainables.reporting import LocalReporter
    from tune_app.usercode import use_paths

    use_paths(code_paths)  # a model of the user's, where tune_app did not start Ray with its runtime_env
    threads = max(1, math.floor(cpus))
    torch.set_num_threads(threads)
    trainable = importlib.import_module(module)
    reporter = LocalReporter()
    t0 = time.perf_counter()
    trainable.fit(config, data, reporter)
    seconds = time.perf_counter() - t0
    state = reporter.state
    test_loss, test_acc = trainable.evaluate(state, x_test, y_test, data)
    predicted = trainable.predict(state, x_test, data)
    k = data["num_classes"]
    confusion = np.bincount(y_test * k + predicted, minlength=k * k).reshape(k, k)
    robustness = None
    if ood is not None:
        from trainables import corruptions

        mean, per = corruptions.ood_accuracy(lambda x: trainable.predict(state, x, data), x_test, y_test,
                                             ood["names"], ood["severities"], seed=ood["seed"], source=ood["source"])
        robustness = {"ood_acc": float(mean), "sets": ood_rows(per)}
    return {"seed": config["seed"], "history": reporter.history, "test_loss": float(test_loss),
            "test_acc": float(test_acc), "confusion": confusion, "robustness": robustness, "seconds": seconds,
            "threads": threads, "host": socket.gethostname(), "node": _node_id(),
            "weights": {key: state[key] for key in trainable.WEIGHT_KEYS}, "config": state["config"]}


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def shown(gpus) -> str:
    return gpus if isinstance(gpus, str) else f"{gpus:g}"


def run_all(plan: Plan, dataset) -> None:
    """Every (configuration, seed) as a Ray task with the sweep's per-trial resources, in parallel as the
    cluster allows; results land in ``candidate.runs`` as they finish."""
    import ray

    from tune_app.usercode import local_paths

    s = plan.settings
    gpus = s["gpus_per_trial"]
    if gpus == "auto":  # the sweep packed trials by measured memory; a retrain run gets a GPU to itself
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
    # A fresh worker per run (max_calls=1) frees its GPU memory; SPREAD puts seeds on different nodes.
    task = ray.remote(num_cpus=s["cpus_per_trial"], num_gpus=gpus, max_calls=1,
                      scheduling_strategy="SPREAD")(retrain_one)
    data_ref = ray.put(training_view(dataset, plan.train_on))
    test_x, test_y = ray.put(dataset.x_test), ray.put(dataset.y_test)
    pending = {}
    for c in plan.candidates:
        for seed in c.seeds:
            ref = task.remote(plan.trainable.module.__name__, {**c.config, "seed": seed}, data_ref, test_x, test_y,
                              s["cpus_per_trial"], plan.ood, local_paths(plan.sweep.spec.get("code")))
            pending[ref] = c
    total = len(pending)
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        candidate = pending.pop(ref)
        result = ray.get(ref)
        candidate.runs.append(result)
        last = result["history"][-1]
        ood = (f", corrupted test acc {100 * result['robustness']['ood_acc']:.2f} %" if result["robustness"]
               else "")
        print(f"tune_app: [{total - len(pending)}/{total}] {candidate.trial_name} seed {result['seed']}: "
              f"{plan.sweep.metric} {fmt(last.get(plan.sweep.metric), plan.sweep.metric, unit=True)}, test acc "
              f"{100 * result['test_acc']:.2f} %{ood} ({result['seconds']:.0f} s)", flush=True)
    for c in plan.candidates:
        c.runs.sort(key=lambda r: c.seeds.index(r["seed"]))


# ---------------------------------------------------------------- numbers

def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1; None for one value) over finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(finite), "std": statistics.stdev(finite) if len(finite) > 1 else None,
            "n": len(finite)}


def final(run: dict, metric: str) -> float:
    value = run["history"][-1].get(metric)
    return math.nan if value is None else float(value)


def best_run(c: Candidate, metric: str, mode: str) -> dict:
    """The seed kept for the model file: best validation metric; without validation, lowest training loss."""
    def key(run):
        value = final(run, metric)
        return value if mode == "max" else -value

    if all(not math.isfinite(final(r, metric)) for r in c.runs):
        return min(c.runs, key=lambda r: final(r, "train_loss") if math.isfinite(final(r, "train_loss")) else math.inf)
    return max((r for r in c.runs if math.isfinite(final(r, metric))), key=key)


def reproduction(c: Candidate, plan: Plan) -> dict | None:
    """Does the retrain with the trial's own seed repeat the sweep's number at the trial's last epoch? Only
    comparable when it trains the same data with the same schedule (no --epochs change, no train+val)."""
    metric = plan.sweep.metric
    run = next((r for r in c.runs if r["seed"] == c.own_seed), None)
    trial_epochs = int(c.search["epochs"] or 0)
    if run is None or plan.train_on != "train" or trial_epochs == 0 or c.config["epochs"] != c.own_epochs:
        return None
    retrained = run["history"][trial_epochs - 1].get(metric)
    swept = c.search["last_value"]
    same = retrained is not None and swept is not None and float(retrained) == float(swept)
    return {"seed": c.own_seed, "epoch": trial_epochs, "sweep": swept, "retrain": retrained, "identical": same,
            "difference": None if not (retrained is not None and swept is not None) else float(retrained) - swept}


def summarize(plan: Plan, dataset) -> dict:
    """retrain.json's numbers: per seed, per configuration (mean and std), the ranking, the kept model."""
    metric, mode = plan.sweep.metric, plan.sweep.mode
    configs = []
    for c in plan.candidates:
        per_class = [np.diag(r["confusion"]) / np.maximum(r["confusion"].sum(1), 1) for r in c.runs]
        seeds = [{"seed": r["seed"], "epochs": len(r["history"]), f"val_{_short(metric)}": _num(final(r, metric)),
                  "train_loss": _num(final(r, "train_loss")), "test_loss": r["test_loss"], "test_acc": r["test_acc"],
                  "seconds": r["seconds"], "threads": r["threads"], "host": r["host"], "node": r["node"],
                  "diverged": bool(r["history"][-1].get("diverged")), "history": _plain_history(r["history"]),
                  **({"test_ood_acc": r["robustness"]["ood_acc"]} if r["robustness"] else {})}
                 for r in c.runs]
        val = mean_std([final(r, metric) for r in c.runs])
        test = mean_std([r["test_acc"] for r in c.runs])
        configs.append({
            "rank": c.rank, "trial_id": c.trial_id, "trial_name": c.trial_name,
            "config": {k: v for k, v in c.config.items() if k != "seed"}, "seeds": c.seeds,
            "epochs": c.config["epochs"], "search": c.search, "retrain_val": val, "test_acc": test,
            "test_loss": mean_std([r["test_loss"] for r in c.runs]),
            "gap_search_minus_retrain_val": _diff(c.search["value"], val["mean"]),
            "gap_search_minus_test": _diff(c.search["value"], test["mean"]),
            "per_class_acc": [float(v) for v in np.mean(per_class, axis=0)],
            "reproduction": reproduction(c, plan), "runs": seeds,
            **({"test_ood_acc": mean_std([r["robustness"]["ood_acc"] for r in c.runs])} if plan.ood else {}),
        })
    kept = keep(plan)
    best_seed = best_run(kept, metric, mode)
    confusion = best_seed["confusion"]
    return {
        "run_dir": str(plan.run_dir), "sweep": plan.sweep.name, "space": plan.sweep.spec["space"],
        "trainable": plan.trainable.name, "metric": metric, "mode": mode,
        "selection_rule": plan.rule, "train_on": plan.train_on, "epochs": plan.epochs,
        "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint(), "classes": list(dataset.classes),
                    "train": len(dataset.y_train) + (len(dataset.y_val) if plan.train_on == "train+val" else 0),
                    "val": 0 if plan.train_on == "train+val" else len(dataset.y_val), "test": len(dataset.y_test)},
        "configs": configs, "ranking": ranking(configs),
        "model": {"rank": kept.rank, "trial_name": kept.trial_name, "seed": best_seed["seed"], "file": MODEL_FILE,
                  "test_acc": best_seed["test_acc"], f"val_{_short(metric)}": _num(final(best_seed, metric)),
                  "chosen_by": ("validation " + metric) if plan.train_on == "train" else "search rank, then train "
                                                                                         "loss (no validation split)"},
        "confusion_matrix": confusion.tolist(), "most_confused": most_confused(confusion, dataset.classes),
        "test_per_class_n": np.bincount(dataset.y_test, minlength=dataset.num_classes).tolist(),
        "determinism": determinism_note(best_seed),
        **({"robustness": {**{k: v for k, v in plan.ood.items() if k != "seed"}, "corruption_seed": plan.ood["seed"],
                           "clean_test_acc": best_seed["test_acc"], **best_seed["robustness"],
                           "per_corruption": per_corruption(best_seed["robustness"]["sets"])}}
           if plan.ood else {}),
    }


def ood_rows(per: dict) -> list[dict]:
    """trainables.corruptions' per-set accuracies ("name/severity" keys) as rows: corruption, severity, acc."""
    rows = []
    for key, acc in per.items():
        name, slash, severity = key.partition("/")
        if slash:
            rows.append({"corruption": name, "severity": int(severity), "acc": float(acc)})
    return rows


def per_corruption(rows: list[dict]) -> dict:
    """Mean accuracy over severities, per corruption, in the order first seen."""
    out: dict[str, list[float]] = {}
    for row in rows:
        out.setdefault(row["corruption"], []).append(row["acc"])
    return {name: statistics.fmean(accs) for name, accs in out.items()}


def keep(plan: Plan) -> Candidate:
    """The configuration whose model is kept: best mean validation metric (the test set never chooses)."""
    metric, mode = plan.sweep.metric, plan.sweep.mode
    scored = [(mean_std([final(r, metric) for r in c.runs])["mean"], c) for c in plan.candidates]
    pool = [(v, c) for v, c in scored if v is not None]
    if not pool:  # train+val: no validation, the search's ranking stands
        return plan.candidates[0]
    return sorted(pool, key=lambda vc: (-vc[0] if mode == "max" else vc[0], vc[1].rank))[0][1]


def ranking(configs: list[dict]) -> dict:
    """Does the search's order of the top k hold on the test set? Kendall's tau between the two orders."""
    from scipy.stats import kendalltau

    if len(configs) < 2:
        return {"k": len(configs), "holds": None, "kendall_tau": None, "test_order": [c["rank"] for c in configs]}
    means = [c["test_acc"]["mean"] if c["test_acc"]["mean"] is not None else -math.inf for c in configs]
    order = [c["rank"] for _, c in sorted(zip(means, configs), key=lambda mc: (-mc[0], mc[1]["rank"]))]
    tau = kendalltau([c["rank"] for c in configs], [-m for m in means]).statistic
    return {"k": len(configs), "holds": order == sorted(order), "kendall_tau": None if math.isnan(tau) else tau,
            "test_order": order}


def most_confused(confusion: np.ndarray, classes, n: int = CONFUSED_PAIRS) -> list[dict]:
    """The largest off-diagonal counts: which true class is most often taken for which."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:n]
    rows = confusion.sum(1)
    out = []
    for i in flat:
        t, p = divmod(int(i), confusion.shape[1])
        if off[t, p] == 0:
            break
        out.append({"true": classes[t], "predicted": classes[p], "count": int(off[t, p]),
                    "share_of_true": float(off[t, p] / rows[t])})
    return out


def determinism_note(run: dict) -> str:
    device = run["config"].get("device", "cpu")
    return (f"seeded: {run['config']['seed']} drives init, shuffling and augmentation; {run['threads']} CPU "
            f"threads, as the sweep's trials had; device {device}. On a CPU the same config and seed give the same "
            f"numbers to the last digit. On a GPU cuDNN may choose other kernels between runs unless "
            f"deterministic=true.")


def _short(metric: str) -> str:
    return metric.removeprefix("val_")


def _num(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _diff(a, b) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def _plain_history(history: list[dict]) -> list[dict]:
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in h.items()}
            for h in history]


# ---------------------------------------------------------------- files

def model_payload(plan: Plan, dataset, summary: dict) -> dict:
    from tune_app.provenance import provenance

    kept = next(c for c in plan.candidates if c.rank == summary["model"]["rank"])
    run = next(r for r in kept.runs if r["seed"] == summary["model"]["seed"])
    return {"format": MODEL_FORMAT, "trainable": summary["trainable"], "config": run["config"],
            "state_dict": run["weights"], "data": data_meta(dataset), "code": plan.sweep.spec.get("code"),
            "metrics": {"test_acc": run["test_acc"], "test_loss": run["test_loss"]},
            "provenance": {**provenance(sweep=plan.sweep.name, trial_id=kept.trial_id, train_on=plan.train_on),
                           "sweep_provenance": plan.sweep.spec.get("provenance")}}


def data_meta(dataset) -> dict:
    return {"name": dataset.name, "classes": list(dataset.classes), "mean": list(dataset.mean),
            "std": list(dataset.std), "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes,
            "fingerprint": dataset.fingerprint()}


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def write_files(plan: Plan, dataset, summary: dict, payload: dict, to_predict=None) -> Path:
    """Build the retrain folder under a temporary name, then swap it in: a failure or a kill midway leaves the
    previous retrain whole."""
    import pandas as pd
    import torch

    from tune_app import plots

    out = plan.run_dir / RETRAIN_DIR
    tmp = plan.run_dir / f".{RETRAIN_DIR}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        torch.save(payload, tmp / MODEL_FILE)
        classes = list(dataset.classes)
        confusion = np.asarray(summary["confusion_matrix"])
        pd.DataFrame(confusion, index=classes, columns=classes).to_csv(tmp / "confusion_matrix.csv",
                                                                        index_label="true \\ predicted")
        kept = next(c for c in summary["configs"] if c["rank"] == summary["model"]["rank"])
        pd.DataFrame({"class": classes, "test_images": summary["test_per_class_n"],
                      "acc_mean_over_seeds": kept["per_class_acc"],
                      "acc_kept_model": np.diag(confusion) / np.maximum(confusion.sum(1), 1)}).to_csv(
            tmp / "per_class.csv", index=False)
        plots.confusion_png(tmp / "confusion_matrix.png", confusion, classes,
                            f"{summary['model']['trial_name']} seed {summary['model']['seed']}: test set")
        predicted = load_model(tmp / MODEL_FILE).predict(dataset.x_test)
        plots.samples_png(tmp / "samples.png", dataset.x_test, dataset.y_test, predicted, classes)
        if "robustness" in summary:
            pd.DataFrame(summary["robustness"]["sets"]).to_csv(tmp / "robustness.csv", index=False)
        if to_predict is not None:
            ids, images = to_predict
            model = load_model(tmp / MODEL_FILE, device=best_device())
            imageset.write_submission(tmp / "submission.csv", ids, model.predict(images))
        (tmp / "retrain.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
        old = plan.run_dir / f".{RETRAIN_DIR}.{uuid.uuid4().hex}.old"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------- the model file

class TrainedModel:
    """A model file, ready to predict: ``load_model("runs/<name>/retrain/model.pt").predict(images)``.

    ``images`` are uint8 arrays shaped (N, C, H, W) like the dataset's; normalization is part of the model.
    ``module`` is the PyTorch network for image_classifier (None for the NumPy MLP)."""

    def __init__(self, payload: dict, device: str = "cpu") -> None:
        from tune_app.trainable import builtin
        from tune_app.usercode import add_path, local_paths

        self.payload = payload
        for folder in local_paths(payload.get("code")):  # a model of the user's ("module:attr") is imported there
            add_path(folder)
        self.trainable = builtin(payload["trainable"])
        self.config, self.data = payload["config"], payload["data"]
        self.classes = list(self.data["classes"])
        self.state = {"config": self.config, **payload["state_dict"]}
        self.device = device
        self.trainable.check_weights(self.state, self.data)
        load = self.trainable.extra.get("load_model")  # the NumPy MLP has no torch module
        self.module = load(self.state, self.data, device) if load is not None else None

    def predict(self, images: np.ndarray) -> np.ndarray:
        self._check(images)
        kwargs = {"device": self.device} if self.module is not None else {}
        return self.trainable.predict(self.state, images, self.data, **kwargs)

    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy) on uint8 images and integer labels."""
        self._check(images)
        kwargs = {"device": self.device} if self.module is not None else {}
        return self.trainable.evaluate(self.state, images, labels, self.data, **kwargs)

    def _check(self, images: np.ndarray) -> None:
        if tuple(images.shape[1:]) != tuple(self.data["input_shape"]):
            raise ValueError(f"images of shape {tuple(images.shape[1:])}; this model takes "
                             f"{tuple(self.data['input_shape'])} (C, H, W) uint8 images")


def load_model(path, device: str = "cpu") -> TrainedModel:
    """Load a model file written by ``tune_app.retrain``. Raises ValueError (one line) when the file is not one, or
    its weights do not fit the model its config describes."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - not a torch file at all (UnpicklingError, zip errors, ...): one line
        raise ValueError(f"{path}: not a readable model file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a tune_app model file (no format {MODEL_FORMAT!r}); write one with "
                         f"python -m tune_app.retrain")
    try:
        return TrainedModel(payload, device)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ---------------------------------------------------------------- W&B

def log_wandb(plan: Plan, summary: dict, out: Path) -> None:
    """One run per retrain seed in the sweep's group; the kept model as an artifact of type model, alias best.
    A W&B failure is a warning: the files on disk are complete without it."""
    from tune_app.wandb_setup import resolve_mode

    s = plan.settings
    mode = resolve_mode(s.get("wandb_mode"))
    if mode == "disabled":
        return
    try:
        import logging

        import wandb

        logging.getLogger("wandb").setLevel(logging.WARNING)
        for cfg in summary["configs"]:
            for seed_run in cfg["runs"]:
                kept = cfg["rank"] == summary["model"]["rank"] and seed_run["seed"] == summary["model"]["seed"]
                run = wandb.init(project=s.get("wandb_project") or "tune_app", entity=s.get("wandb_entity"),
                                 group=plan.sweep.name, job_type="retrain", dir=str(plan.run_dir), mode=mode,
                                 name=f"{cfg['trial_name']}-retrain-seed{seed_run['seed']}", reinit="create_new",
                                 config={**cfg["config"], "seed": seed_run["seed"], "rank": cfg["rank"],
                                         "train_on": plan.train_on, "search_trial_id": cfg["trial_id"]})
                try:
                    for row in seed_run["history"]:
                        run.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None},
                                step=int(row["epoch"]))
                    run.summary.update({"test_acc": seed_run["test_acc"], "test_loss": seed_run["test_loss"]})
                    if kept:
                        artifact = wandb.Artifact(f"{plan.sweep.name}-model", type="model",
                                                  metadata={"trial_name": cfg["trial_name"], "seed": seed_run["seed"],
                                                            "test_acc": seed_run["test_acc"],
                                                            "trainable": summary["trainable"]})
                        artifact.add_file(str(out / MODEL_FILE))
                        run.log_artifact(artifact, aliases=["best", "latest"])
                finally:
                    run.finish()
        if mode == "offline":
            print(f"tune_app: W&B retrain runs kept offline; upload them with: wandb sync "
                  f"{plan.run_dir}/wandb/offline-run-*", flush=True)
    except Exception as e:  # noqa: BLE001 - W&B must never cost the retrain
        print(f"tune_app: warning: W&B logging of the retrain failed ({type(e).__name__}: {e}); the files in {out} "
              f"are complete", file=sys.stderr)


# ---------------------------------------------------------------- output

def refresh_report(plan: Plan) -> None:
    """Re-analyze with the choices the summary was made with (read back from its files), so the report shows
    the retrain section."""
    from tune_app import analyze

    options = analyze.saved_options(plan.run_dir)
    try:
        analyze.run(plan.run_dir, wandb_mode="disabled", quiet=True, **options)
    except UsageError as e:
        print(f"tune_app: warning: the report was not refreshed ({e})", file=sys.stderr)


def check_ood(plan: Plan, dataset) -> None:
    """CIFAR-C files are checked (all present, shapes fit this test set) before anything trains."""
    if plan.ood is None or plan.ood["source"] is None:
        return
    from trainables import corruptions
    from trainables.data import DataError

    try:
        corruptions.load_cifar_c(plan.ood["source"], plan.ood["names"],
                                 [s for s in plan.ood["severities"] if s > 0], len(dataset.y_test))
    except (DataError, ValueError) as e:
        raise UsageError(f"--corruption-dir: {e}") from None


def read_predict(plan: Plan, dataset):
    """The --predict images, read before anything trains so a bad path costs nothing."""
    if plan.predict is None:
        return None
    try:
        return imageset.read_images(plan.predict, dataset.input_shape)
    except imageset.ImageSetError as e:
        raise UsageError(str(e)) from None


def evaluate_file(plan: Plan, path: str) -> None:
    """--evaluate: a model file's numbers on the sweep's test set; writes nothing."""
    dataset = load_dataset(plan)
    try:
        model = load_model(path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    meta = model.data
    if (tuple(meta["input_shape"]), meta["num_classes"]) != (dataset.input_shape, dataset.num_classes):
        raise UsageError(f"{path}: the model takes {tuple(meta['input_shape'])} images in {meta['num_classes']} "
                         f"classes, the sweep's {dataset.name} has {dataset.input_shape} in {dataset.num_classes}")
    loss, acc = model.evaluate(dataset.x_test, dataset.y_test)
    print(f"{path}: {model.payload['trainable']} {model.trainable.run_name(model.config)} on the {dataset.name} test "
          f"set ({len(dataset.y_test)} images): accuracy {100 * acc:.2f} %, loss {loss:.4f}")


def run(args: argparse.Namespace) -> Path | None:
    """Retrain as ``args`` (the command line's) say; the retrain folder (None for --evaluate). Raises UsageError."""
    from tune_app import storage

    uri = args.run_dir if storage.is_uri(args.run_dir) and \
        storage.check_scheme(args.run_dir, "retrain") != "file" else None
    args.run_dir = str(storage.materialize(args.run_dir, "retrain"))  # an s3:// run comes down first
    from tune_app.runlock import check_idle, check_writable

    check_idle(args.run_dir, "retrain")
    plan = make_plan(args)
    if not args.evaluate:
        check_writable(plan.run_dir, "retrain", "its retrain/ folder")
    if args.evaluate:
        evaluate_file(plan, args.evaluate)
        return None
    if not plan.trainable.builtin:
        from tune_app import retrain_own

        out = retrain_own.run(plan)
    else:
        out = run_builtin(plan)
    if uri:
        storage.upload(plan.run_dir, uri, ("summary", RETRAIN_DIR))
    return out


def run_builtin(plan: Plan) -> Path:
    dataset = load_dataset(plan)
    check_ood(plan, dataset)
    to_predict = read_predict(plan, dataset)
    from tune_app.cluster import join_ray

    started = join_ray(plan.settings, plan.sweep.spec.get("code"))
    try:
        runs = sum(len(c.seeds) for c in plan.candidates)
        print(f"tune_app: retraining {len(plan.candidates)} configuration(s) of {plan.sweep.name} x "
              f"{len(plan.candidates[0].seeds)} seeds = {runs} runs on {plan.train_on} "
              f"({plan.settings['cpus_per_trial']:g} CPU / {shown(plan.settings['gpus_per_trial'])} GPU each), "
              f"then the test set ({len(dataset.y_test)} images)", flush=True)
        run_all(plan, dataset)
    finally:
        if started:
            import ray

            ray.shutdown()
    summary = summarize(plan, dataset)
    out = write_files(plan, dataset, summary, model_payload(plan, dataset, summary), to_predict)
    log_wandb(plan, summary, out)
    refresh_report(plan)
    print(retrain_console(summary))
    extra = "".join(f", {f}" for f in ("robustness.csv", "submission.csv") if (out / f).exists())
    print(f"Retrain: {out} (retrain.json, model.pt, confusion_matrix.png/.csv, per_class.csv, samples.png{extra}); "
          f"report: {plan.run_dir / 'summary' / 'report.html'}")
    return out


def main(argv: list[str] | None = None, prog: str = "python -m tune_app.retrain") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        run(args)
        return 0
    except UsageError as e:
        print(f"tune_app: error: {e}", file=sys.stderr)
        return UsageError.exit_code
    except OSError as e:
        print(f"tune_app: error: {file_error(e)}", file=sys.stderr)
        return UsageError.exit_code


def call(run_dir, seeds: int = 3, **options) -> dict:
    """Retrain the sweep's best configuration with ``seeds`` seeds and measure it on the test set; returns
    retrain.json (per configuration and seed: validation and test metrics). Options are the command line's:
    ``top_k``, ``seed_list``, ``epochs``, ``train_on``, ``cpus_per_trial``, ``gpus_per_trial``, ``wandb_mode``..."""
    args = build_parser().parse_args([str(run_dir)])
    unknown = sorted(set(options) - set(vars(args)) - {"seeds"})
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; known: {', '.join(sorted(vars(args)))}")
    if options.get("train_on", "train") not in ("train", "train+val"):
        raise UsageError(f"train_on={options['train_on']!r}: use 'train' or 'train+val'")
    if options.get("evaluate") is not None:
        raise UsageError("evaluate= trains nothing; measure a model file with tune_app.load_model(path).evaluate("
                         "images, labels)")
    if isinstance(options.get("seed_list"), (list, tuple)):
        options["seed_list"] = ",".join(str(seed) for seed in options["seed_list"])
    namespace = argparse.Namespace(**{**vars(args), **options, "seeds": seeds})
    out = run(namespace)
    return json.loads((out / "retrain.json").read_text())


if __name__ == "__main__":
    sys.exit(main())
else:  # tune_app.retrain(run_dir, seeds=3) from Python is call(run_dir, seeds=3)
    from tune_app.command import callable_command

    callable_command(sys.modules[__name__])
