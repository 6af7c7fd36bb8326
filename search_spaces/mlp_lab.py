"""Study 4: one-hidden-layer MLPs on Fashion-MNIST and CIFAR-10, with cost estimates.

    python -m tune_app.search --space mlp_lab --plan    # estimates only, nothing trains
    python -m tune_app.search --space mlp_lab
    python -m tune_app.search --space mlp_lab --set dataset=cifar10

Before the sweep trains, a short probe of each distinct (dataset, width, batch size)
estimates every configuration's peak memory and time per epoch and per trial; after it,
the trials table and the report put the estimates next to what each trial measured.
Study 4's grid: hidden 128/256/360/512, lr 0.01-0.02, batch 8-128, 10-50 epochs,
L2 0 or 1e-3, sampled here (24 trials per dataset) rather than run in full.

How close the estimates came on Fashion-MNIST-sized data: docs/studies.md (study 4).
"""
from ray import tune

TRAINABLE = "numpy_mlp"
METRIC, MODE = "val_acc", "max"

SPACE = {
    "dataset": "fashion_mnist",  # one dataset per sweep (the driver loads it once): --set dataset=cifar10
    "num_layers": 1,
    "hidden_size": tune.choice([128, 256, 360, 512]),
    "lr": tune.uniform(0.01, 0.02),
    "batch_size": tune.choice([8, 16, 32, 64, 128]),
    "epochs": tune.choice([10, 20, 30, 50]),
    "weight_decay": tune.choice([0.0, 1e-3]),
    "activation": "relu",
    "weight_init": "he",
    "optimizer": "sgd",
    "loss": "cross_entropy",
}

SETTINGS = {
    "searcher": "random",
    "scheduler": "fifo",
    "num_samples": 24,
    "max_epochs": 50,
    "cpus_per_trial": 1,
    "gpus_per_trial": 0,
    "estimate_cost": True,
}
