"""Users' own datasets: `imagefolder:PATH` (image files) and `npz:PATH` (NumPy arrays).

Reached through `trainables.data.prepare`; this module only reads the files.

imagefolder:PATH is torchvision's ImageFolder layout, PATH/train/<class>/<image> and
optionally PATH/test/<class>/<image>; classes are the sorted folder names under train/
and files are found exactly as ImageFolder finds them. Every image is read with Pillow:
if all of them are grayscale (modes 1, L, LA, I, I;16; Pillow clips values above 255 when
converting I/I;16 to L, so rescale 16-bit images to 8 bit first) the dataset has one
channel, else all are converted to RGB (alpha is dropped).

npz:PATH holds uint8 `x_train` and integer `y_train`, optionally `x_test`/`y_test` and
`class_names` (else classes are "0".."max label"). Images are (N, H, W), (N, H, W, C) or
(N, C, H, W) with C 1 or 3: a 4-D array is channels-first when shape[1] is 1 or 3, else
channels-last when shape[-1] is 1 or 3. So an ambiguous array such as (N, 3, 8, 3) is read
as (N, C, H, W); transpose such arrays to (N, C, H, W) before saving to be explicit.

Without a test split, a fixed seeded 20 % of the training images is held out as the test
set. `image_size` > 0 resizes every image to image_size x image_size (bilinear).
"""
from __future__ import annotations

import os
import pathlib
import zipfile

import numpy as np

from trainables.data import DataError, split_indices

TEST_FRACTION, TEST_SEED = 0.2, 0  # fixed, like digits, so the held-out set never moves
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"})
_CHUNK_BYTES = 64 << 20  # npz resizing works on slices of about this size, not on float copies of everything
_SUGGESTED_SIZES = (224, 160, 128, 96, 64, 48, 32, 28, 16)


def resolve(kind: str, path: str, base_dir=None) -> tuple[pathlib.Path, str]:
    """The absolute path (relative ones are taken from base_dir, default the working
    directory) and the dataset name that records it, e.g. "npz:/data/pets.npz"."""
    p = pathlib.Path(os.path.expanduser(path.strip()))
    full = pathlib.Path(os.path.abspath(pathlib.Path(base_dir if base_dir is not None else os.getcwd()) / p))
    return full, f"{kind}:{full}"


def expected_files(kind: str, path: pathlib.Path) -> list[pathlib.Path]:
    """What must exist before loading: the .npz file, or the image folder's train/ folder."""
    return [path] if kind == "npz" else [path / "train"]


def check_available(kind: str, path: pathlib.Path, label: str, given: str) -> None:
    """The checks prepare makes first, without reading any image or array."""
    if kind == "npz":
        _npz_headers(label, path, given)
    else:
        _train_folder(label, path, given)


def load(kind: str, path: pathlib.Path, label: str, given: str, image_size: int):
    """(x_all, y_all, x_test, y_test, classes) like data.py's loaders; `given` is the
    path as the user wrote it, to say how it was resolved when it is not found."""
    loader = _load_npz if kind == "npz" else _load_folder
    return loader(label, path, given, image_size)


def _hold_out(label: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, test) indices when the user gave no test split: a fixed seeded 20 %."""
    rest, test = split_indices(n, TEST_FRACTION, TEST_SEED)
    if not len(test):
        raise DataError(f"{label}: only {n} training image{'s' * (n != 1)} and no test split; holding out "
                        f"{TEST_FRACTION:.0%} for testing needs at least 3, or give a test split")
    return rest, test


# --- memory ----------------------------------------------------------------------------------


def available_bytes() -> int | None:
    """TUNE_APP_MEMORY_MB when set (tests use it to act as a small machine), else the
    kernel's MemAvailable; None where neither is known (no /proc), which skips the check."""
    env = os.environ.get("TUNE_APP_MEMORY_MB", "").strip()
    if env:
        try:
            return int(float(env) * 2**20)
        except ValueError:
            raise DataError(f"TUNE_APP_MEMORY_MB={env!r} is not a number of MiB; unset it or give e.g. 4096") from None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _size(n: int) -> str:
    for unit, k in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 2**k / 10:
            return f"{n / 2**k:.1f} {unit}"
    return f"{n} bytes"


