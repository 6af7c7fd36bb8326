"""A sweep interrupted with Ctrl+C or SIGTERM (a batch system's cancel or time limit), or killed outright with its
local Ray (SIGKILL to the whole process group, as the OOM killer would), resumes with --resume: exactly num_samples
trials, none run twice, Optuna's study intact."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tune_app.rundir.reader import ray_statuses

pytestmark = pytest.mark.e2e

NUM_SAMPLES = 8  # enough that a sweep cannot finish between two finished trials being seen and the kill


def results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def terminated(run_dir: Path) -> set[str]:
    """Trial ids Ray's own experiment state records as finished (none while it is being rewritten)."""
    return {trial_id for trial_id, status in ray_statuses(run_dir).items() if status == "TERMINATED"}


def trial_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("digits_cnn_*") if p.is_dir())


def trial_id(name: str) -> str:
    """The trial id a trial's folder (or name) ends with: a searcher's trials have ids like 36e71493, Ray's own
    variant generator's like 36e71_00003."""
    return "_".join(name.rsplit("_", 2)[1:]) if re.search(r"_[0-9a-f]{5}_\d{5}$", name) else name.rsplit("_", 1)[1]


def finished(run_dir: Path) -> dict[str, bytes]:
    """result.json of every trial Ray has recorded as finished, by trial folder."""
    done = terminated(run_dir)
    return {p.name: (p / "result.json").read_bytes() for p in trial_dirs(run_dir) if trial_id(p.name) in done}


def cli(*args):
    return [sys.executable, "-m", "tune_app.search", *args]


def newest_state(run_dir: Path, pattern: str):
    import cloudpickle

    return cloudpickle.loads(max(run_dir.glob(pattern)).read_bytes())


