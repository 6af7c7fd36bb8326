"""W&B sweep files as spaces (--space sweep.yaml) and spaces as W&B sweep files (--export-wandb-sweep).

Every file here is real YAML written by the test; the mapping is asserted on the Ray Tune domain objects, and one
sweep file runs end to end on a local Ray that tune_app starts itself."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from ray.tune.search.sample import Categorical, Float, Integer

import tune_app
from tests.user_project import OWN_FIT
from tune_app import search, wandb_sweep
from tune_app.errors import UsageError
from tune_app.spaces import list_spaces, load_space


def write(folder: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def one_parameter(folder: Path, spec: str, method: str = "random") -> object:
    """The SPACE entry of a sweep file holding one parameter `x: spec`."""
    path = write(folder, f"method: {method}\nmetric: {{name: val_acc, goal: maximize}}\nparameters:\n  x: {spec}\n")
    return wandb_sweep.read_sweep(path).SPACE["x"]


def shape(value):
    """A space entry as plain data: its domain type, bounds, sampler and the sampler's numbers (or the value)."""
    if isinstance(value, Categorical):
        return ("choice", list(value.categories))
    if isinstance(value, (Float, Integer)):
        sampler = value.get_sampler()
        inner = getattr(sampler, "sampler", sampler)
        numbers = {k: v for k, v in vars(inner).items()}
        return (type(value).__name__, value.lower, value.upper, type(inner).__name__, getattr(sampler, "q", None),
                numbers)
    return ("value", value)


# ---------------------------------------------------------------- each distribution -> its Ray Tune domain

@pytest.mark.parametrize("spec,expected", [
    ("{value: 0.5}", ("value", 0.5)),
    ("{values: [relu, tanh, 3]}", ("choice", ["relu", "tanh", 3])),
    ("{distribution: categorical, values: [32, 64]}", ("choice", [32, 64])),
    ("{distribution: uniform, min: 0.1, max: 0.9}", ("Float", 0.1, 0.9, "_Uniform", None, {})),
    ("{min: 0.0, max: 2}", ("Float", 0.0, 2, "_Uniform", None, {})),  # W&B: a real number makes it uniform
    ("{distribution: int_uniform, min: 2, max: 5}", ("Integer", 2, 6, "_Uniform", None, {})),  # max inclusive
    ("{min: 16, max: 128}", ("Integer", 16, 129, "_Uniform", None, {})),  # W&B: two integers make int_uniform
    ("{distribution: log_uniform_values, min: 0.0001, max: 0.1}", ("Float", 1e-4, 0.1, "_LogUniform", None, {})),
    ("{distribution: log_uniform_values, min: 1e-4, max: 1e-1}", ("Float", 1e-4, 0.1, "_LogUniform", None, {})),
    ("{distribution: q_uniform, min: 0.0, max: 1.0, q: 0.25}", ("Float", 0.0, 1.0, "_Uniform", 0.25, {})),
    ("{distribution: q_log_uniform_values, min: 10, max: 1000, q: 10}", ("Float", 10, 1000, "_LogUniform", 10, {})),
    ("{distribution: normal, mu: 0.5, sigma: 0.1}", ("Float", -math.inf, math.inf, "_Normal", None,
                                                     {"mean": 0.5, "sd": 0.1})),
    ("{distribution: normal}", ("Float", -math.inf, math.inf, "_Normal", None, {"mean": 0.0, "sd": 1.0})),
    ("{distribution: q_normal, mu: 10, sigma: 2, q: 0.5}", ("Float", -math.inf, math.inf, "_Normal", 0.5,
                                                           {"mean": 10, "sd": 2})),
    ("{distribution: inv_log_uniform_values, min: 0.01, max: 1}", ("Float", 0.01, 1, "_LogUniform", None, {})),
])
def test_each_distribution_becomes_the_ray_domain_with_its_bounds(tmp_path, spec, expected):
    assert shape(one_parameter(tmp_path, spec)) == expected


