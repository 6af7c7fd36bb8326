"""Every model, activation and optimizer in the registries gets the same checks; the ResNets, a cheaper set.

    python -m pytest -q tests/test_models_optim.py
"""
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.fake_datasets import class_images
from trainables.models import ACTIVATIONS, MODELS, PRETRAINED, build_model
from trainables.optim import OPTIMIZERS, build_optimizer
from trainables.registry import Registry, UnknownName

# Small models get every check; the ResNets, too slow for that on a laptop CPU, the ones below that say so.
SMALL = ["digits_cnn", "lenet", "mlp", "small_cnn2", "small_cnn4", "vgg6"]
RESNETS = ["preact_resnet18", "resnet18", "resnet50", "tv_resnet18", "tv_resnet50"]
# The input each small model learns on: a mix of MNIST's and CIFAR's shapes (and the quickstart's 8x8 digits).
INPUTS = {"digits_cnn": (1, 8, 8), "lenet": (1, 28, 28), "mlp": (3, 32, 32), "small_cnn2": (1, 28, 28),
          "small_cnn4": (3, 32, 32), "vgg6": (3, 32, 32)}
# Learning rates at which each optimizer fits a small batch within 20 steps.
LR = {"sgd": 0.05, "nesterov": 0.05, "adam": 3e-3, "adamw": 3e-3, "adagrad": 0.05, "rmsprop": 1e-3, "nadam": 3e-3}
CIFAR100, CIFAR10 = ((3, 32, 32), 100), ((3, 32, 32), 10)


def test_every_registered_model_is_small_or_a_resnet_here():
    assert sorted(SMALL + RESNETS) == MODELS.names() and sorted(INPUTS) == SMALL


def test_every_registered_optimizer_has_a_learning_rate_here():
    assert sorted(LR) == OPTIMIZERS.names()


def digits_batch(digits, n=64):
    x = torch.tensor(digits.x_train[:n]).float() / 255
    return (x - 0.3) / 0.3, torch.tensor(digits.y_train[:n])


def image_batch(shape, labels):
    """Normalised class_images of ``shape`` (C, H, W), one per label."""
    images = class_images(np.random.default_rng(0), np.array(labels), shape[0], shape[1])
    return (torch.tensor(images).float() - 127.5) / 64, torch.tensor(labels)


def assert_forward_backward(model, shape, labels):
    x, y = image_batch(shape, labels)
    logits = model(x)
    assert logits.shape == (len(labels), 7)
    F.cross_entropy(logits, y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["mnist", "cifar"])
@pytest.mark.parametrize("model_name", MODELS.names())
def test_every_model_runs_forward_and_backward_on_mnist_and_cifar_shapes(model_name, shape):
    torch.manual_seed(0)
    model = build_model(model_name, shape, 7, "relu", True)
    # tv_* models see 224x224 whatever comes in: two images keep them quick
    assert_forward_backward(model, shape, [0, 6] if model_name.startswith("tv_") else [0, 1, 2, 6])


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS.names())
@pytest.mark.parametrize("model_name", SMALL)
def test_small_models_run_with_every_activation_with_and_without_batch_norm(model_name, activation, batch_norm):
    torch.manual_seed(0)
    model = build_model(model_name, INPUTS[model_name], 7, activation, batch_norm)
    assert_forward_backward(model, INPUTS[model_name], [0, 1, 2, 6])


@pytest.mark.parametrize("model_name", SMALL)
def test_every_small_model_learns_a_separable_problem(model_name):
    """Four classes, each a bright block at its own place: loss falls by half in 30 Adam steps."""
    torch.manual_seed(0)
    c, h, _ = INPUTS[model_name]
    y = np.arange(32) % 4
    x = torch.tensor(class_images(np.random.default_rng(0), y, c, h)).float() / 255
    model = build_model(model_name, INPUTS[model_name], 4, "relu", True)
    opt = build_optimizer("adam", model.parameters(), 1e-3, weight_decay=0.0, momentum=0.0)
    losses = fit_steps(model, opt, (x - 0.3) / 0.3, torch.tensor(y), steps=30)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("model_name", RESNETS)
