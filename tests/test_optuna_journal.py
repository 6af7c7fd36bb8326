"""The Optuna study a sweep keeps in <run dir>/optuna.journal, read back with Optuna's own storage API, agrees with
tune_app's summary trial by trial (what optuna-dashboard shows): the user attribute trial_id names the summary
row, a trial ASHA stopped is PRUNED, one that ran its epochs COMPLETE with its last epoch's value, and every
epoch reported is an intermediate value; an errored trial that --retry-errored finishes joins as a new trial."""
import json

import optuna
import pyarrow.parquet as pq
import pytest

from tune_app.search import main
from tune_app.search.optuna_resume import finished_state

pytestmark = pytest.mark.e2e

# Half the learning rates cannot learn in 3 epochs (about 10 % on digits), so ASHA (grace period 1, reduction
# factor 2: rungs at epochs 1 and 2) stops those that reach a rung after a better trial; epochs 2 or 3, so some
# trials end at their own planned length below max_t.
ASHA_SPACE = '''
"""Digits under ASHA for the journal test: python -m tune_app.search --space ./asha_space.py"""
from ray import tune

TRAINABLE = "image_classifier"
METRIC, MODE = "val_acc", "max"
SPACE = {
    "dataset": "digits",
    "model": "digits_cnn",
    "optimizer": "adam",
    "lr": tune.choice([1e-6, 3e-3]),  # per step; 1e-6 learns nothing in 3 epochs
    "batch_size": 128,
    "epochs": tune.choice([2, 3]),
}
SETTINGS = {"searcher": "optuna", "scheduler": "asha", "num_samples": 6, "max_epochs": 3, "grace_period": 1,
            "reduction_factor": 2, "cpus_per_trial": 1, "gpus_per_trial": 0}
'''


def study_and_summary(run_dir, name):
    backend = optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal"))
    study = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(backend))
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    return study.trials, trials.set_index("trial_id")


