"""Datasets in their real on-disk formats, loaded once by the driver.

The driver calls `prepare` once, before any trial starts, and hands each trial
`Dataset.sweep_view()`: the training and validation arrays, never the test set, so
no hyperparameter choice can peek at test data. The files are read directly in the
layouts torchvision's downloads produce (CIFAR python pickles, MNIST idx files)
rather than through torchvision's dataset classes, which verify MD5 sums and would
reject the small generated files the tests use. torchvision is only used to download.

Besides the built-in DATASETS, a name may be `imagefolder:PATH` (PATH/train/<class>/<image>,
optionally PATH/test/...) or `npz:PATH` (arrays x_train, y_train, optionally x_test, y_test,
class_names): a user's own images, read by trainables.userdata; see its docstring for the rules.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import pathlib
import pickle
import struct
import sys
from dataclasses import dataclass

import numpy as np

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "mnist", "fashion_mnist")

_CIFAR10 = ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
_CIFAR100 = ("cifar-100-python", ["train", "test", "meta"])
_IDX = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_LAYOUT = {"cifar10": _CIFAR10, "cifar100": _CIFAR100, "mnist": ("MNIST/raw", _IDX),
           "fashion_mnist": ("FashionMNIST/raw", _IDX)}
# Per-channel mean/std on the 0..1 scale (the study's figures); digits computes its own.
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                    "Sneaker", "Bag", "Ankle boot")
_DIGIT_CLASSES = tuple(str(i) for i in range(10))
_SOURCES = {
    "cifar10": "download the CIFAR-10 python version from https://www.cs.toronto.edu/~kriz/cifar.html "
               "and extract it there",
    "cifar100": "download the CIFAR-100 python version from https://www.cs.toronto.edu/~kriz/cifar.html "
                "and extract it there",
    "mnist": "download the four idx files from http://yann.lecun.com/exdb/mnist/ "
             "(mirror: https://ossci-datasets.s3.amazonaws.com/mnist/) into {dir}",
    "fashion_mnist": "download the four idx files from https://github.com/zalandoresearch/fashion-mnist "
                     "into {dir}",
}
_DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED = 0.2, 0  # fixed, so the digits test set never moves
USER_KINDS: tuple[str, ...] = ("imagefolder", "npz")  # names "<kind>:PATH" are a user's own dataset
_STATS_CHUNK_BYTES = 64 << 20  # mean/std work through float64 slices of about this size


class DataError(Exception):
    """One line saying what is missing, where it was expected, and how to get it."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing/hashing numpy arrays field-wise is meaningless
class Dataset:
    name: str
    x_train: np.ndarray  # uint8, shape (N, C, H, W)
    y_train: np.ndarray  # int64, shape (N,)
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]
    val_fraction: float
    split_seed: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """Short sha256 over every split's images and labels, recorded with results as provenance."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            h = hashlib.sha256()
            for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
                a = np.ascontiguousarray(getattr(self, key))
                h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
                h.update(a.tobytes())
            cached = self.__dict__["_fingerprint"] = h.hexdigest()[:16]  # cache; arrays are not re-hashed
        return cached

    def sweep_view(self) -> dict:
        """What a sweep trial needs; the test set is deliberately left out."""
        return {"name": self.name, "x_train": self.x_train, "y_train": self.y_train, "x_val": self.x_val,
                "y_val": self.y_val, "classes": self.classes, "mean": self.mean, "std": self.std,
                "num_classes": self.num_classes, "input_shape": self.input_shape,
                "fingerprint": self.fingerprint()}

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.x_train.shape}, val={self.x_val.shape}, "
                f"test={self.x_test.shape}, classes={self.num_classes}, val_fraction={self.val_fraction}, "
                f"split_seed={self.split_seed})")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of range(n) into (train_idx, val_idx), disjoint, both sorted.

    The validation part has round(n * val_fraction) indices; val_fraction is in [0, 1).
    Sorting keeps the surviving examples in file order, so a split is a pure selection.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n_val = round(n * val_fraction)
    if n > 0 and n_val >= n:
        raise ValueError(f"val_fraction {val_fraction} of {n} examples leaves none for training")
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _user_kind(name: str) -> str | None:
    """"imagefolder"/"npz" for a user's dataset name (path not checked), else None."""
    kind, sep, _ = name.partition(":") if isinstance(name, str) else ("", "", "")
    return kind if sep and kind in USER_KINDS else None


