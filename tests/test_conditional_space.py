"""A conditional (define-by-run) space: SPACE as a function of an Optuna trial. Checked before Ray starts by a few
hundred throw-away draws; run by Optuna's samplers through Ray's OptunaSearch; trials hold only the keys they drew."""
import json
import math

import optuna
import pyarrow.parquet as pq
import pytest

from tune_app.errors import UsageError
from tune_app.search import main
from tune_app.spaces import load_space

CONDITIONAL = '''
"""Digits with momentum only for SGD: python -m tune_app.search --space ./cond_space.py"""
TRAINABLE = "image_classifier"
METRIC, MODE = "val_acc", "max"


def SPACE(trial):
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam"])
    if optimizer == "sgd":
        trial.suggest_float("momentum", 0.5, 0.95)
    trial.suggest_float("lr", 1e-3, 3e-2, log=True)
    return {"dataset": "digits", "model": "digits_cnn", "epochs": 2, "batch_size": 128}


SETTINGS = {"searcher": "optuna", "num_samples": 5, "cpus_per_trial": 1}
'''


def space_file(folder, body):
    (folder / "cond_space.py").write_text(body)
    return str(folder / "cond_space.py")


def test_the_function_is_drawn_and_checked_before_ray_starts(tmp_path):
    space = load_space(space_file(tmp_path, CONDITIONAL))
    assert sorted(space.drawn) == ["lr", "momentum", "optimizer"] and space.conditional == ["momentum"]
    assert space.searched == space.drawn and space.drawn[0] == "optimizer"  # in the order the draws first gave them
    # what the function returns the same every time is a constant the driver sees (it prepares digits once)
    assert {k: space.param_space[k] for k in ("dataset", "model", "epochs", "batch_size")} == \
        {"dataset": "digits", "model": "digits_cnn", "epochs": 2, "batch_size": 128}
    lr, momentum = space.drawn_domains["lr"], space.drawn_domains["momentum"]
    assert (lr.lower, lr.upper, type(lr.get_sampler()).__name__) == (1e-3, 3e-2, "_LogUniform")
    assert (momentum.lower, momentum.upper, type(momentum.get_sampler()).__name__) == (0.5, 0.95, "_Uniform")
    assert space.drawn_domains["optimizer"].categories == ["sgd", "adam"]


BAD = [
    (CONDITIONAL.replace('"optimizer", ["sgd", "adam"]', '"optimizer", ["sgd", "adamm"]'),
     [], "optimizer='adamm': choose one of"),
    (CONDITIONAL.replace('trial.suggest_float("lr", 1e-3, 3e-2, log=True)', 'trial.suggest_float("lrr", 1e-3, 3e-2)'),
     [], "unknown key 'lrr'; known keys:"),
    (CONDITIONAL.replace('        trial.suggest_float("momentum", 0.5, 0.95)', '        1 / 0'),
     [], "SPACE(trial) raised ZeroDivisionError (line 10): division by zero"),
    (CONDITIONAL.replace('"epochs": 2,', '"epochs": 2, "dataset_x": 1,'), [], "unknown key 'dataset_x'"),
    (CONDITIONAL.replace('"dataset": "digits"', '"dataset": trial.suggest_categorical("dataset", ["digits"])'),
     [], "SPACE(trial) gives dataset more than one value; dataset is prepared once"),
    (CONDITIONAL.replace('    return {', '    return [').replace('128}', '128]').replace('"dataset": ', '')
     .replace('"model": ', '').replace('"epochs": ', '').replace('"batch_size": ', ''), [],
     "SPACE(trial) returned a list; return a dict of the keys it does not draw (or None)"),
    (CONDITIONAL, ["--searcher", "random"],
     "--searcher random: SPACE in {file} is a function of an Optuna trial, which only Optuna's samplers run; use "
     "--searcher optuna, gp, cmaes or nsga2"),
    (CONDITIONAL, ["--searcher", "grid"], "--searcher grid: SPACE in {file} is a function of an Optuna trial"),
    (CONDITIONAL, ["--searcher", "hyperopt"], "--searcher hyperopt: SPACE in {file} is a function"),
    (CONDITIONAL, ["--set", "lr=0.01"], "--set lr=0.01: SPACE is a function that draws its own values"),
    (CONDITIONAL, ["--plan"], "--plan probes the configurations a space's domains allow, and SPACE in {file} is a "
                              "function with none"),
]


