"""The ``image_classifier`` trainable: a PyTorch CNN trained epoch by epoch.

``fit(config, data, reporter)`` serves the sweep (through tune_app's Ray adapter),
single runs and the final retrain alike. ``data`` is ``Dataset.sweep_view()``:
uint8 arrays that go to the trial's device once; batches are sliced from them and
augmented there.

Determinism: the seed drives model init, shuffling and augmentation (a
``torch.Generator`` on the device) and torch's global RNG (AutoAugment); all of
them are checkpointed, so a resumed trial continues exactly where it stopped. On a
CPU the same config, seed and thread count give the same metrics to the last digit.
On a GPU cuDNN's kernel choice (``cudnn.benchmark``) and atomic adds in some backward
kernels can change the last bits between runs; ``deterministic: true`` turns off
benchmarking, asks cuDNN and torch for deterministic kernels (warning where an op has
none) and fixes cuBLAS's workspace.
"""
from __future__ import annotations

import math
import os
import random
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

from trainables.augment import AutoAugment, cutout, random_crop, random_flip
from trainables.data import DATASETS
from trainables.models import ACTIVATIONS, MODELS, build_model
from trainables.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule
from trainables.params import Param, resolve

PARAMS: dict[str, Param] = {
    # data (fixed for a sweep: prepared once by the driver)
    "dataset": Param("cifar10", str, "dataset name", choices=lambda: list(DATASETS), data=True),
    "val_fraction": Param(0.1, float, "share of the training set held out", low=0.0, high=1.0, data=True),
    "split_seed": Param(0, int, "seed of the train/validation split", data=True),
    # model
    "model": Param("vgg6", str, "model name", choices=MODELS.names),
    "activation": Param("relu", str, "activation name", choices=ACTIVATIONS.names),
    "batch_norm": Param(True, bool, "batch norm after every conv"),
    # optimisation
    "optimizer": Param("sgd", str, "optimizer name", choices=OPTIMIZERS.names),
    "lr": Param(0.01, float, "learning rate per step, > 0", low=1e-12),
    "momentum": Param(0.9, float, "SGD/Nesterov momentum in [0, 1)", low=0.0, high=1.0),
    "weight_decay": Param(0.0, float, "L2 weight decay, >= 0", low=0.0),
    "schedule": Param("none", str, "learning-rate schedule", choices=SCHEDULES.names),
    "batch_size": Param(128, int, "examples per step, >= 1", low=1),
    "epochs": Param(20, int, "epochs to train, >= 1", low=1),
    "max_epochs": Param(0, int, "cap on epochs for the whole sweep; 0 = no cap", low=0),
    # augmentation
    "crop_padding": Param(0, int, "random-crop padding in pixels; 0 = off", low=0),
    "flip": Param(False, bool, "random horizontal flip"),
    "autoaugment": Param(False, bool, "AutoAugment, CIFAR-10 policy"),
    "cutout": Param(0, int, "Cutout square side in pixels; 0 = off", low=0),
    # run
    "seed": Param(0, int, "seed of init, shuffling and augmentation"),
    "eval_batch_size": Param(1024, int, "examples per evaluation step", low=1),
    "device": Param("auto", str, "where to train", choices=lambda: ["auto", "cpu", "cuda"]),
    "deterministic": Param(False, bool, "deterministic cuDNN kernels (slower on GPU)"),
}

METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
           "epoch_time_s", "samples_per_s", "peak_mem_mb", "params")


COST_KEYS = ("dataset", "model", "batch_norm", "batch_size", "autoaugment", "device")  # --plan probes each
WEIGHT_KEYS = ("model",)  # the checkpoint entries that hold the trained weights (a model file keeps these)


def run_name(config: dict) -> str:
    """``vgg6_gelu_nadam_bs64_lr0.001``: readable in W&B and Ray's tables."""
    c = {k: config.get(k, p.default) for k, p in PARAMS.items()}
    return f"{c['model']}_{c['activation']}_{c['optimizer']}_bs{c['batch_size']}_lr{c['lr']:.3g}"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated device memory on a GPU; the process's peak resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class DeviceData:
    """A split as uint8 on the device, normalized per batch."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mean, std, device: torch.device) -> None:
        self.x = torch.tensor(x, dtype=torch.uint8, device=device)
        self.y = torch.tensor(y, dtype=torch.long, device=device)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.y)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float() - self.mean) / self.std


def batch_starts(n: int, batch_size: int) -> range:
    # A last batch of one example would break batch norm; it is dropped (and only it).
    end = n - 1 if n % batch_size == 1 and n > 1 else n
    return range(0, end, batch_size)


def train_epoch(model, opt, data: DeviceData, cfg: dict, gen: torch.Generator, autoaugment):
    model.train()
    perm = torch.randperm(len(data), generator=gen, device=data.x.device)
    loss_sum = torch.zeros((), device=data.x.device)
    correct = torch.zeros((), device=data.x.device, dtype=torch.long)
    seen = 0
    for start in batch_starts(len(data), cfg["batch_size"]):
        idx = perm[start:start + cfg["batch_size"]]
        x, y = data.x[idx], data.y[idx]
        if autoaugment is not None:
            x = autoaugment(x)
        x = random_crop(x, cfg["crop_padding"], gen)
        if cfg["flip"]:
            x = random_flip(x, gen)
        x = cutout(data.normalize(x), cfg["cutout"], gen)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return loss_sum.item() / seen, correct.item() / seen, seen


@torch.inference_mode()
def evaluate_model(model, data: DeviceData, batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy); NaN for both on an empty split (training on train+val)."""
    if len(data) == 0:
        return math.nan, math.nan
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = data.normalize(data.x[start:start + batch_size])
        y = data.y[start:start + batch_size]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / len(data), correct / len(data)