def check_memory(label: str, n: int, c: int, h: int, w: int, source: int = 0, resizing: bool = False) -> None:
    """Refuse, before decoding, a dataset whose n uint8 images of c x h x w would not fit in
    the memory available now. `source` is the bytes of arrays that must be read whole before
    they can be resized (an npz's; 0 for image files, which are resized one at a time)."""
    need = n * c * h * w + (source if resizing else 0)
    have = available_bytes()
    if have is None or need <= have:
        return
    where = "TUNE_APP_MEMORY_MB" if os.environ.get("TUNE_APP_MEMORY_MB", "").strip() else "MemAvailable"
    fits = [s for s in _SUGGESTED_SIZES if s < max(h, w) and source + n * c * s * s <= have]
    hint = (f"pass image_size={fits[0]} (images resized to {fits[0]}x{fits[0]}) or use fewer images" if fits
            else "use fewer images or a machine with more memory")
    also = f" (with the file's {_size(source)} of arrays read before resizing)" if resizing and source else ""
    raise DataError(f"{label}: {n} images of {c}x{h}x{w} need {_size(need)} as uint8{also}; this machine has "
                    f"{_size(have)} available ({where}); {hint}")


# --- image folders ---------------------------------------------------------------------------


def _why(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _show(paths: list[str], limit: int = 3) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def _not_found(label: str, path: pathlib.Path, given: str, what: str) -> DataError:
    how = "" if os.path.isabs(os.path.expanduser(given.strip())) else f" ({given} resolved against the base directory)"
    return DataError(f"{label}: {'no such ' + what if not path.exists() else 'not a ' + what}{how}; "
                     f"{'give the folder holding train/<class>/<image>' if what == 'folder' else 'give a .npz file'}")


def _train_folder(label: str, root: pathlib.Path, given: str) -> pathlib.Path:
    if not root.is_dir():
        raise _not_found(label, root, given, "folder")
    train = root / "train"
    if not train.is_dir():
        there = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(root))
        raise DataError(f"{label}: no train/ folder in it (it holds: {_show(there, 5) or 'nothing'}); lay images "
                        f"out as {root}/train/<class>/<image>, optionally with {root}/test/<class>/<image>")
    return train


