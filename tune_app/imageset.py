"""Images to predict for a submission: a folder of image files or one ``.npy`` array.

``read_images(path, input_shape)`` returns ``(ids, images)`` with images as uint8
(N, C, H, W) like the dataset's. A folder is read in sorted file-name order and each
image's id is its file name without the extension; an ``.npy`` array (N, H, W, C) or
(N, C, H, W) gets ids 0..N-1, its row numbers. ``write_submission`` writes ``id,label``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class ImageSetError(ValueError):
    """One line saying what is wrong with the images to predict and what the model takes."""


def read_images(path, input_shape) -> tuple[list[str], np.ndarray]:
    path = Path(path)
    c, h, w = (int(d) for d in input_shape)
    if path.is_dir():
        return _read_folder(path, c, h, w)
    if path.suffix == ".npy" and path.is_file():
        return _read_npy(path, c, h, w)
    raise ImageSetError(f"--predict {path}: give a folder of image files ({', '.join(IMAGE_SUFFIXES)}) or a .npy "
                        f"array of uint8 images; {'no such file or folder' if not path.exists() else 'neither'}")


def _read_npy(path: Path, c: int, h: int, w: int) -> tuple[list[str], np.ndarray]:
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ImageSetError(f"--predict {path}: not a readable .npy array ({str(e).splitlines()[0]})") from None
    if x.ndim == 3 and c == 1:
        x = x[:, None]
    if x.ndim == 4 and x.shape[1:] == (h, w, c) and x.shape[1:] != (c, h, w):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1:] != (c, h, w):
        raise ImageSetError(f"--predict {path}: images of shape {x.shape[1:]}; the model takes ({c}, {h}, {w}) "
                            f"as (C, H, W) or ({h}, {w}, {c}) as (H, W, C)")
    if x.dtype != np.uint8:
        raise ImageSetError(f"--predict {path}: dtype {x.dtype}; give uint8 pixels 0..255 as the dataset has")
    return [str(i) for i in range(len(x))], np.ascontiguousarray(x)


def _read_folder(path: Path, c: int, h: int, w: int) -> tuple[list[str], np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageSetError(f"--predict {path}: the folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        twice = next(s for s in stems if stems.count(s) > 1)
        raise ImageSetError(f"--predict {path}: two files are named {twice}.*; ids come from file names, so "
                            f"each must be unique")
    out = np.empty((len(files), c, h, w), np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as img:
                a = np.asarray(img.convert("L" if c == 1 else "RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise ImageSetError(f"--predict {path}: {f.name} is not a readable image ({e})") from None
        if a.shape[:2] != (h, w):
            raise ImageSetError(f"--predict {path}: {f.name} is {a.shape[1]}x{a.shape[0]} pixels; the model takes "
                                f"{w}x{h}")
        out[i] = a[None] if c == 1 else a.transpose(2, 0, 1)
    return stems, out


def write_submission(path, ids: list[str], labels: np.ndarray) -> None:
    """``id,label`` rows in the order of ``ids``; labels are class indices."""
    import pandas as pd

    pd.DataFrame({"id": ids, "label": np.asarray(labels, dtype=np.int64)}).to_csv(path, index=False)
