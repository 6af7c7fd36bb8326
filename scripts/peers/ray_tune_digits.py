"""The quickstart as a plain Ray Tune script, written as Ray's docs show: what a user writes instead of
``python -m tune_app.search --space digits``.

    python scripts/peers/ray_tune_digits.py                        # 20 trials, as the quickstart
    python scripts/peers/ray_tune_digits.py --trials 2 --epochs 2  # a smoke run

``tune.Tuner`` over a function trainable that calls ``tune.report`` with a checkpoint every epoch,
``OptunaSearch`` (TPE, seed 0 as tune_app seeds it) and ``ASHAScheduler`` with the digits space's grace
period (3) and reduction factor (3), ``max_t`` the longest trial (20 epochs); the same space as
``search_spaces/digits.py`` (keys and ranges copied by hand, in its order) and 1 CPU a trial. The data
goes to the trials through ``tune.with_parameters``. Everything else is Ray's default: a local Ray
(``address="local"``, so a cluster someone else started on this machine is never joined), its progress
table, every checkpoint kept, a new worker process per trial (``reuse_actors`` is off by default;
tune_app turns it on). No tune_app import.

Training is tune_app's own ``trainables.image_classifier.fit`` (the Ray-free training layer, a
top-level package of its own), with a reporter that is the docs' checkpoint pattern: the state goes
to ``torch.save`` in a temporary folder and ``tune.report(metrics, checkpoint=...)``; a restarted
trial reads ``tune.get_checkpoint()``. So the comparison is about the search harness alone. ``trainables``
comes from the checkout's ``pip install -e .``, in the driver and in Ray's workers alike.

The last line printed is one JSON object that scripts/bench_peers.py reads: ``best_val_acc`` (the
best trial by its last epoch, as tune_app ranks them), ``epochs_trained`` (every epoch of every
trial), ``trials``, ``stopped`` (trials ASHA stopped early) and the best trial's ``config``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from trainables.data import prepare
from trainables.image_classifier import fit

GRACE_PERIOD = 3  # epochs before ASHA may stop a trial (the digits space's)
REDUCTION_FACTOR = 3
EPOCHS = [10, 15, 20]  # the digits space's epochs choice


class TuneReporter:
    """``fit``'s reporter: each epoch's metrics and a checkpoint to ``tune.report``."""

    def restore(self) -> dict | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(os.path.join(folder, "checkpoint.pt"), weights_only=False)

    def report(self, metrics: dict, state: dict) -> None:
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, os.path.join(folder, "checkpoint.pt"))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def train_digits(config: dict, data: dict) -> None:
    fit(config, data, TuneReporter())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, help="every trial's epochs (default: searched over 10, 15, 20)")
    p.add_argument("--seed", type=int, default=0, help="TPE's seed and every trial's own (default 0)")
    p.add_argument("--storage-path", help="Ray's results folder (default: Ray's, ~/ray_results)")
    args = p.parse_args()
    epochs = [args.epochs] if args.epochs else EPOCHS

    data = prepare("digits", None, val_fraction=0.1, split_seed=0).sweep_view()
    param_space = {
        "dataset": "digits",
        "model": "digits_cnn",
        "activation": tune.choice(["relu", "sigmoid", "tanh", "silu", "gelu", "leaky_relu", "elu"]),
        "optimizer": tune.choice(["sgd", "nesterov", "adam", "adamw", "adagrad", "rmsprop", "nadam"]),
        "lr": tune.loguniform(1e-4, 1e-1),  # per step
        "batch_size": tune.choice([32, 64, 128]),
        "batch_norm": tune.choice([True, False]),
        "epochs": tune.choice(epochs) if len(epochs) > 1 else epochs[0],
        "weight_decay": 0.0,
        "schedule": "cosine",  # T_max = the trial's epochs
        "crop_padding": 0,
        "seed": args.seed,  # every trial's own seed, as tune_app gives it (--seed)
        "max_epochs": max(epochs),
    }
    ray.init(address="local")
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_digits, data=data), {"cpu": 1}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", num_samples=args.trials,
            search_alg=OptunaSearch(seed=args.seed),
            scheduler=ASHAScheduler(max_t=max(epochs), grace_period=min(GRACE_PERIOD, max(epochs)),
                                    reduction_factor=REDUCTION_FACTOR)),
        run_config=tune.RunConfig(storage_path=args.storage_path),
    )
    results = tuner.fit()

    best = results.get_best_result(metric="val_acc", mode="max", scope="last")
    epochs_trained = sum(r.metrics["training_iteration"] for r in results if r.metrics)
    stopped = sum(r.metrics["training_iteration"] < r.config["epochs"] for r in results if r.metrics)
    searched = ("activation", "optimizer", "lr", "batch_size", "batch_norm", "epochs")
    config = {k: best.config[k] for k in searched}
    print(f"best val_acc {100 * best.metrics['val_acc']:.2f} % ({config}); {epochs_trained} epochs trained in "
          f"{len(results)} trials, {stopped} stopped by ASHA")
    print(json.dumps({"script": "ray_tune_digits", "best_val_acc": best.metrics["val_acc"],
                      "epochs_trained": epochs_trained, "trials": len(results), "stopped": stopped,
                      "config": config}))


if __name__ == "__main__":
    main()
