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

One batch goes: uint8 crop/flip/AutoAugment -> float rotation, color jitter, blur, noise
-> normalize -> Cutout -> MixUp/CutMix (soft targets) -> forward under autocast
(``amp``) in ``channels_last`` when asked -> label-smoothed cross-entropy -> step, and the
schedule steps per batch (warm-up, OneCycle) and per epoch (cosine, StepLR, plateau).
Early stopping ends a trial whose ``early_stop_metric`` stopped improving; its last report
says ``early_stopped: True``. With ``ood_corruptions`` set, every epoch also scores the
model on corrupted copies of the validation images (``ood_acc``, study 5).

``model`` is a built-in name or the user's own ``"module:attr"`` (an ``nn.Module`` class or a
function returning one, importable from ``sys.path``), called as ``attr(num_classes=...,
input_shape=(C, H, W), **model_args)`` where ``model_args`` are the config's ``model.NAME`` keys
(``model.hidden: 64`` -> ``hidden=64``). ``activation`` and ``batch_norm`` configure the built-ins
only and are not passed to it. ``check_space`` imports it and ``check_models`` builds it and runs
one batch through it before anything runs.
"""
from __future__ import annotations

import inspect
import itertools
import math
import os
import random
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

from trainables import corruptions
from trainables import data as datasets
from trainables.augment import (
    MIX_MODES,
    AutoAugment,
    color_jitter,
    cutout,
    gaussian_blur,
    gaussian_noise,
    mix_batch,
    normalize,
    random_crop_flip,
    random_rotation,
)
from trainables.imports import first_line, is_ref, ref_name
from trainables.models import (
    ACTIVATIONS,
    MODELS,
    PRETRAINED,
    build_model,
    builtin_takes_no_args,
    check_module,
    import_factory,
)
from trainables.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule
from trainables.params import Param, factory_args, is_factory_arg, resolve


class CorruptionsParam(Param):
    """'none', 'all' or a comma list of corruption names (trainables.corruptions.CORRUPTIONS)."""

    def check(self, key: str, value):
        value = super().check(key, value)
        if value != "none":
            try:
                corruptions.parse_names(value)
            except ValueError as e:
                raise ValueError(f"{key}={value!r}: {e}") from None
        return value


class SeveritiesParam(Param):
    """Severities as '1,3,5' or '1-5' (0 = the clean image)."""

    def check(self, key: str, value):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        value = super().check(key, value)
        try:
            corruptions.parse_severities(value)
        except ValueError as e:
            raise ValueError(f"{key}={value!r}: {e}") from None
        return value


class DatasetParam(Param):
    """A built-in dataset name, ``imagefolder:PATH`` or ``npz:PATH`` (trainables.data.check_name)."""

    def check(self, key: str, value):
        value = super().check(key, value)
        try:
            datasets.check_name(value)
        except ValueError as e:
            raise ValueError(f"{key}={value!r}: {e}") from None
        return value


PARAMS: dict[str, Param] = {
    # data (fixed for a sweep: prepared once by the driver)
    "dataset": DatasetParam("cifar10", str, "dataset name: a built-in, imagefolder:PATH or npz:PATH", data=True),
    "val_fraction": Param(0.1, float, "share of the training set held out", low=0.0, high=1.0, data=True),
    "split_seed": Param(0, int, "seed of the train/validation split (and of the corrupted copies)", low=0, data=True),
    "image_size": Param(0, int, "resize every image to this many pixels square when the dataset is read "
                        "(imagefolder:/npz:); 0 = keep", low=0, data=True),
    # model
    "model": Param("vgg6", str, "a built-in model name, or 'module:attr' for your own nn.Module class or a "
                   "function returning one; model.NAME keys are passed to it as NAME=...",
                   choices=MODELS.names, takes_args=True),
    "activation": Param("relu", str, "activation name (built-in models; not passed to your own)",
                        choices=ACTIVATIONS.names),
    "batch_norm": Param(True, bool, "batch norm after every conv (built-in models; not passed to your own)"),
    "pretrained_weights": Param("", str, "ImageNet .pth file for tv_resnet18/tv_resnet50; '' = random init"),
    # optimisation
    "optimizer": Param("sgd", str, "optimizer name", choices=OPTIMIZERS.names),
    "lr": Param(0.01, float, "learning rate per step, > 0 (OneCycle's peak)", low=1e-12),
    "momentum": Param(0.9, float, "SGD/Nesterov momentum in [0, 1)", low=0.0, high=1.0),
    "weight_decay": Param(0.0, float, "L2 weight decay, >= 0", low=0.0),
    "label_smoothing": Param(0.0, float, "share of the target spread over all classes, in [0, 1)",
                             low=0.0, high=1.0),
    "schedule": Param("none", str, "learning-rate schedule", choices=SCHEDULES.names),
    "warmup_epochs": Param(0.0, float, "epochs of linear lr warm-up, per step (OneCycle: its rising phase)",
                           low=0.0),
    "step_size": Param(30, int, "StepLR: epochs between lr drops", low=1),
    "step_gamma": Param(0.1, float, "StepLR: lr factor at each drop, > 0", low=1e-12),
    "plateau_patience": Param(2, int, "ReduceLROnPlateau: epochs without val_loss improvement", low=0),
    "plateau_factor": Param(0.1, float, "ReduceLROnPlateau: lr factor at each drop, in (0, 1)",
                            low=1e-12, high=1.0),
    "batch_size": Param(128, int, "examples per step, >= 1", low=1),
    "epochs": Param(20, int, "epochs to train, >= 1", low=1),
    "max_epochs": Param(0, int, "cap on epochs for the whole sweep; 0 = no cap", low=0),
    "diverge_loss": Param(0.0, float, "a mean training loss above this ends the trial as diverged (as NaN/inf "
                          "does); 0 = NaN/inf only. Guessing scores ln(classes): 2.3 for 10", low=0.0),
    "early_stop_patience": Param(0, int, "epochs without improvement before the trial stops; 0 = off", low=0),
    "early_stop_min_delta": Param(0.0, float, "smallest change of early_stop_metric that counts as improvement",
                                  low=0.0),
    "early_stop_metric": Param("val_loss", str, "what early stopping watches",
                               choices=lambda: ["val_loss", "val_acc"]),
    # augmentation
    "crop_padding": Param(0, int, "random-crop padding in pixels; 0 = off", low=0),
    "flip": Param(False, bool, "random horizontal flip"),
    "autoaugment": Param(False, bool, "AutoAugment, CIFAR-10 policy"),
    "rotation": Param(0.0, float, "random rotation up to this many degrees either way; 0 = off",
                      low=0.0, high=180.000001),
    "color_jitter": Param(0.0, float, "brightness/contrast/saturation factors in [1-s, 1+s]; 0 = off",
                          low=0.0, high=1.0),
    "blur_sigma": Param(0.0, float, "Gaussian blur of half the images, sigma up to this (pixels); 0 = off",
                        low=0.0),
    "noise_std": Param(0.0, float, "Gaussian pixel noise, std on the 0..1 scale; 0 = off", low=0.0),
    "cutout": Param(0, int, "Cutout square side in pixels; 0 = off", low=0),
    "mix": Param("none", str, "batch mixing; cutmix_mixup picks one per batch", choices=lambda: list(MIX_MODES)),
    "mix_alpha": Param(1.0, float, "MixUp/CutMix lambda ~ Beta(alpha, alpha), > 0", low=1e-12),
    # robustness (study 5): corrupted copies of the validation images, scored every epoch as ood_acc
    "ood_corruptions": CorruptionsParam("none", str, "'none', 'all' or a comma list of corruptions"),
    "ood_severities": SeveritiesParam("1-5", str, "corruption severities, e.g. '1-5' or '1,3,5'"),
    "ood_images": Param(1000, int, "validation images corrupted for ood_acc; 0 = all", low=0),
    # speed
    "amp": Param("auto", str, "mixed precision; auto = bf16 on a GPU (fp16 where bf16 is missing), off on a CPU",
                 choices=lambda: ["auto", "bf16", "fp16", "off"]),
    "compile": Param(False, bool, "torch.compile the model (on a GPU with CUDA graphs): faster steps after a "
                     "compile of tens of seconds; rarely worth it on a CPU"),
    "channels_last": Param("auto", str, "NHWC memory format; auto = on a GPU, off on a CPU",
                           choices=lambda: ["auto", "on", "off"]),
    "cache": Param("auto", str, "where the uint8 dataset lives: device memory, or host memory copied per batch; "
                   "auto = device", choices=lambda: ["auto", "device", "host"]),
    # run
    "seed": Param(0, int, "seed of init, shuffling and augmentation"),
    "eval_batch_size": Param(1024, int, "examples per evaluation step", low=1),
    "device": Param("auto", str, "where to train", choices=lambda: ["auto", "cpu", "cuda"]),
    "deterministic": Param(False, bool, "deterministic cuDNN kernels, amp off (slower on GPU)"),
}

METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
           "epoch_time_s", "samples_per_s", "peak_mem_mb", "params",
           "cpu_s",  # process CPU seconds of the epoch (every thread: training, evaluation)
           "samples_seen")  # training samples since the trial began, over resumes (PBT: from the donor's weights)
OPTIONAL_METRICS = ("ood_acc",)  # reported when ood_corruptions is set; a space may rank by it


COST_KEYS = ("dataset", "model", "batch_norm", "batch_size", "autoaugment", "device", "amp", "channels_last", "compile",
             "ood_corruptions", "ood_severities", "ood_images")  # --plan probes each
# The model.NAME keys of a user model (its size, say) count for cost too: tune_app.cost.estimate adds them to these.
WEIGHT_KEYS = ("model",)  # the checkpoint entries that hold the trained weights (a model file keeps these)


def schedule_spans_run(config: dict) -> bool:
    """Cosine and OneCycle fit the learning rate to the planned epochs; constant, step and plateau do not."""
    return config.get("schedule", "none") in ("cosine", "onecycle")


def run_name(config: dict) -> str:
    """``vgg6_gelu_nadam_bs64_lr0.001``: readable in W&B and Ray's tables. A user model goes by its attribute
    path and without the activation, which it does not take: ``Net_adam_bs64_lr0.001`` for ``mymodels:Net``
    (identifiers and dots only, so it is also a folder name)."""
    c = {k: config.get(k, p.default) for k, p in PARAMS.items()}
    model = ref_name(c["model"]) if is_ref(c["model"]) else f"{c['model']}_{c['activation']}"
    return f"{model}_{c['optimizer']}_bs{c['batch_size']}_lr{c['lr']:.3g}"


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
    """A split as uint8, normalized per batch on the device.

    ``resident`` (the ``cache`` key): the whole split lives in device memory, or in host
    memory (pinned when the device is a GPU) with each batch copied over as it is needed,
    for datasets larger than the GPU's memory. On a CPU the two are the same."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mean, std, device: torch.device, resident: bool = True) -> None:
        home = device if resident else torch.device("cpu")
        self.device = device
        self.x = torch.tensor(x, dtype=torch.uint8, device=home)
        self.y = torch.tensor(y, dtype=torch.long, device=home)
        if home != device and device.type == "cuda":
            self.x, self.y = self.x.pin_memory(), self.y.pin_memory()
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and labels at ``idx``, on the device."""
        idx = idx.to(self.x.device)  # index_select: the same rows as x[idx], an order of magnitude faster on a CPU
        return (self.x.index_select(0, idx).to(self.device, non_blocking=True),
                self.y.index_select(0, idx).to(self.device, non_blocking=True))

    def slice(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.x[start:stop].to(self.device, non_blocking=True),
                self.y[start:stop].to(self.device, non_blocking=True))

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float() - self.mean) / self.std

    def normalize_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize float images on the 0..1 scale (after the photometric augmentations)."""
        return (x * 255 - self.mean) / self.std