def test_the_log_space_distributions_take_e_to_their_bounds(tmp_path):
    """log_uniform's min and max are natural logs (W&B's exp(U(min, max))); inv_log_uniform is exp(-U(min, max))."""
    lr = one_parameter(tmp_path, "{distribution: log_uniform, min: -9.2103, max: -2.3026}")
    assert isinstance(lr, Float) and type(lr.get_sampler()).__name__ == "_LogUniform"
    assert lr.lower == pytest.approx(1e-4, rel=1e-4) and lr.upper == pytest.approx(0.1, rel=1e-4)
    q = one_parameter(tmp_path, "{distribution: q_log_uniform, min: 0, max: 4.605170185988092, q: 1}")
    assert (q.lower, q.get_sampler().q) == (1.0, 1) and q.upper == pytest.approx(100)
    inv = one_parameter(tmp_path, "{distribution: inv_log_uniform, min: 1, max: 3}")
    assert inv.lower == pytest.approx(math.exp(-3)) and inv.upper == pytest.approx(math.exp(-1))
    # sampled, its log is uniform on [-3, -1] as W&B's exp(-U(1, 3)) is: mean -2, quartiles -2.5 and -1.5
    logs = np.log(inv.sample(size=4000, random_state=np.random.default_rng(0)))
    assert logs.min() >= -3 and logs.max() <= -1 and logs.mean() == pytest.approx(-2, abs=0.05)
    assert np.percentile(logs, [25, 75]) == pytest.approx([-2.5, -1.5], abs=0.06)


def test_a_grid_lists_integers_and_q_steps_as_w_and_b_does(tmp_path):
    """W&B's grid turns int_uniform into every integer min..max and q_uniform into numpy.arange(min, max, q)."""
    assert shape(one_parameter(tmp_path, "{distribution: int_uniform, min: 1, max: 4}", "grid")) == \
        ("choice", [1, 2, 3, 4])
    assert shape(one_parameter(tmp_path, "{distribution: q_uniform, min: 0, max: 10, q: 4}", "grid")) == \
        ("choice", [0, 4, 8])
    assert shape(one_parameter(tmp_path, "{distribution: q_uniform, min: 0.0, max: 0.3, q: 0.1}", "grid")) == \
        ("choice", [0.0, 0.1, 0.2])


# ---------------------------------------------------------------- the sweep's settings

SWEEP = """\
program: train.py
project: digits-lab
entity: me
name: first try
description: lr and activation on digits
command:
  - ${env}
  - python
  - ${program}
  - ${args}
method: METHOD
metric:
  name: val_loss
  goal: minimize
parameters:
  dataset: {value: digits}
  model: {value: digits_cnn}
  epochs: {value: 4}
  lr: {distribution: log_uniform_values, min: 0.001, max: 0.1}
  activation: {values: [relu, tanh]}
  batch_size: {values: [32, 64, 128]}
"""


@pytest.mark.parametrize("method,searcher", [("grid", "grid"), ("random", "random"), ("bayes", "optuna")])
def test_method_metric_and_parameters_make_the_space(tmp_path, method, searcher, capsys):
    text = SWEEP.replace("METHOD", method)
    if method == "grid":
        text = text.replace("{distribution: log_uniform_values, min: 0.001, max: 0.1}", "{values: [0.01, 0.1]}")
    space = load_space(str(write(tmp_path, text)))
    assert (space.metric, space.mode, space.trainable.name) == ("val_loss", "min", "image_classifier")
    assert space.settings["searcher"] == searcher and space.settings["scheduler"] == "fifo"
    assert space.settings.get("num_samples") == (1 if method == "grid" else None)  # no run_cap: tune_app's 10
    assert list(space.param_space) == ["dataset", "model", "epochs", "lr", "activation", "batch_size"]
    assert space.searched == ["lr", "activation", "batch_size"]
    assert space.param_space["epochs"] == 4 and space.param_space["batch_size"].categories == [32, 64, 128]
    assert space.name == "sweep" and space.ref == str(tmp_path / "sweep.yaml")
    assert space.module.__doc__.startswith(f"W&B sweep sweep.yaml: method {method} ({searcher}), 3 searched of 6")
    assert capsys.readouterr() == ("", "")  # program, command, project, entity, name, description: ignored quietly


