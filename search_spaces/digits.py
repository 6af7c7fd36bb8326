"""Quickstart: study 1's axes on scikit-learn's bundled 8x8 digits (offline, CPU).

    python -m tune_app.search --space digits

20 trials of a small CNN (activation x optimizer x lr x batch size x batch norm x
epochs), Optuna TPE with ASHA stopping the weak ones, in a minute or two on a laptop's CPU (the
measured time and results: README.md and docs/BENCHMARKS.md).
"""
from ray import tune

TRAINABLE = "image_classifier"
METRIC, MODE = "val_acc", "max"

SPACE = {
    "dataset": "digits",  # 1438 train+val images (10 % held out for validation), 359 test
    "model": "digits_cnn",
    "activation": tune.choice(["relu", "sigmoid", "tanh", "silu", "gelu", "leaky_relu", "elu"]),
    "optimizer": tune.choice(["sgd", "nesterov", "adam", "adamw", "adagrad", "rmsprop", "nadam"]),
    "lr": tune.loguniform(1e-4, 1e-1),  # per step
    "batch_size": tune.choice([32, 64, 128]),
    "batch_norm": tune.choice([True, False]),
    "epochs": tune.choice([10, 15, 20]),
    "weight_decay": 0.0,
    "schedule": "cosine",  # T_max = the trial's epochs
    "crop_padding": 0,  # pixels; digits are centred, and flips would turn digits into others
}

SETTINGS = {
    "searcher": "optuna",
    "scheduler": "asha",
    "num_samples": 20,
    "max_epochs": 20,
    "grace_period": 3,  # epochs before ASHA may stop a trial
    "reduction_factor": 3,
    "cpus_per_trial": 1,
    "gpus_per_trial": 0,
}
