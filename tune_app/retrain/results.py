"""retrain.json's numbers, pure functions of the finished runs: mean and spread over seeds, the configuration and
seed kept (the test set never chooses), whether the trial's own seed repeated the sweep, the ranking on the test set
and the most confused classes."""
from __future__ import annotations

import math
import statistics

import numpy as np

from tune_app.retrain.model import MODEL_FILE
from tune_app.retrain.plan import Candidate, Plan
from tune_app.rundir.tables import number

CONFUSED_PAIRS = 10  # most-confused (true, predicted) pairs listed


def mean_std(values: list) -> dict:
    """Mean and sample standard deviation (n - 1; None for one value) over the finite numbers among ``values``
    (None, NaN, text and booleans, which a user's evaluate may return, are left out)."""
    finite = [x for v in values if (x := number(v)) is not None]  # number(): finite reals only
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
