"""The ``numpy_mlp`` trainable: a feed-forward network written in NumPy alone (study 3).

Forward and backward passes, losses, initialisations and optimizers (those in
``trainables.numpy_optimizers``) are spelled out by hand: no autograd, no framework
layers. ``fit(config, data, reporter)`` keeps image_classifier's contract: the same
METRICS every epoch, the state to continue from with every report, exact resume, ``diverged`` on a
NaN/inf loss (or one above ``diverge_loss``).

Parameters are a flat list ``[W1, b1, W2, b2, ...]``; a batch is a matrix of rows, so a
layer is ``x @ W + b`` with W of shape (fan_in, fan_out). Hidden layers share one width
and one activation; the last layer gives logits, made class probabilities by a softmax.
Training runs in float32; every function takes its dtype from its inputs (or a ``dtype``
argument), so the tests check gradients in float64.

Choice names (activation, weight_init, loss, optimizer) are matched case-insensitively
("ReLU" is relu) by ``NameParam``, so search spaces, ``--set`` and ``fit`` all accept them.
"""
from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainables.data import DATASETS
from trainables.numpy_optimizers import DTYPE, OPTIMIZERS, Optimizer  # DTYPE: what fit trains in
from trainables.params import Param, resolve
from trainables.registry import Registry

EVAL_BATCH = 1024  # examples per evaluation step


class NameParam(Param):
    """A string choice matched case-insensitively: the value is lowercased before the check."""

    def check(self, key: str, value: Any) -> Any:
        return super().check(key, value.lower() if isinstance(value, str) else value)


class WidthParam(Param):
    """One width for every hidden layer, or a list of widths, one per layer (study 3's best: [2048, 1024])."""

    def check(self, key: str, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"{key}=[]: give one width, or one width per hidden layer")
            return [super(WidthParam, self).check(key, v) for v in value]
        return super().check(key, value)


# ---------------------------------------------------------------- activations

@dataclass(frozen=True)
class Activation:
    """``forward(z)`` may overwrite z; ``derivative(a)`` is f'(z) written through a = f(z)."""

    forward: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray], np.ndarray | float]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z), with z clipped to +-500 so that e^-z stays finite in float64
    (in float32 it may still overflow to inf, which gives the right limit 0)."""
    np.clip(z, -500, 500, out=z)
    with np.errstate(over="ignore"):
        np.exp(np.negative(z, out=z), out=z)
    z += 1
    return np.reciprocal(z, out=z)


def _relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0, out=z)


ACTIVATIONS: Registry = Registry("activation")
ACTIVATIONS.register("identity")(Activation(lambda z: z, lambda a: 1.0))
ACTIVATIONS.register("sigmoid")(Activation(_sigmoid, lambda a: a * (1 - a)))
ACTIVATIONS.register("tanh")(Activation(lambda z: np.tanh(z, out=z), lambda a: 1 - a * a))
ACTIVATIONS.register("relu")(Activation(_relu, lambda a: a > 0))

# ---------------------------------------------------------------- initialisations

INITS: Registry = Registry("weight init")  # (fan_in, fan_out, rng) -> float64 weights


@INITS.register("random")
def init_random(fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """N(0, 0.01^2)."""
    return 0.01 * rng.standard_normal((fan_in, fan_out))


@INITS.register("xavier")
def init_xavier(fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """Glorot normal: N(0, 2 / (fan_in + fan_out))."""
    return math.sqrt(2 / (fan_in + fan_out)) * rng.standard_normal((fan_in, fan_out))


@INITS.register("he")
def init_he(fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """He normal: N(0, 2 / fan_in)."""
    return math.sqrt(2 / fan_in) * rng.standard_normal((fan_in, fan_out))


# ---------------------------------------------------------------- losses

LOSSES: Registry = Registry("loss")  # (logits, labels) -> (mean loss, gradient of it w.r.t. the logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@LOSSES.register("cross_entropy")
def cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mean_n [logsumexp(z_n) - z_n,y_n], shifted by max(z_n) so nothing overflows;
    gradient (softmax(z) - onehot(y)) / N."""
    rows = np.arange(len(y))
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=1, keepdims=True)
    loss = np.mean(np.log(total[:, 0]) - shifted[rows, y])
    e /= total
    e[rows, y] -= 1
    e /= len(y)
    return loss, e