def test_run_cap_hyperband_and_a_missing_metric(tmp_path):
    text = SWEEP.replace("METHOD", "random").replace("metric:\n  name: val_loss\n  goal: minimize\n", "")
    text += "run_cap: 7\nearly_terminate: {type: hyperband, min_iter: 2, eta: 2}\n"
    space = load_space(str(write(tmp_path, text)))
    assert (space.metric, space.mode) == ("val_acc", "max")  # a built-in trainable ranks by val_acc without one
    assert space.settings == {"searcher": "random", "scheduler": "asha", "reduction_factor": 2, "grace_period": 2,
                              "num_samples": 7}
    # max_iter caps the epochs (ASHA's max_t); with s, W&B counts the bands down from it: 27/3^2 = 3 is the first
    text = text.replace("min_iter: 2, eta: 2", "max_iter: 27, s: 2")
    assert load_space(str(write(tmp_path, text))).settings == {
        "searcher": "random", "scheduler": "asha", "reduction_factor": 3, "max_epochs": 27, "grace_period": 3,
        "num_samples": 7}


def test_a_grid_with_a_run_cap_as_large_as_the_grid_runs_it_once(tmp_path):
    text = SWEEP.replace("METHOD", "grid").replace(
        "{distribution: log_uniform_values, min: 0.001, max: 0.1}", "{values: [0.01, 0.1]}") + "run_cap: 12\n"
    assert load_space(str(write(tmp_path, text))).settings["num_samples"] == 1  # 2 x 2 x 3 = 12 combinations


def test_a_trainable_of_the_users_next_to_the_file(tmp_path):
    (tmp_path / "own_fit.py").write_text(OWN_FIT)
    text = ("method: bayes\ntrainable: own_fit:fit\nmetric: {name: acc, goal: maximize}\nrun_cap: 4\n"
            "parameters:\n  lr: {distribution: log_uniform_values, min: 0.05, max: 1.0}\n  epochs: {value: 3}\n")
    try:
        space = load_space(str(write(tmp_path, text, "own.yml")))
    finally:
        sys.modules.pop("own_fit", None)
    assert space.trainable.ref == "own_fit:fit" and not space.trainable.builtin
    assert space.code == {"working_dir": str(tmp_path), "py_modules": []}  # the file's folder ships to the workers
    assert (space.name, space.settings["num_samples"], space.settings["searcher"]) == ("own", 4, "optuna")


def test_the_spec_records_the_file_and_loads_it_again_from_elsewhere(tmp_path, monkeypatch):
    from tune_app.settings import SweepSettings

    project = tmp_path / "lab"
    project.mkdir()
    write(project, SWEEP.replace("METHOD", "random") + "run_cap: 5\n")
    monkeypatch.chdir(project)
    spec = search.spec_of(SweepSettings.from_kwargs("sweep.yaml", storage_path=str(tmp_path / "runs"), name="w"))
    assert spec["space"] == str(project / "sweep.yaml") and spec["code"]["working_dir"] == str(project)
    assert (spec["settings"]["num_samples"], spec["settings"]["searcher"], spec["settings"]["max_epochs"]) == \
        (5, "random", 4)
    assert not (tmp_path / "runs").exists()  # planning writes nothing
    monkeypatch.chdir(tmp_path)  # --resume, analyze and retrain load the recorded space from anywhere
    again = load_space(spec["space"], spec["overrides"], code=spec["code"])
    assert again.searched == ["lr", "activation", "batch_size"] and again.settings["num_samples"] == 5


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written

