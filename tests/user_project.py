"""A user's project as the tests write it: a model module, a trainable module, and a PNG folder from scikit-learn's
bundled digits (real images, offline). tests/test_own_code.py and tests/test_own_code_cluster.py sweep them."""
from pathlib import Path

import numpy as np

MODELS = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes, input_shape, hidden=32):
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


def tiny(num_classes, input_shape, hidden=8):
    return TinyNet(num_classes, input_shape, hidden)


def no_num_classes(input_shape):
    return TinyNet(10, input_shape)


def not_a_module(num_classes, input_shape):
    return "a string"


def wrong_shape(num_classes, input_shape):
    return TinyNet(num_classes + 1, input_shape)


NOT_CALLABLE = 3
'''

OWN_FIT = '''
"""A trainable of the user's: softmax regression in NumPy."""
import numpy as np

METRICS = ("epoch", "loss", "acc")


def fit(config, data, reporter):
    x, y, xv, yv = data["x"], data["y"], data["xv"], data["yv"]
    state = reporter.restore()
    w = state["w"] if state else np.random.default_rng(config["seed"]).normal(0, 0.01, (x.shape[1], 10))
    for epoch in range((state["epoch"] if state else 0) + 1, config["epochs"] + 1):
        z = x @ w
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w = w - config["lr"] * x.T @ (p - np.eye(10)[y]) / len(y)
        reporter.report({"epoch": epoch, "loss": float(-np.log(p[np.arange(len(y)), y] + 1e-9).mean()),
                         "acc": float(((xv @ w).argmax(1) == yv).mean())}, {"w": w, "epoch": epoch})


def evaluate(state, data):
    return {"test_acc": float(((data["xt"] @ state["w"]).argmax(1) == data["yt"]).mean())}


def two_args(config, data):
    pass
'''


def write_pngs(root: Path, n: int = 300) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images[:n], d.target[:n])):
        folder = root / ("test" if i % 5 == 0 else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{i}.png")
