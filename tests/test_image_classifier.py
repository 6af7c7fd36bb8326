"""The image_classifier trainable without Ray: metrics, determinism, resume, divergence."""
import math

import pytest

from trainables import image_classifier as ic
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
        assert set(h) == {*ic.METRICS, "diverged"}
        assert 0 <= h["train_acc"] <= 1 and 0 <= h["val_acc"] <= 1
        assert h["params"] == 53_098 and h["samples_per_s"] > 0 and h["peak_mem_mb"] > 0
        assert h["diverged"] is False
    assert history[-1]["val_acc"] > 0.85
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # cosine over 3 epochs: lr reported at the start of each epoch
    assert [h["lr"] for h in history] == pytest.approx([3e-3, 3e-3 * 0.75, 3e-3 * 0.25])


def strip(history):
    """Everything but the timings and memory, which vary from run to run."""
    return [{k: v for k, v in e.items() if k not in ("epoch_time_s", "samples_per_s", "peak_mem_mb")}
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