class Precision:
    """Autocast dtype, GradScaler and memory format for one device and config."""

    def __init__(self, cfg: dict, device: torch.device) -> None:
        amp = cfg["amp"]
        if amp == "auto":
            amp = "off" if device.type != "cuda" or cfg["deterministic"] else (
                "bf16" if torch.cuda.is_bf16_supported() else "fp16")
        self.name = amp
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.device_type = device.type
        # fp16's narrow range needs loss scaling; bf16 has float32's range and does not.
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        last = cfg["channels_last"]
        self.channels_last = last == "on" or (last == "auto" and device.type == "cuda")

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def batch_starts(n: int, batch_size: int) -> range:
    # A last batch of one example would break batch norm; it is dropped (and only it).
    end = n - 1 if n % batch_size == 1 and n > 1 else n
    return range(0, end, batch_size)


def augment(x: torch.Tensor, data: DeviceData, cfg: dict, gen: torch.Generator, autoaugment) -> torch.Tensor:
    """uint8 batch in, normalized float batch out, every augmentation the config asks for."""
    if autoaugment is not None:
        x = autoaugment(x)
    x = random_crop_flip(x, cfg["crop_padding"], cfg["flip"], gen)  # random_crop then random_flip, bit for bit
    if cfg["rotation"] or cfg["color_jitter"] or cfg["blur_sigma"] or cfg["noise_std"]:
        x = x.float() / 255
        x = random_rotation(x, cfg["rotation"], gen)
        x = color_jitter(x, cfg["color_jitter"], gen)
        x = gaussian_blur(x, cfg["blur_sigma"], gen)
        x = data.normalize_unit(gaussian_noise(x, cfg["noise_std"], gen))
    else:
        x = normalize(x, data.mean, data.std)  # data.normalize(x), bit for bit, in place
    return cutout(x, cfg["cutout"], gen)


