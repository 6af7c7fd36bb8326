"""Models and activations, each behind a small registry.

A model factory takes the input shape (C, H, W), the number of classes, an
activation name and whether to use batch norm, and returns logits-producing
``nn.Module``. Later studies add their models here with ``@MODELS.register``.

    vgg6, digits_cnn        study 1 and the quickstart (VGG-style, conv + flatten head)
    lenet, mlp              LeNet-5 and a 2x512 MLP (study 2)
    small_cnn2, small_cnn4  study 5's small CNNs, 2 and 4 conv layers
    resnet18, preact_resnet18, resnet50
                            CIFAR ResNets (kuangliu/pytorch-cifar): 3x3 stem, no max-pool
    tv_resnet18, tv_resnet50
                            torchvision's ImageNet ResNets at 224x224, optionally from a
                            ``.pth`` of ImageNet weights (``pretrained_weights``)

Every model takes 1-channel (28x28 MNIST) and 3-channel (32x32 CIFAR) images.

The user's own model is a ``"module:attr"`` reference instead of a name: an ``nn.Module``
subclass or a function returning one, called as ``attr(num_classes=..., input_shape=(C, H, W),
**model_args)``. ``activation`` and ``batch_norm`` are for the built-ins and are not passed to it.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainables.imports import import_attr, is_ref
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


@MODELS.register("small_cnn2")
def small_cnn2(input_shape, num_classes: int, activation: str = "relu", batch_norm: bool = True) -> nn.Module:
    """Study 5's small CNN with 2 conv layers (32, pool, 64, pool) and a 128-unit head: digits_cnn's layers,
    named as the study names them. 556,804 parameters on CIFAR-100 with batch norm."""
    return VGG(input_shape, num_classes, [32, "M", 64, "M"], 128, activation, batch_norm)


@MODELS.register("small_cnn4")
def small_cnn4(input_shape, num_classes: int, activation: str = "relu", batch_norm: bool = True) -> nn.Module:
    """Study 5's small CNN with 4 conv layers (32, 32, pool, 64, 64, pool) and a 128-unit head.
    603,076 parameters on CIFAR-100 with batch norm."""
    return VGG(input_shape, num_classes, [32, 32, "M", 64, 64, "M"], 128, activation, batch_norm)


def norm_act(channels: int, activation: str, batch_norm: bool, norm=nn.BatchNorm2d) -> list[nn.Module]:
    return ([norm(channels)] if batch_norm else []) + [ACTIVATIONS.get(activation)()]


@MODELS.register("lenet")
def lenet(input_shape, num_classes: int, activation: str = "relu", batch_norm: bool = True) -> nn.Module:
    """LeNet-5 with max-pooling: conv 6 5x5, pool, conv 16 5x5, pool, fc 120, fc 84, fc classes.

    Unpadded convs, so the flattened size follows the input: 16x4x4 for 28x28, 16x5x5 for 32x32.
    Batch norm, when on, follows the two convs. 69,678 parameters on CIFAR-100 with batch norm."""
    c, h, w = input_shape
    side = [((n - 4) // 2 - 4) // 2 for n in (h, w)]
    if min(side) < 1:
        raise ValueError(f"input {h}x{w} is too small for lenet's two 5x5 convs and pools (needs 16x16)")
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, bias=not batch_norm), *norm_act(6, activation, batch_norm), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, bias=not batch_norm), *norm_act(16, activation, batch_norm), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side[0] * side[1], 120), ACTIVATIONS.get(activation)(),
        nn.Linear(120, 84), ACTIVATIONS.get(activation)(),
        nn.Linear(84, num_classes),
    )


@MODELS.register("mlp")
def mlp(input_shape, num_classes: int, activation: str = "relu", batch_norm: bool = True) -> nn.Module:
    """Flatten, two hidden layers of 512 (BatchNorm1d before the activation, when on), linear.
    1,888,356 parameters on CIFAR-100 with batch norm."""
    c, h, w = input_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, 512, bias=not batch_norm), *norm_act(512, activation, batch_norm, nn.BatchNorm1d),
        nn.Linear(512, 512, bias=not batch_norm), *norm_act(512, activation, batch_norm, nn.BatchNorm1d),
        nn.Linear(512, num_classes),
    )


# CIFAR ResNets, as kuangliu/pytorch-cifar builds them, with the activation a parameter (ReLU there).

def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)


def shortcut(c_in: int, c_out: int, stride: int, batch_norm: bool) -> nn.Module:
    """Identity where the shapes agree, else a strided 1x1 conv (with batch norm in post-activation blocks)."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), *norm)


