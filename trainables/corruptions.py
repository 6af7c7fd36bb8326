"""Corrupted copies of a test set, as in CIFAR-10-C / CIFAR-100-C, for study 5 (`cifar100_ood`).

Seven of the corruptions of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness
to Common Corruptions and Perturbations" (ICLR 2019), each at severities 1..5 with the
parameters of their `make_cifar_c.py` (hendrycks/robustness, ImageNet-C/create_c/), the
script that made the released CIFAR-10-C and CIFAR-100-C. Severity 0 is the clean image.

    from trainables.corruptions import corrupt, ood_accuracy
    x_c = corrupt(x_test, "gaussian_noise", 3, seed=0)        # uint8 (N, C, H, W) in and out
    mean, per = ood_accuracy(predict, x_test, y_test, ("contrast", "jpeg"), (1, 2, 3, 4, 5))
    mean, per = ood_accuracy(predict, x_test, y_test, names, (1, 3, 5), source="data/CIFAR-100-C")

How this code differs from the reference, all by at most one gray level or in the noise draw:
- Values are rounded to the nearest level; the reference's final `np.uint8` cast floors, so the
  released files sit half a level darker on average.
- Noise comes from `np.random.default_rng((seed, index of the name, severity))`, not the
  global NumPy state, so no generated copy equals the released one pixel for pixel.
- brightness: the reference goes RGB -> HSV (skimage), adds c to V, clips, and goes back.
  HSV -> RGB is linear in V at fixed hue and saturation, so that equals scaling each pixel's
  channels by min(V + c, 1) / V with V = the max over channels (a black pixel becomes gray
  c). That is what this module does, for any C; for C = 1 it is x + c clipped to 1.
- gaussian_blur uses scipy.ndimage.gaussian_filter with skimage's defaults (mode "nearest",
  truncated at 4 sigma) over H and W only: channels and images never mix.
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from trainables.data import DataError

# Per severity 1..5, as in make_cifar_c.py. Pixel values are on the 0..1 scale.
PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std of the added normal noise, 0..1 scale
    "shot_noise": (500, 250, 100, 75, 50),  # photon count of white: x' = Poisson(x * c) / c
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # std of the Gaussian kernel, pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor on the distance to the image's channel mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to the HSV value V, 0..1 scale
    "jpeg": (80, 65, 58, 50, 40),  # PIL JPEG quality, 1..95
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # side after box downscaling, fraction of the side
}
CORRUPTIONS: tuple[str, ...] = tuple(PARAMS)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# Where the release keeps each corruption: <directory>/<file>, plus labels.npy.
RELEASE_FILES: dict[str, str] = {
    "gaussian_noise": "gaussian_noise.npy",
    "shot_noise": "shot_noise.npy",
    "gaussian_blur": "gaussian_blur.npy",
    "contrast": "contrast.npy",
    "brightness": "brightness.npy",
    "jpeg": "jpeg_compression.npy",
    "pixelate": "pixelate.npy",
}
_WHERE = ("CIFAR-100-C from https://zenodo.org/record/3555552 "
          "(CIFAR-10-C from https://zenodo.org/record/2535967), extracted into that directory")
_CHUNK = 512  # images per vectorised step: bounds the float64 copies to ~12 MiB at 3x32x32


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _gaussian_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = x / 255.0
    return _to_uint8(x + rng.normal(scale=c, size=x.shape))


def _shot_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(rng.poisson(x / 255.0 * c) / c)


def _gaussian_blur(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(gaussian_filter(x / 255.0, sigma=(0, 0, c, c), mode="nearest", truncate=4.0))


def _contrast(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = x / 255.0
    mean = x.mean(axis=(2, 3), keepdims=True)  # per image and channel, as the reference's axis=(0, 1) of HWC
    return _to_uint8((x - mean) * c + mean)


def _brightness(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = x / 255.0
    v = x.max(axis=1, keepdims=True)
    v_new = np.minimum(v + c, 1.0)
    scaled = x * (v_new / np.where(v > 0, v, 1.0))
    return _to_uint8(np.where(v > 0, scaled, v_new))


def _pil_images(x: np.ndarray) -> Iterator[Image.Image]:
    mode = "L" if x.shape[1] == 1 else "RGB"
    for img in x:
        hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
        yield Image.fromarray(hwc[:, :, 0] if mode == "L" else hwc, mode=mode)


def _from_pil(img: Image.Image, channels: int) -> np.ndarray:
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _jpeg(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(x)
    for i, img in enumerate(_pil_images(x)):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(c))
        out[i] = _from_pil(Image.open(buf), x.shape[1])
    return out


def _pixelate(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[2:]
    small = (max(1, int(w * c)), max(1, int(h * c)))  # PIL sizes are (width, height)
    out = np.empty_like(x)
    for i, img in enumerate(_pil_images(x)):
        out[i] = _from_pil(img.resize(small, Image.BOX).resize((w, h), Image.BOX), x.shape[1])
    return out


_FUNCTIONS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "jpeg": _jpeg,
    "pixelate": _pixelate,
}
assert tuple(_FUNCTIONS) == CORRUPTIONS == tuple(RELEASE_FILES)


def _check_name(name: str) -> None:
    if name not in PARAMS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")


def _check_severity(severity: int, allowed: tuple[int, ...] = (0, *SEVERITIES)) -> None:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in allowed:
        raise ValueError(f"severity must be an integer in {allowed[0]}..{allowed[-1]}, got {severity!r}")


def corrupt(x: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupt a batch of uint8 images (N, C, H, W), C = 1 or 3; returns a new uint8 array of that shape.

    Severity 0 returns an equal copy. The result depends only on (x, name, severity, seed): the noise
    corruptions draw from one generator seeded with (seed, index of name in CORRUPTIONS, severity),
    over the whole array in image order, so corrupt(x[:k]) == corrupt(x)[:k] and every name and
    severity gets its own noise. The other corruptions ignore the seed.
    """
    _check_name(name)
    _check_severity(severity)
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"corrupt takes uint8 images shaped (N, C, H, W) with C = 1 or 3, "
                         f"got {x.dtype} {x.shape}")
    if severity == 0:
        return x.copy()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng((int(seed), CORRUPTIONS.index(name), int(severity)))
    fn, c = _FUNCTIONS[name], PARAMS[name][severity - 1]
    out = np.empty_like(x)
    # Chunks draw from the same generator in image order, so chunking never changes the noise.
    for start in range(0, len(x), _CHUNK):
        out[start:start + _CHUNK] = fn(x[start:start + _CHUNK], c, rng)
    return out