def check_logits(model_name: str, logits: torch.Tensor) -> None:
    """MixUp/CutMix train against soft targets through log-softmax: a model that already ends in a
    softmax (rows of non-negative numbers summing to 1) would be trained on the wrong loss."""
    out = logits.detach().float()
    if out.min() >= 0 and torch.allclose(out.sum(1), torch.ones(len(out), device=out.device), atol=1e-4):
        raise ValueError(f"mix needs a model that outputs logits; {model_name} outputs probabilities "
                         f"(every row sums to 1): remove its final softmax, or set mix=none")


AUTOAUGMENT_CHUNK_BYTES = 2**26  # images AutoAugment transforms at once: 21,845 CIFAR images, 445 at 224 px


def epoch_batches(data: DeviceData, perm: torch.Tensor, batch_size: int, autoaugment):
    """The epoch's uint8 (images, labels) batches in ``perm`` order. AutoAugment, when on, transforms runs of whole
    batches at once (up to AUTOAUGMENT_CHUNK_BYTES of images): it applies each operation to all the images that
    drew it, so a run of batches costs about the launches of one batch; batch by batch, AutoAugment took most of a
    small-batch epoch on a GPU (docs/BENCHMARKS.md, gpu_check.py)."""
    starts = batch_starts(len(data), batch_size)
    if autoaugment is None:
        for start in starts:
            yield data.take(perm[start:start + batch_size])
        return
    per_run = max(1, AUTOAUGMENT_CHUNK_BYTES // (data.x[0].numel() * batch_size))  # batches
    for i in range(0, len(starts), per_run):
        first, last = starts[i], starts[min(i + per_run, len(starts)) - 1]
        x, y = data.take(perm[first:last + batch_size])
        x = autoaugment(x)
        for start in range(0, len(y), batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]


def train_epoch(model, opt, schedule, data: DeviceData, cfg: dict, gen: torch.Generator, autoaugment,
                precision: Precision, num_classes: int):
    model.train()
    device = data.device
    perm = torch.randperm(len(data), generator=gen, device=device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in epoch_batches(data, perm, cfg["batch_size"], autoaugment):
        x = augment(x, data, cfg, gen, None)
        target = y
        if cfg["mix"] != "none":
            x, target = mix_batch(x, y, num_classes, cfg["mix"], cfg["mix_alpha"], gen)
        with precision.autocast():
            logits = model(precision.format(x))
        if cfg["mix"] != "none" and seen == 0:
            check_logits(cfg["model"], logits)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg["label_smoothing"])
        opt.zero_grad(set_to_none=True)
        if precision.scaler is not None:
            precision.scaler.scale(loss).backward()
            precision.scaler.step(opt)
            precision.scaler.update()
        else:
            loss.backward()
            opt.step()
        schedule.step_batch()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()  # against the unmixed labels
        seen += len(y)
    return loss_sum.item() / seen, correct.item() / seen, seen


@torch.inference_mode()
def evaluate_model(model, data: DeviceData, batch_size: int, precision: Precision | None = None
                   ) -> tuple[float, float]:
    """(mean cross-entropy, accuracy); NaN for both on an empty split (training on train+val)."""
    if len(data) == 0:
        return math.nan, math.nan
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x, y = data.slice(start, start + batch_size)
        x = data.normalize(x)
        if precision is not None:
            with precision.autocast():
                logits = model(precision.format(x)).float()
        else:
            logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / len(data), correct / len(data)


def ood_sets(data: dict, cfg: dict, device: torch.device, resident: bool) -> list[DeviceData]:
    """Corrupted copies of (the first ``ood_images`` of) the validation images, one per corruption and
    severity, the same for every trial of a sweep (seeded by split_seed)."""
    if cfg["ood_corruptions"] == "none" or len(data["y_val"]) == 0:
        return []
    n = cfg["ood_images"] or len(data["y_val"])
    x, y = data["x_val"][:n], data["y_val"][:n]
    names = corruptions.parse_names(cfg["ood_corruptions"])
    severities = corruptions.parse_severities(cfg["ood_severities"])
    return [DeviceData(xc, y, data["mean"], data["std"], device, resident)
            for _, _, xc in corruptions.corrupted_sets(x, names, severities, seed=cfg["split_seed"])]


def build(cfg: dict, data: dict, pretrained: bool = True) -> torch.nn.Module:
    """The configured model (a user model with the config's ``model.NAME`` keys as its arguments); ImageNet
    weights from ``pretrained_weights`` only for a fresh model (a checkpoint carries all its weights) and only
    for the models that take them."""
    weights = cfg["pretrained_weights"] if pretrained and cfg["model"] in PRETRAINED else ""
    return build_model(cfg["model"], data["input_shape"], data["num_classes"], cfg["activation"],
                       cfg["batch_norm"], pretrained_weights=weights or None, model_args=factory_args(cfg, "model"))


def describe_model(cfg: dict) -> str:
    """``model vgg6 (batch_norm=True)``, or ``model mymodels:Net (hidden=64)``: what decides the weights' shapes."""
    if not is_ref(cfg["model"]):
        return f"model {cfg['model']} (batch_norm={cfg['batch_norm']})"
    args = factory_args(cfg, "model")
    return f"model {cfg['model']}" + (f" ({call_args(args)})" if args else "")


def call_args(args: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def load_model(state: dict, data: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained network of a checkpoint ``state`` (its config and weights), in eval mode. ``data`` gives
    the input shape and class count. Weights that do not fit the configured model raise one-line ValueError."""
    cfg = resolve(PARAMS, state["config"])
    model = build(cfg, data, pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        reason = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise ValueError(f"the weights do not fit {describe_model(cfg)} for input "
                         f"{tuple(data['input_shape'])} and {data['num_classes']} classes: {reason}") from None
    return model.to(device).eval()


def check_weights(state: dict, data: dict) -> None:
    """One-line ValueError when the weights of ``state`` do not fit its configured model on ``data``."""
    load_model(state, data)


def check_space(values: dict[str, list]) -> None:
    """Checks across keys, before anything runs: ``values`` maps each key a space sets to the values it can
    take. Each user model (``module:attr``) is imported and must be callable; ``model.NAME`` keys need every
    model to be a user model. Raises a one-line ValueError."""
    def given(key):
        return values.get(key, [PARAMS[key].default])

    weights = [w for w in given("pretrained_weights") if w]
    models = given("model")
    for ref in dict.fromkeys(m for m in models if is_ref(m)):
        import_factory(ref)
    args = sorted(k for k in values if is_factory_arg(PARAMS, k))
    builtins = [m for m in models if not is_ref(m)]
    if args and builtins:
        raise ValueError(builtin_takes_no_args(builtins[0], args[0].partition(".")[2]))
    for path in weights:
        usable = [m for m in models if m in PRETRAINED]
        if not usable:
            raise ValueError(f"pretrained_weights={path!r} but no model here takes them; they are for "
                             f"{', '.join(PRETRAINED)}")
        for name in usable:  # loads the file into the architecture: a mismatch stops the sweep here
            build_model(name, (3, 32, 32), 10, "relu", True, pretrained_weights=path)
    if any(m != "none" for m in given("mix")):
        for name in builtins:  # a user model is taken at its word: logits (fit checks its first batch)
            if getattr(MODELS.get(name), "outputs", "logits") != "logits":
                raise ValueError(f"mix needs a model that outputs logits; {name} outputs "
                                 f"{MODELS.get(name).outputs}: search it with mix=none")


CHECK_BATCH = 2  # training images check_models runs through each user model
MAX_ARG_COMBINATIONS = 16  # check_models builds at most this many variants of each user model


def check_models(values: dict[str, list], data: dict) -> None:
    """Build each user model (the ``module:attr`` values of ``model`` in ``values``, as for check_space) on the
    CPU for ``data`` (``Dataset.sweep_view()``) and run it forward in eval mode on 2 normalized training images,
    before anything runs; once per combination of the first and last value of each ``model.NAME`` key (at most
    MAX_ARG_COMBINATIONS). Built-in models are not checked here. Raises a one-line ValueError when the factory
    does not take ``num_classes``/``input_shape``/the keys, raises, returns something that is not an
    ``nn.Module``, or the output's shape is not (2, num_classes). Leaves torch's RNG as it was."""
    refs = dict.fromkeys(m for m in values.get("model", [PARAMS["model"].default]) if is_ref(m))
    if not refs:
        return
    with torch.random.fork_rng(devices=[]):  # building a model draws from the caller's generator
        batch = check_batch(data)
        for ref in refs:
            factory = import_factory(ref)
            for args in arg_combinations(values):
                model = call_factory(ref, factory, args, data)
                check_forward(ref, model, args, batch, data["num_classes"])


def check_batch(data: dict) -> torch.Tensor:
    x = data["x_train"][:CHECK_BATCH]
    images = DeviceData(x, np.zeros(len(x), np.int64), data["mean"], data["std"], torch.device("cpu"))
    return images.normalize(images.x)


def arg_combinations(values: dict[str, list]) -> list[dict]:
    """The ``model.NAME`` keys as factory arguments, every combination of each key's first and last value: the
    extremes of a size are where a model breaks. A key without checkable values (a custom sampler) is left out."""
    keys = sorted(k for k in values if is_factory_arg(PARAMS, k) and values[k])
    ends = [values[k][:1] + values[k][-1:] if len(values[k]) > 1 and values[k][0] != values[k][-1]
            else values[k][:1] for k in keys]
    names = [k.partition(".")[2] for k in keys]
    return [dict(zip(names, combo)) for combo in itertools.islice(itertools.product(*ends), MAX_ARG_COMBINATIONS)]


def call_factory(ref: str, factory, args: dict, data: dict) -> torch.nn.Module:
    kwargs = {"num_classes": data["num_classes"], "input_shape": tuple(int(n) for n in data["input_shape"]), **args}
    call = f"{ref_name(ref)}({call_args(kwargs)})"
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"model {ref!r}: {call} does not fit its signature ({e}); it must accept num_classes=int, "
                         f"input_shape=(C, H, W) and each model.NAME key as keyword arguments") from None
    except ValueError:
        pass  # no signature to read (a C function): the call itself tells
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise ValueError(f"model {ref!r}: {call} raised {type(e).__name__}: {first_line(e)}") from None
    check_module(ref, model)
    return model


def check_forward(ref: str, model: torch.nn.Module, args: dict, batch: torch.Tensor, num_classes: int) -> None:
    where = f"model {ref!r}" + (f" ({call_args(args)})" if args else "")
    model.eval()
    try:
        with torch.inference_mode():
            out = model(batch)
    except Exception as e:
        raise ValueError(f"{where}: forward on a batch of shape {tuple(batch.shape)} raised {type(e).__name__}: "
                         f"{first_line(e)}") from None
    want = (len(batch), num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ValueError(f"{where} outputs {got} for a batch of shape {tuple(batch.shape)}; it must output {want}: "
                         f"one logit per class")


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
    for group in opt.param_groups:
        group["weight_decay"] = new["weight_decay"]
    if new["lr"] != old["lr"]:
        schedule.set_base_lr(new["lr"])


class EarlyStopping:
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    A NaN (no validation split) never counts as an epoch without improvement."""

    def __init__(self, patience: int, min_delta: float, metric: str) -> None:
        self.patience, self.min_delta, self.sign = patience, min_delta, (1 if metric == "val_acc" else -1)
        self.best, self.bad = -math.inf, 0

    def update(self, value: float) -> bool:
        """Record one epoch's value; True when the trial should stop now."""
        if self.patience <= 0 or not math.isfinite(value):
            return False
        if self.sign * value > self.best + self.min_delta:
            self.best, self.bad = self.sign * value, 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad = state["best"], state["bad"]


def compile_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``compile: true``. On a GPU with CUDA graphs (``mode="reduce-overhead"``): a small batch is bound by kernel
    launches, which a graph replays at once (docs/BENCHMARKS.md, gpu_check.py)."""
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)


def setup_device(cfg: dict) -> torch.device:
    device = pick_device(cfg["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg["deterministic"]
        torch.backends.cudnn.deterministic = cfg["deterministic"]
        if cfg["deterministic"]:
            # cuBLAS needs a fixed workspace for repeatable matmuls; set before its first use in this process.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def fit(config: dict, data: dict, reporter) -> None:
    """Train one configuration, reporting METRICS and a checkpoint every epoch.

    A NaN/inf training loss, or one above ``diverge_loss``, ends the trial after reporting
    that epoch with ``diverged: True`` and ``val_acc`` 0.0, so searchers rank it last. Early stopping
    ends it after reporting ``early_stopped: True``."""
    cfg = resolve(PARAMS, config)
    device = setup_device(cfg)
    seed_everything(cfg["seed"])
    gen = torch.Generator(device=device).manual_seed(cfg["seed"])
    resident = cfg["cache"] != "host"

    train = DeviceData(data["x_train"], data["y_train"], data["mean"], data["std"], device, resident)
    val = DeviceData(data["x_val"], data["y_val"], data["mean"], data["std"], device, resident)
    ood = ood_sets(data, cfg, device, resident)
    epochs = min(cfg["epochs"], cfg["max_epochs"] or cfg["epochs"])
    precision = Precision(cfg, device)
    model = build(cfg, data).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg["optimizer"], model.parameters(), cfg["lr"], cfg["weight_decay"], cfg["momentum"])
    schedule = build_schedule(cfg["schedule"], opt, epochs, len(batch_starts(len(train), cfg["batch_size"])),
                              warmup_epochs=cfg["warmup_epochs"], step_size=cfg["step_size"],
                              gamma=cfg["step_gamma"], plateau_patience=cfg["plateau_patience"],
                              plateau_factor=cfg["plateau_factor"])
    stopper = EarlyStopping(cfg["early_stop_patience"], cfg["early_stop_min_delta"], cfg["early_stop_metric"])
    autoaugment = AutoAugment() if cfg["autoaugment"] else None
    n_params = sum(p.numel() for p in model.parameters())
    # The compiled module runs the steps; checkpoints hold the plain module's weights (no _orig_mod. prefix).
    step_model = compile_model(model, device) if cfg["compile"] else model
    diverge_bound = cfg["diverge_loss"] or math.inf

    first_epoch, samples_seen = 1, 0
    state = reporter.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        stopper.load_state_dict(state.get("early_stopping", stopper.state_dict()))
        if precision.scaler is not None and state.get("scaler"):
            precision.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["generator"])
        first_epoch = state["epoch"] + 1
        # A checkpoint from before samples_seen was kept: every epoch trained on the same number of samples.
        samples_seen = state.get("samples_seen", state["epoch"] * sum(
            min(cfg["batch_size"], len(train) - s) for s in batch_starts(len(train), cfg["batch_size"])))
        apply_new_hyperparameters(opt, schedule, state["config"], cfg)

    for epoch in range(first_epoch, epochs + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        lr = opt.param_groups[0]["lr"]
        t0, cpu0 = time.perf_counter(), time.process_time()
        train_loss, train_acc, seen = train_epoch(step_model, opt, schedule, train, cfg, gen, autoaugment, precision,
                                                  data["num_classes"])
        train_s = time.perf_counter() - t0
        samples_seen += seen
        diverged = not math.isfinite(train_loss) or train_loss > diverge_bound
        if diverged:
            val_loss, val_acc = float("nan"), 0.0
        else:
            val_loss, val_acc = evaluate_model(step_model, val, cfg["eval_batch_size"], precision)
            diverged = len(val) > 0 and not math.isfinite(val_loss)
        ood_acc = None
        if ood:
            ood_acc = float(np.mean([0.0 if diverged else evaluate_model(step_model, d, cfg["eval_batch_size"],
                                                                         precision)[1] for d in ood]))
        schedule.step_epoch(val_loss if math.isfinite(val_loss) else train_loss)
        watched = {"val_loss": val_loss, "val_acc": val_acc}[cfg["early_stop_metric"]]
        early_stopped = not diverged and epoch < epochs and stopper.update(watched)
        metrics = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": 0.0 if diverged else train_acc,
            "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
            "epoch_time_s": time.perf_counter() - t0, "samples_per_s": seen / train_s,
            "peak_mem_mb": peak_memory_mb(device), "params": n_params, "cpu_s": time.process_time() - cpu0,
            "samples_seen": samples_seen, "diverged": diverged,
            "early_stopped": early_stopped, **({} if ood_acc is None else {"ood_acc": ood_acc}),
        }
        state = {
            "epoch": epoch, "config": cfg, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "schedule": schedule.state_dict(), "early_stopping": stopper.state_dict(),
            "scaler": precision.scaler.state_dict() if precision.scaler is not None else None,
            "torch_rng": torch.get_rng_state(), "generator": gen.get_state(), "samples_seen": samples_seen,
        }
        reporter.report(metrics, state)
        if diverged or early_stopped:
            return
