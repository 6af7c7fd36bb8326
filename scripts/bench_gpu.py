"""VGG6 training speed on one GPU: precision and compilation, packed concurrent trials, and the floor.

    python scripts/bench_gpu.py                  # on a machine with CUDA
    python scripts/bench_gpu.py --device cpu --allow-cpu --images 512 --modes fp32 bf16_cl --trials 1 2
                                                 # the same code path on a CPU, small (tests)

Without CUDA (and without --allow-cpu) it prints one line and exits 0: there is nothing to measure.

1. Precision: VGG6 on CIFAR-10-shaped data (``--images`` random uint8 3x32x32 images, 10 classes,
   resident on the device as the trainable keeps them) trains through the trainable's own
   ``train_epoch`` (crop with padding 4, flip, SGD) in fp32, in bf16 autocast with channels_last,
   and the same under ``torch.compile``, at every ``--batch-sizes``. Each run is warmed up (cuDNN's
   autotuning, compilation) on a full batch and the epoch's last, shorter one; then every round times
   one epoch of each, interleaved. Seconds per epoch and images/s are medians; the ratio is the
   median of each round's ratio to fp32 at the same batch size.
2. Packing: 1, 2, 4, 8 trials as separate processes (this script with ``--worker``) on the one
   device, each with its own copy of the data, set up and warmed up before all start together;
   aggregate images/s = all their images / (last end - first start), and its ratio to one trial.
3. The floor: the matmul and convolution FLOPs of one forward and backward pass of a batch
   (``torch.utils.flop_counter.FlopCounterMode``; elementwise ops, batch norm and the optimizer are not
   counted) times the batches of an epoch, over the rate of one large bf16 matmul measured here: the
   shortest epoch the device could run at that rate, beside the best bf16 epoch measured.

The goals of the issue are printed beside the figures: one epoch < 0.5 s at batch 1024 in bf16, and
4 packed trials >= 2.5x one.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from _bench import FitTrial, make_data, packed_workers, sync, warm_up_images  # scripts/ is on sys.path

from trainables import image_classifier as ic
from trainables.device_loop import DeviceData, batch_starts
from trainables.params import resolve

NO_GPU = "no GPU: bench_gpu.py needs CUDA; nothing measured"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
MODES = {  # name: (amp, channels_last, torch.compile)
    "fp32": ("off", "off", False),
    "bf16_cl": ("bf16", "on", False),
    "bf16_cl_compile": ("bf16", "on", True),
}
GOAL_EPOCH_S, GOAL_EPOCH_BATCH = 0.5, 1024
GOAL_PACK, GOAL_PACK_TRIALS = 2.5, 4


class Run(FitTrial):
    """One VGG6 trial in one mode and batch size, set up as ``fit`` sets it up, over shared device data."""

    def __init__(self, data: DeviceData, x: np.ndarray, y: np.ndarray, mode: str, batch_size: int,
                 device: torch.device) -> None:
        amp, channels_last, compile_ = MODES[mode]
        settings = {"model": "vgg6", "batch_size": batch_size, "amp": amp, "channels_last": channels_last}
        super().__init__(device, settings, len(data), compile_mode="default" if compile_ else None, name=amp)
        self.data = data
        warm = warm_up_images(len(y), batch_size)  # a full batch and the epoch's last, shorter one
        self.warm = DeviceData(x[:warm], y[:warm], MEAN, STD, device)

    def epoch(self, data: DeviceData | None = None) -> tuple[float, int]:
        """(wall s, images) of one train_epoch."""
        return self.train(self.data if data is None else data)


def precision_table(args, device: torch.device) -> dict:
    x, y = make_data(args.images)
    data = DeviceData(x, y, MEAN, STD, device)
    runs = {(mode, bs): Run(data, x, y, mode, bs, device) for bs in args.batch_sizes for mode in args.modes}
    for run in runs.values():
        run.epoch(run.warm)
    walls: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
    seen: dict[tuple[str, int], int] = {}
    ratios: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
    keys = list(runs)
    base = args.modes[0]
    for r in range(args.rounds):
        for key in (keys if r % 2 == 0 else keys[::-1]):
            wall, seen[key] = runs[key].epoch()
            walls[key].append(wall)
        for mode, bs in keys:
            ratios[mode, bs].append(walls[base, bs][-1] / walls[mode, bs][-1])

    print(f"\n1. one epoch of {args.images} images, crop+flip, SGD; median of {args.rounds} rounds")
    print(f"| mode | batch | s/epoch | images/s | x {base} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    result = {}
    for mode, bs in keys:
        wall = statistics.median(walls[mode, bs])
        result[mode, bs] = wall
        ratio = statistics.median(ratios[mode, bs])
        print(f"| {mode} | {bs} | {wall:.3f} | {seen[mode, bs] / wall:.0f} | {ratio:.2f} |")
    for (mode, bs), wall in result.items():
        if bs == GOAL_EPOCH_BATCH and mode.startswith("bf16"):
            scaled = wall * 50000 / args.images
            note = "" if args.images == 50000 else f", scaled from {args.images} images"
            print(f"goal: one epoch of 50000 images < {GOAL_EPOCH_S} s at batch {bs} in bf16; {mode}: {scaled:.3f} s"
                  f"{note} ({'met' if scaled < GOAL_EPOCH_S else 'NOT met'})")
    return result


def worker(spec: dict) -> None:
    """A packed trial (``--worker``): set up, warm up, say ready, wait for go, train, report as JSON."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    x, y = make_data(spec["images"], seed=spec["index"])
    run = Run(DeviceData(x, y, MEAN, STD, device), x, y, spec["mode"], spec["batch_size"], device)
    run.epoch(run.warm)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    epochs = [run.epoch() for _ in range(spec["epochs"])]
    end = time.monotonic()
    print(json.dumps({"start": start, "end": end, "images": sum(s for _, s in epochs),
                      "epoch_s": [w for w, _ in epochs]}), flush=True)