def parse_names(text: str) -> tuple[str, ...]:
    """"all" -> CORRUPTIONS; "contrast,jpeg" -> ("contrast", "jpeg"), in the order given."""
    if text.strip() == "all":
        return CORRUPTIONS
    names = tuple(part.strip() for part in text.split(","))
    for name in names:
        if not name:
            raise ValueError(f"empty corruption name in {text!r}; give 'all' or a comma list of "
                             f"{', '.join(CORRUPTIONS)}")
        _check_name(name)
    if len(set(names)) != len(names):
        raise ValueError(f"corruption named twice in {text!r}")
    return names


def parse_severities(text: str) -> tuple[int, ...]:
    """"1,3,5" -> (1, 3, 5); "1-5" -> (1, 2, 3, 4, 5); "0" is the clean set; parts can mix ("0,2-4")."""
    severities: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"bad severities {text!r}: give integers 0..5 like '1,3,5' or '1-5'") from None
        if not 0 <= a <= b <= 5:
            raise ValueError(f"bad severities {text!r}: each must be in 0..5 and ranges must go up")
        severities.extend(range(a, b + 1))
    if len(set(severities)) != len(severities):
        raise ValueError(f"severity named twice in {text!r}")
    return tuple(severities)


def _check_lists(names: Iterable[str], severities: Iterable[int],
                 allowed: tuple[int, ...] = (0, *SEVERITIES)) -> tuple[tuple[str, ...], tuple[int, ...]]:
    names, severities = tuple(names), tuple(severities)
    for name in names:
        _check_name(name)
    for s in severities:
        _check_severity(s, allowed)
    return names, severities


