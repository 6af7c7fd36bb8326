"""Training throughput and peak memory of every image model, one epoch each on CIFAR-shaped data.

    python scripts/bench_models.py [--images 256 --batch-size 64 --models resnet18 vgg6 ...]
    python scripts/bench_models.py --device cuda --amp bf16 --channels-last on     # on a GPU

Each model trains one epoch of ``--images`` generated 3x32x32 uint8 images in 100 classes
through the trainable's own ``fit`` (batches sliced on the device, crop and flip, SGD),
in a fresh process so its peak memory is its own: on a CPU the process's peak resident
set (including about 0.4 GB of Python and PyTorch), on a GPU the peak allocated device
memory. Models are measured in rounds that alternate with VGG6, study 1's model and the
baseline, and the table gives each model's median images/s, its ratio to VGG6's in the
same rounds (the machines are noisy), and its peak memory. The tv_* models upsample to
224x224 inside the network, as ImageNet weights need.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

MODELS = ("lenet", "mlp", "small_cnn2", "small_cnn4", "resnet18", "preact_resnet18", "resnet50",
          "tv_resnet18", "tv_resnet50")
BASELINE = "vgg6"


def one_epoch(spec: dict) -> dict:
    """Runs in the child process: one epoch of ``fit``; its samples/s and peak memory."""
    import numpy as np
    import torch

    from trainables import image_classifier as ic
    from trainables.reporting import LocalReporter

    torch.set_num_threads(spec["threads"])
    rng = np.random.default_rng(0)
    n = spec["images"]
    x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 100, size=n).astype(np.int64)
    data = {"name": "random", "x_train": x, "y_train": y, "x_val": x[:0], "y_val": y[:0],
            "mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762), "num_classes": 100,
            "input_shape": (3, 32, 32)}
    config = {"dataset": "cifar100", "model": spec["model"], "optimizer": "sgd", "lr": 0.01, "epochs": 1,
              "batch_size": spec["batch_size"], "crop_padding": 4, "flip": True, "device": spec["device"],
              "amp": spec["amp"], "channels_last": spec["channels_last"]}
    reporter = LocalReporter()
    ic.fit(config, data, reporter)
    h = reporter.history[-1]
    return {"samples_per_s": h["samples_per_s"], "peak_mem_mb": h["peak_mem_mb"], "params": h["params"]}


def measure(model: str, args) -> dict:
    spec = {"model": model, "images": args.images, "batch_size": args.batch_size, "device": args.device,
            "amp": args.amp, "channels_last": args.channels_last, "threads": args.threads}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"{model}: the benchmark process failed: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--images", type=int, default=256, help="images in the epoch (default 256)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="measurements per model, each beside one of VGG6")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16", "auto"))
    p.add_argument("--channels-last", default="off", choices=("off", "on", "auto"))
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_epoch(json.loads(args.child))))
        return
    print(f"one epoch of {args.images} CIFAR-shaped images (3x32x32, 100 classes), batch {args.batch_size}, "
          f"device {args.device}, amp {args.amp}, channels_last {args.channels_last}, {args.threads} threads; "
          f"median of {args.rounds} rounds")
    print(f"| model | params | images/s | x {BASELINE} | peak memory MB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for model in args.models:
        rates, ratios, peaks = [], [], []
        for _ in range(args.rounds):
            base = measure(BASELINE, args)
            run = measure(model, args)
            rates.append(run["samples_per_s"])
            ratios.append(run["samples_per_s"] / base["samples_per_s"])
            peaks.append(run["peak_mem_mb"])
        print(f"| {model} | {run['params']:,} | {statistics.median(rates):.1f} | {statistics.median(ratios):.3f} | "
              f"{max(peaks):.0f} |", flush=True)


if __name__ == "__main__":
    main()