@pytest.mark.parametrize("how, searcher, scheduler", [("ctrl_c", "optuna", "fifo"), ("sigkill", "optuna", "fifo"),
                                                      ("ctrl_c", "hyperopt", "asha"), ("sigterm", "gp", "fifo"),
                                                      ("ctrl_c", "random", "pb2")])
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, how, searcher, scheduler):
    run_dir = tmp_path / "runs" / "resumable"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    epochs = 3
    if scheduler == "pb2":  # two perturbations each; and with no searcher to wait for, the trials follow each other
        epochs, env["TUNE_GLOBAL_CHECKPOINT_S"] = 6, "1"  # so fast that Ray's state must be saved often to be seen
    proc = subprocess.Popen(
        cli("--space", "digits", "--num-samples", str(NUM_SAMPLES), "--set", f"epochs={epochs}", "--max-epochs",
            str(epochs),
            "--searcher", searcher, "--scheduler", scheduler, "--max-concurrent", "1", "--cpus-per-trial", "1",
            "--storage-path", str(tmp_path / "runs"), "--name", "resumable"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.time() + 240
    while len(finished(run_dir)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    if how == "ctrl_c":
        proc.send_signal(signal.SIGINT)  # one Ctrl+C
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 130, err[-2000:]
        assert f"continue with: python -m tune_app.search --resume {run_dir}" in err
    elif how == "sigterm":  # as Slurm's scancel or time limit sends it: the same graceful stop, 143
        proc.send_signal(signal.SIGTERM)
        stop = threading.Event()

        def repeat():  # the job script passing it on, a batch system repeating it, until the driver is gone: still
            while not stop.wait(0.2):  # the one graceful stop, and 143 (not a kill while the driver exits)
                proc.send_signal(signal.SIGTERM)

        repeats = threading.Thread(target=repeat)
        repeats.start()
        try:
            out, err = proc.communicate(timeout=180)
        finally:
            stop.set()
            repeats.join()
        assert proc.returncode == 143, err[-2000:]
        assert "stopped by SIGTERM with " in err
        assert f"continue with: python -m tune_app.search --resume {run_dir}" in err
        assert "SIGTERM received" not in err  # not Ray's abort
    else:
        time.sleep(1.5)  # into the next trial, which then has no chance to save anything on its way out
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started, at once
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    done_before = finished(run_dir)
    assert 2 <= len(done_before) < NUM_SAMPLES

    resumed = subprocess.run(cli("--resume", str(run_dir)), capture_output=True, text=True, env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    assert len(trials) == NUM_SAMPLES
    assert set(trials["status"]) <= ({"completed", "stopped"} if scheduler == "asha" else {"completed"})
    # A hard kill can land after Ray made the next trial's folder but before it recorded the trial in its
    # experiment state: the resumed sweep never knew that trial (Optuna's study marks it failed, below), and its
    # folder stays as it was, outside the summary. Every trial Ray knows has its folder, once.
    known = set(ray_statuses(run_dir))
    assert set(trials["trial_id"]) == known
    folders = [p for p in trial_dirs(run_dir) if trial_id(p.name) in known]
    orphans = [p for p in trial_dirs(run_dir) if trial_id(p.name) not in known]
    assert len(folders) == NUM_SAMPLES and len(orphans) <= (how == "sigkill")
    depth = dict(zip(trials["trial_id"], trials["epochs"]))
    for trial in folders:
        by_epoch = {}
        for r in results(trial):
            # A trial still running at Ctrl+C continues from the last checkpoint Ray recorded, so
            # an epoch reported after that is trained again: identically, RNG state included.
            if r["epoch"] in by_epoch:
                assert (r["train_loss"], r["val_acc"]) == by_epoch[r["epoch"]], trial.name
            by_epoch[r["epoch"]] = (r["train_loss"], r["val_acc"])
        assert sorted(by_epoch) == list(range(1, depth[trial_id(trial.name)] + 1)), trial.name
    for name, content in done_before.items():
        assert (run_dir / name / "result.json").read_bytes() == content  # finished trials not run again
    if searcher == "hyperopt":
        # HyperOpt's trials came back with the sweep (one per sweep trial, none twice), and so did ASHA's rungs:
        # digits' grace period is 3 epochs, 3 here too: the one rung, at epoch 3, holds every trial, those
        # finished before Ctrl+C included (a scheduler rebuilt empty on resume would hold only the others).
        hyperopt = newest_state(run_dir, "searcher-state-*.pkl")
        told = hyperopt["_hpopt_trials"] if isinstance(hyperopt, dict) else hyperopt._hpopt_trials
        assert len(told.trials) == NUM_SAMPLES
        (asha,) = [c for c in newest_state(run_dir, "callback-states-*.pkl").values() if c and "rungs" in c]
        ((milestone, first_rung),) = asha["rungs"][0]
        assert milestone == 3
        assert set(first_rung) == set(trials["trial_id"])
        assert {trial_id(t) for t in done_before} < set(first_rung)
        return
    if scheduler == "pb2":
        # PB2's state came back with the sweep: every trial reported at its perturbation times (every 3 epochs,
        # digits' grace period), and the GP's data holds all of them, those finished before Ctrl+C included (a
        # scheduler rebuilt empty on resume would hold only the others); PBT's state of each trial too.
        (pbt,) = [c for c in newest_state(run_dir, "callback-states-*.pkl").values() if c and "pb2" in c]
        data = pbt["pb2"]["data"]
        assert set(data["Time"]) == {3, 6}
        by_trial = data.groupby("Trial")["Time"].apply(set)  # PB2 keys its data by trial name
        assert set(by_trial.index) == set(trials["name"]) and trials["name"].is_unique
        assert all(times == {3, 6} for times in by_trial), by_trial
        assert set(pbt["trials"]) == set(trials["trial_id"])
        assert all(t["last_perturbation_time"] == 6 and t["last_score"] is not None for t in pbt["trials"].values())
        return
    # Optuna's study (TPE's, or the GP sampler's) came back with the sweep: one completed study trial per sweep
    # trial. A hard kill can land after the study began a trial Ray had not yet recorded; that one is marked failed
    # on resume.
    import optuna

    study = optuna.load_study(study_name="resumable", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal"))))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == NUM_SAMPLES and "RUNNING" not in states
    assert len(states) == NUM_SAMPLES + states.count("FAIL") and states.count("FAIL") <= (how == "sigkill")
