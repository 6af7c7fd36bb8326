"""The image_classifier trainable without Ray: metrics, determinism, resume, divergence."""
import math

import pytest

from trainables import image_classifier as ic
from trainables.device_loop import batch_starts
from trainables.reporting import LocalReporter, StopTraining

BASE = {"dataset": "digits", "model": "digits_cnn", "optimizer": "adam", "lr": 3e-3, "batch_size": 64,
        "epochs": 3, "schedule": "cosine", "seed": 1}


def run(config, data, reporter=None):
    reporter = reporter or LocalReporter()
    ic.fit(config, data, reporter)
    return reporter


def test_reports_every_design_metric_each_epoch(digits):
    history = run(BASE, digits.sweep_view()).history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for h in history:
        assert set(h) == {*ic.METRICS, "diverged", "early_stopped"}
        assert 0 <= h["train_acc"] <= 1 and 0 <= h["val_acc"] <= 1
        assert h["params"] == 53_098 and h["samples_per_s"] > 0 and h["peak_mem_mb"] > 0 and h["cpu_s"] > 0
        assert h["diverged"] is False and h["early_stopped"] is False
    assert history[-1]["val_acc"] > 0.85
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # cosine over 3 epochs: lr reported at the start of each epoch
    assert [h["lr"] for h in history] == pytest.approx([3e-3, 3e-3 * 0.75, 3e-3 * 0.25])


def strip(history):
    """Everything but the timings and memory, which vary from run to run."""
    return [{k: v for k, v in e.items() if k not in ("epoch_time_s", "samples_per_s", "peak_mem_mb", "cpu_s")}
            for e in history]


def test_same_seed_same_metrics_to_the_last_digit(digits):
    config = {**BASE, "crop_padding": 1, "cutout": 2}
    a = run(config, digits.sweep_view()).history
    b = run(config, digits.sweep_view()).history
    assert strip(a) == strip(b)
    c = run({**config, "seed": 2}, digits.sweep_view()).history
    assert strip(a) != strip(c)


def test_resume_from_a_checkpoint_continues_exactly(digits):
    config = {**BASE, "crop_padding": 1, "autoaugment": False}
    full = run(config, digits.sweep_view()).history
    first = LocalReporter(stop_after=1)
    with pytest.raises(StopTraining):
        ic.fit(config, digits.sweep_view(), first)
    rest = run(config, digits.sweep_view(), LocalReporter(state=first.state)).history
    assert [h["epoch"] for h in rest] == [2, 3]
    for a, b in zip(full[1:], rest):
        assert a["train_loss"] == b["train_loss"] and a["val_acc"] == b["val_acc"] and a["lr"] == b["lr"]
        assert a["samples_seen"] == b["samples_seen"]  # counted since the trial began, over the resume


def test_samples_seen_counts_the_training_samples_of_every_epoch(digits):
    """Batches of 431 on digits' 1294 training images: three of 431 and a last one of 1, which is dropped
    (batch norm), so an epoch trains on 1293."""
    data = digits.sweep_view()
    config = {**BASE, "batch_size": 431}
    assert len(data["y_train"]) == 1294 == 3 * 431 + 1
    first = LocalReporter(stop_after=2)
    with pytest.raises(StopTraining):
        ic.fit(config, data, first)
    assert [h["samples_seen"] for h in first.history] == [1293, 2 * 1293]
    assert first.state["samples_seen"] == 2 * 1293
    old = {k: v for k, v in first.state.items() if k != "samples_seen"}  # a checkpoint from before it was kept
    assert [h["samples_seen"] for h in run(config, data, LocalReporter(state=old)).history] == [3 * 1293]


def test_pbt_mutation_on_restore_sets_the_new_learning_rate(digits):
    first = LocalReporter(stop_after=1)
    with pytest.raises(StopTraining):
        ic.fit({**BASE, "schedule": "none"}, digits.sweep_view(), first)
    rest = run({**BASE, "schedule": "none", "lr": 1e-3}, digits.sweep_view(), LocalReporter(state=first.state))
    assert rest.history[0]["lr"] == pytest.approx(1e-3)


