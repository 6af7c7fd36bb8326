"""What tune_app's benchmark scripts share: synthetic CIFAR-shaped data, device syncs, output capture."""
from __future__ import annotations

import contextlib
import os
import sys
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