@LOSSES.register("mean_squared_error")
def mean_squared_error(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mean_n sum_k (p_nk - t_nk)^2 with p = softmax(z), t = onehot(y); the gradient
    dL/dp = 2 (p - t) / N goes back through the softmax Jacobian: dz = p * (dp - <dp, p>)."""
    p = softmax(logits)
    diff = p.copy()
    diff[np.arange(len(y)), y] -= 1
    loss = np.mean(np.sum(diff * diff, axis=1))
    dp = diff * (2 / len(y))
    return loss, p * (dp - np.sum(dp * p, axis=1, keepdims=True))


# ---------------------------------------------------------------- the network

def widths(num_layers: int, hidden_size: int | list[int]) -> list[int]:
    """Units per hidden layer; a list of widths must have one per layer."""
    if isinstance(hidden_size, list):
        if len(hidden_size) != num_layers:
            raise ValueError(f"hidden_size={hidden_size} lists {len(hidden_size)} widths but num_layers={num_layers}; "
                             f"give one width per hidden layer (num_layers={len(hidden_size)})")
        return list(hidden_size)
    return [hidden_size] * num_layers


def layer_sizes(input_dim: int, num_layers: int, hidden_size: int | list[int], num_classes: int) -> list[int]:
    return [input_dim, *widths(num_layers, hidden_size), num_classes]


def param_count(input_dim: int, num_layers: int, hidden_size: int | list[int], num_classes: int) -> int:
    """Weights and biases of the network."""
    sizes = layer_sizes(input_dim, num_layers, hidden_size, num_classes)
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(sizes, sizes[1:]))


def init_params(sizes: list[int], weight_init: str, rng: np.random.Generator, dtype=DTYPE) -> list[np.ndarray]:
    """``[W1, b1, W2, b2, ...]``: weights from ``weight_init`` (drawn in float64), biases zero."""
    params = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        params += [INITS.get(weight_init)(fan_in, fan_out, rng).astype(dtype), np.zeros(fan_out, dtype)]
    return params


def forward(params: list[np.ndarray], x: np.ndarray, activation: str) -> list[np.ndarray]:
    """Every layer's output, input first, logits last."""
    act = ACTIVATIONS.get(activation)
    outs = [x]
    for i in range(0, len(params), 2):
        z = outs[-1] @ params[i]
        z += params[i + 1]
        outs.append(act.forward(z) if i + 2 < len(params) else z)
    return outs


def loss_and_grads(params: list[np.ndarray], x: np.ndarray, y: np.ndarray, activation: str, loss: str,
                   weight_decay: float = 0.0) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(objective, its gradients in ``params``' order, logits) for one batch.

    The objective is the mean loss plus the L2 penalty ``weight_decay / 2 * sum ||W||^2``
    over weights (not biases), so ``weight_decay * W`` is added to each weight's gradient."""
    act = ACTIVATIONS.get(activation)
    outs = forward(params, x, activation)
    value, delta = LOSSES.get(loss)(outs[-1], y)
    grads: list[np.ndarray] = [None] * len(params)  # type: ignore[list-item]
    for i in range(len(params) - 2, -1, -2):
        grads[i] = outs[i // 2].T @ delta
        grads[i + 1] = delta.sum(axis=0)
        if i:  # no gradient for the input
            delta = delta @ params[i].T
            delta *= act.derivative(outs[i // 2])
    if weight_decay:
        for i in range(0, len(params), 2):
            value = value + weight_decay / 2 * np.vdot(params[i], params[i])
            grads[i] += weight_decay * params[i]
    return value, grads, outs[-1]


# ---------------------------------------------------------------- the trainable

ARCHITECTURE = ("dataset", "num_layers", "hidden_size")  # what a checkpoint's weights are tied to

PARAMS: dict[str, Param] = {
    # data (fixed for a sweep: prepared once by the driver)
    "dataset": Param("fashion_mnist", str, "dataset name", choices=lambda: list(DATASETS), data=True),
    "val_fraction": Param(0.1, float, "share of the training set held out", low=0.0, high=1.0, data=True),
    "split_seed": Param(0, int, "seed of the train/validation split", low=0, data=True),
    # network
    "num_layers": Param(3, int, "hidden layers, >= 1", low=1),
    "hidden_size": WidthParam(128, int, "units per hidden layer, >= 1 (a list: one width per layer)", low=1),
    "activation": NameParam("tanh", str, "hidden-layer activation", choices=ACTIVATIONS.names),
    "weight_init": NameParam("xavier", str, "weight initialisation", choices=INITS.names),
    "loss": NameParam("cross_entropy", str, "training loss", choices=LOSSES.names),
    # optimisation
    "optimizer": NameParam("nadam", str, "optimizer name", choices=OPTIMIZERS.names),
    "lr": Param(1e-3, float, "learning rate per step, > 0", low=1e-12),
    "momentum": Param(0.9, float, "momentum/nag momentum in [0, 1)", low=0.0, high=1.0),
    "beta": Param(0.9, float, "rmsprop's decay of the squared gradients in [0, 1)", low=0.0, high=1.0),
    "beta1": Param(0.9, float, "adam/nadam first-moment decay in [0, 1)", low=0.0, high=1.0),
    "beta2": Param(0.999, float, "adam/nadam second-moment decay in [0, 1)", low=0.0, high=1.0),
    "epsilon": Param(1e-8, float, "rmsprop/adam/nadam denominator guard, > 0", low=1e-30),
    "weight_decay": Param(0.0, float, "L2 weight decay on weights (not biases), >= 0", low=0.0),
    "batch_size": Param(64, int, "examples per step, >= 1", low=1),
    "epochs": Param(10, int, "epochs to train, >= 1", low=1),
    "diverge_loss": Param(0.0, float, "a mean training loss above this ends the trial as diverged (as NaN/inf "
                          "does); 0 = NaN/inf only", low=0.0),
    "max_epochs": Param(0, int, "cap on epochs for the whole sweep; 0 = no cap", low=0),
    # run
    "seed": Param(0, int, "seed of init and shuffling"),
}

METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
           "epoch_time_s", "samples_per_s", "peak_mem_mb", "params",
           "cpu_s",  # process CPU seconds of the epoch (training and evaluation)
           "samples_seen")  # training samples since the trial began, over resumes (PBT: from the donor's weights)


COST_KEYS = ("dataset", "num_layers", "hidden_size", "batch_size")  # what --plan probes per distinct value
WEIGHT_KEYS = ("params",)  # the checkpoint entries that hold the trained weights (a model file keeps these)


def schedule_spans_run(config: dict) -> bool:
    """A constant learning rate: epoch K means the same whatever the planned length."""
    return False


def run_name(config: dict) -> str:
    """``hl_3_bs_16_ac_tanh_sz_128_o_nadam_lr_0.001``: study 3's prefix, then width(s), optimizer, lr."""
    c = {k: config.get(k, p.default) for k, p in PARAMS.items()}
    size = "-".join(map(str, c["hidden_size"])) if isinstance(c["hidden_size"], list) else c["hidden_size"]
    return (f"hl_{c['num_layers']}_bs_{c['batch_size']}_ac_{str(c['activation']).lower()}"
            f"_sz_{size}_o_{str(c['optimizer']).lower()}_lr_{c['lr']:.3g}")


class Inputs:
    """Turns uint8 images (N, C, H, W) into flattened rows normalised with the dataset's
    per-channel mean/std (on the 0..1 scale), like image_classifier."""

    def __init__(self, data: dict, dtype=DTYPE) -> None:
        pixels = math.prod(data["input_shape"][1:])
        mean, std = np.repeat(data["mean"], pixels), np.repeat(data["std"], pixels)
        self.scale = (1 / (255 * std)).astype(dtype)
        self.shift = (mean / std).astype(dtype)

    def __call__(self, x_uint8: np.ndarray) -> np.ndarray:
        x = x_uint8.reshape(len(x_uint8), -1) * self.scale
        x -= self.shift
        return x


def peak_memory_mb() -> float:
    """The process's peak resident memory (as image_classifier reports on a CPU)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _evaluate(params, activation: str, loss: str, inputs: Inputs, x_uint8, y) -> tuple[float, float]:
    """(mean loss, accuracy); NaN for both on an empty split (training on train+val)."""
    if len(y) == 0:
        return math.nan, math.nan
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), EVAL_BATCH):
        logits = forward(params, inputs(x_uint8[start:start + EVAL_BATCH]), activation)[-1]
        yb = y[start:start + EVAL_BATCH]
        loss_sum += float(LOSSES.get(loss)(logits, yb)[0]) * len(yb)
        correct += int((logits.argmax(1) == yb).sum())
    return loss_sum / len(y), correct / len(y)


def evaluate(state: dict, x_uint8: np.ndarray, y: np.ndarray, data: dict) -> tuple[float, float]:
    """(mean loss without the L2 term, accuracy) of a checkpoint ``state`` on uint8 images and labels;
    ``data`` gives mean/std and the input shape (``Dataset.sweep_view()``)."""
    cfg = state["config"]
    with np.errstate(all="ignore"):
        return _evaluate(state["params"], cfg["activation"], cfg["loss"], Inputs(data), x_uint8, y)


def check_weights(state: dict, data: dict) -> None:
    """One-line ValueError when the weights of ``state`` do not fit its configured network on ``data``."""
    cfg = state["config"]
    sizes = layer_sizes(math.prod(data["input_shape"]), cfg["num_layers"], cfg["hidden_size"], data["num_classes"])
    expected = [shape for fan_in, fan_out in zip(sizes, sizes[1:]) for shape in ((fan_in, fan_out), (fan_out,))]
    found = [tuple(np.shape(p)) for p in state["params"]]
    if found != expected:
        i = next((i for i, (f, e) in enumerate(zip(found, expected)) if f != e), min(len(found), len(expected)))
        what = f"entry {i} has shape {found[i]}, expected {expected[i]}" if i < min(len(found), len(expected)) \
            else f"{len(found)} arrays, expected {len(expected)}"
        raise ValueError(f"the weights do not fit {cfg['num_layers']} hidden layers of {cfg['hidden_size']} units "
                         f"for input {tuple(data['input_shape'])} and {data['num_classes']} classes: {what}")


def predict(state: dict, x_uint8: np.ndarray, data: dict) -> np.ndarray:
    """Class indices for uint8 images (N, C, H, W) from a checkpoint ``state`` as ``fit`` reports it."""
    inputs, activation = Inputs(data), state["config"]["activation"]
    batches = (inputs(x_uint8[s:s + EVAL_BATCH]) for s in range(0, len(x_uint8), EVAL_BATCH))
    with np.errstate(all="ignore"):
        return np.concatenate([np.empty(0, np.int64)] + [forward(state["params"], x, activation)[-1].argmax(1)
                                                         for x in batches])


def train_epoch(params, opt: Optimizer, inputs: Inputs, x_uint8, y, cfg: dict, rng: np.random.Generator):
    """One pass over a fresh permutation; returns (mean objective, accuracy, examples seen)."""
    perm = rng.permutation(len(y))
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), cfg["batch_size"]):
        idx = perm[start:start + cfg["batch_size"]]
        yb = y[idx]
        loss, grads, logits = loss_and_grads(params, inputs(x_uint8[idx]), yb, cfg["activation"], cfg["loss"],
                                             cfg["weight_decay"])
        opt.step(params, grads)
        loss_sum += float(loss) * len(idx)
        correct += int((logits.argmax(1) == yb).sum())
    return loss_sum / len(y), correct / len(y), len(y)


def fit(config: dict, data: dict, reporter) -> None:
    """Train one configuration, reporting METRICS and the state to continue from every epoch.

    ``train_loss`` is the objective minimised (mean loss + L2 term); ``val_loss`` is the
    configured loss alone. A NaN/inf training loss (or one above ``diverge_loss``) ends the
    trial after reporting that epoch with ``diverged: True`` and ``val_acc`` 0.0, so searchers rank it last."""
    cfg = resolve(PARAMS, config)
    n_train = len(data["y_train"])
    if cfg["batch_size"] > n_train:
        raise ValueError(f"batch_size={cfg['batch_size']} is larger than the training set ({n_train} examples "
                         f"of {data['name']}); choose batch_size <= {n_train}")
    epochs = min(cfg["epochs"], cfg["max_epochs"] or cfg["epochs"])
    rng = np.random.default_rng(cfg["seed"] % 2**32)
    input_dim = math.prod(data["input_shape"])
    sizes = layer_sizes(input_dim, cfg["num_layers"], cfg["hidden_size"], data["num_classes"])
    params = init_params(sizes, cfg["weight_init"], rng)
    opt = OPTIMIZERS.get(cfg["optimizer"])([p.shape for p in params], cfg)
    inputs = Inputs(data)
    x_train, x_val = (data[k].reshape(len(data[k]), -1) for k in ("x_train", "x_val"))

    first_epoch, samples_seen = 1, 0
    state = reporter.restore()
    if state is not None:
        changed = [k for k in ARCHITECTURE if state["config"][k] != cfg[k]]
        if changed:
            raise ValueError(f"checkpoint has {changed[0]}={state['config'][changed[0]]!r}, config asks for "
                             f"{cfg[changed[0]]!r}; a restored trial cannot change {', '.join(ARCHITECTURE)}")
        params = [np.array(p, DTYPE) for p in state["params"]]
        if state["config"]["optimizer"] == cfg["optimizer"]:  # PBT may switch optimizer: then start afresh
            opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        first_epoch = state["epoch"] + 1
        # A checkpoint from before samples_seen was kept: every epoch went over the whole training set.
        samples_seen = state.get("samples_seen", state["epoch"] * n_train)

    for epoch in range(first_epoch, epochs + 1):
        t0, cpu0 = time.perf_counter(), time.process_time()
        with np.errstate(all="ignore"):  # overflow is detected below, as divergence
            train_loss, train_acc, seen = train_epoch(params, opt, inputs, x_train, data["y_train"], cfg, rng)
            train_s = time.perf_counter() - t0
            samples_seen += seen
            diverged = not math.isfinite(train_loss) or bool(cfg["diverge_loss"] and train_loss > cfg["diverge_loss"])
            if diverged:
                val_loss, val_acc = float("nan"), 0.0
            else:
                val_loss, val_acc = _evaluate(params, cfg["activation"], cfg["loss"], inputs, x_val, data["y_val"])
                diverged = len(x_val) > 0 and not math.isfinite(val_loss)
        metrics = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": 0.0 if diverged else train_acc,
            "val_loss": val_loss, "val_acc": 0.0 if diverged else val_acc, "lr": cfg["lr"],
            "epoch_time_s": time.perf_counter() - t0, "samples_per_s": seen / train_s,
            "peak_mem_mb": peak_memory_mb(), "params": param_count(input_dim, cfg["num_layers"],
                                                                   cfg["hidden_size"], data["num_classes"]),
            "cpu_s": time.process_time() - cpu0, "samples_seen": samples_seen, "diverged": diverged,
        }
        state = {"epoch": epoch, "config": cfg, "params": [p.copy() for p in params],
                 "optimizer": opt.state_dict(), "rng": rng.bit_generator.state, "samples_seen": samples_seen}
        reporter.report(metrics, state)
        if diverged:
            return