BAD = [
    ("method: random\nparameters:\n  lr: {min: 0.1, max: 1.0\n  epochs: {value: 2}\n",
     "is not valid YAML (line 4: expected ',' or '}', but got ':'); a W&B sweep file is YAML with method"),
    ("- method: random\n- parameters: {}\n", "holds a list, not a mapping"),
    ("", "holds nothing, not a mapping"),
    ("method: random\nmetric: {name: val_acc, goal: maximize}\n", "no parameters; give parameters:"),
    ("method: bayes\nparameters:\n  lr: {min: 0.001, max: 0.1}\n",
     "method bayes needs a metric to model; add metric: {name: val_acc, goal: maximize}"),
    ("method: custom\nparameters:\n  lr: {value: 0.1}\n", "method 'custom' is not supported; give method: grid, "
                                                          "random or bayes"),
    ("parameters:\n  lr: {value: 0.1}\n", "no method; give method: grid, random or bayes"),
    ("method: [random]\nparameters:\n  lr: {value: 0.1}\n", "method ['random'] is not supported"),
    ("method: random\nparameters:\n  lr: {distribution: [uniform], min: 0, max: 1}\n",
     "parameters.lr: distribution ['uniform'] is not supported; supported: constant,"),
    ("method: random\nparameters:\n  lr: {distribution: beta, a: 2, b: 5}\n",
     "parameters.lr: distribution 'beta' is not supported; supported: constant, categorical, int_uniform, uniform, "
     "q_uniform, log_uniform_values, q_log_uniform_values, inv_log_uniform_values, log_uniform, q_log_uniform, "
     "inv_log_uniform, normal, q_normal"),
    ("method: random\nparameters:\n  lr: {distribution: log_normal, mu: -5, sigma: 1}\n",
     "parameters.lr: distribution 'log_normal' is not supported; supported: constant,"),
    ("method: random\nparameters:\n  lr: {distribution: uniform, min: 0.001}\n",
     "parameters.lr: distribution uniform needs max"),
    ("method: random\nparameters:\n  lr: {distribution: log_uniform_values}\n",
     "parameters.lr: distribution log_uniform_values needs min and max"),
    ("method: random\nparameters:\n  lr: {distribution: uniform, min: 0.5, max: 0.1}\n",
     "parameters.lr: min 0.5 must be below max 0.1"),
    ("method: random\nparameters:\n  lr: {distribution: log_uniform_values, min: 0, max: 0.1}\n",
     "parameters.lr: log_uniform_values needs min above 0"),
    ("method: random\nparameters:\n  width: {distribution: q_uniform, min: 1, max: 64, q: 8}\n",
     "parameters.width: Your lower variable bound 1 is not divisible by quantization factor 8; give min and max that "
     "are multiples of q"),
    ("method: random\nparameters:\n  width: {distribution: q_log_uniform, min: 0, max: 4, q: 5}\n",
     "parameters.width: Your lower variable bound 1.0 is not divisible by quantization factor 5; use "
     "q_log_uniform_values with min and max that are multiples of q"),
    ("method: random\nparameters:\n  lr: {distribution: uniform, min: low, max: 0.1}\n",
     "parameters.lr: min 'low' is not a number"),
    ("method: random\nparameters:\n  lr: {distribution: uniform, mean: 0.1, min: 0, max: 1}\n",
     "parameters.lr: distribution uniform takes min, max, not mean"),
    ("method: random\nparameters:\n  optim:\n    parameters:\n      lr: {value: 0.1}\n",
     "parameters.optim: nested parameters are not supported"),
    ("method: random\nparameters:\n  activation: {values: [relu, tanh], probabilities: [0.9, 0.1]}\n",
     "parameters.activation: values with probabilities are not supported"),
    ("method: random\nparameters:\n  lr: 0.1\n", "parameters.lr: 0.1 is not a mapping"),
    ("method: grid\nparameters:\n  lr: {distribution: log_uniform_values, min: 0.001, max: 0.1}\n",
     "parameters.lr: method grid runs every combination of values, and distribution log_uniform_values has none to "
     "list"),
    ("method: grid\nrun_cap: 3\nparameters:\n  lr: {values: [0.01, 0.1]}\n  batch_size: {values: [32, 64]}\n",
     "run_cap 3 is smaller than the grid's 4 combinations"),
    ("method: random\nrun_cap: 0\nparameters:\n  lr: {value: 0.1}\n", "run_cap 0: give a whole number of runs"),
    ("method: random\nparamters:\n  lr: {value: 0.1}\n", "unknown key 'paramters'; a sweep file has method, metric,"),
    ("method: random\nmetric: {name: val_acc, goal: max}\nparameters:\n  lr: {value: 0.1}\n",
     "metric goal 'max': give maximize or minimize"),
    ("method: random\nearly_terminate: {type: envelope}\nparameters:\n  lr: {value: 0.1}\n",
     "early_terminate type 'envelope' is not supported; give type: hyperband"),
    ("method: random\nearly_terminate: {type: hyperband, eta: 3}\nparameters:\n  lr: {value: 0.1}\n",
     "early_terminate hyperband needs min_iter (epochs before the first stop), or max_iter and s"),
    ("method: random\nearly_terminate: {type: hyperband, min_iter: 1, eta: 2.5}\nparameters:\n  lr: {value: 0.1}\n",
     "early_terminate eta 2.5: give a whole number, at least 2"),
    ("method: random\ntrainable: own_fit:fit\nparameters:\n  lr: {value: 0.1}\n",
     "no metric, and tune_app ranks trials by one"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m[:40] for _, m in BAD])
