"""The quickstart as a plain Optuna script: what a user writes instead of ``python -m tune_app.search --space digits``.

    python scripts/peers/optuna_digits.py                       # 20 trials, as the quickstart
    python scripts/peers/optuna_digits.py --trials 2 --epochs 2 # a smoke run

The same 20 trials over the same space as ``search_spaces/digits.py`` (its keys and ranges copied by hand,
in its order), TPE seeded with 0 as tune_app seeds it, and Optuna's SuccessiveHalvingPruner with ASHA's
grace period (3 epochs) as ``min_resource`` and its reduction factor (3). Trials run one after another
in this process with 2 torch threads (the 2 CPUs the quickstart's trials share). No Ray, no tune_app.

Training is tune_app's own: ``trainables.image_classifier.fit``, the Ray-free training layer (a
top-level package of its own) that tune_app's trials call, with a reporter that hands each epoch's
val_acc to Optuna and raises ``TrialPruned`` when the pruner says so. That makes the comparison
about the search harness alone: a torch loop written here would differ from tune_app's in ways that
are not the point (batch slicing on the device, the cosine schedule per epoch, seeding); ``trainables``
comes from the checkout's ``pip install -e .``. The data is
the quickstart's: ``prepare("digits", None, val_fraction=0.1, split_seed=0)``.

The last line printed is one JSON object that scripts/bench_peers.py reads: ``best_val_acc`` (by
tune_app's rule: each trial's last epoch, pruned trials included), ``epochs_trained`` (every epoch
of every trial), ``trials``, ``pruned`` and the best trial's ``config``.
"""
from __future__ import annotations

import argparse
import json

import optuna
import torch

from trainables.data import prepare
from trainables.image_classifier import fit

GRACE_PERIOD = 3  # epochs before a trial may be pruned (the digits space's ASHA grace_period)
REDUCTION_FACTOR = 3  # keep 1 in 3 at each rung (the digits space's reduction_factor)
EPOCHS = [10, 15, 20]  # the digits space's epochs choice


class PruningReporter:
    """``fit``'s reporter: each epoch's val_acc to the Optuna trial; ``TrialPruned`` stops the training."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.last = None  # the last epoch's val_acc

    def restore(self) -> None:
        return None  # no trial is ever resumed here

    def report(self, metrics: dict, state: dict) -> None:
        self.last = metrics["val_acc"]
        self.trial.report(self.last, metrics["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned()


def objective(trial: optuna.Trial, data: dict, epochs: list[int], seed: int) -> float:
    config = {
        "dataset": "digits",
        "model": "digits_cnn",
        "activation": trial.suggest_categorical(
            "activation", ["relu", "sigmoid", "tanh", "silu", "gelu", "leaky_relu", "elu"]),
        "optimizer": trial.suggest_categorical(
            "optimizer", ["sgd", "nesterov", "adam", "adamw", "adagrad", "rmsprop", "nadam"]),
        "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),  # per step
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        "batch_norm": trial.suggest_categorical("batch_norm", [True, False]),
        "epochs": trial.suggest_categorical("epochs", epochs) if len(epochs) > 1 else epochs[0],
        "weight_decay": 0.0,
        "schedule": "cosine",  # T_max = the trial's epochs
        "crop_padding": 0,
        "seed": seed,  # every trial's own seed, as tune_app gives it (--seed)
        "max_epochs": max(epochs),
    }
    reporter = PruningReporter(trial)
    fit(config, data, reporter)
    return reporter.last


def last_value(t: optuna.trial.FrozenTrial) -> float | None:
    return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, help="every trial's epochs (default: searched over 10, 15, 20)")
    p.add_argument("--seed", type=int, default=0, help="TPE's seed and every trial's own (default 0)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    epochs = [args.epochs] if args.epochs else EPOCHS

    data = prepare("digits", None, val_fraction=0.1, split_seed=0).sweep_view()
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=min(GRACE_PERIOD, max(epochs)),
                                                      reduction_factor=REDUCTION_FACTOR))
    study.optimize(lambda trial: objective(trial, data, epochs, args.seed), n_trials=args.trials)

    scored = [t for t in study.trials if last_value(t) is not None]
    best = max(scored, key=last_value)
    epochs_trained = sum(len(t.intermediate_values) for t in study.trials)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    print(f"best val_acc {100 * last_value(best):.2f} % (trial {best.number}: {best.params}); "
          f"{epochs_trained} epochs trained in {len(study.trials)} trials, {pruned} pruned")
    print(json.dumps({"script": "optuna_digits", "best_val_acc": last_value(best), "epochs_trained": epochs_trained,
                      "trials": len(study.trials), "pruned": pruned, "config": best.params}))


if __name__ == "__main__":
    main()
