"""Faults injected into real sweeps on a local Ray: a trial that crashes once is retried from its checkpoint
and ends as if nothing happened; one that keeps crashing ends as error with its traceback while the sweep goes
on; --resume --retry-errored finishes it; --keep-checkpoints bounds the checkpoints and keeps the best."""
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from trainables import image_classifier as ic
from trainables.reporting import LocalReporter
from tune_app import search
from tune_app.cluster.adapter import STATE_FILE

pytestmark = pytest.mark.e2e

FIXED = {"optimizer": "adam", "lr": 0.003, "batch_size": 64, "epochs": 3, "batch_norm": "true"}


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
    """relu crashes once at epoch 2; tanh crashes at epoch 2 every time (1 run + 2 retries). A checkpoint every
    epoch (--checkpoint-every-s 0), so that the retry starts from epoch 1's and --keep-checkpoints has a choice
    (tests/test_checkpoint_cadence.py drills the default cadence)."""
    faults_file.write_text(json.dumps([{"epoch": 2, "times": 1, "where": {"activation": "relu"}},
                                       {"epoch": 2, "times": 99, "where": {"activation": "tanh"}}]))
    runs = tmp_path_factory.mktemp("runs")
    code = search.main(argv(runs, "--max-failures", "2", "--keep-checkpoints", "1",
                            "--checkpoint-every-s", "0"))
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
    results = next(run_dir.glob(f"*{relu['trial_id']}*/result.json")).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in results] == [1, 2, 3]  # the retry began at epoch 1's checkpoint
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
    --trial-timeout; gelu is untouched and wins. The timeout counts from a trial's start, and with two workers
    starting at once on 2 busy cores, relu's first report once came more than 4 s after it: 8 s, so that relu is
    not stopped before it reports (with 4 s it was, and could have ended as timeout)."""
    faults_file.write_text(json.dumps([{"epoch": 2, "times": 99, "kind": "oom", "where": {"activation": "relu"}},
                                       {"epoch": 2, "times": 99, "kind": "hang", "where": {"activation": "tanh"}}]))
    code = search.main(argv(tmp_path / "runs", "--max-failures", "1", "--trial-timeout", "8",
                            activations="[relu,tanh,gelu]"))
    assert code == 0
    trials, _ = trials_of(tmp_path / "runs" / "drill")
    assert trials["status"].to_dict() == {"relu": "oom", "tanh": "timeout", "gelu": "completed"}
    assert "OutOfMemoryError: CUDA out of memory" in trials.loc["relu", "error"]
    assert (trials.loc[["relu", "tanh"], "epochs"] == 1).all()
    folder = next((tmp_path / "runs" / "drill").glob(f"*{trials.loc['tanh', 'trial_id']}*"))
    assert "(--trial-timeout 8); stopped" in (folder / "timeout.txt").read_text()
    best = json.loads((tmp_path / "runs" / "drill" / "summary" / "best_config.json").read_text())
    assert best["config"]["activation"] == "gelu"


def test_a_diverging_trial_ends_diverged_and_is_never_best(faults_file, tmp_path):
    """Plain SGD at lr 1e6 blows up at once; 0.003 trains. The diverged trial stops at that epoch."""
    faults_file.write_text("[]")
    code = search.main([*argv(tmp_path / "runs", activations="[relu]"), "--set", "optimizer=sgd",
                        "--set", "batch_norm=false", "--set", "lr=[0.003,1e6]"])
    assert code == 0
    trials = pq.read_table(tmp_path / "runs" / "drill" / "summary" / "trials.parquet").to_pandas()
    by_lr = trials.set_index("config/lr")
    assert by_lr.loc[1e6, "status"] == "diverged" and by_lr.loc[1e6, "epochs"] == 1
    assert by_lr.loc[0.003, "status"] == "completed" and by_lr.loc[0.003, "epochs"] == 3
    best = json.loads((tmp_path / "runs" / "drill" / "summary" / "best_config.json").read_text())
    assert best["config"]["lr"] == 0.003


def wandb_runs(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "wandb").glob("offline-run-*") if p.is_dir())


def test_an_unreachable_wandb_server_means_offline_runs_and_a_complete_sweep(faults_file, tmp_path, monkeypatch,
                                                                             capsys):
    """--wandb-mode online with a W&B server nothing answers at: one warning, W&B runs kept offline, and the
    sweep as complete as without W&B (W&B alone would wait out its timeouts in every run)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    faults_file.write_text("[]")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    args = [a if a != "disabled" else "online" for a in argv(tmp_path / "runs")]
    assert search.main(args) == 0
    err = capsys.readouterr().err
    assert f"W&B server http://127.0.0.1:{port} unreachable" in err and "logging offline instead" in err
    run_dir = tmp_path / "runs" / "drill"
    trials, history = trials_of(run_dir)
    assert (trials["status"] == "completed").all() and len(history) == 6
    assert len(wandb_runs(run_dir)) == 3  # a run per trial and the summary run
    assert (run_dir / "summary" / "report.html").is_file()


