"""The device-resident epoch loop of ``image_classifier``: a split as uint8 on the trial's device
(``DeviceData``), autocast and memory format (``Precision``), a batch's augmentations, and one epoch of
training (``train_epoch``) or evaluation (``evaluate_model``).

``cfg`` is a config as ``trainables.params.resolve`` returns it for image_classifier's PARAMS; the trainable
builds the model, optimizer and schedule and calls these once per epoch (fit, the GPU check, the benchmarks).
"""
from __future__ import annotations

import math
import os
import resource

import numpy as np
import torch
import torch.nn.functional as F

from trainables import corruptions
from trainables.augment import (
    color_jitter,
    cutout,
    gaussian_blur,
    gaussian_noise,
    mix_batch,
    normalize,
    random_crop_flip,
    random_rotation,
)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def compile_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``compile: true``. On a GPU with CUDA graphs (``mode="reduce-overhead"``): a small batch is bound by kernel
    launches, which a graph replays at once (docs/BENCHMARKS.md, gpu_check.py)."""
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)


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
