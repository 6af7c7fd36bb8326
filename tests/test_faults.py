"""Faults injected into real sweeps on a local Ray: a trial that crashes once is retried from its checkpoint
and ends as if nothing happened; one that keeps crashing ends as error with its traceback while the sweep goes
on; --resume --retry-errored finishes it; --keep-checkpoints bounds the checkpoints and keeps the best."""
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from trainables import image_classifier as ic
from trainables.reporting import LocalReporter
from tune_app import search
from tune_app.ray_adapter import FAULTS_ENV, STATE_FILE

FIXED = {"optimizer": "adam", "lr": 0.003, "batch_size": 64, "epochs": 3, "batch_norm": "true"}


@pytest.fixture(scope="module")
def faults_file(tmp_path_factory):
    """Ray's workers inherit the driver's environment at ray.init: the drill file is named before it."""
    import ray

    path = tmp_path_factory.mktemp("drill") / "faults.json"
    os.environ[FAULTS_ENV] = str(path)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield path
    ray.shutdown()
    del os.environ[FAULTS_ENV]


def argv(runs, *extra, activations="[relu,tanh]"):
    out = ["--space", "digits", "--searcher", "grid", "--scheduler", "fifo", "--set", f"activation={activations}",
           "--cpus-per-trial", "1", "--storage-path", str(runs), "--name", "drill", "--wandb-mode", "disabled",
           *extra]
    for key, value in FIXED.items():
        out += ["--set", f"{key}={value}"]
    return out


def trials_of(run_dir):
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    history = pq.read_table(run_dir / "summary" / "history.parquet").to_pandas()
    return trials.set_index("config/activation"), history


@pytest.fixture(scope="module")
def drilled(faults_file, tmp_path_factory):
    """relu crashes once at epoch 2; tanh crashes at epoch 2 every time (1 run + 2 retries)."""
    faults_file.write_text(json.dumps([{"epoch": 2, "times": 1, "where": {"activation": "relu"}},
                                       {"epoch": 2, "times": 99, "where": {"activation": "tanh"}}]))
    runs = tmp_path_factory.mktemp("runs")
    code = search.main(argv(runs, "--max-failures", "2", "--keep-checkpoints", "1"))
    injected = Path(str(faults_file) + ".log").read_text().split()
    return code, runs / "drill", injected


def test_a_crash_is_retried_from_the_checkpoint_and_changes_nothing(drilled, digits):
    code, run_dir, injected = drilled
    assert code == 0
    trials, history = trials_of(run_dir)
    relu = trials.loc["relu"]
    assert relu["status"] == "completed" and relu["epochs"] == 3
    assert sum(line.startswith("0:") for line in injected) == 1  # crashed once
    rows = history[history["trial_id"] == relu["trial_id"]]
    assert rows["epoch"].tolist() == [1, 2, 3]
    # the same configuration trained without a crash, one thread as the trial had: identical numbers
    torch.set_num_threads(1)
    try:
        config = {**json.loads((run_dir / "summary" / "best_config.json").read_text())["config"]}
        clean = LocalReporter()
        ic.fit(config, digits.sweep_view(), clean)
    finally:
        torch.set_num_threads(2)
    assert config["activation"] == "relu"
    assert rows["train_loss"].tolist() == [h["train_loss"] for h in clean.history]
    assert rows["val_acc"].tolist() == [h["val_acc"] for h in clean.history]


def test_a_trial_that_keeps_crashing_ends_as_error_and_the_sweep_goes_on(drilled):
    _, run_dir, injected = drilled
    trials, _ = trials_of(run_dir)
    tanh = trials.loc["tanh"]
    assert sum(line.startswith("1:") for line in injected) == 3  # the run and --max-failures 2 retries
    assert tanh["status"] == "error" and tanh["epochs"] == 1
    assert "FaultDrill: fault drill 1" in tanh["error"] and "crashes at epoch 2 (3 of 99)" in tanh["error"]
    error_txt = next(run_dir.glob(f"*{tanh['trial_id']}*/error.txt")).read_text()
    assert "in inject_faults" in error_txt and "FaultDrill: fault drill 1" in error_txt  # the stack, saved


def test_keep_checkpoints_keeps_the_best_and_the_latest(drilled):
    _, run_dir, _ = drilled
    trials, history = trials_of(run_dir)
    relu = trials.loc["relu"]
    folder = next(run_dir.glob(f"*{relu['trial_id']}*"))
    epochs = sorted(torch.load(c / STATE_FILE, weights_only=False)["epoch"] for c in folder.glob("checkpoint_*"))
    rows = history[history["trial_id"] == relu["trial_id"]].set_index("epoch")["val_acc"]
    best = int(rows.idxmax())  # the earliest epoch with the best val_acc
    assert 3 in epochs and len(epochs) <= 2  # --keep-checkpoints 1: the best, and the latest besides
    assert any(rows[e] == rows.max() for e in epochs), (epochs, rows.to_dict(), best)


def test_resume_retry_errored_finishes_the_errored_trial_from_its_checkpoint(drilled, faults_file, capsys):
    _, run_dir, _ = drilled
    faults_file.write_text("[]")  # the fault is gone
    assert search.main(["--resume", str(run_dir), "--retry-errored"]) == 0
    trials, history = trials_of(run_dir)
    assert (trials["status"] == "completed").all() and len(trials) == 2
    rows = history[history["trial_id"] == trials.loc["tanh", "trial_id"]]
    assert rows["epoch"].tolist() == [1, 2, 3]


def test_retry_errored_without_resume_is_refused(capsys):
    assert search.main(["--space", "digits", "--retry-errored"]) == 2
    assert "--retry-errored goes with --resume RUN_DIR" in capsys.readouterr().err


def test_out_of_memory_and_a_hung_trial_get_their_own_status_and_the_sweep_goes_on(faults_file, tmp_path):
    """relu runs out of (CUDA) memory at epoch 2 every time; tanh stops reporting at epoch 2 and is stopped by
    --trial-timeout; gelu is untouched and wins."""
    faults_file.write_text(json.dumps([{"epoch": 2, "times": 99, "kind": "oom", "where": {"activation": "relu"}},
                                       {"epoch": 2, "times": 99, "kind": "hang", "where": {"activation": "tanh"}}]))
    code = search.main(argv(tmp_path / "runs", "--max-failures", "1", "--trial-timeout", "4",
                            activations="[relu,tanh,gelu]"))
    assert code == 0
    trials, _ = trials_of(tmp_path / "runs" / "drill")
    assert trials["status"].to_dict() == {"relu": "oom", "tanh": "timeout", "gelu": "completed"}
    assert "OutOfMemoryError: CUDA out of memory" in trials.loc["relu", "error"]
    assert (trials.loc[["relu", "tanh"], "epochs"] == 1).all()
    folder = next((tmp_path / "runs" / "drill").glob(f"*{trials.loc['tanh', 'trial_id']}*"))
    assert "(--trial-timeout 4); stopped" in (folder / "timeout.txt").read_text()
    best = json.loads((tmp_path / "runs" / "drill" / "summary" / "best_config.json").read_text())
    assert best["config"]["activation"] == "gelu"