def test_nan_loss_stops_the_trial_as_diverged(digits):
    config = {**BASE, "optimizer": "sgd", "lr": 1e6, "batch_norm": False, "activation": "relu", "epochs": 5}
    history = run(config, digits.sweep_view()).history
    assert len(history) < 5
    last = history[-1]
    assert last["diverged"] is True and last["val_acc"] == 0.0
    assert not math.isfinite(last["train_loss"])
    assert all(h["diverged"] is False for h in history[:-1])


def test_a_loss_above_the_bound_stops_the_trial_as_diverged(digits):
    """A finite loss counts as divergence above diverge_loss: here a bound below what epoch 2 reaches."""
    clean = run(BASE, digits.sweep_view()).history
    bound = (clean[0]["train_loss"] + clean[1]["train_loss"]) / 2
    history = run({**BASE, "diverge_loss": bound}, digits.sweep_view()).history
    assert [h["diverged"] for h in history] == [True]  # epoch 1's loss is above it
    assert history[0]["train_loss"] == clean[0]["train_loss"] and history[0]["val_acc"] == 0.0
    assert math.isnan(history[0]["val_loss"])
    assert not any(h["diverged"] for h in clean)  # the default, 0: NaN/inf only


def test_max_epochs_caps_the_trial(digits):
    history = run({**BASE, "epochs": 5, "max_epochs": 2}, digits.sweep_view()).history
    assert [h["epoch"] for h in history] == [1, 2]


def test_run_name_is_built_from_the_config():
    config = {"model": "vgg6", "activation": "gelu", "optimizer": "nadam", "batch_size": 64, "lr": 0.001}
    assert ic.run_name(config) == "vgg6_gelu_nadam_bs64_lr0.001"


@pytest.mark.parametrize("key, value, message", [
    ("lr", -1.0, "lr=-1.0: must be >= 1e-12"),
    ("optimizer", "foo", "optimizer='foo': choose one of adagrad, adam, adamw, nadam, nesterov, rmsprop, sgd"),
    ("batch_size", 0, "batch_size=0: must be >= 1"),
    ("batch_norm", "yes", "batch_norm='yes': expected true or false"),
    ("lr", "fast", "lr='fast': expected float"),
])
def test_bad_values_are_refused_with_one_line(digits, key, value, message):
    with pytest.raises(ValueError) as e:
        run({**BASE, key: value}, digits.sweep_view())
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("values, patience, min_delta, metric, stop_at", [
    ([1.0, 0.95, 0.945, 0.944, 0.946, 0.5], 3, 0.01, "val_loss", 5),  # 0.95 -> 0.944 is less than 0.01
    ([1.0, 0.95, 0.945, 0.90, 0.91, 0.92, 0.93], 3, 0.01, "val_loss", 7),  # 0.90 counts: the wait restarts
    ([0.5, 0.6, 0.6, 0.61, 0.61, 0.61], 2, 0.0, "val_acc", 6),  # higher is better; equal is no improvement
    ([0.5, float("nan"), 0.4, 0.4], 2, 0.0, "val_acc", 4),  # NaN (no validation split) is not an epoch lost
    ([1.0, 2.0, 3.0], 0, 0.0, "val_loss", None),  # patience 0: off
])
def test_early_stopping_stops_at_the_right_epoch(values, patience, min_delta, metric, stop_at):
    stopper = ic.EarlyStopping(patience, min_delta, metric)
    stops = [epoch for epoch, v in enumerate(values, 1) if stopper.update(v)]
    assert (stops[0] if stops else None) == stop_at


def test_early_stopping_ends_the_trial_with_its_own_flag(digits):
    """No epoch can improve val_acc by 2 (it is a fraction): the trial stops after epoch 1 + patience."""
    config = {**BASE, "epochs": 6, "early_stop_patience": 2, "early_stop_min_delta": 2.0,
              "early_stop_metric": "val_acc"}
    history = run(config, digits.sweep_view()).history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["early_stopped"] for h in history] == [False, False, True]
    from tune_app.rundir.tables import trial_status
    assert trial_status({"history": history, "target_epochs": 6}) == "early_stopped"


