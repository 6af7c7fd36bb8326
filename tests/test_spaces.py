"""Every search space gets the same checks; overrides are parsed and type-checked."""
import pytest
from ray.tune.search.sample import Categorical

from tune_app.errors import UsageError
from tune_app.spaces import DEFAULT_KEYS, list_spaces, load_space, parse_overrides
from tune_app.tuning import SCHEDULERS, SEARCHERS


def test_the_studies_spaces_are_listed():
    assert {"digits", "cifar_vgg6"} <= set(list_spaces())


@pytest.mark.parametrize("name", list_spaces())
def test_every_space_is_valid_and_documented(name):
    space = load_space(name)
    assert space.searched, "a space searches something"
    assert set(space.defaults) <= set(DEFAULT_KEYS)
    assert space.defaults["searcher"] in SEARCHERS and space.defaults["scheduler"] in SCHEDULERS
    assert space.metric in space.trainable.METRICS and space.mode in ("max", "min")
    assert f"python -m tune_app.search --space {name}" in space.module.__doc__


def test_cifar_vgg6_is_study_one_in_full():
    space = load_space("cifar_vgg6")
    cats = {k: sorted(v.categories) for k, v in space.space.items() if isinstance(v, Categorical)}
    assert cats["activation"] == sorted(["relu", "sigmoid", "tanh", "silu", "gelu", "leaky_relu", "elu"])
    assert cats["optimizer"] == sorted(["sgd", "nesterov", "adam", "adagrad", "rmsprop", "nadam"])
    assert cats["lr"] == [0.0001, 0.001, 0.01]
    assert cats["batch_size"] == [64, 128, 256]
    assert cats["epochs"] == [20, 30, 50, 80]
    assert {"batch_norm", "autoaugment", "cutout", "weight_decay", "seed"} <= set(cats)
    assert space.defaults["num_samples"] == 111
    assert (space.defaults["searcher"], space.defaults["scheduler"]) == ("optuna", "asha")
    assert space.space["dataset"] == "cifar10" and space.space["model"] == "vgg6"


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
    assert space.space["activation"].categories == ["relu", "gelu"]
    assert space.space["lr"] == 0.01 and "lr" not in space.searched


@pytest.mark.parametrize("overrides, message", [
    ({"lrr": 0.1}, "unknown --set key 'lrr'; known keys: activation, autoaugment, batch_norm,"),
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
    with pytest.raises(UsageError, match=r"unknown space 'nope'; known spaces: cifar_vgg6, digits"):
        load_space("nope")
