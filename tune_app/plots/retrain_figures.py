"""The retrain's figures (PNG only): the test set's confusion matrix and one test image per class with the
model's prediction."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from tune_app.plots.base import DPI, _finish, _mpl
from tune_app.rundir.atomic import atomic_write


def confusion_png(path: Path, confusion: np.ndarray, classes: list[str], title: str) -> Path:
    """The test set's confusion matrix, each row as shares of its true class; counts written in the cells
    when there are few enough classes to read them."""
    k = len(classes)
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    side = min(18.0, max(5.0, 0.45 * k + 2))
    fig, ax = _mpl((side + 1.5, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ticks = np.arange(k) if k <= 40 else np.arange(0, k, max(1, k // 20))
    ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=90 if k > 10 else 45,
                  ha="right" if k <= 10 else "center")
    ax.set_yticks(ticks, [classes[i] for i in ticks])
    if k <= 20:
        for (t, p), count in np.ndenumerate(confusion):
            ax.text(p, t, str(int(count)), ha="center", va="center", fontsize=8,
                    color="white" if shares[t, p] > 0.5 else "black")
    _finish(ax, title, "predicted", "true")
    ax.grid(False)
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI))
    finally:
        plt.close(fig)


def samples_png(path: Path, images: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                classes: list[str]) -> Path:
    """One test image per class (the first of each), titled with its class and the model's prediction
    (green when right, red when wrong)."""
    k = len(classes)
    cols = min(10, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False, layout="constrained")
    for c, ax in enumerate(axes.flat):
        ax.set_axis_off()
        found = np.flatnonzero(labels == c)
        if c >= k or not len(found):
            continue
        i = found[0]
        picture = images[i].transpose(1, 2, 0)
        ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray" if picture.shape[-1] == 1
                  else None, vmin=0, vmax=255, interpolation="nearest")
        right = predicted[i] == c
        ax.set_title(f"{classes[c][:14]}\n-> {classes[predicted[i]][:14]}", fontsize=7,
                     color="green" if right else "red")
    fig.suptitle("One test image per class: true -> predicted")
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI))
    finally:
        plt.close(fig)
