"""Bad input: one line, exit code 2, before Ray starts, and nothing written."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tune_app.search import main

pytestmark = pytest.mark.e2e


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def existing_sweep(tmp_path):
    """A run directory that already holds a sweep: tune_app's spec and Ray's state."""
    run_dir = tmp_path / "runs" / "old"
    (run_dir / "summary").mkdir(parents=True)
    (run_dir / "tune_app.json").write_text(json.dumps({
        "space": "digits", "overrides": {}, "expected_trials": 3,
        "settings": {"searcher": "optuna", "scheduler": "asha", "num_samples": 3}}))
    (run_dir / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (run_dir / "summary" / "best_config.json").write_text('{"config": {"lr": 0.01}}')
    return run_dir


def exit_code(argv) -> int:
    """main()'s return value, or argparse's exit code for a malformed command line."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


BAD = [
    (["--space", "nope"], "unknown space 'nope'; known spaces: cifar100_ood, cifar100_resnet, cifar_vgg6, digits"),
    (["--space", "digits", "--set", "lrr=0.1"], "unknown --set key 'lrr'; known keys: activation,"),
    (["--space", "digits", "--set", "lr=-1"], "lr=-1.0: must be >= 1e-12"),
    (["--space", "digits", "--set", "optimizer=foo"], "optimizer='foo': choose one of adagrad, adam,"),
    (["--space", "digits", "--set", "batch_size=0"], "batch_size=0: must be >= 1"),
    (["--space", "digits", "--set", "lr"], "--set 'lr': expected key=value"),
    (["--space", "digits", "--num-samples", "0"], "--num-samples 0: must be at least 1"),
    (["--space", "digits", "--repeats", "0"], "--repeats 0: must be at least 1 (1 trains each configuration once)"),
    (["--space", "digits", "--gpus-per-trial", "1.5"], "--gpus-per-trial 1.5: use a fraction up to 1"),
    (["--space", "digits", "--searcher", "grid"], "--searcher grid needs a list of values for lr"),
    (["--space", "digits", "--scheduler", "pbt"], "--scheduler pbt explores by itself"),
    (["--searcher", "optuna"], "--space is required; known spaces: cifar100_ood, cifar100_resnet, cifar_vgg6, digits"),
    (["--space", "digits", "--searcher", "bayes"], "argument --searcher: invalid choice: 'bayes'"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(argv, message, existing_sweep, capsys):
    before = snapshot(existing_sweep.parent)
    code = exit_code([*argv, "--storage-path", str(existing_sweep.parent), "--name", "new"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert snapshot(existing_sweep.parent) == before


def test_a_name_that_already_holds_a_sweep_is_refused(existing_sweep, capsys):
    before = snapshot(existing_sweep.parent)
    code = main(["--space", "digits", "--storage-path", str(existing_sweep.parent), "--name", "old"])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a sweep; continue it with --resume" in err and err.count("\n") == 1
    assert snapshot(existing_sweep.parent) == before


def test_resume_of_a_directory_without_a_sweep(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["--resume", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == 2 and f"--resume: {tmp_path / 'empty'} holds no tune_app sweep" in err
    assert err.count("\n") == 1 and list((tmp_path / "empty").iterdir()) == []


def test_resume_refuses_a_changed_sweep(existing_sweep, capsys):
    before = snapshot(existing_sweep.parent)
    code = main(["--resume", str(existing_sweep), "--searcher", "random", "--set", "lr=0.1"])
    err = capsys.readouterr().err
    assert code == 2 and "these differ: searcher, lr" in err and err.count("\n") == 1
    assert snapshot(existing_sweep.parent) == before


def test_missing_data_says_where_which_files_and_how(tmp_path, capsys):
    code = main(["--space", "cifar_vgg6", "--data-dir", str(tmp_path / "nodata"),
                 "--storage-path", str(tmp_path / "runs"), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{tmp_path / 'nodata' / 'cifar-10-batches-py'}" in err and "data_batch_1" in err
    assert "python -m trainables.data cifar10" in err
    assert not (tmp_path / "runs").exists()


def test_list_spaces_names_each_with_its_summary(capsys):
    assert main(["--list-spaces"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["cifar100_ood", "cifar100_resnet", "cifar_vgg6", "digits",
                                                   "fashion_mnist_mlp", "mlp_lab", "mnist_mlp"]
    assert "Study 5" in out[0] and "Study 2" in out[1] and "VGG6 on CIFAR-10" in out[2] and "digits" in out[3]
    assert "NumPy MLP" in out[4] and "Study 4" in out[5]


@pytest.mark.parametrize("command", [[sys.executable, "-m", "tune_app.search"],
                                     [str(Path(sys.executable).parent / "tune-app"), "search"]])
def test_the_real_process_exits_2_with_one_line(command, tmp_path):
    run = subprocess.run([*command, "--space", "nope"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "tune_app: error: unknown space 'nope'; known spaces: "
        "cifar100_ood, cifar100_resnet, cifar_vgg6, digits, fashion_mnist_mlp, mlp_lab, mnist_mlp "
        f"(or a .py file, or a module importable from {tmp_path} or PYTHONPATH)"]
    assert list(tmp_path.iterdir()) == []


def test_a_wandb_failure_turns_wandb_off_and_never_raises(monkeypatch, caplog):
    from tune_app.integrations.wandb_trials import WandbTrialRuns

    callback = WandbTrialRuns("offline", project="p", group="g")

    def broken(*args, **kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(WandbTrialRuns, "writer", broken)
    callback.setup()
    assert callback.failed
    assert "W&B setup failed (ConnectionError: api.wandb.ai unreachable)" in caplog.text
    # every later call is a no-op rather than another failure
    callback.log_trial_start(trial=None)
    callback.log_trial_result(1, None, {"val_acc": 0.5})
    callback.on_experiment_end([])
    assert len(caplog.records) == 1


def test_history_falls_back_to_progress_csv_when_result_json_is_empty(tmp_path):
    """Ray can leave a PBT-restarted trial's result.json empty while progress.csv is whole."""
    import pandas as pd

    from tune_app.rundir.reader import read_trials

    folder = tmp_path / "digits_cnn_relu_adam_bs64_lr0.001_abc12345"
    folder.mkdir()
    (folder / "params.json").write_text('{"epochs": 3}')
    rows = [{"epoch": e, "val_acc": 0.5 + e / 10, "train_loss": 1.0 / e, "diverged": False} for e in (1, 2, 3)]
    pd.DataFrame(rows).to_csv(folder / "progress.csv", index=False)
    (folder / "result.json").write_text("")
    (record,) = read_trials(tmp_path, "val_acc")
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3]
    assert [h["val_acc"] for h in record["history"]] == pytest.approx([0.6, 0.7, 0.8])
    assert record["trial_id"] == "abc12345" and record["config"] == {"epochs": 3} and record["error"] is None


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_an_address_nothing_answers_at_is_refused_quickly(tmp_path, capsys, address):
    import time

    t0 = time.monotonic()
    code = main(["--space", "digits", "--address", address, "--storage-path", str(tmp_path / "runs")])
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and seconds < 30
    assert f"--address {address}: nothing answers at 127.0.0.1:1 within 10 s" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command,new", [("search", "--from-top"), ("analyze", "--top-configs"),
                                         ("retrain", "--configs")])
def test_the_old_top_k_spelling_still_works_with_a_note(command, new, capsys):
    """--top-k meant three things; each command's flag now says which, and the old spelling keeps working for a
    release."""
    import importlib

    parser = importlib.import_module(f"tune_app.{command}").build_parser()
    given = ["--space", "digits"] if command == "search" else ["runs/x"]
    old = parser.parse_args([*given, "--top-k", "4"])
    assert old.top_k == 4
    note = f"tune_app: note: --top-k is now {new}; the old spelling goes in a later release\n"
    assert capsys.readouterr().err == note
    assert parser.parse_args([*given, new, "4"]).top_k == 4
    assert capsys.readouterr().err == ""


def test_repeats_of_a_trainable_without_a_seed_are_refused(tmp_path, capsys):
    """Its k runs would be one run k times: say so, before Ray starts."""
    (tmp_path / "seedless.py").write_text(
        "from trainables.params import Param\n"
        "PARAMS = {'lr': Param(0.1, float, 'step size')}\n"
        "def fit(config, data, reporter):\n"
        "    reporter.report({'epoch': 1, 'acc': config['lr']}, {})\n")
    (tmp_path / "space.py").write_text("TRAINABLE = 'seedless:fit'\nMETRIC, MODE = 'acc', 'max'\n"
                                       "SPACE = {'lr': 0.1}\ndef load_data():\n    return None\n")
    code = exit_code(["--space", str(tmp_path / "space.py"), "--repeats", "3", "--storage-path",
                      str(tmp_path / "runs"), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--repeats 3: trainable seedless:fit has no 'seed' parameter, so its repeats would all be the same run" \
        in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("scheduler", ["hyperband", "bohb"])
def test_resume_of_trials_hyperband_left_paused_needs_its_saved_brackets(existing_sweep, scheduler, capsys):
    """tune_app saves HyperBand's brackets in Ray's callback checkpoint (algorithms.HyperBandState), and a resumed
    sweep puts its paused trials back in them; a sweep whose checkpoint lacks them (one run by a tune_app that did
    not save them) is refused in one line: its paused trials would wait forever."""
    import cloudpickle

    from tune_app.search.plan import plan_resume
    from tune_app.settings import SweepSettings

    spec = json.loads((existing_sweep / "tune_app.json").read_text())
    spec["settings"].update(searcher="bohb" if scheduler == "bohb" else "random", scheduler=scheduler)
    (existing_sweep / "tune_app.json").write_text(json.dumps(spec))
    trials = [[json.dumps({"trial_id": tid, "status": status})] for tid, status in
              (("a1", "TERMINATED"), ("b2", "PAUSED"), ("c3", "PAUSED"))]
    (existing_sweep / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trials}))
    callbacks = existing_sweep / "callback-states-2026-01-01_00-00-00.pkl"
    callbacks.write_bytes(cloudpickle.dumps({0: None, 1: {"rungs": []}}))  # another callback's state, no brackets
    before = snapshot(existing_sweep.parent)
    code = main(["--resume", str(existing_sweep)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert (f"--resume: 2 trials of this sweep wait paused in HyperBand's brackets (--scheduler {scheduler}), which "
            f"the tune_app that ran it did not save") in err
    assert err.rstrip().endswith(f"--from-run {existing_sweep}")
    assert snapshot(existing_sweep.parent) == before
    # the same sweep with its brackets saved resumes past this check
    callbacks.write_bytes(cloudpickle.dumps({0: None, 1: {"bands": [], "waiting": ["b2", "c3"]}}))
    assert plan_resume(SweepSettings(resume=str(existing_sweep)))["settings"]["scheduler"] == scheduler
    # and so does one that left no trial paused
    callbacks.unlink()
    running = [trials[0], [json.dumps({"trial_id": "b2", "status": "RUNNING"})]]
    (existing_sweep / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": running}))
    assert plan_resume(SweepSettings(resume=str(existing_sweep)))["settings"]["scheduler"] == scheduler


def test_bohb_is_a_searcher_and_a_scheduler_together(tmp_path, capsys):
    code = main(["--space", "digits", "--searcher", "bohb", "--scheduler", "asha", "--storage-path",
                 str(tmp_path), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "give --searcher bohb with --scheduler bohb" in err
    code = main(["--space", "digits", "--searcher", "random", "--scheduler", "pb2", "--set", "lr=0.01",
                 "--storage-path", str(tmp_path), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--scheduler pb2 tunes the ranges of lr, weight_decay, momentum as it trains" in err
    assert not (tmp_path / "x").exists()


def test_a_searcher_whose_package_is_missing_says_what_to_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "GPy" else find_spec(name, *a))
    code = main(["--space", "digits", "--searcher", "random", "--scheduler", "pb2", "--storage-path", str(tmp_path),
                 "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--scheduler pb2 needs the GPy package: pip install 'tune_app[search]' (or pip install GPy)" in err


def test_wandb_mode_set_empty_counts_as_unset_and_a_wrong_one_is_one_line(tmp_path, capsys, monkeypatch):
    """W&B itself refuses WANDB_MODE="" (as `WANDB_MODE= cmd` sets it) in every trial's process."""
    import os

    from tune_app.integrations.wandb_runs import check_env

    monkeypatch.setenv("WANDB_MODE", "")
    check_env()
    assert "WANDB_MODE" not in os.environ
    monkeypatch.setenv("WANDB_MODE", "ofline")
    code = main(["--space", "digits", "--storage-path", str(tmp_path / "runs"), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "WANDB_MODE='ofline': W&B knows online, offline, disabled; set one of them, or unset it" in err
    assert not (tmp_path / "runs" / "x").exists()
