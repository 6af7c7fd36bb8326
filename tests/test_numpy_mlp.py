"""The numpy_mlp trainable: gradients, optimizers, numerical stability, fit, resume, bad input."""
import itertools
import math
import warnings

import numpy as np
import pytest

from trainables import image_classifier as ic
from trainables import numpy_mlp as nm
from trainables import numpy_optimizers
from trainables.reporting import LocalReporter, StopTraining

BASE = {"dataset": "digits", "num_layers": 2, "hidden_size": 32, "batch_size": 32, "lr": 3e-3, "epochs": 4,
        "seed": 1}

# ---------------------------------------------------------------- gradients

# The numerical side runs in extended precision: at "random" init (std 0.01) three hidden
# layers deep some gradients are ~1e-10, below what float64 differences of a loss ~1 resolve.
EXTENDED = np.longdouble
H = 3e-5  # finite-difference step
TINY = 1e-8  # entries smaller than this are held to |a - n| <= 1e-6 * TINY


def numerical_grads(params, x, y, activation, loss, weight_decay):
    """Central differences (f(w + h) - f(w - h)) / 2h of the objective, one entry at a time."""
    ext = [p.astype(EXTENDED) for p in params]
    x = x.astype(EXTENDED)
    grads = []
    for p in ext:
        g = np.zeros(p.shape)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + H
            up = nm.loss_and_grads(ext, x, y, activation, loss, weight_decay)[0]
            p[i] = old - H
            down = nm.loss_and_grads(ext, x, y, activation, loss, weight_decay)[0]
            p[i] = old
            g[i] = (up - down) / (2 * H)
        grads.append(g)
    return grads


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="needs an extended-precision long double")
@pytest.mark.parametrize("activation, loss", list(itertools.product(nm.ACTIVATIONS.names(), nm.LOSSES.names())))
def test_gradients_match_central_differences(activation, loss):
    """Every weight and bias, for every init and 1-3 hidden layers of equal or unequal widths, in float64;
    weight decay at depth 2.
    Biases are drawn N(0, 0.5^2) instead of zero, so that no ReLU sits within H of its kink."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 5)), np.array([0, 1, 2, 0, 1, 2])
    for init, depth in itertools.product(nm.INITS.names(), (1, 2, 3)):
        width = [6, 3][:depth] if depth < 3 else 4  # one width per layer, and a shared one
        params = nm.init_params(nm.layer_sizes(5, depth, width, 3), init, rng, np.float64)
        for b in params[1::2]:
            b[:] = rng.normal(0, 0.5, b.shape)
        weight_decay = 0.1 if depth == 2 else 0.0
        _, grads, _ = nm.loss_and_grads(params, x, y, activation, loss, weight_decay)
        numerical = numerical_grads(params, x, y, activation, loss, weight_decay)
        for k, (a, n) in enumerate(zip(grads, numerical)):
            assert a.dtype == np.float64 and a.shape == params[k].shape
            rel = np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), TINY)
            assert rel.max() < 1e-6, (init, depth, k, a, n)


def test_weight_decay_is_in_the_objective_and_the_weight_gradients_only():
    rng = np.random.default_rng(3)
    params = nm.init_params([5, 4, 3], "he", rng, np.float64)
    x, y = rng.standard_normal((6, 5)), np.array([0, 1, 2, 0, 1, 2])
    plain, g0, _ = nm.loss_and_grads(params, x, y, "tanh", "cross_entropy")
    decayed, g1, _ = nm.loss_and_grads(params, x, y, "tanh", "cross_entropy", weight_decay=0.3)
    assert decayed - plain == pytest.approx(0.15 * sum(np.sum(w * w) for w in params[0::2]), rel=1e-12)
    for k in (0, 2):
        np.testing.assert_allclose(g1[k] - g0[k], 0.3 * params[k], rtol=1e-12)
    for k in (1, 3):
        np.testing.assert_array_equal(g1[k], g0[k])


@pytest.mark.parametrize("init, std", [("random", lambda i, o: 0.01), ("xavier", lambda i, o: math.sqrt(2 / (i + o))),
                                       ("he", lambda i, o: math.sqrt(2 / i))])
def test_init_scale_and_zero_biases(init, std):
    w, b = nm.init_params([400, 300], init, np.random.default_rng(0))
    assert w.dtype == np.float32 and w.shape == (400, 300)
    assert w.std() == pytest.approx(std(400, 300), rel=0.02) and abs(w.mean()) < 0.05 * std(400, 300)
    np.testing.assert_array_equal(b, np.zeros(300))


def test_param_count():
    assert nm.param_count(784, 1, 16, 10) == 784 * 16 + 16 + 16 * 10 + 10
    assert nm.param_count(5, 3, 4, 3) == (5 * 4 + 4) + 2 * (4 * 4 + 4) + (4 * 3 + 3)
    params = nm.init_params(nm.layer_sizes(64, 3, 7, 10), "xavier", np.random.default_rng(0))
    assert sum(p.size for p in params) == nm.param_count(64, 3, 7, 10)
    # study 3's best: 784 -> 2048 -> 1024 -> 10
    assert nm.param_count(784, 2, [2048, 1024], 10) == 785 * 2048 + 2049 * 1024 + 1025 * 10 == 3_716_106
    assert [p.shape for p in nm.init_params(nm.layer_sizes(5, 2, [4, 3], 2), "he", np.random.default_rng(0))] == [
        (5, 4), (4,), (4, 3), (3,), (3, 2), (2,)]


def test_a_list_of_widths_needs_one_per_layer(digits):
    with pytest.raises(ValueError, match=r"^hidden_size=\[64, 32\] lists 2 widths but num_layers=3; give one width "
                                         r"per hidden layer \(num_layers=2\)$"):
        run({**BASE, "num_layers": 3, "hidden_size": [64, 32]}, digits.sweep_view())
    reporter = run({**BASE, "hidden_size": [48, 16], "epochs": 1}, digits.sweep_view())
    assert reporter.history[0]["params"] == nm.param_count(64, 2, [48, 16], 10) == 65 * 48 + 49 * 16 + 17 * 10
    assert [p.shape for p in reporter.state["params"][::2]] == [(64, 48), (48, 16), (16, 10)]
    assert nm.run_name(reporter.state["config"]).startswith("hl_2_bs_32_ac_tanh_sz_48-16_")


# ---------------------------------------------------------------- optimizers

W0 = np.array([1.0, -2.0])
GRADS = [np.array([0.5, -1.0]), np.array([0.1, 0.3])]
HYPER = {"lr": 0.1, "momentum": 0.9, "beta": 0.8, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}


def textbook(name, w, grads, lr=0.1, m=0.9, beta=0.8, b1=0.9, b2=0.999, eps=1e-8):
    """The update rules written out over plain floats, one coordinate at a time."""
    w, u, v, mom = list(w), [0.0] * len(w), [0.0] * len(w), [0.0] * len(w)
    for t, g in enumerate(grads, start=1):
        for i, gi in enumerate(g):
            if name == "sgd":
                w[i] -= lr * gi
            elif name == "momentum":
                u[i] = m * u[i] + gi
                w[i] -= lr * u[i]
            elif name == "nag":
                u[i] = m * u[i] + gi
                w[i] -= lr * (gi + m * u[i])
            elif name == "rmsprop":
                v[i] = beta * v[i] + (1 - beta) * gi ** 2
                w[i] -= lr * gi / (math.sqrt(v[i]) + eps)
            else:
                mom[i] = b1 * mom[i] + (1 - b1) * gi
                v[i] = b2 * v[i] + (1 - b2) * gi ** 2
                v_hat = v[i] / (1 - b2 ** t)
                if name == "adam":
                    m_hat = mom[i] / (1 - b1 ** t)
                else:  # nadam
                    m_hat = b1 * mom[i] / (1 - b1 ** (t + 1)) + (1 - b1) * gi / (1 - b1 ** t)
                w[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return w


@pytest.mark.parametrize("name", numpy_optimizers.OPTIMIZERS.names())
def test_two_steps_follow_the_textbook(name):
    w = W0.copy()
    opt = numpy_optimizers.OPTIMIZERS.get(name)([w.shape], dict(HYPER), np.float64)
    for g in GRADS:
        opt.step([w], [g.copy()])
    expected = textbook(name, W0, GRADS)
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    assert not np.allclose(w, W0)  # it moved


def test_the_first_adam_step_is_lr_times_the_gradient_sign():
    # a hand-checkable case: m^ = g and v^ = g^2 after one step, so w -= lr * g / (|g| + eps)
    w = W0.copy()
    numpy_optimizers.OPTIMIZERS.get("adam")([w.shape], dict(HYPER), np.float64).step([w], [GRADS[0].copy()])
    np.testing.assert_allclose(w, W0 - 0.1 * np.sign(GRADS[0]), rtol=1e-7)


@pytest.mark.parametrize("name", numpy_optimizers.OPTIMIZERS.names())
def test_optimizer_state_round_trips(name):
    a, b = W0.copy(), W0.copy()
    first = numpy_optimizers.OPTIMIZERS.get(name)([a.shape], dict(HYPER), np.float64)
    first.step([a], [GRADS[0].copy()])
    second = numpy_optimizers.OPTIMIZERS.get(name)([b.shape], dict(HYPER), np.float64)
    second.load_state_dict(first.state_dict())
    b[:] = a
    first.step([a], [GRADS[1].copy()])
    second.step([b], [GRADS[1].copy()])
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- numerical stability

@pytest.mark.parametrize("loss", nm.LOSSES.names())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_stay_finite_on_huge_logits(loss, dtype):
    logits = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = nm.LOSSES.get(loss)(logits, np.array([0, 0]))
    assert np.isfinite(value) and np.isfinite(grad).all() and grad.dtype == dtype
    if loss == "cross_entropy":  # one right (loss 0), one wrong by 2000
        assert value == pytest.approx(1000.0)
        np.testing.assert_allclose(grad, [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-7)
    else:  # p = onehot of the largest logit: 0 and 2 squared errors
        assert value == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_saturates_without_overflow(dtype):
    act = nm.ACTIVATIONS.get("sigmoid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = act.forward(np.array([-1000.0, 0.0, 1000.0], dtype))
    np.testing.assert_allclose(a, [0.0, 0.5, 1.0], rtol=0, atol=1e-30)  # e^-500 at the clip in float64
    np.testing.assert_allclose(act.derivative(a), [0.0, 0.25, 0.0], rtol=0, atol=1e-30)


# ---------------------------------------------------------------- fit

def run(config, data, reporter=None):
    reporter = reporter or LocalReporter()
    nm.fit(config, data, reporter)
    return reporter


def strip(history):
    """Everything but the timings and memory, which vary from run to run."""
    return [{k: v for k, v in e.items() if k not in ("epoch_time_s", "samples_per_s", "peak_mem_mb", "cpu_s")}
            for e in history]


def test_learns_digits_and_reports_every_metric(digits):
    data = digits.sweep_view()
    reporter = run(BASE, data)
    history = reporter.history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    for h in history:
        assert set(h) == {*ic.METRICS, "diverged"} and set(nm.METRICS) == set(ic.METRICS)
        assert 0 <= h["train_acc"] <= 1 and 0 <= h["val_acc"] <= 1 and h["lr"] == 3e-3
        assert h["params"] == nm.param_count(64, 2, 32, 10) == 3466
        assert h["samples_per_s"] > 0 and h["epoch_time_s"] > 0 and h["peak_mem_mb"] > 0
        assert h["cpu_s"] > 0 and h["samples_seen"] == h["epoch"] * len(data["y_train"])
        assert h["diverged"] is False
    assert history[-1]["val_acc"] > 0.85  # chance is 0.10
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 3
    # the checkpoint predicts and evaluates as fit measured
    state = reporter.state
    assert state["epoch"] == 4 and all(p.dtype == np.float32 for p in state["params"])
    predicted = nm.predict(state, data["x_val"], data)
    assert (predicted == data["y_val"]).mean() == history[-1]["val_acc"]
    assert nm.evaluate(state, data["x_val"], data["y_val"], data) == pytest.approx(
        (history[-1]["val_loss"], history[-1]["val_acc"]), rel=1e-6)


def test_same_seed_same_metrics_other_seed_others(digits):
    a = run(BASE, digits.sweep_view()).history
    b = run(BASE, digits.sweep_view()).history
    assert strip(a) == strip(b)
    assert strip(a) != strip(run({**BASE, "seed": 2}, digits.sweep_view()).history)


@pytest.mark.parametrize("optimizer", ["nadam", "momentum", "rmsprop"])
def test_resume_from_epoch_2_gives_the_same_numbers(digits, optimizer):
    config = {**BASE, "optimizer": optimizer}
    full = run(config, digits.sweep_view())
    first = LocalReporter(stop_after=2)
    with pytest.raises(StopTraining):
        nm.fit(config, digits.sweep_view(), first)
    rest = run(config, digits.sweep_view(), LocalReporter(state=first.state))
    assert [h["epoch"] for h in rest.history] == [3, 4]
    assert strip(full.history[2:]) == strip(rest.history)  # samples_seen among them: counted over the resume
    assert rest.state["samples_seen"] == full.history[-1]["samples_seen"] == 4 * len(digits.sweep_view()["y_train"])
    old = {k: v for k, v in first.state.items() if k != "samples_seen"}  # a checkpoint from before it was kept
    assert strip(run(config, digits.sweep_view(), LocalReporter(state=old)).history) == strip(rest.history)
    for p, q in zip(full.state["params"], rest.state["params"]):
        np.testing.assert_array_equal(p, q)


def test_pbt_mutation_on_restore_applies_the_new_hyperparameters(digits):
    first = LocalReporter(stop_after=1)
    with pytest.raises(StopTraining):
        nm.fit(BASE, digits.sweep_view(), first)
    rest = run({**BASE, "lr": 1e-3, "weight_decay": 1e-4}, digits.sweep_view(), LocalReporter(state=first.state))
    assert rest.history[0]["epoch"] == 2 and rest.history[0]["lr"] == 1e-3
    assert rest.state["config"]["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="hidden_size=32"):
        run({**BASE, "hidden_size": 16}, digits.sweep_view(), LocalReporter(state=first.state))


def test_max_epochs_caps_the_trial(digits):
    history = run({**BASE, "epochs": 5, "max_epochs": 2}, digits.sweep_view()).history
    assert [h["epoch"] for h in history] == [1, 2]


def test_a_loss_above_diverge_loss_is_diverged(digits):
    clean = run(BASE, digits.sweep_view()).history
    history = run({**BASE, "diverge_loss": clean[0]["train_loss"] / 2}, digits.sweep_view()).history
    assert len(history) == 1 and history[0]["diverged"] is True and history[0]["val_acc"] == 0.0
    assert not any(h["diverged"] for h in clean)  # 0: NaN/inf only


def test_huge_learning_rate_is_reported_as_diverged_and_stops(digits):
    config = {**BASE, "optimizer": "sgd", "lr": 1e6, "activation": "relu", "epochs": 5}
    history = run(config, digits.sweep_view()).history
    assert len(history) < 5
    last = history[-1]
    assert last["diverged"] is True and last["val_acc"] == 0.0 and not math.isfinite(last["train_loss"])
    assert all(h["diverged"] is False for h in history[:-1])


def test_choices_are_case_insensitive(digits):
    config = {**BASE, "activation": "ReLU", "weight_init": "Xavier", "optimizer": "NAdam", "loss": "Cross_Entropy",
              "epochs": 1}
    reporter = run(config, digits.sweep_view())
    assert {k: reporter.state["config"][k] for k in ("activation", "weight_init", "optimizer", "loss")} == {
        "activation": "relu", "weight_init": "xavier", "optimizer": "nadam", "loss": "cross_entropy"}
    assert nm.run_name(config).startswith("hl_2_bs_32_ac_relu_")


def test_run_name_keeps_study_3s_prefix():
    assert nm.run_name({"num_layers": 3, "batch_size": 16, "activation": "tanh"}) == \
        "hl_3_bs_16_ac_tanh_sz_128_o_nadam_lr_0.001"


@pytest.mark.parametrize("key, value, message", [
    ("optimizer", "eve", "optimizer='eve': choose one of adam, momentum, nadam, nag, rmsprop, sgd"),
    ("activation", "swish", "activation='swish': choose one of identity, relu, sigmoid, tanh"),
    ("loss", "hinge", "loss='hinge': choose one of cross_entropy, mean_squared_error"),
    ("weight_init", "orthogonal", "weight_init='orthogonal': choose one of he, random, xavier"),
    ("num_layers", 0, "num_layers=0: must be >= 1"),
    ("hidden_size", 0, "hidden_size=0: must be >= 1"),
    ("lr", 0.0, "lr=0.0: must be >= 1e-12"),
    ("batch_size", 5000, "batch_size=5000 is larger than the training set (1294 examples of digits); "
                         "choose batch_size <= 1294"),
])
def test_bad_values_are_refused_with_one_line(digits, key, value, message):
    with pytest.raises(ValueError) as e:
        run({**BASE, key: value}, digits.sweep_view())
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_adding_an_optimizer_is_one_class_and_its_registry_line(digits):
    """docs/studies.md's example, run as written: registered, it trains and checkpoints like the others."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "docs" / "studies.md").read_text()
    block = readme.split('@OPTIMIZERS.register("adamax")')[1].split("```")[0]
    try:
        exec('@OPTIMIZERS.register("adamax")' + block, vars(numpy_optimizers).copy())
        w = W0.copy()
        opt = numpy_optimizers.OPTIMIZERS.get("adamax")([w.shape], dict(HYPER), np.float64)
        for g in GRADS:
            opt.step([w], [g.copy()])
        m, u, expected = [0.0, 0.0], [0.0, 0.0], list(W0)  # AdaMax (Kingma & Ba 2015, alg. 2), by hand
        for t, g in enumerate(GRADS, start=1):
            for i, gi in enumerate(g):
                m[i] = 0.9 * m[i] + 0.1 * gi
                u[i] = max(0.999 * u[i], abs(gi))
                expected[i] -= 0.1 / (1 - 0.9 ** t) * m[i] / (u[i] + 1e-8)
        np.testing.assert_allclose(w, expected, rtol=1e-12)
        history = run({**BASE, "optimizer": "adamax"}, digits.sweep_view()).history
        assert history[-1]["val_acc"] > 0.8 and history[-1]["train_loss"] < history[0]["train_loss"] / 2
    finally:
        numpy_optimizers.OPTIMIZERS._items.pop("adamax", None)
