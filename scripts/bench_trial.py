"""Share of a training epoch's wall time spent in the model: forward, loss, backward, optimizer step.

    python scripts/bench_trial.py [--images 512 --rounds 3 --batch-sizes 64 256]
    python scripts/bench_trial.py --device cuda --amp bf16 --channels-last on     # on a GPU

VGG6 on CIFAR-10-shaped data (``--images`` random uint8 3x32x32 images, 10 classes) trains
through the trainable's own ``train_epoch`` -- ``DeviceData``, ``randperm``, ``take``,
``augment`` (crop with padding 4 and flip, AutoAugment with ``--autoaugment``), ``Precision``
for amp and channels_last, SGD and its schedule -- unchanged. Two hooks time the model's part of
every step: a forward pre-hook on the model starts the clock and the schedule's per-batch step,
which ``train_epoch`` calls right after the optimizer step, stops it; on a GPU both
synchronize first, so the clock sees the kernels and not their launch. share = model time /
the epoch's wall time; the rest is shuffling, slicing, augmentation, normalization and the
bookkeeping between steps.

The synchronizations stall a GPU's queue, so every round also times the same epoch without the
hooks ("plain epoch s"): when it is much shorter than "epoch s", the hooks themselves cost time.
Every batch size is warmed up on a few batches (with the last, shorter batch's shape), then each
round times one hooked and one plain epoch of every batch size, interleaved; medians of the rounds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from _bench import FitTrial, make_data, sync, warm_up_images  # scripts/ is on sys.path when a script runs

from trainables.device_loop import DeviceData, pick_device

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
GOAL_CPU, GOAL_GPU, GOAL_GPU_BATCH = 0.9, 0.8, 256  # the goals for the share


class ModelClock:
    """Sums the time from the model's forward call to the end of the optimizer step, batch by batch."""

    def __init__(self, model: torch.nn.Module, schedule, device: torch.device) -> None:
        self.device, self.total, self.steps, self._start = device, 0.0, 0, None
        self._handle = model.register_forward_pre_hook(self._begin)
        self._schedule, self._step_batch = schedule, schedule.step_batch
        schedule.step_batch = self._end  # train_epoch calls it right after opt.step()

    def _begin(self, module, args) -> None:
        if module.training:  # evaluation is not part of the epoch timed here
            sync(self.device)
            self._start = time.perf_counter()

    def _end(self) -> None:
        sync(self.device)
        self.total += time.perf_counter() - self._start
        self.steps += 1
        self._step_batch()

    def remove(self) -> None:
        self._handle.remove()
        self._schedule.step_batch = self._step_batch


class Trial(FitTrial):
    """One trial as ``fit`` sets it up, for one batch size."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, args, device: torch.device) -> None:
        super().__init__(device, {"model": args.model, "batch_size": batch_size, "autoaugment": args.autoaugment,
                                  "amp": args.amp, "channels_last": args.channels_last}, len(y))
        self.data = DeviceData(x, y, MEAN, STD, device)
        warm = warm_up_images(len(y), batch_size)  # a full batch and the epoch's last, shorter one
        self.warm = DeviceData(x[:warm], y[:warm], MEAN, STD, device)

    def epoch(self, data=None, timed: bool = False) -> tuple[float, float, int]:
        """(wall s, model s, images) of one train_epoch; model s is NaN when not timed."""
        clock = ModelClock(self.model, self.schedule, self.device) if timed else None
        try:
            wall, seen = self.train(self.data if data is None else data)
        finally:
            if clock is not None:
                clock.remove()
        return wall, (clock.total if clock else float("nan")), seen


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=None,
                   help="images per epoch (default: 50000 on a GPU, 512 on a CPU)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--rounds", type=int, default=3, help="timed epochs of each kind and batch size (default 3)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                   help="the trainable's amp key (auto = bf16 on a GPU, off on a CPU)")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="the trainable's channels_last key (auto = on on a GPU)")
    p.add_argument("--autoaugment", action="store_true", help="add AutoAugment to crop and flip")
    p.add_argument("--model", default="vgg6")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.device = device.type
    n = args.images or (50000 if device.type == "cuda" else 512)
    x, y = make_data(n)
    trials = {bs: Trial(x, y, bs, args, device) for bs in args.batch_sizes}
    some = next(iter(trials.values()))
    print(f"{args.model}, {n} CIFAR-10-shaped images per epoch, crop+flip"
          f"{'+autoaugment' if args.autoaugment else ''}, device {device}, amp {some.precision.name}, "
          f"channels_last {'on' if some.precision.channels_last else 'off'}, {torch.get_num_threads()} torch "
          f"threads, {len(os.sched_getaffinity(0))} cores; median of {args.rounds} rounds", flush=True)
    for trial in trials.values():
        trial.epoch(trial.warm)

    rows = {bs: {"epoch": [], "model": [], "share": [], "plain": [], "images": 0} for bs in trials}
    for r in range(args.rounds):
        order = list(trials) if r % 2 == 0 else list(trials)[::-1]
        for bs in order:
            wall, model_s, seen = trials[bs].epoch(timed=True)
            plain, _, _ = trials[bs].epoch()
            row = rows[bs]
            row["epoch"].append(wall)
            row["model"].append(model_s)
            row["share"].append(model_s / wall)
            row["plain"].append(plain)
            row["images"] = seen

    goal = GOAL_GPU if device.type == "cuda" else GOAL_CPU
    print("| batch | epoch s | model s | share | plain epoch s | images/s (plain) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for bs, row in rows.items():
        plain = statistics.median(row["plain"])
        print(f"| {bs} | {statistics.median(row['epoch']):.3f} | {statistics.median(row['model']):.3f} | "
              f"{statistics.median(row['share']):.3f} | {plain:.3f} | {row['images'] / plain:.0f} |")
    for bs, row in rows.items():
        if device.type == "cuda" and bs != GOAL_GPU_BATCH:
            continue
        share = statistics.median(row["share"])
        print(f"goal ({device.type}{f', batch {bs}' if device.type == 'cuda' else ''}): share >= {goal}; "
              f"batch {bs}: {share:.3f} ({'met' if share >= goal else 'NOT met'})")


if __name__ == "__main__":
    main()