def check_name(name: str) -> None:
    """Raise ValueError (one line) unless `name` is a built-in dataset or imagefolder:PATH /
    npz:PATH with a non-empty PATH. Looks at the string only, never at the disk."""
    kind = _user_kind(name)
    if name in DATASETS or (kind and name.partition(":")[2].strip()):
        return
    if kind:
        raise ValueError(f"dataset {name!r} names no path; write {kind}:PATH, e.g. {kind}:"
                         f"{'data/pets' if kind == 'imagefolder' else 'data/pets.npz'}")
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}; or your own images as "
                     f"imagefolder:PATH (PATH/train/<class>/<image>) or npz:PATH (arrays x_train, y_train)")


def _known(name: str) -> None:
    try:
        check_name(name)
    except ValueError as e:
        raise DataError(str(e)) from None


def _user(name: str, base_dir):
    """(kind, absolute path, dataset name with that path) of a user's dataset."""
    from trainables import userdata

    kind, _, given = name.partition(":")
    path, label = userdata.resolve(kind, given, base_dir)
    return kind, path, label, given.strip()


def expected_files(name: str, data_dir, base_dir=None) -> list[pathlib.Path]:
    """The files the loader reads (empty for digits). For idx files the `.gz` twin is listed
    when only it exists, since that is then what gets read; otherwise the plain name. For a
    user's dataset: the .npz file, or the image folder's train/ folder (relative paths are
    taken from base_dir, default the working directory; data_dir is not used)."""
    _known(name)
    if name == "digits":
        return []
    if _user_kind(name):
        from trainables import userdata

        kind, path, _, _ = _user(name, base_dir)
        return userdata.expected_files(kind, path)
    if data_dir is None:
        raise DataError(f"{name}: no --data-dir given; it is the folder holding {_LAYOUT[name][0]}/")
    sub, names = _LAYOUT[name]
    folder = pathlib.Path(data_dir) / sub
    files = []
    for fname in names:
        path = folder / fname
        if name in ("mnist", "fashion_mnist") and not path.is_file() and path.with_name(fname + ".gz").is_file():
            path = path.with_name(fname + ".gz")
        files.append(path)
    return files


def _missing(name: str, data_dir) -> list[pathlib.Path]:
    return [p for p in expected_files(name, data_dir) if not p.is_file()]


def _missing_message(name: str, data_dir, missing: list[pathlib.Path], note: str = "") -> str:
    gz = "[.gz]" if name in ("mnist", "fashion_mnist") else ""
    shown = ", ".join(f"{p}{gz}" for p in missing[:2]) + (f" (and {len(missing) - 2} more)" if len(missing) > 2 else "")
    hint = _SOURCES[name].format(dir=pathlib.Path(data_dir) / _LAYOUT[name][0])
    msg = (f"{name}: missing {shown} under --data-dir {data_dir}; on a machine with internet run "
           f"'python -m trainables.data {name} --data-dir {data_dir}' (or {hint})")
    return f"{msg} {note}".strip().replace("\n", " ")


def check_available(name: str, data_dir, base_dir=None) -> None:
    """Raise DataError if any expected file is missing. Never downloads. For a user's dataset,
    the checks that need no image decoded: the folder layout, or the .npz's array names/headers."""
    _known(name)
    if _user_kind(name):
        from trainables import userdata

        kind, path, label, given = _user(name, base_dir)
        userdata.check_available(kind, path, label, given)
        return
    missing = _missing(name, data_dir)
    if missing:
        raise DataError(_missing_message(name, data_dir, missing))


def _download(name: str, data_dir: pathlib.Path) -> None:
    """Fetch with torchvision (which checks the archive's MD5) under a file lock, so that
    several processes sharing a data_dir download once and never read half-extracted files."""
    import filelock
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST,
           "fashion_mnist": tvd.FashionMNIST}[name]
    data_dir.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(data_dir / ".tune_app_download.lock")):
        if _missing(name, data_dir):  # another process may have finished while we waited
            cls(root=str(data_dir), train=True, download=True)
            cls(root=str(data_dir), train=False, download=True)


