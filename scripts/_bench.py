"""What tune_app's benchmark scripts share: synthetic CIFAR-shaped data, device syncs, one trial set up as the
image_classifier trainable sets it up, output capture."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random CIFAR-10-shaped uint8 images (N, 3, 32, 32) and labels in 0..9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.int64)


def warm_up_images(n: int, batch_size: int) -> int:
    """Images that warm a trial up on every batch shape of an epoch of ``n``: a full batch and the last, shorter one
    (one image: train_epoch drops it)."""
    return min(n, batch_size + (n % batch_size if n % batch_size > 1 else 0))


class FitTrial:
    """One image_classifier trial as its ``fit`` sets it up: the config resolved, ``setup_device`` and
    ``seed_everything``, its generator, ``Precision``, the built model (channels_last when asked), SGD (lr 0.01,
    momentum 0.9) and a constant schedule over an epoch of ``epoch_images``; for timing the trainable's own
    ``train_epoch`` on device-resident data (``DeviceData``). ``settings`` are config keys over crop 4 + flip;
    ``compile_mode``: None (eager), "trainable" (what ``compile: true`` does) or a ``torch.compile`` mode. A
    diverged loss exits, naming ``name`` (default: the model) and the batch size. Torch and the trainable are
    imported here, not by every script that imports this module."""

    def __init__(self, device, settings: dict, epoch_images: int, classes: int = 10, seed: int = 0,
                 compile_mode: str | None = None, name: str | None = None) -> None:
        import torch

        from trainables import image_classifier as ic
        from trainables.augment import AutoAugment
        from trainables.device_loop import Precision, batch_starts, compile_model, setup_device
        from trainables.optim import build_optimizer, build_schedule
        from trainables.params import resolve

        self.cfg = resolve(ic.PARAMS, {"crop_padding": 4, "flip": True, "optimizer": "sgd", "lr": 0.01,
                                       "device": device.type, **settings})
        setup_device(self.cfg)
        ic.seed_everything(seed)
        self.device, self.classes, self.name = device, classes, name or self.cfg["model"]
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.precision = Precision(self.cfg, device)
        model = ic.build(self.cfg, {"input_shape": (3, 32, 32), "num_classes": classes}).to(device)
        if self.precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.opt = build_optimizer("sgd", model.parameters(), 0.01, 0.0, 0.9)
        self.schedule = build_schedule("none", self.opt, 1, len(batch_starts(epoch_images, self.cfg["batch_size"])))
        self.autoaugment = AutoAugment() if self.cfg["autoaugment"] else None
        if compile_mode == "trainable":
            self.model = compile_model(model, device)
        else:
            self.model = torch.compile(model, mode=compile_mode) if compile_mode else model

    def train(self, data) -> tuple[float, int]:
        """(wall s, images) of one train_epoch over ``data`` (a ``DeviceData``)."""
        from trainables.device_loop import train_epoch

        sync(self.device)
        t0 = time.perf_counter()
        loss, _, seen = train_epoch(self.model, self.opt, self.schedule, data, self.cfg, self.gen, self.autoaugment,
                                    self.precision, self.classes)
        sync(self.device)
        wall = time.perf_counter() - t0
        if not np.isfinite(loss):
            raise SystemExit(f"{self.name} batch {self.cfg['batch_size']}: the loss diverged ({loss})")
        return wall, seen


@contextlib.contextmanager
def output_to(path: Path):
    """The sweep's console output (Ray's table, the analysis) into a file, at the descriptor level."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def packed_workers(script: str, specs: list[dict], phases: int = 1, env: dict | None = None) -> list[list[dict]]:
    """Packed trials as separate processes (``script --worker SPEC``), in lockstep through ``phases``: each worker
    sets up and warms up, prints ``ready``, waits for a line on stdin, trains and prints one JSON line; all start
    each phase together. Returns, per phase, each worker's JSON."""
    procs, logs, results = [], [], []
    try:
        for spec in specs:
            logs.append(tempfile.TemporaryFile("w+"))  # a file, not a pipe: a chatty stderr cannot block it
            procs.append(subprocess.Popen([sys.executable, script, "--worker", json.dumps(spec)], env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs[-1], text=True))
        for _ in range(phases):
            for p, log in zip(procs, logs):
                if p.stdout.readline().strip() != "ready":
                    p.wait()
                    raise RuntimeError(f"a packed trial failed to start: {_tail(log)}")
            for p in procs:  # all set up and warmed up: go
                p.stdin.write("go\n")
                p.stdin.flush()
            phase = []
            for p, log in zip(procs, logs):
                line = p.stdout.readline()
                if not line:
                    p.wait()
                    raise RuntimeError(f"a packed trial failed: {_tail(log)}")
                phase.append(json.loads(line))
            results.append(phase)
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for log in logs:
            log.close()


def _tail(log) -> str:
    log.seek(0)
    return log.read().strip()[-2000:]