class BasicBlock(nn.Module):
    """Two 3x3 convs, each followed by batch norm; the activation comes after the residual sum."""
    expansion, pre_activation = 1, False

    def __init__(self, c_in: int, planes: int, stride: int, activation: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv3x3(c_in, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.shortcut = shortcut(c_in, planes, stride, batch_norm=True)
        self.act = ACTIVATIONS.get(activation)()

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    """He et al. 2016's pre-activation block: batch norm and activation come before each conv, nothing
    after the sum. A projection shortcut sees the normalised input, the identity the raw one."""
    expansion, pre_activation = 1, True

    def __init__(self, c_in: int, planes: int, stride: int, activation: str) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), conv3x3(c_in, planes, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), conv3x3(planes, planes)
        self.shortcut = shortcut(c_in, planes, stride, batch_norm=False)
        self.act = ACTIVATIONS.get(activation)()

    def forward(self, x):
        out = self.act(self.bn1(x))
        skip = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(out)
        out = self.conv2(self.act(self.bn2(self.conv1(out))))
        return out + skip


class Bottleneck(nn.Module):
    """1x1 conv down to ``planes``, 3x3 conv (strided), 1x1 conv up to 4 x ``planes``; post-activation."""
    expansion, pre_activation = 4, False

    def __init__(self, c_in: int, planes: int, stride: int, activation: str) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(c_in, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.shortcut = shortcut(c_in, c_out, stride, batch_norm=True)
        self.act = ACTIVATIONS.get(activation)()

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        return self.act(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: a 3x3 stem conv with 64 channels at stride 1 and no max-pool, four stages of
    ``block`` at 64, 128, 256, 512 channels (strides 1, 2, 2, 2), global average pool, linear.
    The pooling is adaptive, so 28x28 inputs work too. As in kuangliu's code, a pre-activation
    network has no batch norm after its stem and none before its pool."""

    def __init__(self, block, depths: list[int], input_shape, num_classes: int, activation: str) -> None:
        super().__init__()
        stem: list[nn.Module] = [conv3x3(input_shape[0], 64)]
        if not block.pre_activation:
            stem += [nn.BatchNorm2d(64), ACTIVATIONS.get(activation)()]
        self.stem = nn.Sequential(*stem)
        stages, c_in = [], 64
        for i, (planes, depth) in enumerate(zip([64, 128, 256, 512], depths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(c_in, planes, 2 if i > 0 and j == 0 else 1, activation))
                c_in = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def require_batch_norm(name: str, batch_norm: bool) -> None:
    # Without it these depths do not train from PyTorch's default init; refuse rather than run it.
    if not batch_norm:
        raise ValueError(f"{name} needs batch_norm=true")


@MODELS.register("resnet18")
def resnet18(input_shape, num_classes: int, activation: str = "relu", batch_norm: bool = True) -> nn.Module:
    """ResNet-18 for CIFAR, BasicBlocks [2, 2, 2, 2]: 11,173,962 parameters on CIFAR-10, 11,220,132 on
    CIFAR-100. batch_norm=False raises ValueError."""
    require_batch_norm("resnet18", batch_norm)
    return ResNet(BasicBlock, [2, 2, 2, 2], input_shape, num_classes, activation)


@MODELS.register("preact_resnet18")
def preact_resnet18(input_shape, num_classes: int, activation: str = "relu", batch_norm: bool = True) -> nn.Module:
    """Pre-activation ResNet-18 for CIFAR, PreActBlocks [2, 2, 2, 2]: 11,171,146 parameters on CIFAR-10,
    11,217,316 on CIFAR-100. batch_norm=False raises ValueError."""
    require_batch_norm("preact_resnet18", batch_norm)
    return ResNet(PreActBlock, [2, 2, 2, 2], input_shape, num_classes, activation)


@MODELS.register("resnet50")
def resnet50(input_shape, num_classes: int, activation: str = "relu", batch_norm: bool = True) -> nn.Module:
    """ResNet-50 for CIFAR, Bottlenecks [3, 4, 6, 3]: 23,520,842 parameters on CIFAR-10, 23,705,252 on
    CIFAR-100. batch_norm=False raises ValueError."""
    require_batch_norm("resnet50", batch_norm)
    return ResNet(Bottleneck, [3, 4, 6, 3], input_shape, num_classes, activation)


# torchvision's ImageNet ResNets. torchvision is imported when one is built: it adds a second to every import.

def imagenet_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: grey images repeated to 3 channels, then bilinear resizing to 224x224, so the
    network sees what its ImageNet weights were trained on."""
    (x,) = args
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (224, 224):
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
    return (x,)


def torchvision_resnet(name: str, arch: str, input_shape, num_classes: int, activation: str, batch_norm: bool,
                       pretrained_weights: str | os.PathLike | None) -> nn.Module:
    if activation != "relu" or not batch_norm:
        raise ValueError(f"{name} is torchvision's ResNet with ReLU and batch norm; it cannot run "
                         f"activation={activation}, batch_norm={str(batch_norm).lower()}")
    if input_shape[0] not in (1, 3):
        raise ValueError(f"{name} takes 1- or 3-channel images, not {input_shape[0]}-channel")
    import torchvision.models

    net = getattr(torchvision.models, arch)(weights=None)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    net.register_forward_pre_hook(imagenet_input)
    if pretrained_weights:
        load_backbone(net, os.fspath(pretrained_weights), name)
    return net


def load_backbone(net: nn.Module, path: str, name: str) -> None:
    """Copy every tensor of the state dict in ``path`` except the head ``fc.*`` into ``net``.

    The file is torchvision's format (e.g. resnet18-f37072fd.pth), plain or wrapped as {"state_dict": ...}
    or {"model": ...}, its keys optionally prefixed "module." (DDP). Its non-head keys and shapes must be
    the model's; BatchNorm's ``num_batches_tracked`` counters may be missing (files saved before PyTorch
    0.4.1 lack them). Anything else raises a one-line ValueError naming the file and the first problem."""
    where = f"pretrained weights {path}"
    if not os.path.isfile(path):
        raise ValueError(f"{where} for {name}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one that pickles more than tensors and containers
        raise ValueError(f"{where} could not be read: {load_error(e)}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{where} hold a {type(state).__name__}, not a state dict")
    given = {k.removeprefix("module."): v for k, v in state.items()}
    given = {k: v for k, v in given.items() if not k.startswith("fc.")}
    own = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    problem = first_mismatch(own, given)
    if problem:
        raise ValueError(f"{where} do not fit {name}: {problem}")
    net.load_state_dict(given, strict=False)  # strict would want the head, which stays new


def load_error(e: Exception) -> str:
    """The gist of torch.load's many-line complaint, on one line."""
    lines = [line.strip() for line in str(e).split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
    reason = lines[0].split(". ")[0] if lines else type(e).__name__
    if "WeightsUnpickler error:" in str(e):  # weights_only=True refused it; never unpickle code from a download
        return f"torch.load(weights_only=True) refused it: {reason}"
    return reason


def first_mismatch(own: dict, given: dict) -> str | None:
    for key, tensor in own.items():
        if key not in given:
            if key.endswith("num_batches_tracked"):
                continue
            return f"{key} is missing from the file"
        value = given[key]
        if not isinstance(value, torch.Tensor):
            return f"{key} is a {type(value).__name__} in the file, not a tensor"
        if value.shape != tensor.shape:
            return f"{key} has shape {tuple(value.shape)} in the file, {tuple(tensor.shape)} in the model"
    extra = next((key for key in given if key not in own), None)
    return extra and f"{extra} is in the file but not in the model"


@MODELS.register("tv_resnet18")
def tv_resnet18(input_shape, num_classes: int, activation: str = "relu", batch_norm: bool = True,
                pretrained_weights: str | None = None) -> nn.Module:
    """``torchvision.models.resnet18(weights=None)`` with a new ``fc`` for ``num_classes``, fed 224x224
    3-channel images (see ``imagenet_input``); ``pretrained_weights`` is a torchvision ``.pth`` to start
    from (all but ``fc``). Always ReLU and batch norm: any other activation or batch_norm=False raises
    ValueError. 11,227,812 parameters for 100 classes (11,689,512 for ImageNet's 1000)."""
    return torchvision_resnet("tv_resnet18", "resnet18", input_shape, num_classes, activation, batch_norm,
                              pretrained_weights)


@MODELS.register("tv_resnet50")
def tv_resnet50(input_shape, num_classes: int, activation: str = "relu", batch_norm: bool = True,
                pretrained_weights: str | None = None) -> nn.Module:
    """``torchvision.models.resnet50(weights=None)``, otherwise as tv_resnet18. 23,712,932 parameters for
    100 classes (25,557,032 for ImageNet's 1000)."""
    return torchvision_resnet("tv_resnet50", "resnet50", input_shape, num_classes, activation, batch_norm,
                              pretrained_weights)


PRETRAINED = ("tv_resnet18", "tv_resnet50")  # the models that take pretrained_weights


def build_model(name: str, input_shape, num_classes: int, activation: str, batch_norm: bool,
                pretrained_weights: str | os.PathLike | None = None, model_args: dict | None = None) -> nn.Module:
    """``MODELS[name]`` for this input and class count, or the user's model when ``name`` is ``module:attr``
    (see ``user_model``; ``activation`` and ``batch_norm`` are not passed to it). ``pretrained_weights`` (a
    ``.pth`` path; None or "" for random init) is only for the PRETRAINED models and ``model_args`` (keyword
    arguments, from the config's ``model.NAME`` keys) only for a user model; otherwise either raises a one-line
    ValueError."""
    if is_ref(name):
        if pretrained_weights:
            raise ValueError(no_pretrained_weights(name))
        return user_model(name, input_shape, num_classes, model_args or {})
    factory = MODELS.get(name)
    if model_args:
        raise ValueError(builtin_takes_no_args(name, next(iter(model_args))))
    extra = {}
    if pretrained_weights:
        if name not in PRETRAINED:
            raise ValueError(no_pretrained_weights(name))
        extra["pretrained_weights"] = pretrained_weights
    return factory(tuple(input_shape), num_classes, activation=activation, batch_norm=batch_norm, **extra)


def no_pretrained_weights(name: str) -> str:
    return f"model {name} has no pretrained weights; pretrained_weights is for {', '.join(PRETRAINED)}"


def builtin_takes_no_args(name: str, arg: str) -> str:
    return (f"model.{arg} is passed to your own model's factory; model {name} is a built-in and takes none: "
            f"remove it or use model='module:attr'")


def user_model(ref: str, input_shape, num_classes: int, model_args: dict) -> nn.Module:
    """``attr(num_classes=..., input_shape=(C, H, W), **model_args)`` for ``ref`` = ``module:attr``. A module
    that cannot be imported, a missing attribute or a result that is not an ``nn.Module`` raise a one-line
    ValueError; what the factory itself raises propagates (check_models reports it before a sweep)."""
    factory = import_factory(ref)
    model = factory(num_classes=num_classes, input_shape=tuple(int(n) for n in input_shape), **model_args)
    check_module(ref, model)
    return model


def import_factory(ref: str) -> Callable[..., nn.Module]:
    factory = import_attr(ref, "model")
    if not callable(factory):
        raise ValueError(f"model {ref!r}: {ref.partition(':')[2]} is a {type(factory).__name__}, not an nn.Module "
                         f"class or a function returning one")
    return factory


def check_module(ref: str, model: object) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {ref!r} returned {type(model).__name__} {short_repr(model)}, not an nn.Module")


def short_repr(value: object, limit: int = 60) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
