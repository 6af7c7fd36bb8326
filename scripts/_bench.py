"""What tune_app's benchmark scripts share: synthetic CIFAR-shaped data, device syncs, output capture."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
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