def packed(k: int, args, device: torch.device) -> list[dict]:
    threads = args.pack_threads or max(1, len(os.sched_getaffinity(0)) // k)
    specs = [{"index": i, "device": device.type, "images": args.images, "mode": args.pack_mode,
              "batch_size": args.pack_batch_size, "epochs": args.pack_epochs, "threads": threads} for i in range(k)]
    return packed_workers(__file__, specs)[0]


def packing_table(args, device: torch.device) -> None:
    print(f"\n2. packed trials: {args.pack_mode}, batch {args.pack_batch_size}, {args.pack_epochs} epochs of "
          f"{args.images} images each, as separate processes on one {device.type} device")
    print("| trials | aggregate images/s | images/s per trial | s/epoch per trial | x 1 trial |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    one = None
    rates = {}
    for k in args.trials:
        results = packed(k, args, device)
        window = max(r["end"] for r in results) - min(r["start"] for r in results)
        total = sum(r["images"] for r in results) / window
        per_trial = statistics.median(r["images"] / (r["end"] - r["start"]) for r in results)
        epoch_s = statistics.median(s for r in results for s in r["epoch_s"])
        if one is None:
            one = total if k == 1 else None
        rates[k] = total
        ratio = f"{total / one:.2f}" if one else "n/a"
        print(f"| {k} | {total:.0f} | {per_trial:.0f} | {epoch_s:.3f} | {ratio} |", flush=True)
    if GOAL_PACK_TRIALS in rates and one:
        got = rates[GOAL_PACK_TRIALS] / one
        print(f"goal: {GOAL_PACK_TRIALS} packed trials >= {GOAL_PACK}x one; {got:.2f}x "
              f"({'met' if got >= GOAL_PACK else 'NOT met'})")


def flops_per_batch(batch_size: int, device: torch.device) -> int:
    """Matmul/conv FLOPs of one forward, loss and backward pass of VGG6 on one batch."""
    from torch.utils.flop_counter import FlopCounterMode

    model = ic.build(resolve(ic.PARAMS, {"model": "vgg6"}), {"input_shape": (3, 32, 32), "num_classes": 10})
    model = model.to(device).train()
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops()


def matmul_rate(size: int, device: torch.device, repeats: int = 10) -> float:
    """FLOP/s of a size x size x size bf16 matmul, best of ``repeats``."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def floor_table(args, device: torch.device, measured: dict) -> None:
    bs = GOAL_EPOCH_BATCH if GOAL_EPOCH_BATCH in args.batch_sizes else max(args.batch_sizes)
    batches = len(batch_starts(args.images, bs))
    per_batch = flops_per_batch(bs, device)
    per_epoch = per_batch * args.images / bs  # the last batch is shorter; FLOPs scale with its images
    rate = matmul_rate(args.matmul_size, device)
    floor = per_epoch / rate
    bf16 = {mode: s for (mode, b), s in measured.items() if b == bs and mode.startswith("bf16")}
    print(f"\n3. the floor: VGG6, batch {bs} ({batches} batches of an epoch of {args.images} images)")
    print("| GFLOP/batch (fwd+bwd) | TFLOP/epoch | bf16 matmul TFLOP/s | floor s/epoch | best bf16 s/epoch | "
          "x floor |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    best = min(bf16.values()) if bf16 else float("nan")
    best_name = min(bf16, key=bf16.get) if bf16 else "none measured"
    print(f"| {per_batch / 1e9:.2f} | {per_epoch / 1e12:.3f} | {rate / 1e12:.3g} | {floor:.4g} | {best:.3f} | "
          f"{best / floor:.1f} |")
    print(f"(best bf16: {best_name}; matmul {args.matmul_size}^3)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--allow-cpu", action="store_true", help="run on a CPU (small, for tests; goals are for a GPU)")
    p.add_argument("--images", type=int, default=50000, help="images per epoch (default 50000)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES),
                   help="the first is the ratio's baseline")
    p.add_argument("--rounds", type=int, default=3, help="timed epochs of every mode and batch size (default 3)")
    p.add_argument("--trials", type=int, nargs="*", default=[1, 2, 4, 8], help="packed trial counts; none = skip")
    p.add_argument("--pack-mode", default="bf16_cl", choices=list(MODES))
    p.add_argument("--pack-batch-size", type=int, default=256)
    p.add_argument("--pack-epochs", type=int, default=2, help="timed epochs of each packed trial (default 2)")
    p.add_argument("--matmul-size", type=int, default=None, help="bf16 matmul side (default 8192; 512 on a CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of this process (default: torch's; a packed trial gets cores / trials)")
    p.add_argument("--pack-threads", type=int, default=None,
                   help="torch threads of each packed trial (default: cores / trials)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    if (args.device == "cuda" and not torch.cuda.is_available()) or (args.device == "cpu" and not args.allow_cpu):
        print(NO_GPU if not torch.cuda.is_available() else "--device cpu needs --allow-cpu")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 512)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"VGG6 on {name}: {args.images} CIFAR-10-shaped images on the device, torch {torch.__version__}")
    measured = precision_table(args, device)
    if args.trials:
        packing_table(args, device)
    floor_table(args, device, measured)


if __name__ == "__main__":
    main()
