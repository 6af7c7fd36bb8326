"""Every search space gets the same checks; overrides are parsed and type-checked."""
import pytest
from ray.tune.search.sample import Categorical

from tune_app.errors import UsageError
from tune_app.search.algorithms import SCHEDULERS, SEARCHERS
from tune_app.spaces import SETTING_KEYS, list_spaces, load_space, parse_overrides


def test_the_studies_spaces_are_listed():
    assert {"digits", "cifar_vgg6"} <= set(list_spaces())


@pytest.mark.parametrize("name", list_spaces())
def test_every_space_is_valid_and_documented(name):
    space = load_space(name)
    assert space.searched, "a space searches something"
    assert set(space.settings) <= set(SETTING_KEYS)
    assert space.settings["searcher"] in SEARCHERS and space.settings["scheduler"] in SCHEDULERS
    metrics = (*space.trainable.METRICS, *getattr(space.trainable, "OPTIONAL_METRICS", ()))
    assert space.metric in metrics and space.mode in ("max", "min")
    assert f"python -m tune_app.search --space {name}" in space.module.__doc__


def test_cifar_vgg6_is_study_one_in_full():
    space = load_space("cifar_vgg6")
    cats = {k: sorted(v.categories) for k, v in space.param_space.items() if isinstance(v, Categorical)}
    assert cats["activation"] == sorted(["relu", "sigmoid", "tanh", "silu", "gelu", "leaky_relu", "elu"])
    assert cats["optimizer"] == sorted(["sgd", "nesterov", "adam", "adagrad", "rmsprop", "nadam"])
    assert cats["lr"] == [0.0001, 0.001, 0.01]
    assert cats["batch_size"] == [64, 128, 256]
    assert cats["epochs"] == [20, 30, 50, 80]
    assert {"batch_norm", "autoaugment", "cutout", "weight_decay", "seed"} <= set(cats)
    assert space.settings["num_samples"] == 111
    assert (space.settings["searcher"], space.settings["scheduler"]) == ("optuna", "asha")
    assert space.param_space["dataset"] == "cifar10" and space.param_space["model"] == "vgg6"


def test_cifar100_resnet_is_study_two_grid_exactly():
    from ray.tune.search.variant_generator import generate_variants

    from tune_app.search.algorithms import grid_space

    space = load_space("cifar100_resnet")
    grid = [v for _, v in generate_variants(grid_space(space.param_space))]
    axes = ("model", "mix", "optimizer", "lr", "schedule")
    assert len(grid) == 32 and len({tuple(v[k] for k in axes) for v in grid}) == 32
    assert {v["model"] for v in grid} == {"resnet18", "preact_resnet18"}
    assert {v["mix"] for v in grid} == {"cutmix_mixup", "none"} and {v["lr"] for v in grid} == {1e-4, 1e-2}
    assert {v["optimizer"] for v in grid} == {"nesterov", "adam"}
    assert {v["schedule"] for v in grid} == {"plateau", "cosine"}
    fixed = {k: space.param_space[k] for k in ("batch_size", "epochs", "early_stop_patience", "early_stop_min_delta",
                                          "weight_decay", "momentum", "dataset", "flip")}
    assert fixed == {"batch_size": 256, "epochs": 50, "early_stop_patience": 3, "early_stop_min_delta": 0.01,
                     "weight_decay": 1e-3, "momentum": 0.9, "dataset": "cifar100", "flip": True}
    augment = space.param_space
    assert augment["rotation"] > 0 and augment["color_jitter"] > 0 and augment["crop_padding"] == 4
    assert (space.settings["searcher"], space.settings["scheduler"], space.settings["num_samples"]) == (
        "grid", "fifo", 1)


def test_cifar100_ood_ranks_by_accuracy_on_corrupted_data():
    space = load_space("cifar100_ood")
    assert (space.metric, space.mode) == ("ood_acc", "max")
    cats = {k: sorted(map(str, v.categories)) for k, v in space.param_space.items() if isinstance(v, Categorical)}
    assert cats["model"] == ["resnet18", "resnet50", "small_cnn2", "small_cnn4"]
    assert cats["schedule"] == ["onecycle", "step"] and cats["optimizer"] == ["adam", "sgd"]
    assert {"label_smoothing", "rotation", "blur_sigma", "noise_std"} <= set(cats)
    assert space.param_space["ood_corruptions"] == "all" and space.param_space["ood_severities"] == "1-5"


@pytest.mark.parametrize("text, expected", [
    (["lr=1e-3"], {"lr": 0.001}),
    (["batch_size=64"], {"batch_size": 64}),
    (["batch_norm=false"], {"batch_norm": False}),
    (["activation=[relu, gelu]"], {"activation": ["relu", "gelu"]}),
    (["lr=[1e-3,1e-2]", "optimizer=adam"], {"lr": [0.001, 0.01], "optimizer": "adam"}),
])
def test_overrides_parse_the_way_people_type_them(text, expected):
    assert parse_overrides(text) == expected


def test_a_list_override_becomes_a_searched_choice():
    space = load_space("digits", {"activation": ["relu", "gelu"], "lr": 0.01})
    assert space.param_space["activation"].categories == ["relu", "gelu"]
    assert space.param_space["lr"] == 0.01 and "lr" not in space.searched


@pytest.mark.parametrize("overrides, message", [
    ({"lrr": 0.1}, "unknown --set key 'lrr'; known keys: activation, amp, autoaugment, batch_norm,"),
    ({"lr": -1}, "lr=-1.0: must be >= 1e-12"),
    ({"optimizer": "foo"}, "optimizer='foo': choose one of"),
    ({"batch_size": 0}, "batch_size=0: must be >= 1"),
    ({"activation": ["relu", "swish"]}, "activation='swish': choose one of"),
    ({"dataset": ["digits", "cifar10"]}, "dataset is prepared once for the whole sweep"),
])
def test_bad_overrides_are_one_clear_line(overrides, message):
    with pytest.raises(UsageError) as e:
        load_space("digits", overrides)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_unknown_space_lists_the_known_ones():
    with pytest.raises(UsageError,
                       match=r"unknown space 'nope'; known spaces: cifar100_ood, cifar100_resnet, cifar_vgg6, digits"):
        load_space("nope")


SPACE_FILE = """from ray import tune
TRAINABLE = "image_classifier"
METRIC = "val_acc"
MODE = "max"
SPACE = {"dataset": "digits", "model": "mlp", "lr": tune.loguniform(1e-3, 1e-1)}
"""


def test_a_spaces_old_defaults_still_work_for_a_release_with_a_note(tmp_path, capsys):
    old = tmp_path / "old_space.py"
    old.write_text(SPACE_FILE + 'DEFAULTS = {"searcher": "random", "num_samples": 3}\n')
    space = load_space(str(old))
    assert space.settings == {"searcher": "random", "num_samples": 3} and space.searched == ["lr"]
    err = capsys.readouterr().err.strip()
    assert err == (f"tune_app: note: space {str(old)!r}: DEFAULTS is now SETTINGS; the old name goes in a later "
                   f"release")
    new = tmp_path / "new_space.py"
    new.write_text(SPACE_FILE + 'SETTINGS = {"searcher": "random", "num_samples": 3}\n')
    assert load_space(str(new)).settings == space.settings and capsys.readouterr().err == ""
    both = tmp_path / "both_space.py"
    both.write_text(SPACE_FILE + 'SETTINGS = {"num_samples": 3}\nDEFAULTS = {"num_samples": 4}\n')
    with pytest.raises(UsageError, match="both SETTINGS and DEFAULTS; keep SETTINGS"):
        load_space(str(both))
