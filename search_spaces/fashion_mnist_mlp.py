"""Study 3: a NumPy MLP with hand-written backprop on Fashion-MNIST (Bayesian search).

    python -m tune_app.search --space fashion_mnist_mlp

Study 3's grid of values, searched by Optuna's TPE with ASHA stopping the weak runs;
10 % of the training set is held out (seeded) for validation. Runs are named from their
configuration (``hl_3_bs_16_ac_tanh...``). ``--set dataset=mnist`` runs the same on MNIST.
"""
from ray import tune

TRAINABLE = "numpy_mlp"
METRIC, MODE = "val_acc", "max"
CURVES_BY = ("loss",)  # the report draws cross-entropy's and squared error's learning curves side by side

SPACE = {
    "dataset": "fashion_mnist",
    "val_fraction": 0.1,
    "epochs": tune.choice([5, 10]),
    "num_layers": tune.choice([3, 4, 5]),
    "hidden_size": tune.choice([32, 64, 128]),
    "weight_decay": tune.choice([0.0, 0.0005, 0.5]),
    "lr": tune.choice([1e-3, 1e-4]),
    "optimizer": tune.choice(["sgd", "momentum", "nag", "rmsprop", "adam", "nadam"]),
    "batch_size": tune.choice([16, 32, 64]),
    "weight_init": tune.choice(["random", "xavier"]),
    "activation": tune.choice(["sigmoid", "tanh", "relu"]),
    "loss": tune.choice(["cross_entropy", "mean_squared_error"]),  # study 3 compares the two
}

SETTINGS = {
    "searcher": "optuna",
    "scheduler": "asha",
    "num_samples": 60,
    "max_epochs": 10,
    "grace_period": 2,
    "reduction_factor": 3,
    "cpus_per_trial": 1,
    "gpus_per_trial": 0,
}