def test_one_sgd_step_lowers_a_resnets_loss_on_a_fixed_batch(model_name):
    torch.manual_seed(0)
    shape = (3, 32, 32)
    model = build_model(model_name, shape, 7, "relu", True)
    opt = build_optimizer("sgd", model.parameters(), 0.01, weight_decay=0.0, momentum=0.0)
    x, y = image_batch(shape, [0, 6] if model_name.startswith("tv_") else [0, 1, 2, 6])
    losses = fit_steps(model, opt, x, y, steps=2)
    assert losses[1] < losses[0], losses


@pytest.mark.parametrize(("model_name", "data", "count"), [
    ("vgg6", CIFAR10, 2_360_522),
    ("digits_cnn", CIFAR100, 556_804),
    ("lenet", CIFAR100, 69_678),
    ("mlp", CIFAR100, 1_888_356),
    ("small_cnn2", CIFAR100, 556_804),
    ("small_cnn4", CIFAR100, 603_076),
    # kuangliu/pytorch-cifar's published CIFAR-10 figures, and the same networks with a 100-class head
    ("resnet18", CIFAR10, 11_173_962),
    ("resnet18", CIFAR100, 11_220_132),
    ("preact_resnet18", CIFAR10, 11_171_146),
    ("preact_resnet18", CIFAR100, 11_217_316),
    ("resnet50", CIFAR10, 23_520_842),
    ("resnet50", CIFAR100, 23_705_252),
    # torchvision's ImageNet figures (1000 classes), and with a 100-class head
    ("tv_resnet18", ((3, 224, 224), 1000), 11_689_512),
    ("tv_resnet18", CIFAR100, 11_227_812),
    ("tv_resnet50", ((3, 224, 224), 1000), 25_557_032),
    ("tv_resnet50", CIFAR100, 23_712_932),
])
def test_parameter_count(model_name, data, count):
    model = build_model(model_name, data[0], data[1], "relu", True)
    assert sum(p.numel() for p in model.parameters()) == count


def test_model_refuses_input_the_pooling_cannot_divide():
    with pytest.raises(ValueError, match="not divisible"):
        build_model("vgg6", (3, 30, 30), 10, "relu", True)


def test_lenet_refuses_input_too_small_for_its_convs():
    with pytest.raises(ValueError, match="too small"):
        build_model("lenet", (1, 8, 8), 10, "relu", True)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(UnknownName) as e:
        build_model("resnet19", (3, 32, 32), 10, "relu", True)
    assert str(e.value) == f"unknown model 'resnet19'; known: {', '.join(MODELS.names())}"
    assert "resnet18" in str(e.value) and "tv_resnet50" in str(e.value)


@pytest.mark.parametrize("model_name", ["resnet18", "preact_resnet18", "resnet50"])
def test_cifar_resnets_refuse_to_run_without_batch_norm(model_name):
    with pytest.raises(ValueError, match=f"^{model_name} needs batch_norm=true$"):
        build_model(model_name, (3, 32, 32), 10, "relu", False)


@pytest.mark.parametrize(("activation", "batch_norm"), [("gelu", True), ("relu", False)])
@pytest.mark.parametrize("model_name", PRETRAINED)
def test_torchvision_resnets_refuse_a_config_they_would_not_run(model_name, activation, batch_norm):
    with pytest.raises(ValueError, match=f"^{model_name} is torchvision's ResNet with ReLU and batch norm") as e:
        build_model(model_name, (3, 32, 32), 10, activation, batch_norm)
    assert "\n" not in str(e.value)


