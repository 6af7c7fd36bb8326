"""The retrain's work: the sweep's dataset read once by the driver, and every (configuration, seed) trained and
measured on the test set as a Ray task (``retrain_one``, through the trainable's own ``fit``)."""
from __future__ import annotations

import importlib
import math
import socket
import time

import numpy as np

from tune_app.errors import UsageError
from tune_app.report.format import fmt
from tune_app.retrain.plan import Plan


def load_dataset(plan: Plan):
    """The sweep's dataset, read once by the driver; refused when it is not the data the sweep saw."""
    from tune_app.sweep_data import load_data

    dataset = load_data(plan.sweep.space, plan.settings, plan.sweep.spec.get("workdir"))
    recorded = (plan.sweep.spec.get("provenance") or {}).get("dataset", {}).get("fingerprint")
    if recorded and recorded != dataset.fingerprint():
        raise UsageError(f"the dataset under {plan.settings['data_dir']} (fingerprint {dataset.fingerprint()}) is not "
                         f"the one the sweep used ({recorded}); point --data-dir at the sweep's copy")
    return dataset


def check_ood(plan: Plan, dataset) -> None:
    """CIFAR-C files are checked (all present, shapes fit this test set) before anything trains."""
    if plan.ood is None or plan.ood["source"] is None:
        return
    from trainables import corruptions
    from trainables.data import DataError

    try:
        corruptions.load_cifar_c(plan.ood["source"], plan.ood["names"],
                                 [severity for severity in plan.ood["severities"] if severity > 0], len(dataset.y_test))
    except (DataError, ValueError) as e:
        raise UsageError(f"--corruption-dir: {e}") from None


def training_view(dataset, train_on: str) -> dict:
    """What ``fit`` trains on: the sweep's splits, or train+val merged with an empty validation split."""
    view = dataset.sweep_view()
    if train_on == "train+val":
        view.update(x_train=np.concatenate([dataset.x_train, dataset.x_val]),
                    y_train=np.concatenate([dataset.y_train, dataset.y_val]),
                    x_val=dataset.x_val[:0], y_val=dataset.y_val[:0])
    return view


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


def ood_rows(per: dict) -> list[dict]:
    """trainables.corruptions' per-set accuracies ("name/severity" keys) as rows: corruption, severity, acc."""
    rows = []
    for key, acc in per.items():
        name, slash, severity = key.partition("/")
        if slash:
            rows.append({"corruption": name, "severity": int(severity), "acc": float(acc)})
    return rows


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def run_all(plan: Plan, dataset) -> None:
    """Every (configuration, seed) as a Ray task with the sweep's per-trial resources, in parallel as the
    cluster allows; results land in ``candidate.runs`` as they finish."""
    import ray

    from tune_app.usercode import local_paths

    settings = plan.settings
    gpus = settings["gpus_per_trial"]
    if gpus == "auto":  # the sweep packed trials by measured memory; a retrain run gets a GPU to itself
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
    # A fresh worker per run (max_calls=1) frees its GPU memory; SPREAD puts seeds on different nodes.
    task = ray.remote(num_cpus=settings["cpus_per_trial"], num_gpus=gpus, max_calls=1,
                      scheduling_strategy="SPREAD")(retrain_one)
    data_ref = ray.put(training_view(dataset, plan.train_on))
    test_x, test_y = ray.put(dataset.x_test), ray.put(dataset.y_test)
    pending = {}
    for c in plan.candidates:
        for seed in c.seeds:
            ref = task.remote(plan.trainable.module.__name__, {**c.config, "seed": seed}, data_ref, test_x, test_y,
                              settings["cpus_per_trial"], plan.ood, local_paths(plan.sweep.spec.get("code")))
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