def _reason(e: Exception) -> str:
    """The exception's first line; when that only introduces a list (torchvision's MNIST
    "Error downloading x:" then one line per mirror), its last line too, which says why."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()] or [""]
    text = lines[0] + (f" ... {lines[-1]}" if lines[0].endswith(":") and len(lines) > 1 else "")
    return f"{type(e).__name__}: {text[:300]}"


def _bad(name: str, path: pathlib.Path, what: str) -> DataError:
    root = path.parents[len(pathlib.PurePath(_LAYOUT[name][0]).parts)]
    return DataError(f"{name}: {path} {what}; delete it and run 'python -m trainables.data {name} "
                     f"--data-dir {root}' to fetch a fresh copy".replace("\n", " "))


def _unpickle(name: str, path: pathlib.Path) -> dict:
    # CIFAR's python version is a pickle written by Python 2; encoding="bytes" keeps its str keys as bytes.
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:
        raise _bad(name, path, f"is not a readable CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise _bad(name, path, f"holds a {type(obj).__name__}, not a CIFAR dict")
    return obj


def _cifar_batch(name: str, path: pathlib.Path, label_key: bytes, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(name, path)
    try:
        x = np.asarray(d[b"data"], dtype=np.uint8)
        y = np.asarray(d[label_key], dtype=np.int64)
    except (KeyError, ValueError, TypeError) as e:
        raise _bad(name, path, f"lacks usable {b'data'!r}/{label_key!r} ({type(e).__name__}: {e})") from e
    if x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),):
        raise _bad(name, path, f"has data {x.shape} and labels {y.shape}, expected (N, 3072) and (N,)")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise _bad(name, path, f"has labels outside 0..{n_classes - 1}")
    return x.reshape(-1, 3, 32, 32), y  # rows are CHW row-major: 1024 red, then green, then blue


def _class_names(name: str, path: pathlib.Path, key: bytes, n: int) -> tuple[str, ...]:
    names = _unpickle(name, path).get(key)
    if not isinstance(names, list) or len(names) != n:
        raise _bad(name, path, f"does not list {n} class names under {key!r}")
    return tuple(s.decode() if isinstance(s, bytes) else str(s) for s in names)


def _load_cifar(name: str, files: list[pathlib.Path]):
    if name == "cifar10":
        parts = [_cifar_batch(name, p, b"labels", 10) for p in files[:5]]
        x_train, y_train = np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
        x_test, y_test = _cifar_batch(name, files[5], b"labels", 10)
        classes = _class_names(name, files[6], b"label_names", 10)
    else:
        x_train, y_train = _cifar_batch(name, files[0], b"fine_labels", 100)
        x_test, y_test = _cifar_batch(name, files[1], b"fine_labels", 100)
        classes = _class_names(name, files[2], b"fine_label_names", 100)
    return x_train, y_train, x_test, y_test, classes


def _read_idx(name: str, path: pathlib.Path, magic: int, ndim: int) -> np.ndarray:
    """Big-endian magic, `ndim` big-endian uint32 sizes, then uint8 data; anything else is refused."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise _bad(name, path, f"cannot be read ({type(e).__name__}: {e})") from e
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise _bad(name, path, f"is too short for an idx header ({len(raw)} bytes)")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise _bad(name, path, f"has idx magic 0x{found:08x}, expected 0x{magic:08x}")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    if len(raw) - head != int(np.prod(dims)):
        raise _bad(name, path, f"holds {len(raw) - head} data bytes, header says {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims).copy()  # writable, like the rest


def _load_idx(name: str, files: list[pathlib.Path]):
    out = []
    for img_path, lbl_path in ((files[0], files[1]), (files[2], files[3])):
        x = _read_idx(name, img_path, 0x00000803, 3)
        y = _read_idx(name, lbl_path, 0x00000801, 1).astype(np.int64)
        if x.shape[1:] != (28, 28) or len(x) != len(y):
            raise _bad(name, img_path, f"has images {x.shape} for {len(y)} labels, expected (N, 28, 28)")
        if len(y) and y.max() >= 10:
            raise _bad(name, lbl_path, "has labels outside 0..9")
        out += [x[:, None, :, :], y]
    classes = _DIGIT_CLASSES if name == "mnist" else _FASHION_CLASSES
    return (*out, classes)


def _load_digits():
    """scikit-learn's bundled 8x8 digits (0..16) as uint8; a fixed 20 % is held out as the test set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * 255 / 16).astype(np.uint8)[:, None, :, :]
    y = d.target.astype(np.int64)
    rest, test = split_indices(len(y), _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED)
    return x[rest], y[rest], x[test], y[test], _DIGIT_CLASSES


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) on the 0..1 scale, computed
    as numpy's mean/std over a float64 copy would be, but a slice at a time: a user's dataset
    may be too large for a float64 copy (8x its size). One slice gives numpy's exact figures."""
    step = max(1, _STATS_CHUNK_BYTES // (8 * max(1, x[0].size if len(x) else 1)))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    total = sum((x[i:i + step].astype(np.float64) / 255).sum(axis=(0, 2, 3)) for i in range(0, len(x), step))
    mean = total / count
    squares = sum((((x[i:i + step].astype(np.float64) / 255) - mean[:, None, None]) ** 2).sum(axis=(0, 2, 3))
                  for i in range(0, len(x), step))
    return tuple(float(v) for v in mean), tuple(float(v) for v in np.sqrt(squares / count))


def prepare(name: str, data_dir, val_fraction: float = 0.1, split_seed: int = 0, download: bool = True,
            base_dir=None, image_size: int = 0) -> Dataset:
    """Load (downloading first if allowed and files are missing) and split.

    `name` is one of DATASETS, or imagefolder:PATH / npz:PATH for a user's own images (see
    trainables.userdata), whose relative PATH is taken from `base_dir` (default: the working
    directory) and whose Dataset.name records the absolute path; data_dir and download do not
    apply to them. `image_size` > 0 resizes a user's images to image_size x image_size (0 keeps
    them as they are, which then must all be one size); built-in datasets keep their own size.
    """
    _known(name)
    if not 0 <= val_fraction < 1:  # checked before any loading or downloading
        raise DataError(f"{name}: val_fraction must be in [0, 1), got {val_fraction}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 0:
        raise DataError(f"{name}: image_size must be a whole number of pixels >= 0 (0 keeps the images' size), "
                        f"got {image_size!r}")
    if image_size and not _user_kind(name):
        raise DataError(f"{name}: image_size applies to imagefolder:/npz: datasets only; leave it 0 for {name}")
    if _user_kind(name):
        from trainables import userdata

        kind, path, name, given = _user(name, base_dir)
        x_all, y_all, x_test, y_test, classes = userdata.load(kind, path, name, given, int(image_size))
    elif name == "digits":
        x_all, y_all, x_test, y_test, classes = _load_digits()
    else:
        missing, note = _missing(name, data_dir), ""  # refuses a None data_dir before Path() sees it
        data_dir = pathlib.Path(data_dir)
        if missing and download:
            if os.environ.get("TUNE_APP_OFFLINE") == "1":
                note = "(no download: TUNE_APP_OFFLINE=1)"
            else:
                try:
                    _download(name, data_dir)
                except Exception as e:
                    note = f"(download failed: {_reason(e)})"
                missing = _missing(name, data_dir)
        if missing:
            raise DataError(_missing_message(name, data_dir, missing, note))
        files = expected_files(name, data_dir)
        loader = _load_cifar if name.startswith("cifar") else _load_idx
        x_all, y_all, x_test, y_test, classes = loader(name, files)
    try:
        train_idx, val_idx = split_indices(len(y_all), val_fraction, split_seed)
    except ValueError as e:  # e.g. a fraction that leaves no training examples
        raise DataError(f"{name}: {e}") from None
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    # no published figures for digits or a user's images: measure the training portion actually used
    mean, std = _STATS[name] if name in _STATS else _channel_stats(x_train)
    return Dataset(name=name, x_train=x_train, y_train=y_train, x_val=x_all[val_idx], y_val=y_all[val_idx],
                   x_test=np.ascontiguousarray(x_test), y_test=np.ascontiguousarray(y_test), classes=classes,
                   mean=mean, std=std, val_fraction=float(val_fraction), split_seed=int(split_seed))


def _name_arg(name: str) -> str:
    try:
        check_name(name)
    except ValueError as e:  # argparse then reports it as a usage error, as `choices` did
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainables.data",
                                description="Download (if needed), load and split a dataset.")
    p.add_argument("name", type=_name_arg, metavar="name",
                   help=f"one of {', '.join(DATASETS)}, or imagefolder:PATH or npz:PATH for your own images")
    p.add_argument("--data-dir", default="data", help="root folder, laid out as torchvision downloads it")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=0,
                   help="resize imagefolder:/npz: images to this many pixels square (0: keep their size)")
    args = p.parse_args(argv)
    try:
        ds = prepare(args.name, args.data_dir, args.val_fraction, args.split_seed, download=True,
                     image_size=args.image_size)
    except DataError as e:
        print(e, file=sys.stderr)
        return 2
    for split in ("train", "val", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        print(f"{ds.name} {split}: x {tuple(x.shape)} {x.dtype}, y {tuple(y.shape)} {y.dtype}, "
              f"{ds.num_classes} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