def test_wandb_crashing_in_every_run_leaves_warnings_and_a_complete_sweep(faults_file, tmp_path, caplog):
    """W&B cannot write its files (its folder in the run directory is a file): every trial's W&B run and the
    summary run fail; each failure is a warning, and trials, checkpoints and summary are all there."""
    faults_file.write_text("[]")
    run_dir = tmp_path / "runs" / "drill"
    run_dir.mkdir(parents=True)
    (run_dir / "wandb").write_text("not a folder")
    args = [a if a != "disabled" else "offline" for a in argv(tmp_path / "runs")]
    with caplog.at_level("WARNING", logger="tune_app"):
        assert search.main(args) == 0
    trials, history = trials_of(run_dir)
    failed = {r.getMessage().split(" failed")[0] for r in caplog.records if "W&B run of trial" in r.getMessage()}
    assert failed == {f"W&B run of trial {name}" for name in trials["name"]}
    assert any("W&B summary run failed" in r.getMessage() for r in caplog.records)
    assert (trials["status"] == "completed").all() and len(history) == 6
    assert all(any(run_dir.glob(f"*{t}/checkpoint_*")) for t in trials["trial_id"])
    assert (run_dir / "summary" / "report.html").is_file() and (run_dir / "summary" / "best_config.json").is_file()


def test_a_wandb_failure_mid_sweep_still_finishes_the_runs_already_started(faults_file, tmp_path, monkeypatch,
                                                                             caplog):
    """W&B fails on the sweep's second result (on the driver, where tune_app turns results into W&B history):
    one warning, no more W&B results, and the W&B runs already started are still finished (their files end with
    W&B's exit record and keep what was logged), not left to be killed unfinished as 7-byte files."""
    from tests.wandb_records import records
    from tune_app.integrations import wandb_trials

    faults_file.write_text("[]")
    loggable, calls = wandb_trials.loggable, []

    def failing_loggable(result, *args):
        if not args:  # a whole result, not a nested part of one
            calls.append(result.get("epoch"))
            if len(calls) == 2:
                raise OSError("W&B's file could not be written")
        return loggable(result, *args)

    monkeypatch.setattr(wandb_trials, "loggable", failing_loggable)
    args = [a if a != "disabled" else "offline" for a in argv(tmp_path / "runs")]
    with caplog.at_level("WARNING", logger="tune_app"):
        assert search.main(args) == 0
    said = [r.getMessage() for r in caplog.records if "the sweep continues without W&B" in r.getMessage()]
    assert len(said) == 1 and "W&B logging failed (OSError: W&B's file could not be written)" in said[0]
    assert len(calls) == 2  # no result went to W&B after the failure
    run_dir = tmp_path / "runs" / "drill"
    trials, history = trials_of(run_dir)
    assert (trials["status"] == "completed").all() and len(history) == 6
    runs = {p.name.rsplit("-", 1)[-1]: p for p in wandb_runs(run_dir)}
    for trial_id in trials["trial_id"]:
        kinds = [r.WhichOneof("record_type") for r in records(next(runs[trial_id].glob("run-*.wandb")))]
        assert kinds[-1:] == ["exit"], kinds[-5:]  # was: no record at all, the 7-byte header of a killed run
    logged = sum(kind == "history" for p in runs.values() for kind in
                 (r.WhichOneof("record_type") for r in records(next(p.glob("run-*.wandb")))))
    assert logged >= 1  # the result before the failure