@pytest.fixture(scope="module")
def asha_sweep(faults_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("asha")
    (root / "asha_space.py").write_text(ASHA_SPACE)
    code = main(["--space", str(root / "asha_space.py"), "--storage-path", str(root / "runs"), "--name", "asha",
                 "--seed", "0", "--wandb-mode", "disabled"])
    return (code, *study_and_summary(root / "runs" / "asha", "asha"))


def test_the_sweep_has_trials_asha_stopped_and_trials_that_completed(asha_sweep):
    code, told, trials = asha_sweep
    assert code == 0 and len(trials) == 6
    assert set(trials["status"]) == {"completed", "stopped"}


def test_every_optuna_trial_names_one_tune_app_trial(asha_sweep):
    _, told, trials = asha_sweep
    assert sorted(t.user_attrs["trial_id"] for t in told) == sorted(trials.index)


def test_stopped_trials_are_pruned_and_completed_ones_complete_with_their_final_value(asha_sweep):
    _, told, trials = asha_sweep
    for t in told:
        row = trials.loc[t.user_attrs["trial_id"]]
        expected = {"completed": "COMPLETE", "stopped": "PRUNED"}[row["status"]]
        assert (t.state.name, t.value) == (expected, row["final_val_acc"]), t.user_attrs["trial_id"]


def test_every_epoch_is_an_intermediate_value_the_last_one_included(asha_sweep):
    _, told, trials = asha_sweep
    for t in told:
        row = trials.loc[t.user_attrs["trial_id"]]
        assert sorted(t.intermediate_values) == list(range(1, row["epochs"] + 1)), t.user_attrs["trial_id"]
        assert t.intermediate_values[row["epochs"]] == row["final_val_acc"]
    stopped = trials[trials["status"] == "stopped"]
    assert (stopped["epochs"] < stopped["target_epochs"]).all()  # ASHA stopped them before their planned epochs


@pytest.mark.parametrize("result, state", [
    ({"epoch": 3, "config/epochs": 3, "config/max_epochs": 3}, "COMPLETE"),  # ran its epochs (ASHA at max_t)
    ({"epoch": 2, "config/epochs": 2, "config/max_epochs": 3}, "COMPLETE"),  # its own length, below max_t
    ({"epoch": 1, "config/epochs": 3, "config/max_epochs": 3}, "PRUNED"),  # a scheduler stopped it
    ({"epoch": 2, "config/epochs": 5, "config/max_epochs": 2}, "COMPLETE"),  # capped by max_epochs
    ({"epoch": 2, "config/epochs": 5, "config/max_epochs": 0}, "PRUNED"),  # 0: no cap
    ({"epoch": 2, "config/epochs": 5, "early_stopped": True}, "COMPLETE"),  # stopped itself
    ({"training_iteration": 4, "config": {"max_epochs": 4}}, "COMPLETE"),  # no epochs key: max_epochs plans it
    ({"training_iteration": 1}, "COMPLETE"),  # nothing planned: as Ray's searcher says
])
def test_finished_state_compares_the_epochs_reported_with_the_planned_ones(result, state):
    assert finished_state(result).name == state


@pytest.fixture(scope="module")
def retried_sweep(faults_file, tmp_path_factory):
    """One trial that crashes at epoch 2 once and, with --max-failures 0, ends as error; --resume --retry-errored
    finishes it from its epoch-1 checkpoint."""
    faults_file.write_text(json.dumps([{"epoch": 2, "times": 1}]))
    runs = tmp_path_factory.mktemp("retry")
    argv = ["--space", "digits", "--searcher", "optuna", "--scheduler", "fifo", "--num-samples", "1",
            "--set", "activation=[relu,tanh]", "--set", "optimizer=adam", "--set", "lr=0.003",
            "--set", "batch_size=128", "--set", "epochs=3", "--set", "batch_norm=true", "--max-epochs", "3",
            "--cpus-per-trial", "1", "--wandb-mode", "disabled", "--storage-path", str(runs), "--name", "retry",
            "--seed", "1", "--max-failures", "0"]
    first = main(argv)
    crashed = pq.read_table(runs / "retry" / "summary" / "trials.parquet").to_pandas()
    resumed = main(["--resume", str(runs / "retry"), "--retry-errored"])
    return first, crashed, resumed, *study_and_summary(runs / "retry", "retry")


def test_a_retried_trial_joins_the_study_as_a_new_complete_trial_with_every_epoch(retried_sweep):
    first, crashed, resumed, told, trials = retried_sweep
    assert (first, resumed) == (1, 0) and list(crashed["status"]) == ["error"]
    assert list(trials["status"]) == ["completed"]
    failed, again = told
    assert (failed.state.name, again.state.name) == ("FAIL", "COMPLETE")
    assert failed.user_attrs["trial_id"] == again.user_attrs["trial_id"] == trials.index[0]
    assert failed.params == again.params and again.user_attrs["retried"] and "retried" not in failed.user_attrs
    assert sorted(failed.intermediate_values) == [1]  # it crashed at epoch 2
    assert sorted(again.intermediate_values) == [1, 2, 3]
    assert again.value == again.intermediate_values[3] == trials["final_val_acc"].iloc[0]


@pytest.fixture(scope="module")
def repeats_sweep(faults_file, tmp_path_factory):
    """The ASHA space with --repeats 2: every trial trains seeds 0 and 1; those at lr 3e-3 crash once at epoch 2
    and are retried from their epoch-1 checkpoint, which holds both runs."""
    faults_file.write_text(json.dumps([{"epoch": 2, "times": 1, "where": {"lr": 3e-3}}]))
    root = tmp_path_factory.mktemp("repeats")
    (root / "asha_space.py").write_text(ASHA_SPACE)
    code = main(["--space", str(root / "asha_space.py"), "--storage-path", str(root / "runs"), "--name", "twice",
                 "--seed", "0", "--num-samples", "4", "--repeats", "2", "--wandb-mode", "disabled"])
    run_dir = root / "runs" / "twice"
    history = pq.read_table(run_dir / "summary" / "history.parquet").to_pandas()
    best = json.loads((run_dir / "summary" / "best_config.json").read_text())
    told, runs = study_and_summary(run_dir, "twice")
    drilled = (faults_file.parent / (faults_file.name + ".log")).read_text().split()  # the module's other sweeps too
    crashed = {line.split(":")[1] for line in drilled} & set(runs.index)
    return code, told, runs, history, best, crashed


def test_repeats_give_one_row_per_run_and_the_searcher_and_scheduler_see_their_mean(repeats_sweep):
    code, told, runs, history, best, crashed = repeats_sweep
    assert code == 0 and len(told) == 4 and len(runs) == 8
    for trial_id, rows in runs.groupby(level=0):
        assert list(rows["repeat"]) == [0, 1] and list(rows["config/seed"]) == [0, 1], trial_id
        assert rows["epochs"].nunique() == 1 and rows["status"].nunique() == 1
    # every epoch Ray got (what ASHA ranked) is the mean of the two runs' epochs
    assert history["val_acc"].to_numpy() == pytest.approx(
        (history["runs/0/val_acc"] + history["runs/1/val_acc"]).to_numpy() / 2, abs=1e-15)
    assert (history["runs/0/val_acc"] != history["runs/1/val_acc"]).any()  # two seeds, two runs
    for t in told:  # and so is every value Optuna was told
        rows = runs.loc[[t.user_attrs["trial_id"]]]
        mine = history[history["trial_id"] == t.user_attrs["trial_id"]].set_index("epoch")
        assert t.intermediate_values == pytest.approx(mine["val_acc"].to_dict(), abs=1e-15)
        if t.state.name == "COMPLETE":
            assert t.value == pytest.approx(rows["final_val_acc"].mean(), abs=1e-15)
    assert set(runs.loc[list(crashed), "status"]) <= {"completed", "stopped"}
    assert len(crashed) >= 1 and (runs.loc[list(crashed), "epochs"] >= 2).all()  # retried past the crash
    # the best is the mean of its runs, and the set within noise comes from the runs' spread
    mine = runs.loc[[best["trial_id"]]]
    assert best["value"] == pytest.approx(mine["final_val_acc"].mean(), abs=1e-15)
    assert [(r["seed"], r["value"]) for r in best["runs"]] == list(zip(mine["config/seed"], mine["final_val_acc"]))
    assert best["noise_rule"]["test"] == "welch_t" and best["noise_rule"]["repeats"] == 2
