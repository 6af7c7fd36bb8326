"""Models and activations, each behind a small registry.

A model factory takes the input shape (C, H, W), the number of classes, an
activation name and whether to use batch norm, and returns logits-producing
``nn.Module``. Later studies add their models here with ``@MODELS.register``.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from trainables.registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

ACTIVATIONS.register("relu")(nn.ReLU)
ACTIVATIONS.register("sigmoid")(nn.Sigmoid)
ACTIVATIONS.register("tanh")(nn.Tanh)
ACTIVATIONS.register("silu")(nn.SiLU)
ACTIVATIONS.register("gelu")(nn.GELU)
ACTIVATIONS.register("leaky_relu")(lambda: nn.LeakyReLU(0.01))
ACTIVATIONS.register("elu")(nn.ELU)


def conv_block(c_in: int, c_out: int, activation: str, batch_norm: bool) -> list[nn.Module]:
    # The conv needs no bias when batch norm follows: BN's shift replaces it.
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(ACTIVATIONS.get(activation)())
    return layers


def vgg_features(c_in: int, plan: list, activation: str, batch_norm: bool) -> nn.Sequential:
    """``plan`` is VGG's notation: an int is a 3x3 conv with that many channels, "M" a 2x2 max-pool."""
    layers: list[nn.Module] = []
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += conv_block(c_in, item, activation, batch_norm)
            c_in = item
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, input_shape, num_classes: int, plan: list, hidden: int,
                 activation: str, batch_norm: bool) -> None:
        super().__init__()
        c, h, w = input_shape
        pools = plan.count("M")
        if h % 2**pools or w % 2**pools:
            raise ValueError(f"input {h}x{w} is not divisible by 2^{pools} (the model's pooling)")
        channels = [p for p in plan if p != "M"][-1]
        self.features = vgg_features(c, plan, activation, batch_norm)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * (h >> pools) * (w >> pools), hidden),
            ACTIVATIONS.get(activation)(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@MODELS.register("vgg6")
def vgg6(input_shape, num_classes: int, activation: str = "relu", batch_norm: bool = True) -> nn.Module:
    """Study 1's VGG6: 4 conv layers (64, 64, pool, 128, 128, pool) and 2 linear layers.

    2,360,522 parameters on CIFAR-10 with batch norm."""
    return VGG(input_shape, num_classes, [64, 64, "M", 128, 128, "M"], 256, activation, batch_norm)


@MODELS.register("digits_cnn")
def digits_cnn(input_shape, num_classes: int, activation: str = "relu", batch_norm: bool = True) -> nn.Module:
    """The quickstart's CNN, VGG6's shape scaled down for 8x8 digits (32, pool, 64, pool)."""
    return VGG(input_shape, num_classes, [32, "M", 64, "M"], 128, activation, batch_norm)


def build_model(name: str, input_shape, num_classes: int, activation: str, batch_norm: bool) -> nn.Module:
    return MODELS.get(name)(tuple(input_shape), num_classes, activation=activation, batch_norm=batch_norm)
