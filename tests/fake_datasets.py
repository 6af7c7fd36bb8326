"""Tiny datasets written in the exact real file formats, for tests.

The images are learnable on purpose: each class gets a bright block at its own place
(and, for CIFAR, its own set of bright colour channels) over mild noise, so an
end-to-end test can watch accuracy rise above chance. Everything is deterministic
for a given seed.
"""
from __future__ import annotations

import gzip
import pathlib
import pickle
import struct

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(f"fine_{i:02d}" for i in range(100))
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def _labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """As balanced as n allows, in random order."""
    return rng.permutation(np.arange(n) % k).astype(np.int64)


def class_images(rng: np.random.Generator, labels: np.ndarray, channels: int, size: int) -> np.ndarray:
    """uint8 (N, C, size, size): noise in 0..40, plus a 200..255 block whose place is label % 16
    on a 4x4 grid and whose bright channels are the bits of label // 16 + 1 (colour images)."""
    n, cell = len(labels), size // 4
    x = rng.integers(0, 41, size=(n, channels, size, size), dtype=np.uint8)
    for i, c in enumerate(labels):
        row, col = divmod(int(c) % 16, 4)
        bits = int(c) // 16 + 1 if channels > 1 else 1
        for ch in range(channels):
            if bits >> ch & 1:
                block = rng.integers(200, 256, size=(cell, cell), dtype=np.uint8)
                x[i, ch, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = block
    return x


def _dump(path: pathlib.Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _batch(rng: np.random.Generator, n: int, k: int, label_key: bytes, name: bytes) -> dict:
    y = _labels(rng, n, k)
    x = class_images(rng, y, 3, 32)
    batch = {b"batch_label": name, label_key: [int(v) for v in y], b"data": x.reshape(n, 3072),
             b"filenames": [f"img_{i:05d}.png".encode() for i in range(n)]}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [int(v) // 5 for v in y]
    return batch


def write_cifar10(root, n_train_per_batch: int = 20, n_test: int = 20, seed: int = 0) -> pathlib.Path:
    """`<root>/cifar-10-batches-py/` with data_batch_1..5, test_batch and batches.meta."""
    root = pathlib.Path(root)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", _batch(rng, n_train_per_batch, 10, b"labels",
                                                 f"training batch {i} of 5".encode()))
    _dump(folder / "test_batch", _batch(rng, n_test, 10, b"labels", b"testing batch 1 of 1"))
    _dump(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                    b"num_cases_per_batch": n_train_per_batch, b"num_vis": 3072})
    return root


def write_cifar100(root, n_train: int = 50, n_test: int = 20, seed: int = 0) -> pathlib.Path:
    """`<root>/cifar-100-python/` with train, test and meta (fine and coarse labels)."""
    root = pathlib.Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _dump(folder / "train", _batch(rng, n_train, 100, b"fine_labels", b"training batch 1 of 1"))
    _dump(folder / "test", _batch(rng, n_test, 100, b"fine_labels", b"testing batch 1 of 1"))
    _dump(folder / "meta", {b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
                            b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)]})
    return root


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """Big-endian magic, one big-endian uint32 per dimension, then the uint8 data."""
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + np.ascontiguousarray(array, np.uint8).tobytes()


def write_mnist(root, kind: str = "mnist", n_train: int = 60, n_test: int = 20, seed: int = 0,
                gz: bool = False) -> pathlib.Path:
    """`<root>/MNIST/raw/` (or FashionMNIST/raw) with the four idx files, plain or `.gz`."""
    sub = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[kind]
    root = pathlib.Path(root)
    folder = root / sub / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = []
    for n in (n_train, n_test):
        y = _labels(rng, n, 10)
        arrays += [(class_images(rng, y, 1, 28)[:, 0], 0x00000803), (y.astype(np.uint8), 0x00000801)]
    for fname, (array, magic) in zip(IDX_FILES, arrays, strict=True):
        data = idx_bytes(array, magic)
        if gz:
            # mtime=0 keeps the .gz bytes themselves deterministic
            with open(folder / f"{fname}.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
                f.write(data)
        else:
            (folder / fname).write_bytes(data)
    return root
