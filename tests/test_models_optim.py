"""Every model, activation, optimizer and schedule in the registries gets the same checks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.fake_datasets import class_images
from trainables.models import ACTIVATIONS, MODELS, build_model
from trainables.optim import OPTIMIZERS, build_optimizer
from trainables.registry import Registry, UnknownName

INPUTS = {"digits_cnn": (1, 8, 8), "vgg6": (3, 32, 32)}
# Learning rates at which each optimizer fits a small batch within 20 steps.
LR = {"sgd": 0.05, "nesterov": 0.05, "adam": 3e-3, "adamw": 3e-3, "adagrad": 0.05, "rmsprop": 1e-3, "nadam": 3e-3}


def test_every_registered_model_has_an_input_shape_here():
    assert sorted(INPUTS) == MODELS.names()


def test_every_registered_optimizer_has_a_learning_rate_here():
    assert sorted(LR) == OPTIMIZERS.names()


def digits_batch(digits, n=64):
    x = torch.tensor(digits.x_train[:n]).float() / 255
    return (x - 0.3) / 0.3, torch.tensor(digits.y_train[:n])


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS.names())
@pytest.mark.parametrize("model_name", MODELS.names())
def test_forward_backward_every_model_and_activation(model_name, activation, batch_norm):
    torch.manual_seed(0)
    shape = INPUTS[model_name]
    model = build_model(model_name, shape, 7, activation, batch_norm)
    images = class_images(np.random.default_rng(0), np.array([0, 1, 2, 6]), shape[0], shape[1])
    logits = model((torch.tensor(images).float() - 127.5) / 64)
    assert logits.shape == (4, 7)
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 6])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("model_name", MODELS.names())
def test_every_model_learns_a_separable_problem(model_name):
    """Four classes, each a bright block at its own place: loss falls by half in 30 Adam steps."""
    torch.manual_seed(0)
    c, h, _ = INPUTS[model_name]
    y = np.arange(32) % 4
    x = torch.tensor(class_images(np.random.default_rng(0), y, c, h)).float() / 255
    model = build_model(model_name, INPUTS[model_name], 4, "relu", True)
    opt = build_optimizer("adam", model.parameters(), 1e-3, weight_decay=0.0, momentum=0.0)
    losses = fit_steps(model, opt, (x - 0.3) / 0.3, torch.tensor(y), steps=30)
    assert losses[-1] < 0.5 * losses[0], losses


def test_vgg6_parameter_count_on_cifar10():
    model = build_model("vgg6", (3, 32, 32), 10, "relu", True)
    assert sum(p.numel() for p in model.parameters()) == 2_360_522


def test_model_refuses_input_the_pooling_cannot_divide():
    with pytest.raises(ValueError, match="not divisible"):
        build_model("vgg6", (3, 30, 30), 10, "relu", True)


def fit_steps(model, opt, x, y, steps=20):
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_decreases_the_loss_on_real_digits(name, digits):
    torch.manual_seed(0)
    x, y = digits_batch(digits)
    model = build_model("digits_cnn", (1, 8, 8), 10, "relu", True)
    opt = build_optimizer(name, model.parameters(), LR[name], weight_decay=1e-4, momentum=0.9)
    losses = fit_steps(model, opt, x, y)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_every_activation_learns_on_real_digits(activation, digits):
    torch.manual_seed(0)
    x, y = digits_batch(digits)
    model = build_model("digits_cnn", (1, 8, 8), 10, activation, True)
    opt = build_optimizer("adam", model.parameters(), 3e-3, weight_decay=0.0, momentum=0.0)
    losses = fit_steps(model, opt, x, y, steps=30)
    assert losses[-1] < 0.5 * losses[0], losses


def test_nesterov_uses_momentum_even_when_given_zero():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer("nesterov", [p], 0.1, weight_decay=0.0, momentum=0.0)
    assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["momentum"] == 0.9


def test_registry_refuses_duplicates_and_lists_known_names():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)
    with pytest.raises(UnknownName) as e:
        reg.get("b")
    assert str(e.value) == "unknown thing 'b'; known: a"
    assert list(reg) == ["a"] and "a" in reg