@pytest.mark.parametrize("body, argv, message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_input_is_one_line_before_ray(body, argv, message, tmp_path, capsys):
    file = space_file(tmp_path, body)
    code = main(["--space", file, *argv, "--storage-path", str(tmp_path / "runs"), "--name", "x",
                 "--wandb-mode", "disabled"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert message.format(file=file) in err
    assert not (tmp_path / "runs").exists()
    import ray

    assert not ray.is_initialized()


def test_a_function_of_a_trial_that_is_no_space_says_so(tmp_path):
    with pytest.raises(UsageError, match="SPACE must be a dict of keys to values or tune domains, or a function"):
        load_space(space_file(tmp_path, CONDITIONAL.replace("def SPACE(trial):", "SPACE = 3\n\n\ndef f(trial):")))


@pytest.fixture(scope="module")
def conditional_sweep(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("conditional")
    file = space_file(root, CONDITIONAL)
    code = main(["--space", file, "--storage-path", str(root / "runs"), "--name", "cond", "--seed", "3",
                 "--wandb-mode", "disabled"])
    run_dir = root / "runs" / "cond"
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas().set_index("trial_id")
    study = optuna.load_study(study_name="cond", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal"))))
    return code, run_dir, trials, study


@pytest.mark.e2e
def test_each_trial_holds_only_the_keys_it_drew(conditional_sweep):
    code, run_dir, trials, study = conditional_sweep
    assert code == 0 and len(trials) == 5 and set(trials["status"]) == {"completed"}
    assert set(trials["config/optimizer"]) == {"sgd", "adam"}  # seed 3 draws both within 5 trials
    for trial_id, row in trials.iterrows():
        if row["config/optimizer"] == "sgd":
            assert 0.5 <= row["config/momentum"] <= 0.95, trial_id
        else:
            assert math.isnan(row["config/momentum"]), trial_id
        assert 1e-3 <= row["config/lr"] <= 3e-2 and row["config/epochs"] == 2 and row["config/batch_size"] == 128
        params = json.loads((next(run_dir.glob(f"*_{trial_id}")) / "params.json").read_text())
        assert ("momentum" in params) == (row["config/optimizer"] == "sgd")
    # Optuna's study drew exactly those values, trial by trial
    for t in study.trials:
        row = trials.loc[t.user_attrs["trial_id"]]
        assert t.params == {k: row[f"config/{k}"] for k in ("optimizer", "momentum", "lr")
                            if not (k == "momentum" and row["config/optimizer"] == "adam")}
        assert t.value == row["final_val_acc"]


@pytest.mark.e2e
def test_the_analysis_bins_drawn_ranges_and_attributes_importance_to_keys_every_trial_has(conditional_sweep):
    _, run_dir, trials, _ = conditional_sweep
    trends = __import__("pandas").read_csv(run_dir / "summary" / "trends.csv")
    epoch = trends[trends["view"] == "epoch 2"]
    assert set(epoch[epoch["hyperparameter"] == "lr"]["value"]) <= {"[0.001, 0.01)", "[0.01, 0.03]"}
    momentum = epoch[epoch["hyperparameter"] == "momentum"]
    assert momentum["n"].sum() == (trials["config/optimizer"] == "sgd").sum()  # only the trials that drew it
    importance = __import__("pandas").read_csv(run_dir / "summary" / "importance.csv")
    assert set(importance["hyperparameter"]) <= {"optimizer", "lr"} and "momentum" not in set(
        importance["hyperparameter"])