def corrupted_sets(x: np.ndarray, names: Iterable[str], severities: Iterable[int],
                   seed: int = 0) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield (name, severity, corrupt(x, name, severity, seed)) for every name, then every severity.

    Names and severities are checked when called, not when first iterated; one copy is alive at a time.
    """
    names, severities = _check_lists(names, severities)
    return ((n, s, corrupt(x, n, s, seed)) for n in names for s in severities)


def load_cifar_c(directory: str | os.PathLike, names: Iterable[str], severities: Iterable[int],
                 n_test: int) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """Read the released CIFAR-100-C (or CIFAR-10-C) files: yield (name, severity, x, y).

    The release holds <directory>/<file>.npy per corruption, shaped (5 * n_test, 32, 32, 3) uint8 with
    rows [(s-1)*n_test, s*n_test) at severity s, and labels.npy (5 * n_test,). x comes back as
    (n_test, 3, 32, 32) uint8, y as int64. Every file is found and its shape checked when called,
    before anything is yielded; files are memory-mapped so only the requested severities are read.
    Severities are 1..5 (the release has no clean copy).
    """
    names, severities = _check_lists(names, severities, SEVERITIES)
    directory = os.fspath(directory)
    needed = [RELEASE_FILES[n] for n in names] + ["labels.npy"]
    missing = [f for f in needed if not os.path.isfile(os.path.join(directory, f))]
    if missing:
        raise DataError(f"{directory} lacks {', '.join(missing)}: download {_WHERE}")
    expected = (5 * n_test, 32, 32, 3)
    labels = np.load(os.path.join(directory, "labels.npy"), mmap_mode="r")
    if labels.shape != (5 * n_test,):
        raise DataError(f"{directory}/labels.npy has shape {labels.shape}, expected ({5 * n_test},) "
                        f"for {n_test} test images; is this the release for another dataset?")
    arrays = {}
    for name in names:
        path = os.path.join(directory, RELEASE_FILES[name])
        arr = np.load(path, mmap_mode="r")
        if arr.shape != expected or arr.dtype != np.uint8:
            raise DataError(f"{path} is {arr.dtype} {arr.shape}, expected uint8 {expected} "
                            f"(5 severities x {n_test} test images, HWC)")
        arrays[name] = arr

    def _blocks() -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
        for name in names:
            for s in severities:
                rows = slice((s - 1) * n_test, s * n_test)
                x = np.ascontiguousarray(arrays[name][rows].transpose(0, 3, 1, 2))
                yield name, s, x, np.asarray(labels[rows], dtype=np.int64)

    return _blocks()


def ood_accuracy(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray,
                 names: Iterable[str], severities: Iterable[int], seed: int = 0,
                 source: str | os.PathLike | None = None) -> tuple[float, dict[str, float]]:
    """Accuracy of ``predict`` on corrupted copies of (x, y): returns (mean_acc, per).

    ``predict(x_uint8 (N, C, H, W)) -> labels (N,)``. ``per`` is a flat dict of plain floats with
    string keys, so ``json.dump(per)`` and a two-column CSV (key, accuracy) need no conversion:
        per["contrast/3"]  accuracy on contrast at severity 3, one key "name/severity" per pair
        per["contrast"]    mean over that corruption's severities
    ``mean_acc`` is the mean over all (name, severity) pairs. Severity 0 is the clean (x, y),
    so severities (0,) give the clean accuracy. Without ``source`` the copies come from
    ``corrupt(x, name, severity, seed)``; with ``source`` (a directory of the release) from
    ``load_cifar_c``, whose labels must equal ``y`` (else DataError: the files are for another
    dataset); x is then only used for severity 0.
    """
    names, severities = _check_lists(names, severities)
    y = np.asarray(y)

    def _acc(images: np.ndarray) -> float:
        pred = np.asarray(predict(images))
        if pred.shape != y.shape:
            raise ValueError(f"predict returned shape {pred.shape} for {len(images)} images; expected {y.shape}")
        return float(np.mean(pred == y))

    if not names or not severities:
        raise ValueError("ood_accuracy needs at least one corruption name and one severity")
    acc: dict[tuple[str, int], float] = {}
    if 0 in severities:
        clean = _acc(x)
        acc.update({(name, 0): clean for name in names})
    corrupted = [s for s in severities if s > 0]
    if source is None:
        for name, s, xc in corrupted_sets(x, names, corrupted, seed):
            acc[name, s] = _acc(xc)
    else:
        for name, s, xc, yc in load_cifar_c(source, names, corrupted, len(y)):
            if not np.array_equal(yc, y):
                raise DataError(f"labels in {os.fspath(source)}/labels.npy (severity {s}) differ from the test "
                                f"labels given: the directory is for another dataset or test order")
            acc[name, s] = _acc(xc)
    per: dict[str, float] = {}
    for name in names:
        per.update({f"{name}/{s}": acc[name, s] for s in severities})
        per[name] = float(np.mean([acc[name, s] for s in severities]))
    return float(np.mean(list(acc.values()))), per
