"""The optimizers of the ``numpy_mlp`` trainable, in NumPy alone: sgd, momentum, nag, rmsprop, adam and nadam,
one small class each behind one ``update`` method, registered by name in OPTIMIZERS (the ``optimizer`` key's
choices). Adding one is a class and its registry line in this file (docs/studies.md shows AdaMax).
"""
from __future__ import annotations

import math

import numpy as np

from trainables.registry import Registry

DTYPE = np.float32  # what numpy_mlp trains in, so the dtype of the optimizers' state unless one is given


class Optimizer:
    """Updates parameters in place from their gradients (``step`` may overwrite the gradients).

    ``slots`` name the per-parameter state arrays (zeros at first); ``t`` counts steps.
    Hyperparameters are read from ``cfg`` at every step, so a changed ``cfg["lr"]`` (PBT)
    applies from the next step on. Weight decay is in the gradient already (see
    ``numpy_mlp.loss_and_grads``), so no optimizer applies it."""

    slots: tuple[str, ...] = ()

    def __init__(self, shapes: list[tuple[int, ...]], cfg: dict, dtype=DTYPE) -> None:
        self.cfg = cfg
        self.t = 0
        self.state = {slot: [np.zeros(shape, dtype) for shape in shapes] for slot in self.slots}

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.t += 1
        for i, (w, g) in enumerate(zip(params, grads)):
            self.update(w, g, *(self.state[slot][i] for slot in self.slots))

    def update(self, w: np.ndarray, g: np.ndarray, *slots: np.ndarray) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"t": self.t, **{slot: [a.copy() for a in arrays] for slot, arrays in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        for slot in self.slots:
            for a, saved in zip(self.state[slot], state[slot], strict=True):
                a[...] = saved


OPTIMIZERS: Registry = Registry("optimizer")


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """w -= lr * g."""

    def update(self, w, g):
        g *= self.cfg["lr"]
        w -= g


@OPTIMIZERS.register("momentum")
class Momentum(Optimizer):
    """u = momentum * u + g; w -= lr * u (lr outside the velocity, as in PyTorch)."""

    slots = ("u",)

    def update(self, w, g, u):
        u *= self.cfg["momentum"]
        u += g
        w -= np.multiply(u, self.cfg["lr"], out=g)


@OPTIMIZERS.register("nag")
class NAG(Optimizer):
    """Nesterov momentum in its look-ahead form (Bengio et al. 2013): the stored w is the
    look-ahead point, where g is taken; u = m * u + g; w -= lr * (g + m * u)."""

    slots = ("u",)

    def update(self, w, g, u):
        lr, m = self.cfg["lr"], self.cfg["momentum"]
        u *= m
        u += g
        g *= lr
        w -= g
        w -= np.multiply(u, lr * m, out=g)


@OPTIMIZERS.register("rmsprop")
class RMSProp(Optimizer):
    """v = beta * v + (1 - beta) * g^2; w -= lr * g / (sqrt(v) + epsilon)."""

    slots = ("v",)

    def update(self, w, g, v):
        beta = self.cfg["beta"]
        v *= beta
        v += (1 - beta) * (g * g)
        g /= np.sqrt(v) + self.cfg["epsilon"]
        g *= self.cfg["lr"]
        w -= g


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; m^ = m / (1 - b1^t); v^ = v / (1 - b2^t);
    w -= lr * m^ / (sqrt(v^) + epsilon)."""

    slots = ("m", "v")

    def update(self, w, g, m, v):
        b1, b2, t = self.cfg["beta1"], self.cfg["beta2"], self.t
        v *= b2
        v += (1 - b2) * (g * g)
        m *= b1
        m += (1 - b1) * g
        denom = np.sqrt(v)
        denom *= 1 / math.sqrt(1 - b2 ** t)
        denom += self.cfg["epsilon"]
        np.divide(m, denom, out=g)
        g *= self.cfg["lr"] / (1 - b1 ** t)
        w -= g


@OPTIMIZERS.register("nadam")
class Nadam(Optimizer):
    """Adam with Nesterov momentum (Dozat 2016, constant b1): m and v as in Adam, then
    w -= lr * (b1 m / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + epsilon)."""

    slots = ("m", "v")

    def update(self, w, g, m, v):
        b1, b2, t = self.cfg["beta1"], self.cfg["beta2"], self.t
        v *= b2
        v += (1 - b2) * (g * g)
        g *= 1 - b1
        m *= b1
        m += g
        g *= 1 / (1 - b1 ** t)
        g += m * (b1 / (1 - b1 ** (t + 1)))
        denom = np.sqrt(v)
        denom *= 1 / math.sqrt(1 - b2 ** t)
        denom += self.cfg["epsilon"]
        g /= denom
        g *= self.cfg["lr"]
        w -= g