def _class_folders(folder: pathlib.Path) -> list[str]:
    # torchvision's find_classes rule (sorted sub-folder names) without its exception for none
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def _images(label: str, root: pathlib.Path, split: str, classes: list[str], index: dict[str, int]):
    """Files and labels of one split, found and ordered as torchvision's ImageFolder does."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    found = make_dataset(str(root / split), {c: index[c] for c in classes}, IMG_EXTENSIONS, allow_empty=True)
    seen = {y for _, y in found}
    empty = [f"{split}/{c}" for c in classes if index[c] not in seen]
    if empty:
        raise DataError(f"{label}: no images ({' '.join(IMG_EXTENSIONS)}) in class folder{'s' * (len(empty) > 1)} "
                        f"{_show(empty)}; add images or remove the folder")
    return [pathlib.Path(p) for p, _ in found], np.array([y for _, y in found], dtype=np.int64)


def _headers(root: pathlib.Path, files: list[pathlib.Path]):
    """Mode and (width, height) of every file from its header alone; unreadable ones as (file, reason)."""
    from PIL import Image

    modes, sizes, bad = [], [], []
    for f in files:
        try:
            with Image.open(f) as img:
                modes.append(img.mode)
                sizes.append(img.size)
        except Exception as e:  # Pillow raises many kinds (OSError, SyntaxError, DecompressionBombError, ...)
            bad.append((f.relative_to(root).as_posix(), _why(e)))
            modes.append(None)
            sizes.append(None)
    return modes, sizes, bad


def _unreadable(label: str, bad: list[tuple[str, str]]) -> DataError:
    return DataError(f"{label}: {len(bad)} image file{'s' * (len(bad) > 1)} cannot be read: "
                     f"{_show([f for f, _ in bad])} (first: {bad[0][1]}); fix or delete them")


def _decode(path: pathlib.Path, gray: bool, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # Pillow warns when such a palette image goes straight to RGB
        img = img.convert("L" if gray else "RGB")
        if size and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        a = np.asarray(img)
    return a[None] if gray else a.transpose(2, 0, 1)


def _load_folder(label: str, root: pathlib.Path, given: str, image_size: int):
    train = _train_folder(label, root, given)
    classes = _class_folders(train)
    if len(classes) < 2:
        held = f"only the class folder {classes[0]}/" if classes else "no class folders"
        raise DataError(f"{label}: {train} holds {held}; put each class's images in its own folder, "
                        f"{train}/<class>/<image>, with at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    files, labels = _images(label, root, "train", classes, index)
    n_train = len(files)
    if (root / "test").is_dir():
        test_classes = _class_folders(root / "test")
        unknown = [c for c in test_classes if c not in index]
        if unknown:
            raise DataError(f"{label}: test/ has class folders that train/ lacks: {_show(unknown, 5)}; every "
                            f"test class needs images in train/<class>")
        if not test_classes:
            raise DataError(f"{label}: {root / 'test'} holds no class folders; fill it as test/<class>/<image> or "
                            f"remove it to hold out {TEST_FRACTION:.0%} of train/ instead")
        test_files, test_labels = _images(label, root, "test", test_classes, index)
        files, labels = files + test_files, np.concatenate([labels, test_labels])
    x = _read_images(label, root, files, image_size)
    if len(files) > n_train:
        return x[:n_train], labels[:n_train], x[n_train:], labels[n_train:], tuple(classes)
    rest, test = _hold_out(label, n_train)
    return x[rest], labels[rest], x[test], labels[test], tuple(classes)


def _read_images(label: str, root: pathlib.Path, files: list[pathlib.Path], image_size: int) -> np.ndarray:
    """All files as one uint8 (N, C, H, W) array, refusing before decoding when it would not fit."""
    rel = [f.relative_to(root).as_posix() for f in files]
    first_modes, first_sizes, _ = _headers(root, files[:1])
    first_c = None
    if first_sizes[0] is not None:  # a quick refusal before the header scan, which touches every file
        w, h = (image_size, image_size) if image_size else first_sizes[0]
        first_c = 1 if first_modes[0] in _GRAY_MODES else 3
        check_memory(label, len(files), first_c, h, w)
    modes, sizes, bad = _headers(root, files)
    if bad:
        raise _unreadable(label, bad)
    if not image_size and len(set(sizes)) > 1:
        i = next(i for i, s in enumerate(sizes) if s != sizes[0])
        raise DataError(f"{label}: images differ in size: {rel[0]} is {sizes[0][0]}x{sizes[0][1]} but {rel[i]} is "
                        f"{sizes[i][0]}x{sizes[i][1]} (width x height); pass image_size (e.g. image_size="
                        f"{min(sizes[0])}) to resize every image to one square size")
    gray = all(m in _GRAY_MODES for m in modes)
    c = 1 if gray else 3
    w, h = (image_size, image_size) if image_size else sizes[0]
    if c != first_c:
        check_memory(label, len(files), c, h, w)
    out = np.empty((len(files), c, h, w), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            a = _decode(f, gray, image_size)
        except Exception as e:  # truncated or corrupt data shows only when decoding
            bad.append((rel[i], _why(e)))
            continue
        if a.shape != out.shape[1:]:
            bad.append((rel[i], f"decodes to shape {a.shape}, its header said {c}x{h}x{w}"))
            continue
        out[i] = a
    if bad:
        raise _unreadable(label, bad)
    return out


# --- npz -------------------------------------------------------------------------------------


def _npz_headers(label: str, path: pathlib.Path, given: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in the archive, from the .npy headers only."""
    if not path.is_file():
        raise _not_found(label, path, given, "file")
    heads = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                heads[info.filename[:-4]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DataError(f"{label}: not a readable NumPy .npz archive ({_why(e)}); write one with "
                        f"np.savez(path, x_train=images, y_train=labels)") from None
    for key in ("x_train", "y_train"):
        if key not in heads:
            raise DataError(f"{label}: has no {key} array (it has: {', '.join(sorted(heads)) or 'none'}); save the "
                            f"training images as x_train (uint8) and their integer labels as y_train")
    if ("x_test" in heads) != ("y_test" in heads):
        raise DataError(f"{label}: has {'x_test' if 'x_test' in heads else 'y_test'} without "
                        f"{'y_test' if 'x_test' in heads else 'x_test'}; give both or neither")
    return heads


def _layout(label: str, key: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[str, tuple[int, int, int]]:
    """("NHW"|"NHWC"|"NCHW", (C, H, W)) by the module docstring's rule."""
    if dtype != np.uint8:
        how = "(x * 255).round().astype(np.uint8) for floats in 0..1" if dtype.kind == "f" else \
            "x.astype(np.uint8) when the values are 0..255"
        raise DataError(f"{label}: {key} has dtype {dtype}; convert the images to uint8 0..255 (e.g. {how})")
    if len(shape) == 3:
        return "NHW", (1, shape[1], shape[2])
    if len(shape) == 4 and shape[1] in (1, 3):
        return "NCHW", shape[1:]  # type: ignore[return-value]
    if len(shape) == 4 and shape[-1] in (1, 3):
        return "NHWC", (shape[3], shape[1], shape[2])
    raise DataError(f"{label}: {key} has shape {shape}; give images as (N, H, W), (N, H, W, C) or (N, C, H, W) "
                    f"with C = 1 (grayscale) or 3 (RGB)")


def _labels_shape(label: str, key: str, shape: tuple[int, ...], dtype: np.dtype, n: int) -> None:
    if dtype.kind not in "iu":
        raise DataError(f"{label}: {key} has dtype {dtype}; labels must be integers 0..classes-1 "
                        f"(e.g. y.astype(np.int64))")
    if shape not in ((n,), (n, 1)):
        what = f"{shape[0]} labels" if len(shape) == 1 else f"shape {shape}"
        raise DataError(f"{label}: x_{key[2:]} holds {n} images but {key} has {what}; give one integer label "
                        f"per image, shape (N,)")


def _to_nchw(x: np.ndarray, layout: str) -> np.ndarray:
    return x[:, None] if layout == "NHW" else x.transpose(0, 3, 1, 2) if layout == "NHWC" else x


def _images_from(x: np.ndarray, layout: str, image_size: int) -> np.ndarray:
    """uint8 (N, C, H, W), resized in slices so no full float copy is ever made."""
    if not image_size or _to_nchw(x[:0], layout).shape[2:] == (image_size, image_size):
        return np.ascontiguousarray(_to_nchw(x, layout))
    import torch
    from torchvision.transforms.v2 import functional as F

    c = _to_nchw(x[:0], layout).shape[1]
    out = np.empty((len(x), c, image_size, image_size), dtype=np.uint8)
    step = max(1, _CHUNK_BYTES // max(1, x[0].nbytes if len(x) else 1))
    for i in range(0, len(x), step):
        part = torch.from_numpy(np.ascontiguousarray(_to_nchw(x[i:i + step], layout)))
        out[i:i + step] = F.resize(part, [image_size, image_size], antialias=True).numpy()
    return out


def _class_names(label: str, npz, n_labels: int) -> tuple[str, ...]:
    if "class_names" not in npz.files:
        return tuple(str(i) for i in range(n_labels))
    try:
        names = npz["class_names"]
    except ValueError:  # object arrays need pickle, which is never enabled for a user's file
        raise DataError(f"{label}: class_names is an object array; save it as np.array(names, dtype=str)") from None
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(f"{label}: class_names has shape {names.shape} and dtype {names.dtype}; give a 1-D array "
                        f"of strings, np.array(names, dtype=str)")
    names = tuple(s.decode() if isinstance(s, bytes) else str(s) for s in names.tolist())
    if len(names) < n_labels:
        raise DataError(f"{label}: class_names lists {len(names)} names but the labels go up to {n_labels - 1}; "
                        f"give one name per class 0..{n_labels - 1}")
    if len(set(names)) != len(names):
        twice = next(s for s in names if names.count(s) > 1)
        raise DataError(f"{label}: class_names lists {twice!r} more than once; each class needs its own name")
    return names


def _load_npz(label: str, path: pathlib.Path, given: str, image_size: int):
    heads = _npz_headers(label, path, given)
    keys = ["train"] + (["test"] if "x_test" in heads else [])
    layouts, chw = {}, {}
    for k in keys:
        (xs, xd), (ys, yd) = heads[f"x_{k}"], heads[f"y_{k}"]
        layouts[k], chw[k] = _layout(label, f"x_{k}", xs, xd)
        _labels_shape(label, f"y_{k}", ys, yd, xs[0])
        if xs[0] == 0:
            raise DataError(f"{label}: x_{k} holds no images; give at least one image per class")
    if "test" in chw:
        (ct, ht, wt), (cs, hs, ws) = chw["train"], chw["test"]
        if ct != cs:
            raise DataError(f"{label}: x_train images have {ct} channel(s) but x_test images {cs}; convert both to "
                            f"the same channel count")
        if (ht, wt) != (hs, ws) and not image_size:
            raise DataError(f"{label}: x_train images are {ht}x{wt} but x_test images {hs}x{ws} (H x W); pass "
                            f"image_size (e.g. image_size={min(ht, wt)}) to resize both to one square size")
    n = sum(heads[f"x_{k}"][0][0] for k in keys)
    c, h, w = chw["train"]
    resizing = bool(image_size) and any(chw[k][1:] != (image_size, image_size) for k in keys)
    if image_size:
        h = w = image_size
    check_memory(label, n, c, h, w, source=sum(int(np.prod(heads[f"x_{k}"][0])) for k in keys), resizing=resizing)
    with np.load(path, allow_pickle=False) as npz:
        ys = {k: npz[f"y_{k}"].reshape(-1).astype(np.int64) for k in keys}  # the cheap checks first
        for k in keys:
            if ys[k].min() < 0:
                raise DataError(f"{label}: y_{k} has label {ys[k].min()}; labels must be integers 0..classes-1")
        n_labels = max(int(y.max()) for y in ys.values()) + 1
        classes = _class_names(label, npz, n_labels)
        if len(classes) < 2:
            raise DataError(f"{label}: every label is 0, so there is only one class; a classifier needs at least "
                            f"two")
        xs = {k: _images_from(npz[f"x_{k}"], layouts[k], image_size) for k in keys}
    if "test" in xs:
        return xs["train"], ys["train"], xs["test"], ys["test"], classes
    rest, test = _hold_out(label, len(ys["train"]))
    return xs["train"][rest], ys["train"][rest], xs["train"][test], ys["train"][test], classes