NEW_OPTIONS = [
    {"rotation": 15.0, "color_jitter": 0.3, "blur_sigma": 1.0, "noise_std": 0.05},
    {"mix": "mixup", "label_smoothing": 0.1},
    {"mix": "cutmix"},
    {"mix": "cutmix_mixup", "mix_alpha": 0.5},
    {"schedule": "step", "step_size": 1, "step_gamma": 0.5, "warmup_epochs": 1.0},
    {"schedule": "plateau", "plateau_patience": 0},
    {"schedule": "onecycle", "warmup_epochs": 1.0},
    {"amp": "bf16", "channels_last": "on", "cache": "host"},
]


@pytest.mark.parametrize("options", NEW_OPTIONS, ids=lambda o: "+".join(o))
def test_every_new_option_trains_and_is_reproducible(digits, options):
    config = {**BASE, "epochs": 2, **options}
    a = run(config, digits.sweep_view()).history
    assert all(math.isfinite(h["train_loss"]) and not h["diverged"] for h in a)
    assert a[-1]["val_acc"] > 0.3  # ten classes: well above chance after two epochs
    assert strip(a) == strip(run(config, digits.sweep_view()).history)


def test_schedules_report_the_lr_their_formula_gives(digits):
    steps = len(batch_starts(len(digits.y_train), 64))
    step = run({**BASE, "epochs": 3, "schedule": "step", "step_size": 2, "step_gamma": 0.1}, digits.sweep_view())
    assert [h["lr"] for h in step.history] == pytest.approx([3e-3, 3e-3, 3e-4])
    warm = run({**BASE, "epochs": 2, "schedule": "none", "warmup_epochs": 2.0}, digits.sweep_view())
    # the lr of each epoch's first step: 1/W of the way up, then (steps + 1)/W
    assert [h["lr"] for h in warm.history] == pytest.approx([3e-3 / (2 * steps), 3e-3 * (steps + 1) / (2 * steps)])


def test_resume_continues_exactly_with_mixing_onecycle_and_early_stopping(digits):
    config = {**BASE, "epochs": 3, "mix": "cutmix_mixup", "schedule": "onecycle", "label_smoothing": 0.1,
              "rotation": 10.0, "early_stop_patience": 5}
    full = run(config, digits.sweep_view()).history
    first = LocalReporter(stop_after=1)
    with pytest.raises(StopTraining):
        ic.fit(config, digits.sweep_view(), first)
    rest = run(config, digits.sweep_view(), LocalReporter(state=first.state)).history
    assert strip(full[1:]) == strip(rest)


def test_ood_acc_equals_val_acc_at_severity_zero_and_falls_with_corruption(digits):
    config = {**BASE, "epochs": 2, "ood_corruptions": "gaussian_noise,contrast", "ood_images": 0}
    clean = run({**config, "ood_severities": "0"}, digits.sweep_view()).history
    assert [h["ood_acc"] for h in clean] == [h["val_acc"] for h in clean]
    harsh = run({**config, "ood_severities": "5"}, digits.sweep_view()).history
    assert strip(harsh)[-1]["val_acc"] == strip(clean)[-1]["val_acc"]  # scoring corrupted copies changes no training
    assert harsh[-1]["ood_acc"] < harsh[-1]["val_acc"]
    n = len(digits.y_val)
    assert round(harsh[-1]["ood_acc"] * 2 * n, 6) % 1 == 0  # the mean of 2 sets of n images