def test_a_bad_sweep_file_is_one_line_and_exit_2(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    code = search.main(["--space", str(path), "--storage-path", str(tmp_path / "runs"), "--wandb-mode", "disabled"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"tune_app: error: W&B sweep {path}: {message}"), err
    assert not (tmp_path / "runs").exists()


def test_a_parameter_the_trainable_does_not_know_is_refused_with_its_keys(tmp_path, capsys):
    path = write(tmp_path, "method: random\nparameters:\n  widht: {values: [8, 16]}\n  lr: {value: 0.01}\n")
    code = search.main(["--space", str(path), "--storage-path", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"tune_app: error: space '{path}': unknown key 'widht'; known keys: activation, amp, ")
    assert not (tmp_path / "runs").exists()


def test_a_missing_sweep_file_is_one_line(tmp_path, capsys):
    assert search.main(["--space", str(tmp_path / "nope.yaml"), "--storage-path", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err == (f"tune_app: error: --space {tmp_path / 'nope.yaml'}: no such file ({tmp_path / 'nope.yaml'}); "
                   f"give a .py space file, a W&B sweep .yaml file, a built-in ({', '.join(list_spaces())}) "
                   f"or a module name\n")


# ---------------------------------------------------------------- a space as a W&B sweep file, and back

def test_a_built_in_space_exports_and_reads_back_the_same(tmp_path, capsys):
    out = tmp_path / "digits.yaml"
    argv = ["--space", "digits", "--set", "batch_size=[32,64]", "--set", "epochs=[2,3]", "--set", "lr=0.01",
            "--storage-path", str(tmp_path / "runs"), "--export-wandb-sweep", str(out)]
    assert search.main(argv) == 0
    assert capsys.readouterr().out == (f"tune_app: wrote the W&B sweep {out}; run it with python -m tune_app.search "
                                       f"--space {out}\n")
    assert not (tmp_path / "runs").exists()  # nothing trained, no run directory
    config = yaml.safe_load(out.read_text())
    assert config == {
        "method": "bayes", "metric": {"name": "val_acc", "goal": "maximize"},
        "parameters": {
            "dataset": {"value": "digits"}, "model": {"value": "digits_cnn"},
            "activation": {"values": ["relu", "sigmoid", "tanh", "silu", "gelu", "leaky_relu", "elu"]},
            "optimizer": {"values": ["sgd", "nesterov", "adam", "adamw", "adagrad", "rmsprop", "nadam"]},
            "lr": {"value": 0.01}, "batch_size": {"values": [32, 64]}, "batch_norm": {"values": [True, False]},
            "epochs": {"values": [2, 3]}, "weight_decay": {"value": 0.0}, "schedule": {"value": "cosine"},
            "crop_padding": {"value": 0}},
        "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3},  # digits' SETTINGS: ASHA, grace 3
        "run_cap": 20}
    original = load_space("digits", {"batch_size": [32, 64], "epochs": [2, 3], "lr": 0.01})
    back = load_space(str(out))
    assert {k: shape(v) for k, v in back.param_space.items()} == \
        {k: shape(v) for k, v in original.param_space.items()}
    assert back.settings == {"searcher": "optuna", "scheduler": "asha", "reduction_factor": 3, "grace_period": 3,
                             "num_samples": 20}
    assert (back.metric, back.mode, back.trainable.name) == ("val_acc", "max", "image_classifier")


def test_ranges_export_as_their_distributions_and_read_back(tmp_path):
    space = tmp_path / "ranges.py"
    space.write_text('"""Ranges."""\nfrom ray import tune\nTRAINABLE = "image_classifier"\nMETRIC, MODE = "val_loss", '
                     '"min"\nSPACE = {"lr": tune.loguniform(1e-4, 0.1), "momentum": tune.uniform(0.5, 0.99),\n'
                     '         "weight_decay": tune.quniform(0.0, 0.01, 0.001), "batch_size": tune.randint(16, 129),\n'
                     '         "label_smoothing": tune.qloguniform(0.01, 0.5, 0.01), "epochs": 3}\n'
                     'SETTINGS = {"searcher": "random", "scheduler": "fifo", "num_samples": 6}\n')
    out = tmp_path / "ranges.yaml"
    try:
        assert search.main(["--space", str(space), "--export-wandb-sweep", str(out)]) == 0
        original = load_space(str(space))
    finally:
        sys.modules.pop("ranges", None)
    parameters = yaml.safe_load(out.read_text())["parameters"]
    assert parameters["batch_size"] == {"distribution": "int_uniform", "min": 16, "max": 128}
    assert parameters["weight_decay"] == {"distribution": "q_uniform", "min": 0.0, "max": 0.01, "q": 0.001}
    assert parameters["lr"] == {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.1}
    back = load_space(str(out))
    assert {k: shape(v) for k, v in back.param_space.items()} == \
        {k: shape(v) for k, v in original.param_space.items()}
    assert (back.metric, back.mode, back.settings) == ("val_loss", "min", {"searcher": "random", "scheduler": "fifo",
                                                                          "num_samples": 6})


def test_hyperopt_and_hyperband_export_as_bayes_and_hyperband_with_a_note(tmp_path, capsys):
    out = tmp_path / "h.yaml"
    assert search.main(["--space", "digits", "--searcher", "hyperopt", "--scheduler", "hyperband", "--num-samples",
                        "6", "--export-wandb-sweep", str(out)]) == 0
    err = capsys.readouterr().err
    assert "the file reads back as --searcher optuna" in err and "the file reads back as --scheduler asha" in err
    config = yaml.safe_load(out.read_text())
    assert (config["method"], config["run_cap"], config["early_terminate"]) == \
        ("bayes", 6, {"type": "hyperband", "min_iter": 3, "eta": 3})


def test_a_grid_exports_without_a_run_cap(tmp_path):
    out = tmp_path / "grid.yaml"
    assert search.main(["--space", "digits", "--searcher", "grid", "--scheduler", "fifo", "--set", "lr=[0.01,0.1]",
                        "--set", "optimizer=adam", "--export-wandb-sweep", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    assert config["method"] == "grid" and "run_cap" not in config and "early_terminate" not in config
    back = load_space(str(out))
    assert back.settings == {"searcher": "grid", "scheduler": "fifo", "num_samples": 1}
    assert back.param_space["lr"].categories == [0.01, 0.1]


@pytest.mark.parametrize("argv,message", [
    (["--scheduler", "median"], "--export-wandb-sweep: scheduler median has no W&B early_terminate"),
    (["--searcher", "grid", "--num-samples", "2", "--set", "lr=[0.01,0.1]"],
     "--export-wandb-sweep: --num-samples 2 repeats the grid, and W&B's grid runs each combination once"),
    (["--searcher", "grid"], "--export-wandb-sweep: lr is a range, and a grid needs a list of values"),
])
def test_what_w_and_b_cannot_express_is_refused(tmp_path, capsys, argv, message):
    out = tmp_path / "x.yaml"
    assert search.main(["--space", "digits", *argv, "--export-wandb-sweep", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tune_app: error: {message}") and err.count("\n") == 1
    assert not out.exists()


def test_a_custom_sampler_is_refused_naming_its_key(tmp_path, capsys):
    space = tmp_path / "custom_space.py"
    space.write_text('"""A custom sampler."""\nfrom ray import tune\nTRAINABLE = "image_classifier"\n'
                     'METRIC, MODE = "val_acc", "max"\n'
                     'SPACE = {"lr": tune.sample_from(lambda spec: 0.01), "epochs": 2}\n'
                     'SETTINGS = {"searcher": "random"}\n')
    out = tmp_path / "x.yaml"
    try:
        assert search.main(["--space", str(space), "--export-wandb-sweep", str(out)]) == 2
    finally:
        sys.modules.pop("custom_space", None)
    assert capsys.readouterr().err == ("tune_app: error: --export-wandb-sweep: lr is a custom sampler (Function), "
                                       "which a W&B sweep cannot express; give it values (--set lr=[a,b]) or a "
                                       "uniform, log-uniform or normal range\n")
    assert not out.exists()


def test_the_python_api_points_to_the_export_function(tmp_path):
    with pytest.raises(UsageError, match="export_wandb_sweep writes a file and runs no sweep"):
        tune_app.sweep("digits", export_wandb_sweep=str(tmp_path / "x.yaml"))
    from tune_app.search.export import export_wandb_sweep

    path = export_wandb_sweep(tune_app.SweepSettings("digits", num_samples=4,
                                                     export_wandb_sweep=str(tmp_path / "x.yaml")))
    assert yaml.safe_load(path.read_text())["run_cap"] == 4


# ---------------------------------------------------------------- one sweep file, end to end

E2E_SWEEP = """\
program: train.py
project: digits-lab
method: random
metric: {name: val_acc, goal: maximize}
run_cap: 3
parameters:
  dataset: {value: digits}
  model: {value: digits_cnn}
  epochs: {value: 2}
  batch_size: {value: 64}
  lr: {distribution: log_uniform_values, min: 0.003, max: 0.05}
  activation: {values: [relu, tanh]}
"""


@pytest.mark.e2e
def test_a_sweep_file_runs_its_trials_over_its_parameters(tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    write(tmp_path, E2E_SWEEP)
    runs = tmp_path / "runs"
    assert search.main(["--space", "sweep.yaml", "--name", "wb", "--storage-path", str(runs), "--wandb-mode",
                        "disabled", "--cpus-per-trial", "1"]) == 0
    assert not ray.is_initialized()
    run_dir = runs / "wb"
    spec = json.loads((run_dir / "tune_app.json").read_text())
    assert spec["space"] == str(tmp_path / "sweep.yaml") and spec["code"]["working_dir"] == str(tmp_path)
    assert (spec["settings"]["searcher"], spec["settings"]["scheduler"], spec["settings"]["num_samples"]) == \
        ("random", "fifo", 3)
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    assert len(trials) == 3 and set(trials["status"]) == {"completed"}
    assert sorted(c for c in trials.columns if c.startswith("config/")) == [
        "config/activation", "config/batch_size", "config/dataset", "config/epochs", "config/lr", "config/max_epochs",
        "config/model", "config/seed"]
    assert trials["config/lr"].between(0.003, 0.05).all() and trials["config/lr"].nunique() == 3
    assert set(trials["config/activation"]) <= {"relu", "tanh"}
    assert set(trials["config/epochs"]) == {2} and set(trials["config/batch_size"]) == {64}
    assert set(trials["config/dataset"]) == {"digits"} and set(trials["config/model"]) == {"digits_cnn"}
    history = pq.read_table(run_dir / "summary" / "history.parquet").to_pandas()
    assert len(history) == 6 and history["val_acc"].between(0, 1).all()
    monkeypatch.chdir(Path.home())  # the recorded file is found again from anywhere
    again = tune_app.analyze(run_dir, quiet=True)
    assert len(again.trials) == 3 and 0.003 <= again.best_config["lr"] <= 0.05
