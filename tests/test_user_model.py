"""The user's own model in image_classifier: ``model="module:attr"`` with ``model.NAME`` arguments, trained on
real data (digits), resumed, loaded back, and every way it can be wrong refused in one line before Ray starts."""
import math
import textwrap

import numpy as np
import pytest
import torch

from trainables import image_classifier as ic
from trainables.model_checks import arg_combinations
from trainables.models import build_model
from trainables.params import Param, factory_args, resolve
from trainables.reporting import LocalReporter, StopTraining

MODELS_PY = '''
from torch import nn


class Net(nn.Module):
    """A 2-layer MLP: 64 * hidden + hidden + hidden * classes + classes parameters on 8x8 digits."""

    def __init__(self, num_classes, input_shape, hidden=16):
        super().__init__()
        c, h, w = input_shape
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.body(x)


def make_net(num_classes, input_shape, width=8):
    return nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def picky(num_classes, input_shape, depth=1):
    if depth > 3:
        raise ValueError(f"depth {depth} is too deep for {input_shape[1]}x{input_shape[2]} images\\nsecond line")
    return make_net(num_classes, input_shape)


NOT_CALLABLE = 42


def no_num_classes(input_shape, hidden=8):
    return make_net(10, input_shape)


def returns_dict(num_classes, input_shape):
    return {"classes": num_classes}


def wrong_shape(num_classes, input_shape):
    return make_net(num_classes + 1, input_shape)


class BrokenForward(Net):
    def forward(self, x):
        return self.body(x[:, :, :4])  # half the rows: the first Linear expects all of them
'''

BASE = {"dataset": "digits", "model": "um_models:Net", "model.hidden": 12, "optimizer": "adam", "lr": 1e-2,
        "batch_size": 64, "epochs": 2, "seed": 1, "crop_padding": 1}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_models")
    (folder / "um_models.py").write_text(textwrap.dedent(MODELS_PY))
    return folder


@pytest.fixture
def on_path(models_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(models_dir))


def run(config, data, reporter=None):
    reporter = reporter or LocalReporter()
    ic.fit(config, data, reporter)
    return reporter


def strip(history):
    return [{k: v for k, v in e.items() if k not in ("epoch_time_s", "samples_per_s", "peak_mem_mb", "cpu_s")}
            for e in history]


def one_line_error(call, *args) -> str:
    with pytest.raises(ValueError) as e:
        call(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_user_model_trains_resumes_and_loads_back(digits, on_path):
    data = digits.sweep_view()
    full = run(BASE, data)
    history = full.history
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) and not h["diverged"] for h in history)
    assert all(h["params"] == 64 * 12 + 12 + 12 * 10 + 10 for h in history)  # hidden=12 reached the factory
    assert history[-1]["val_acc"] > 0.5
    assert full.state["config"]["model.hidden"] == 12

    first = LocalReporter(stop_after=1)
    with pytest.raises(StopTraining):
        ic.fit(BASE, data, first)
    rest = run(BASE, data, LocalReporter(state=first.state)).history
    assert strip(rest) == strip(history[1:])  # bit for bit on a CPU

    model = ic.load_model(full.state, data)
    assert model.body[1].out_features == 12 and not model.training
    loss, acc = ic.evaluate(full.state, data["x_val"], data["y_val"], data)
    assert acc == history[-1]["val_acc"] and loss == pytest.approx(history[-1]["val_loss"], rel=1e-5)
    assert np.mean(ic.predict(full.state, data["x_val"], data) == data["y_val"]) == acc
    ic.check_weights(full.state, data)

    other = {**full.state, "config": {**full.state["config"], "model.hidden": 13}}
    message = one_line_error(ic.check_weights, other, data)
    assert message.startswith("the weights do not fit model um_models:Net (hidden=13) for input (1, 8, 8) and 10 "
                              "classes: size mismatch")


def test_a_factory_function_trains_with_augmentation_mixing_and_precision_options(digits, on_path):
    config = {**{k: v for k, v in BASE.items() if k != "model.hidden"}, "model": "um_models:make_net",
              "model.width": 6, "epochs": 1, "flip": True, "mix": "cutmix", "amp": "bf16", "channels_last": "on",
              "cache": "host", "rotation": 10.0}
    (h,) = run(config, digits.sweep_view()).history
    assert math.isfinite(h["train_loss"]) and h["params"] == 1 * 6 * 9 + 6 + 2 * 6 + 6 * 10 + 10
    model = ic.build(resolve(ic.PARAMS, config), digits.sweep_view())
    assert isinstance(model[0], torch.nn.Conv2d) and model[0].out_channels == 6


