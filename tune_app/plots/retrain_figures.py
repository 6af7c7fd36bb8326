"""The retrain's figures (PNG only): the test set's confusion matrix and one test image per class with the
model's prediction. Their text is sized to the page: with 10 classes every label is large and apart; with 100
(CIFAR-100) every label is still drawn, smaller, or thinned to every n-th where even that would not fit."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from tune_app.plots.base import DPI, _finish, _mpl
from tune_app.rundir.atomic import atomic_write

MIN_FONT, MAX_FONT = 6.5, 11.0  # points: the smallest text still read at DPI, the largest a label needs
LINE = 1.25  # a line of text's height over its font size


def _font(room: float) -> float:
    """The font size for a line of text with ``room`` points of height."""
    return min(MAX_FONT, room / LINE)


def _class_ticks(fig: plt.Figure, ax, classes: list[str]) -> None:
    """Label both axes with the class names, as large as the rows allow (MAX_FONT at most); where even MIN_FONT
    would not fit, every n-th class. Measured on the drawn axes, so the labels' own room is accounted for."""
    k = len(classes)
    for _ in range(2):  # the labels take room from the matrix: size them, then size them again on what is left
        fig.canvas.draw()
        cell = ax.get_window_extent().height * 72 / fig.dpi / k  # points per row
        font = max(_font(cell), MIN_FONT)
        step = 1 if _font(cell) >= MIN_FONT else math.ceil(MIN_FONT * LINE / cell)
        ticks = np.arange(0, k, step)
        labels = [classes[i] for i in ticks]
        if k <= 12:  # room to slant: easier to read than upright
            ax.set_xticks(ticks, labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=font)
        else:
            ax.set_xticks(ticks, labels, rotation=90, fontsize=font)
        ax.set_yticks(ticks, labels, fontsize=font)


def confusion_figure(confusion: np.ndarray, classes: list[str], title: str) -> plt.Figure:
    """The test set's confusion matrix, each row as shares of its true class; counts in the cells for up to 20
    classes, where they fit. The caller closes the figure."""
    k = len(classes)
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    side = min(18.0, max(6.5, 0.16 * k + 4))  # inches
    fig, ax = _mpl((side + 1.5, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    _finish(ax, title, "predicted", "true")
    ax.title.set_fontsize(13)
    ax.xaxis.label.set_fontsize(12)
    ax.yaxis.label.set_fontsize(12)
    ax.grid(False)
    _class_ticks(fig, ax, classes)
    cell = ax.get_window_extent().height * 72 / fig.dpi / k
    digits = len(str(int(confusion.max()))) if confusion.size else 1
    count_font = min(MAX_FONT - 1, 0.8 * cell / (0.62 * max(digits, 2)))  # a digit is about 0.62 em wide
    if k <= 20 and count_font >= MIN_FONT:
        for (t, p), count in np.ndenumerate(confusion):
            ax.text(p, t, str(int(count)), ha="center", va="center", fontsize=count_font,
                    color="white" if shares[t, p] > 0.5 else "black")
    return fig


def confusion_png(path: Path, confusion: np.ndarray, classes: list[str], title: str) -> Path:
    """Write confusion_figure as a PNG."""
    fig = confusion_figure(confusion, classes, title)
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI))
    finally:
        plt.close(fig)


SAMPLE_COLUMNS = 10
SAMPLE_FONT = 9.0  # points
SAMPLE_CHARS = 16  # a class name's characters that fit a panel's width at SAMPLE_FONT


def _short(name: str) -> str:
    return name if len(name) <= SAMPLE_CHARS else name[:SAMPLE_CHARS - 1] + "…"


def samples_figure(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                   classes: list[str]) -> plt.Figure:
    """One test image per class (the first of each), titled with its class and the model's prediction (green
    when right, red when wrong); a squarish grid, at most SAMPLE_COLUMNS to a row. The caller closes the figure."""
    k = len(classes)
    cols = min(SAMPLE_COLUMNS, max(5, math.ceil(math.sqrt(k))), k)  # 10 classes in two rows, 100 in ten
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 2.1 * rows + 0.5), dpi=DPI, squeeze=False,
                             layout="constrained")
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
        ax.set_title(f"{_short(classes[c])}\n→ {_short(classes[predicted[i]])}", fontsize=SAMPLE_FONT,
                     color="green" if right else "red")
    fig.suptitle("One test image per class: true → predicted", fontsize=13)
    return fig


def samples_png(path: Path, images: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                classes: list[str]) -> Path:
    """Write samples_figure as a PNG."""
    fig = samples_figure(images, labels, predicted, classes)
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI))
    finally:
        plt.close(fig)
