"""Ctrl+C never reports success, a run directory holds one sweep at a time, and a corrupt checkpoint costs an epoch,
not the trial: each on a real sweep (real Ray, real signals, real files)."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.readonly import chmod_tree, unprivileged
from tune_app.cluster.adapter import FAULTS_ENV
from tune_app.integrations.wandb_files import missing_runs, read_run
from tune_app.rundir.reader import ray_statuses, trial_id_of

pytestmark = pytest.mark.e2e


def cli(*args):
    return [sys.executable, "-m", "tune_app.search", *args]


def start(tmp_path: Path, name: str, *extra, env: dict | None = None, wrap=list) -> subprocess.Popen:
    """The sweep as a command. Ray copies the trials' results into the run directory whenever it saves the
    experiment state: every second here (TUNE_GLOBAL_CHECKPOINT_S), so that the tests see a trial's epochs as
    they come; Ray's own period is 10 s or more, which these sweeps would outrun."""
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "1", **(env or {})}
    return subprocess.Popen(
        wrap(cli("--space", "digits", "--num-samples", "4", "--max-epochs", "6", "--set", "epochs=6", "--searcher",
                 "random", "--scheduler", "fifo", "--cpus-per-trial", "1", "--storage-path", str(tmp_path / "runs"),
                 "--name", name, "--wandb-mode", "disabled", *extra)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def wait_for(predicate, timeout: float = 240, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def epochs_done(run_dir: Path) -> dict[str, int]:
    """Reports per trial folder so far (result.json lines)."""
    out = {}
    for folder in run_dir.glob("digits_cnn_*"):
        result = folder / "result.json"
        out[folder.name] = len(result.read_text().splitlines()) if result.is_file() else 0
    return out


def ray_noise(text: str) -> list[str]:
    """Lines of a command's stderr that are neither tune_app's nor Ray's status table: tracebacks, W&B's failures,
    Ray's C++ errors, Python's "Exception ignored"."""
    return [line for line in text.splitlines()
            if any(bad in line for bad in ("Traceback", "W&B setup failed", "core_worker", "Exception ignored",
                                           "ERROR", "wandb:"))]


def test_ctrl_c_after_a_trial_finished_exits_130_with_the_right_count(tmp_path):
    run_dir = tmp_path / "runs" / "cut"
    proc = start(tmp_path, "cut", "--wandb-mode", "offline")
    # the first trial has finished (6 epochs) while others are part-way: then one Ctrl+C
    wait_for(lambda: 6 in epochs_done(run_dir).values() and any(0 < n < 6 for n in epochs_done(run_dir).values()),
             what="a finished trial and a running one")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    statuses = ray_statuses(run_dir)
    done = sum(s == "TERMINATED" for s in statuses.values())
    assert 1 <= done < 4
    assert f"Interrupted with {done} of 4 trials finished; continue with: python -m tune_app.search --resume " \
           f"{run_dir}" in err
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas().set_index("trial_id")
    for trial_id, status in statuses.items():
        if status == "TERMINATED":
            assert trials.loc[trial_id, "status"] == "completed" and trials.loc[trial_id, "epochs"] == 6
        elif trial_id in trials.index:
            assert trials.loc[trial_id, "status"] == "interrupted"
    best = json.loads((run_dir / "summary" / "best_config.json").read_text())
    assert statuses[best["trial_id"]] == "TERMINATED"  # never a trial cut off part-way
    assert not ray_noise(out + err), ray_noise(out + err)
    # and it resumes to the end, logging to W&B offline as the sweep did, with nothing but tune_app's lines
    resumed = subprocess.run(cli("--resume", str(run_dir)), capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not ray_noise(resumed.stdout + resumed.stderr), ray_noise(resumed.stdout + resumed.stderr)
    assert "W&B holds no full run" not in resumed.stderr
    assert set(ray_statuses(run_dir).values()) == {"TERMINATED"} and len(ray_statuses(run_dir)) == 4
    # every trial's epochs are in W&B, a resumed one's over its two offline runs
    logged = {}
    for file in (run_dir / "wandb").glob("offline-run-*/run-*.wandb"):
        trial_id = file.parent.name.rsplit("-", 1)[-1]
        logged.setdefault(trial_id, []).extend(row["epoch"] for row in read_run(file)["history"] if "epoch" in row)
    assert {t: sorted(set(e)) for t, e in logged.items() if t in statuses} == \
        {t: [1, 2, 3, 4, 5, 6] for t in statuses}
    assert missing_runs(run_dir, {t: 6 for t in statuses}) == []


def test_a_second_sweep_into_a_running_ones_directory_is_refused(tmp_path):
    # the first sweep's first trial hangs at epoch 2 (a fault drill, once): it is running for as long as the test
    # needs, however slow the machine
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps([{"epoch": 2, "times": 1, "kind": "hang"}]))
    first = start(tmp_path, "twice", "--max-concurrent", "1", env={FAULTS_ENV: str(faults)})
    run_dir = tmp_path / "runs" / "twice"
    wait_for(lambda: any(epochs_done(run_dir).values()), what="the first sweep's first epoch")
    second = subprocess.run(cli("--space", "digits", "--storage-path", str(tmp_path / "runs"), "--name", "twice",
                                "--wandb-mode", "disabled"), capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "is in use by the sweep" in lines[0] and f"pid {first.pid}" in lines[0]
    resumed = subprocess.run(cli("--resume", str(run_dir)), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 2 and "is in use by the sweep" in resumed.stderr
    analyzed = subprocess.run([sys.executable, "-m", "tune_app.analyze", str(run_dir)], capture_output=True,
                              text=True, timeout=120)
    assert analyzed.returncode == 2 and "still running" in analyzed.stderr
    os.killpg(first.pid, signal.SIGKILL)  # a killed sweep leaves no lock that blocks --resume
    first.wait(timeout=60)
    resumed = subprocess.run(cli("--resume", str(run_dir), "--max-failures", "2"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert set(ray_statuses(run_dir).values()) == {"TERMINATED"} and len(ray_statuses(run_dir)) == 4


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    run_dir = tmp_path / "runs" / "torn"
    # the first trial stops reporting at epoch 4 (a fault drill, once), so however slow the machine or late the
    # signal, Ctrl+C finds it part-way with three checkpoints
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps([{"epoch": 4, "times": 1, "kind": "hang"}]))
    proc = start(tmp_path, "torn", "--max-concurrent", "1", "--set", "seed=3", "--checkpoint-every-s", "0",
                 env={FAULTS_ENV: str(faults)})  # a checkpoint every epoch: three of them by epoch 3
    wait_for(lambda: any(n >= 3 for n in epochs_done(run_dir).values()), what="three epochs of a trial")
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=240)
    assert proc.returncode == 130
    statuses = ray_statuses(run_dir)
    cut = [t for t, s in statuses.items() if s != "TERMINATED"]
    folder = next(p for p in run_dir.glob("digits_cnn_*") if p.name.endswith(cut[0]))
    checkpoints = sorted(folder.glob("checkpoint_*"))
    assert len(checkpoints) >= 2
    for newer in checkpoints[1:]:  # whichever of them Ray recorded as the latest, it is cut short
        os.truncate(newer / "state.pt", 1000)
    resumed = subprocess.run(cli("--resume", str(run_dir)), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = [line for line in (resumed.stdout + resumed.stderr).splitlines() if "is unreadable" in line]
    assert len(said) == 1, said  # once, naming the file
    assert any(f"{newer / 'state.pt'} is unreadable" in said[0] for newer in checkpoints[1:])
    assert f"resumed from {checkpoints[0].name}" in said[0]
    history = pq.read_table(run_dir / "summary" / "history.parquet").to_pandas()
    epochs = sorted(history[history["trial_id"] == cut[0]]["epoch"])
    assert epochs == [1, 2, 3, 4, 5, 6]
    assert set(ray_statuses(run_dir).values()) == {"TERMINATED"}


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_directory_that_turns_read_only_stops_the_sweep_in_one_line_and_resumes(tmp_path):
    run_dir = tmp_path / "runs" / "ro"
    proc = start(tmp_path, "ro", wrap=unprivileged)
    wait_for(lambda: 6 in epochs_done(run_dir).values() and any(0 < n < 6 for n in epochs_done(run_dir).values()),
             what="a finished trial and a running one")
    chmod_tree(run_dir, writable=False)
    try:
        out, err = proc.communicate(timeout=240)
        statuses = ray_statuses(run_dir)
        finished = {p.name: digests(p) for p in run_dir.glob("digits_cnn_*")
                    if statuses.get(trial_id_of(p.name)) == "TERMINATED"}
    finally:
        chmod_tree(run_dir, writable=True)
    assert proc.returncode == 130, (out[-2000:], err[-3000:])
    lines = err.strip().splitlines()
    assert lines == [f"tune_app: error: {run_dir} stopped being writable (Permission denied), so the sweep stopped "
                     f"with {len(finished)} of 4 trials finished; nothing finished is lost: make it writable again, "
                     f"then continue with: python -m tune_app.search --resume {run_dir}"], err[-3000:]
    assert "Traceback" not in out
    # no retries burnt on a directory nobody could write to: no trial ended in error, every one is resumable
    assert "ERROR" not in statuses.values() and len(statuses) == 4
    resumed = subprocess.run(cli("--resume", str(run_dir)), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stdout + resumed.stderr and "ERROR" not in resumed.stderr, resumed.stderr
    assert set(ray_statuses(run_dir).values()) == {"TERMINATED"} and len(ray_statuses(run_dir)) == 4
    for name, files in finished.items():  # what had finished is byte for byte what it was
        assert digests(run_dir / name) == files
    history = pq.read_table(run_dir / "summary" / "history.parquet").to_pandas()
    assert sorted(history.groupby("trial_id")["epoch"].max()) == [6, 6, 6, 6]
    assert (history.groupby("trial_id")["epoch"].nunique() == 6).all()