def test_resolve_keeps_the_models_arguments_and_still_refuses_unknown_keys():
    cfg = resolve(ic.PARAMS, {"model": "um_models:Net", "model.hidden": 64, "model.depth": [1, 2]})
    assert list(cfg)[-2:] == ["model.depth", "model.hidden"]  # sorted, after the regular keys
    assert list(cfg)[:-2] == list(ic.PARAMS) and cfg["model.depth"] == [1, 2]
    assert factory_args(cfg, "model") == {"depth": [1, 2], "hidden": 64}
    assert factory_args(resolve(ic.PARAMS, {}), "model") == {}
    for key in ("hidden", "lr.hidden", "model.", "modelx.hidden"):
        with pytest.raises(ValueError, match=f"unknown key '{key}'; known keys: activation,"):
            resolve(ic.PARAMS, {key: 1})
    plain = {"a": Param(1, int, "a"), "m": Param("x", str, "m", choices=lambda: ["x"])}
    with pytest.raises(ValueError, match="unknown key 'm.y'"):  # only a takes_args param takes arguments
        resolve(plain, {"m.y": 1})
    with pytest.raises(ValueError, match=r"m='a:b': choose one of x$"):
        resolve(plain, {"m": "a:b"})


@pytest.mark.parametrize("value", ["um_models:Net", "pkg.sub.models:Factory.build", "no_such_module_xyz:Net",
                                   "digits_cnn", "vgg6"])
def test_the_model_param_takes_builtin_names_and_module_attr_syntax_without_importing(value):
    assert ic.PARAMS["model"].check("model", value) == value


@pytest.mark.parametrize("value", ["um_models", "um_models:", ":Net", "1mod:Net", "mod:Net-1", "mod::Net",
                                   "mod:Net:x", "a/b:Net", "mod.:Net"])
def test_the_model_param_refuses_what_is_neither(value):
    message = one_line_error(ic.PARAMS["model"].check, "model", value)
    assert message.startswith(f"model={value!r}: choose one of ") and message.endswith(
        "vgg6 or 'module:attr' for your own")


def test_dataset_and_image_size_params():
    for name in ("digits", "cifar10", "fashion_mnist", "imagefolder:x"):
        assert ic.PARAMS["dataset"].check("dataset", name) == name
    assert one_line_error(ic.PARAMS["dataset"].check, "dataset", "cifar11").startswith("dataset='cifar11': ")
    size = ic.PARAMS["image_size"]
    assert size.data and resolve(ic.PARAMS, {})["image_size"] == 0 and size.check("image_size", 32) == 32
    assert one_line_error(size.check, "image_size", -1).startswith("image_size=-1: must be >= 0")


def test_run_name_uses_the_attribute_path_for_a_user_model():
    config = {"model": "um_models:Net", "activation": "gelu", "optimizer": "adam", "batch_size": 64, "lr": 0.001}
    assert ic.run_name(config) == "Net_adam_bs64_lr0.001"
    assert ic.run_name({**config, "model": "pkg.models:Factory.small"}) == "Factory.small_adam_bs64_lr0.001"
    assert ic.run_name({**config, "model": "vgg6"}) == "vgg6_gelu_adam_bs64_lr0.001"


@pytest.mark.parametrize("model, message", [
    ("no_such_module_xyz:Net", "model 'no_such_module_xyz:Net': cannot import no_such_module_xyz (No module named "
                               "'no_such_module_xyz'); put it on PYTHONPATH or next to the space file"),
    ("um_models:Missing", "model 'um_models:Missing': um_models has no attribute 'Missing'"),
    ("um_models:Net.nothing", "model 'um_models:Net.nothing': um_models.Net has no attribute 'nothing'"),
    ("um_models:NOT_CALLABLE", "model 'um_models:NOT_CALLABLE': NOT_CALLABLE is a int, not an nn.Module class or a "
                               "function returning one"),
])
def test_check_space_imports_each_user_model(on_path, model, message):
    assert one_line_error(ic.check_space, {"model": ["digits_cnn", model]}) == message