def test_a_model_that_outputs_probabilities_cannot_mix(digits, monkeypatch):
    from torch import nn

    from trainables.models import MODELS, digits_cnn

    def softmax_cnn(input_shape, num_classes, activation="relu", batch_norm=True):
        return nn.Sequential(digits_cnn(input_shape, num_classes, activation, batch_norm), nn.Softmax(1))

    monkeypatch.setitem(MODELS._items, "softmax_cnn", softmax_cnn)
    config = {**BASE, "model": "softmax_cnn", "mix": "cutmix", "epochs": 1}
    with pytest.raises(ValueError) as e:
        run(config, digits.sweep_view())
    assert str(e.value) == ("mix needs a model that outputs logits; softmax_cnn outputs probabilities (every row "
                            "sums to 1): remove its final softmax, or set mix=none")
    softmax_cnn.outputs = "probabilities"  # a model that says so is refused before anything runs
    with pytest.raises(ValueError, match="search it with mix=none"):
        ic.check_space({"model": ["digits_cnn", "softmax_cnn"], "mix": ["none", "cutmix"]})
    ic.check_space({"model": ["softmax_cnn"], "mix": ["none"]})
    assert len(run({**config, "mix": "none"}, digits.sweep_view()).history) == 1


def test_imagenet_weights_start_the_model_and_the_checkpoint_no_longer_needs_the_file(tmp_path):
    """tv_resnet18 from a torchvision .pth: training starts from the file's tensors (the head is new), and the
    trained model loads from its checkpoint alone, so a retrain elsewhere needs no weights file."""
    import numpy as np
    import torch
    import torchvision

    torch.manual_seed(0)
    file = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), file)
    rng = np.random.default_rng(0)
    data = {"x_train": rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8), "y_train": np.arange(8) % 4,
            "x_val": rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8), "y_val": np.arange(4),
            "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "num_classes": 4, "input_shape": (3, 32, 32)}
    config = {"dataset": "cifar10", "model": "tv_resnet18", "pretrained_weights": str(file), "epochs": 1,
              "batch_size": 4, "optimizer": "sgd", "lr": 1e-3}
    start = ic.build(ic.resolve(ic.PARAMS, config), data)
    assert torch.equal(start.conv1.weight, torch.load(file)["conv1.weight"]) and start.fc.out_features == 4
    reporter = run(config, data)
    file.unlink()
    model = ic.load_model(reporter.state, data)
    assert torch.equal(model.conv1.weight, reporter.state["model"]["conv1.weight"])


def test_compile_trains_to_the_same_numbers_and_checkpoints_plain_weights(digits):
    """compile: torch.compile runs the steps (here on a CPU, with inductor's C++ backend). One step of the compiled
    model matches the eager one's to float tolerance; a trial's epoch with it ends near the eager trial's (inductor's
    kernels round otherwise, and the epoch's steps carry that on: 0.15 % apart in val_loss on an AMD EPYC, with
    Adam 0.6 %, as Adam turns last-bit differences of gradients near zero into whole steps); and the checkpoint
    holds the plain module's weights, loadable without it."""
    import copy

    import torch
    import torch.nn.functional as F

    from trainables.device_loop import compile_model
    from trainables.models import build_model

    torch.manual_seed(1)
    model = build_model("digits_cnn", (1, 8, 8), 10, "relu", False)
    twin = compile_model(copy.deepcopy(model), torch.device("cpu"))
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    losses = [F.cross_entropy(m(x), y) for m in (model, twin)]
    for loss in losses:
        loss.backward()
    assert abs(losses[0].item() - losses[1].item()) <= 1e-5
    grads = [[p.grad for p in m.parameters()] for m in (model, twin)]
    assert max((g - h).abs().max().item() for g, h in zip(*grads)) <= 1e-5
    assert max(g.abs().max().item() for g in grads[0]) > 1e-3  # gradients that say something

    config = {**BASE, "epochs": 1, "batch_norm": False, "optimizer": "sgd", "lr": 0.05}
    eager = run(config, digits.sweep_view())
    compiled = run({**config, "compile": True}, digits.sweep_view())
    (a,), (b,) = eager.history, compiled.history
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-2)
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-2)
    assert abs(b["val_acc"] - a["val_acc"]) <= 3 / len(digits.y_val)
    weights = compiled.state["model"]
    assert not any(k.startswith("_orig_mod.") for k in weights)
    assert set(weights) == set(eager.state["model"])
