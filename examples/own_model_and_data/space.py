"""My search space: my own CNN (models.py) on my own PNG folder (make_images.py), from this folder:

    python make_images.py                                  # writes digits_png/ (offline)
    python -m tune_app.search --space ./space.py           # the sweep: runs/space-<date>-<time>/
    python -m tune_app.retrain runs/space-<date>-<time>    # the winner, 3 seeds, on the test images

8 trials (width x dropout x optimizer x lr x batch size), Optuna TPE with ASHA stopping the
weak ones at epochs 2 and 6, 2 trials at a time: about 30 s on a 2-core CPU machine, analysis
included (figures in tune_app's docs/BENCHMARKS.md), best validation accuracy about 99 %.
"""
from ray import tune

TRAINABLE = "image_classifier"  # tune_app's PyTorch trainer: it builds the model, trains, reports val_acc
METRIC, MODE = "val_acc", "max"

SPACE = {
    "dataset": "imagefolder:digits_png",  # digits_png/train/<class>/*.png (+ test/); relative to where you run
    "model": "models:SmallCNN",  # models.py next to this file, class SmallCNN
    "model.width": tune.choice([8, 16, 32]),  # passed to SmallCNN as width=...
    "model.dropout": tune.choice([0.0, 0.25]),  # ... and dropout=...
    "optimizer": tune.choice(["sgd", "adam", "adamw"]),
    "lr": tune.loguniform(1e-3, 3e-2),
    "batch_size": tune.choice([32, 64]),
    "epochs": 10,
    "schedule": "cosine",
    "crop_padding": 1,  # a random shift of up to a pixel; no flips (a flipped digit is another digit)
}

SETTINGS = {
    "searcher": "optuna",
    "scheduler": "asha",
    "num_samples": 8,
    "grace_period": 2,  # epochs before ASHA may stop a trial
    "reduction_factor": 3,
    "cpus_per_trial": 1,
    "gpus_per_trial": 0,
}
