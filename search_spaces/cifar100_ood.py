"""Study 5: CIFAR-100 classifiers ranked by accuracy on corrupted images.

    python -m tune_app.search --space cifar100_ood --data-dir ./data --gpus-per-trial 0.5
    python -m tune_app.retrain runs/<name> --corruption-dir ./data/CIFAR-100-C --predict ./heldout.npy

The study found a model at 75 % clean accuracy and 3 % on corrupted data; this space
searches models x optimizer x schedule x label smoothing x augmentation for the
configurations that close that gap. Every epoch each trial is scored on corrupted copies
of 1,000 validation images (Gaussian noise, shot noise, Gaussian blur, contrast,
brightness, JPEG, pixelate at severities 1-5, the same copies for every trial): the mean
accuracy over those 35 sets is ``ood_acc``, the metric. The retrain measures the winner on
the clean test set and per corruption on the corrupted test set (generated from it, or
CIFAR-100-C's files with --corruption-dir), and --predict writes a submission CSV.

For ResNet-50 from ImageNet weights: --set model=tv_resnet50 --set
pretrained_weights=/path/resnet50-11ad3fa6.pth (inputs are upsampled to 224).

On a CPU try the small CNNs (--set model=[small_cnn2,small_cnn4]) and run the whole space on GPUs;
each model's speed (``python scripts/bench_models.py``) is in docs/BENCHMARKS.md.
"""
from ray import tune

TRAINABLE = "image_classifier"
METRIC, MODE = "ood_acc", "max"

SPACE = {
    "dataset": "cifar100",
    "model": tune.choice(["small_cnn2", "small_cnn4", "resnet18", "resnet50"]),
    "activation": tune.choice(["relu", "leaky_relu"]),  # the small CNNs' choice; the ResNets use it too
    "optimizer": tune.choice(["adam", "sgd"]),
    "lr": tune.loguniform(1e-4, 1e-1),  # per step; OneCycle's peak
    "schedule": tune.choice(["step", "onecycle"]),
    "step_size": 10,  # epochs between StepLR's drops
    "step_gamma": 0.1,
    "label_smoothing": tune.choice([0.0, 0.1]),
    "weight_decay": 5e-4,
    "batch_size": 128,
    "epochs": 30,
    "crop_padding": 4,  # pixels
    "flip": True,
    "rotation": tune.choice([0.0, 15.0]),  # degrees either way
    "blur_sigma": tune.choice([0.0, 1.0]),  # pixels, half the images
    "noise_std": tune.choice([0.0, 0.05]),  # on the 0..1 pixel scale
    "ood_corruptions": "all",
    "ood_severities": "1-5",
    "ood_images": 1000,  # validation images corrupted per set
}

SETTINGS = {
    "searcher": "optuna",
    "scheduler": "asha",
    "num_samples": 40,
    "max_epochs": 30,
    "grace_period": 5,  # epochs before ASHA may stop a trial
    "reduction_factor": 3,
    "cpus_per_trial": 2,
    "gpus_per_trial": 0,
}