def test_check_space_refuses_model_arguments_for_a_builtin_and_passes_good_spaces(on_path):
    message = one_line_error(ic.check_space, {"model": ["um_models:Net", "vgg6"], "model.hidden": [8, 16]})
    assert message == ("model.hidden is passed to your own model's factory; model vgg6 is a built-in and takes "
                       "none: remove it or use model='module:attr'")
    assert "model digits_cnn is a built-in" in one_line_error(ic.check_space, {"model": ["digits_cnn"],
                                                                               "model.width": [4]})
    assert "model vgg6 is a built-in" in one_line_error(ic.check_space, {"model.width": [4]})  # the default
    ic.check_space({"model": ["um_models:Net", "um_models:make_net"], "model.hidden": [8, 16],
                    "mix": ["none", "cutmix"], "pretrained_weights": [""]})
    ic.check_space({"model": ["digits_cnn", "vgg6"], "mix": ["mixup"]})
    with pytest.raises(ValueError, match="no model here takes them"):
        ic.check_space({"model": ["um_models:Net"], "pretrained_weights": ["w.pth"]})


def test_a_builtin_model_refuses_arguments_when_built(digits):
    message = one_line_error(ic.fit, {**BASE, "model": "digits_cnn", "epochs": 1}, digits.sweep_view(),
                             LocalReporter())
    assert message.startswith("model.hidden is passed to your own model's factory; model digits_cnn is a built-in")
    with pytest.raises(ValueError, match="model um_models:Net has no pretrained weights"):
        build_model("um_models:Net", (1, 8, 8), 10, "relu", True, pretrained_weights="w.pth")


def test_check_models_builds_and_runs_each_user_model(digits, on_path):
    data = digits.sweep_view()
    rng = torch.get_rng_state()
    ic.check_models({"model": ["um_models:Net", "digits_cnn"], "model.hidden": [4, 8, 64]}, data)
    ic.check_models({"model": ["um_models:make_net", "lenet"]}, data)  # lenet fails on 8x8 images: not built here
    ic.check_models({"model": ["um_models:picky"], "model.depth": [1, 2, 3]}, data)
    ic.check_models({"model.hidden": [1]}, data)  # only the built-in default: not checked here
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's generator is untouched
    assert arg_combinations(ic.PARAMS, {"model.a": [1, 2, 3], "model.b": ["x"], "model.c": [], "lr": [1.0, 2.0]}) == [
        {"a": 1, "b": "x"}, {"a": 3, "b": "x"}]


@pytest.mark.parametrize("values, message", [
    ({"model": ["um_models:no_num_classes"], "model.hidden": [8]},
     "model 'um_models:no_num_classes': no_num_classes(num_classes=10, input_shape=(1, 8, 8), hidden=8) does not "
     "fit its signature (got an unexpected keyword argument 'num_classes'); it must accept num_classes=int, "
     "input_shape=(C, H, W) and each model.NAME key as keyword arguments"),
    ({"model": ["um_models:Net"], "model.width": [8]},
     "model 'um_models:Net': Net(num_classes=10, input_shape=(1, 8, 8), width=8) does not fit its signature (got "
     "an unexpected keyword argument 'width'); it must accept"),
    ({"model": ["um_models:returns_dict"]},
     "model 'um_models:returns_dict' returned dict {'classes': 10}, not an nn.Module"),
    ({"model": ["um_models:wrong_shape"]},
     "model 'um_models:wrong_shape' outputs shape (2, 11) for a batch of shape (2, 1, 8, 8); it must output "
     "(2, 10): one logit per class"),
    ({"model": ["um_models:picky"], "model.depth": [1, 2, 5]},
     "model 'um_models:picky': picky(num_classes=10, input_shape=(1, 8, 8), depth=5) raised ValueError: depth 5 "
     "is too deep for 8x8 images"),
    ({"model": ["um_models:BrokenForward"], "model.hidden": [8]},
     "model 'um_models:BrokenForward' (hidden=8): forward on a batch of shape (2, 1, 8, 8) raised RuntimeError: "
     "mat1 and mat2 shapes cannot be multiplied"),
    ({"model": ["um_models:Gone"]}, "model 'um_models:Gone': um_models has no attribute 'Gone'"),
])
def test_check_models_says_what_is_wrong_in_one_line(digits, on_path, values, message):
    assert one_line_error(ic.check_models, values, digits.sweep_view()).startswith(message)
