"""Study 2: a 32-run grid of ResNet-18 and PreAct ResNet-18 on CIFAR-100.

    python -m tune_app.search --space cifar100_resnet --data-dir ./data --gpus-per-trial 0.5
    python -m tune_app.retrain runs/<name> --epochs 100        # the study's follow-up

The grid is {ResNet-18, PreAct ResNet-18} x {CutMix/MixUp on, off} x {SGD, Adam} x
{lr 1e-4, 1e-2} x {ReduceLROnPlateau, CosineAnnealingLR}: every combination once (grid
searcher, FIFO). Fixed as in the study: batch 256, up to 50 epochs with early stopping
(patience 3 epochs, min delta 0.01 of validation loss), weight decay 1e-3, SGD momentum 0.9
with Nesterov, cosine T_max = epochs, basic augmentation (crop, flip, rotation, color
jitter). The study's follow-up retrained the best run for 100 epochs (T_max 100): 73.99 %
test accuracy for PreAct ResNet-18, SGD, lr 1e-2, CutMix/MixUp.

The grid's up to 1,600 epochs are for GPUs, where amp=auto trains in bf16 and channels_last;
ResNet-18's speed on a CPU (``python scripts/bench_models.py``) is in docs/BENCHMARKS.md.
"""
from ray import tune

TRAINABLE = "image_classifier"
METRIC, MODE = "val_acc", "max"

SPACE = {
    "dataset": "cifar100",  # 45,000 train / 5,000 validation / 10,000 test
    "model": tune.choice(["resnet18", "preact_resnet18"]),  # CIFAR variants: 3x3 stem, no max-pool
    "mix": tune.choice(["cutmix_mixup", "none"]),  # one of CutMix or MixUp per batch, alpha 1
    "optimizer": tune.choice(["nesterov", "adam"]),  # SGD with Nesterov momentum 0.9
    "lr": tune.choice([1e-4, 1e-2]),  # per step
    "schedule": tune.choice(["plateau", "cosine"]),  # ReduceLROnPlateau on val_loss; cosine T_max = epochs
    "momentum": 0.9,
    "weight_decay": 1e-3,
    "batch_size": 256,
    "epochs": 50,
    "early_stop_patience": 3,  # epochs without val_loss improving by more than min delta
    "early_stop_min_delta": 0.01,
    "early_stop_metric": "val_loss",
    "crop_padding": 4,  # pixels
    "flip": True,
    "rotation": 15.0,  # degrees either way
    "color_jitter": 0.2,  # brightness/contrast/saturation in [0.8, 1.2]
}

SETTINGS = {
    "searcher": "grid",  # 2^5 = 32 trials, each once
    "scheduler": "fifo",  # early stopping is the trial's own
    "num_samples": 1,
    "max_epochs": 50,
    "cpus_per_trial": 2,
    "gpus_per_trial": 0,  # --gpus-per-trial 0.5 packs 2 ResNet-18 trials per GPU
}
