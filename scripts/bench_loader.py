"""Augmented batches per second: tune_app's tensor path against torchvision's DataLoader.

    python scripts/bench_loader.py [--images 10000 --batch-size 256 --rounds 5]
    python scripts/bench_loader.py --device cuda                      # on a GPU

Both paths turn CIFAR-10-shaped data (``--images`` random uint8 images, 32x32x3) into
normalized float batches on ``--device``, ready for the model, one epoch at a time:

* tensor (tune_app): the trainable's own ``DeviceData`` (the uint8 split on the device) and
  ``augment`` -- random crop with padding 4 and flip as one gather (``random_crop_flip``),
  AutoAugment (``trainables.augment.AutoAugment``: each image's own sub-policy, torchvision's v2
  operations called once per group of images that get the same one) first in the second case --
  then normalization in place, in the training process itself.
* DataLoader: torchvision's usual recipe, a ``Dataset`` of PIL images with
  ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor`` and ``Normalize``
  (``AutoAugment(CIFAR10)`` first in the second case), batched by ``torch.utils.data.DataLoader``
  with as many worker processes as this machine gives the process cores (``os.sched_getaffinity``;
  ``persistent_workers``, so their start-up is not timed), and with 0 workers as a second row.
  The batch is moved to ``--device`` (pinned memory on a GPU).

Every path is warmed up with one untimed epoch; then each round times one epoch of every path
and case, interleaved (the order flips every round), and the table gives the median batches/s
and the median of each round's ratio against the DataLoader with all cores in the same case.
The machine's load average (``/proc/loadavg``, 1/5/15 minutes) is printed before and after:
the figures are only as good as the machine was quiet.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainables import image_classifier as ic
from trainables.augment import AutoAugment
from trainables.device_loop import DeviceData, augment, batch_starts, pick_device
from trainables.params import resolve

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10's
CASES = ("crop+flip", "crop+flip+autoaugment")
GOAL = 10.0  # the goal for crop+flip, x the DataLoader with all cores


def cores() -> int:
    return len(os.sched_getaffinity(0))


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or "unknown" where /proc/loadavg is missing."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def make_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's layout on disk: (N, 32, 32, 3) uint8 and labels 0..9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.int64)


class PILImages(Dataset):
    """A list of PIL images and labels, each item passed through ``transform`` (torchvision's CIFAR10 does the
    same, converting its array to PIL per item; here that conversion is done once, ahead of time)."""

    def __init__(self, x_hwc: np.ndarray, y: np.ndarray, transform) -> None:
        from PIL import Image

        self.images = [Image.fromarray(a) for a in x_hwc]
        self.labels = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def torchvision_transform(autoaugment: bool):
    from torchvision import transforms as T

    steps = [T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)] if autoaugment else []
    steps += [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)]
    return T.Compose(steps)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TensorPath:
    """tune_app's path: one epoch of ``DeviceData.take`` + ``augment`` as ``train_epoch`` runs it."""

    def __init__(self, x_hwc: np.ndarray, y: np.ndarray, batch_size: int, autoaugment: bool,
                 device: torch.device) -> None:
        self.data = DeviceData(np.ascontiguousarray(x_hwc.transpose(0, 3, 1, 2)), y, MEAN, STD, device)
        self.cfg = resolve(ic.PARAMS, {"crop_padding": 4, "flip": True, "autoaugment": autoaugment,
                                       "batch_size": batch_size})
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.autoaugment = AutoAugment() if autoaugment else None
        self.device = device

    def epoch(self) -> int:
        bs = self.cfg["batch_size"]
        perm = torch.randperm(len(self.data), generator=self.gen, device=self.device)
        batches = 0
        for start in batch_starts(len(self.data), bs):
            x, y = self.data.take(perm[start:start + bs])
            x = augment(x, self.data, self.cfg, self.gen, self.autoaugment)
            batches += 1
        assert x.dtype == torch.float32 and x.device.type == self.device.type
        sync(self.device)
        return batches


class LoaderPath:
    """The baseline: a DataLoader over PIL images, each batch moved to the device."""

    def __init__(self, dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> None:
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                 persistent_workers=workers > 0, pin_memory=device.type == "cuda")
        self.device = device

    def epoch(self) -> int:
        batches = 0
        for x, y in self.loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            batches += 1
        assert x.dtype == torch.float32
        sync(self.device)
        return batches


def timed(path) -> float:
    """Batches per second of one epoch."""
    t0 = time.perf_counter()
    batches = path.epoch()
    return batches / (time.perf_counter() - t0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10000, help="images per epoch (default 10000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5, help="timed epochs of every path (default 5)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the batches end up; auto = cuda when available")
    p.add_argument("--workers", type=int, default=cores(),
                   help="DataLoader workers of the baseline (default: this process's cores)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the tensor path (default: torch's own choice)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--no-zero-workers", action="store_true", help="leave out the DataLoader with 0 workers")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    x, y = make_images(args.images)
    base = f"DataLoader, {args.workers} workers"
    worker_counts = [args.workers] + ([] if args.no_zero_workers or args.workers == 0 else [0])

    paths: dict[tuple[str, str], object] = {}
    for case in args.cases:
        aa = case.endswith("autoaugment")
        paths[case, f"tensor (tune_app, {device.type})"] = TensorPath(x, y, args.batch_size, aa, device)
        dataset = PILImages(x, y, torchvision_transform(aa))
        for w in worker_counts:
            paths[case, f"DataLoader, {w} workers"] = LoaderPath(dataset, args.batch_size, w, device)

    print(f"{args.images} CIFAR-10-shaped images (uint8, 32x32x3), batch {args.batch_size}, device {device}, "
          f"{cores()} cores, {torch.get_num_threads()} torch threads in this process; "
          f"median of {args.rounds} rounds of one epoch per path, interleaved; load average {load_average()}",
          flush=True)
    for path in paths.values():  # warm-up: worker start-up, first-call costs
        path.epoch()
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in paths}
    ratios: dict[tuple[str, str], list[float]] = {key: [] for key in paths}
    keys = list(paths)
    for r in range(args.rounds):
        for key in (keys if r % 2 == 0 else keys[::-1]):
            rates[key].append(timed(paths[key]))
        for key in keys:
            ratios[key].append(rates[key][-1] / rates[key[0], base][-1])

    print(f"| case | path | batches/s | images/s | x {base} |")
    print("| --- | --- | ---: | ---: | ---: |")
    for case, name in keys:
        rate = statistics.median(rates[case, name])
        print(f"| {case} | {name} | {rate:.2f} | {rate * args.batch_size:.0f} | "
              f"{statistics.median(ratios[case, name]):.2f} |")
    print(f"load average after: {load_average()}")
    tensor = next((k for k in keys if k[0] == "crop+flip" and k[1].startswith("tensor")), None)
    if tensor is not None:
        got = statistics.median(ratios[tensor])
        print(f"goal: crop+flip >= {GOAL:.0f}x {base}; measured {got:.2f}x "
              f"({'met' if got >= GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