def load_model(state: dict, data: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained network of a checkpoint ``state`` (its config and weights), in eval mode. ``data`` gives
    the input shape and class count. Weights that do not fit the configured model raise one-line ValueError."""
    cfg = state["config"]
    model = build_model(cfg["model"], data["input_shape"], data["num_classes"], cfg["activation"], cfg["batch_norm"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        reason = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise ValueError(f"the weights do not fit model {cfg['model']} (batch_norm={cfg['batch_norm']}) for input "
                         f"{tuple(data['input_shape'])} and {data['num_classes']} classes: {reason}") from None
    return model.to(device).eval()


def check_weights(state: dict, data: dict) -> None:
    """One-line ValueError when the weights of ``state`` do not fit its configured model on ``data``."""
    load_model(state, data)


def _logits(state: dict, x_uint8: np.ndarray, data: dict, device) -> torch.Tensor:
    device = pick_device(device or state["config"]["device"])
    model = load_model(state, data, device)
    x = DeviceData(x_uint8, np.zeros(len(x_uint8), np.int64), data["mean"], data["std"], device)
    batch = state["config"]["eval_batch_size"]
    with torch.inference_mode():
        parts = [model(x.normalize(x.x[s:s + batch])).float().cpu() for s in range(0, len(x), batch)]
    return torch.cat(parts) if parts else torch.empty(0, data["num_classes"])


def predict(state: dict, x_uint8: np.ndarray, data: dict, device=None) -> np.ndarray:
    """Class indices for uint8 images (N, C, H, W) from a checkpoint ``state`` as ``fit`` reports it."""
    return _logits(state, x_uint8, data, device).argmax(1).numpy()


def evaluate(state: dict, x_uint8: np.ndarray, y: np.ndarray, data: dict, device=None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of a checkpoint ``state`` on uint8 images and labels."""
    logits = _logits(state, x_uint8, data, device)
    target = torch.as_tensor(y, dtype=torch.long)
    return F.cross_entropy(logits, target).item(), int((logits.argmax(1) == target).sum()) / len(target)


def apply_new_hyperparameters(opt, schedule, old: dict, new: dict) -> None:
    """PBT restarts a trial from another's checkpoint with a mutated lr or weight
    decay; the optimizer state loaded from the checkpoint must not undo that."""
    scale = new["lr"] / old["lr"]
    for group in opt.param_groups:
        group["lr"] *= scale
        group["initial_lr"] = new["lr"]
        group["weight_decay"] = new["weight_decay"]
    schedule.base_lrs = [new["lr"] for _ in schedule.base_lrs]


def fit(config: dict, data: dict, reporter) -> None:
    """Train one configuration, reporting METRICS and a checkpoint every epoch.

    A NaN/inf training loss ends the trial after reporting that epoch with
    ``diverged: True`` and ``val_acc`` 0.0, so searchers rank it last."""
    cfg = resolve(PARAMS, config)
    device = pick_device(cfg["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg["deterministic"]
        torch.backends.cudnn.deterministic = cfg["deterministic"]
        if cfg["deterministic"]:
            # cuBLAS needs a fixed workspace for repeatable matmuls; set before its first use in this process.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg["seed"])
    gen = torch.Generator(device=device).manual_seed(cfg["seed"])

    train = DeviceData(data["x_train"], data["y_train"], data["mean"], data["std"], device)
    val = DeviceData(data["x_val"], data["y_val"], data["mean"], data["std"], device)
    epochs = min(cfg["epochs"], cfg["max_epochs"] or cfg["epochs"])
    model = build_model(cfg["model"], data["input_shape"], data["num_classes"],
                        cfg["activation"], cfg["batch_norm"]).to(device)
    opt = build_optimizer(cfg["optimizer"], model.parameters(), cfg["lr"],
                          cfg["weight_decay"], cfg["momentum"])
    schedule = build_schedule(cfg["schedule"], opt, epochs)
    autoaugment = AutoAugment() if cfg["autoaugment"] else None
    n_params = sum(p.numel() for p in model.parameters())

    first_epoch = 1
    state = reporter.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["generator"])
        first_epoch = state["epoch"] + 1
        apply_new_hyperparameters(opt, schedule, state["config"], cfg)

    for epoch in range(first_epoch, epochs + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        lr = opt.param_groups[0]["lr"]
        t0 = time.perf_counter()
        train_loss, train_acc, seen = train_epoch(model, opt, train, cfg, gen, autoaugment)
        train_s = time.perf_counter() - t0
        diverged = not math.isfinite(train_loss)
        if diverged:
            val_loss, val_acc = float("nan"), 0.0
        else:
            val_loss, val_acc = evaluate_model(model, val, cfg["eval_batch_size"])
            diverged = len(val) > 0 and not math.isfinite(val_loss)
        schedule.step()
        metrics = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": 0.0 if diverged else train_acc,
            "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
            "epoch_time_s": time.perf_counter() - t0, "samples_per_s": seen / train_s,
            "peak_mem_mb": peak_memory_mb(device), "params": n_params, "diverged": diverged,
        }
        state = {
            "epoch": epoch, "config": cfg, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(),
            "generator": gen.get_state(),
        }
        reporter.report(metrics, state)
        if diverged:
            return
