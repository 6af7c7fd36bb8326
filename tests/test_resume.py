"""A sweep interrupted with Ctrl+C resumes with --resume: exactly num_samples trials, none run twice."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

NUM_SAMPLES = 5


def epochs_reported(trial_dir: Path) -> list[int]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def trial_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("digits_cnn_*") if p.is_dir())


def finished(run_dir: Path) -> dict[str, bytes]:
    return {p.name: (p / "result.json").read_bytes() for p in trial_dirs(run_dir) if 3 in epochs_reported(p)}


def cli(*args):
    return [sys.executable, "-m", "tune_app.search", *args]


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    run_dir = tmp_path / "runs" / "resumable"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cli("--space", "digits", "--num-samples", str(NUM_SAMPLES), "--set", "epochs=3", "--max-epochs", "3",
            "--scheduler", "fifo", "--max-concurrent", "1", "--cpus-per-trial", "1",
            "--storage-path", str(tmp_path / "runs"), "--name", "resumable"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while len(finished(run_dir)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)  # one Ctrl+C
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-2000:]
    assert f"continue with: python -m tune_app.search --resume {run_dir}" in err
    done_before = finished(run_dir)
    assert 2 <= len(done_before) < NUM_SAMPLES

    resumed = subprocess.run(cli("--resume", str(run_dir)), capture_output=True, text=True, env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    assert len(trials) == NUM_SAMPLES and (trials["status"] == "completed").all()
    assert len(trial_dirs(run_dir)) == NUM_SAMPLES
    for trial in trial_dirs(run_dir):
        assert epochs_reported(trial) == [1, 2, 3], trial.name  # nothing trained twice
    after = finished(run_dir)
    for name, content in done_before.items():
        assert after[name] == content  # finished trials untouched by the resume
    # Optuna's study came back with the sweep: one study, one trial per sweep trial.
    journal = [json.loads(line) for line in (run_dir / "optuna.journal").read_text().splitlines()]
    assert sum(1 for op in journal if op.get("op_code") == 4) == NUM_SAMPLES  # CREATE_TRIAL