def test_torchvision_resnet_sees_grey_images_as_3_channel_224x224():
    torch.manual_seed(0)
    model = build_model("tv_resnet18", (1, 28, 28), 7, "relu", True).eval()
    seen = []
    model.conv1.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    x = torch.rand(1, 1, 28, 28)
    with torch.no_grad():
        grey, rgb = model(x), model(x.repeat(1, 3, 1, 1))
    assert seen == [(1, 3, 224, 224)] * 2
    torch.testing.assert_close(grey, rgb)


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory):
    """ImageNet-format state dicts (1000-class fc, seeded random init) as torchvision publishes them."""
    import torchvision.models

    root = tmp_path_factory.mktemp("weights")
    files = {}
    for arch in ("resnet18", "resnet50"):
        torch.manual_seed(0)
        files[arch] = root / f"{arch}.pth"
        torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), files[arch])
    return files


def backbone_equals_file(model, state) -> bool:
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))


@pytest.mark.parametrize("model_name", PRETRAINED)
def test_pretrained_weights_fill_every_tensor_but_the_new_head(model_name, torchvision_files):
    path = torchvision_files[model_name.removeprefix("tv_")]
    model = build_model(model_name, (3, 32, 32), 10, "relu", True, pretrained_weights=str(path))
    state = torch.load(path, weights_only=True)
    assert state["fc.weight"].shape[0] == 1000 and model.fc.weight.shape[0] == 10
    assert len(state) == len(model.state_dict()) and backbone_equals_file(model, state)


@pytest.mark.parametrize("wrap", [lambda sd: {"state_dict": sd}, lambda sd: {"model": sd, "epoch": 3}],
                         ids=["state_dict", "model"])
def test_pretrained_weights_may_be_wrapped_and_saved_from_ddp(wrap, torchvision_files, tmp_path):
    state = torch.load(torchvision_files["resnet18"], weights_only=True)
    path = tmp_path / "ddp.pth"
    torch.save(wrap({f"module.{k}": v for k, v in state.items()}), path)
    model = build_model("tv_resnet18", (1, 28, 28), 10, "relu", True, pretrained_weights=path)
    assert backbone_equals_file(model, state)


def test_pretrained_weights_of_another_network_name_the_first_misfit(torchvision_files):
    path = torchvision_files["resnet50"]
    with pytest.raises(ValueError) as e:
        build_model("tv_resnet18", (3, 32, 32), 10, "relu", True, pretrained_weights=str(path))
    assert str(e.value) == (f"pretrained weights {path} do not fit tv_resnet18: layer1.0.conv1.weight has shape "
                            "(64, 64, 1, 1) in the file, (64, 64, 3, 3) in the model")


def test_pretrained_weights_missing_a_tensor_say_which(torchvision_files, tmp_path):
    state = torch.load(torchvision_files["resnet18"], weights_only=True)
    del state["layer2.1.bn2.running_var"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(ValueError, match="do not fit tv_resnet18: layer2.1.bn2.running_var is missing from the file$"):
        build_model("tv_resnet18", (3, 32, 32), 10, "relu", True, pretrained_weights=str(tmp_path / "cut.pth"))


def test_missing_pretrained_weights_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(ValueError) as e:
        build_model("tv_resnet18", (3, 32, 32), 10, "relu", True, pretrained_weights=str(path))
    assert str(e.value) == f"pretrained weights {path} for tv_resnet18: no such file"


def test_unreadable_pretrained_weights_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "resnet18.pth"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ValueError, match=f"^pretrained weights {path} could not be read: ") as e:
        build_model("tv_resnet18", (3, 32, 32), 10, "relu", True, pretrained_weights=str(path))
    assert "\n" not in str(e.value)


def test_pretrained_lists_the_models_that_take_pretrained_weights():
    takes = [n for n in MODELS.names() if "pretrained_weights" in inspect.signature(MODELS.get(n)).parameters]
    assert takes == list(PRETRAINED)


def test_pretrained_weights_for_a_model_without_them_are_refused():
    with pytest.raises(ValueError) as e:
        build_model("lenet", (1, 28, 28), 10, "relu", True, pretrained_weights="/x/resnet18.pth")
    assert str(e.value) == ("model lenet has no pretrained weights; "
                            "pretrained_weights is for tv_resnet18, tv_resnet50")


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
