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
    # Ray copies the trials' results into the run directory when it saves its experiment state: every second here,
    # so that the test sees trials finish as they do (Ray's own period, 10 s or more, is longer than these sweeps)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    epochs = 6 if scheduler == "pb2" else 3  # pb2: two perturbations each
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
    # trial. A hard kill can land after the study began a trial Ray had not yet recorded (the orphan folder above):
    # that one is marked failed on resume, or stays complete if it finished before the kill (Ray saves its state
    # every second here; the journal is written as it goes).
    import optuna

    study = optuna.load_study(study_name="resumable", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal"))))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") >= NUM_SAMPLES and states.count("COMPLETE") + states.count("FAIL") == len(states)
    assert len(states) - NUM_SAMPLES <= (how == "sigkill")  # at most that one trial besides the sweep's


def last_epochs(run_dir: Path) -> dict[str, int]:
    return {trial_id(p.name): max((r["epoch"] for r in results(p)), default=0) for p in trial_dirs(run_dir)}


def paused_mid_bracket(run_dir: Path, max_epochs: int) -> set[str]:
    """Trials Ray's experiment state records as PAUSED before their last epoch: waiting at a bracket's milestone."""
    epochs = last_epochs(run_dir)
    return {t for t, status in ray_statuses(run_dir).items()
            if status == "PAUSED" and 0 < epochs.get(t, 0) < max_epochs}


def saved_brackets(run_dir: Path) -> dict | None:
    """HyperBand's brackets in Ray's newest callback checkpoint (algorithms.HyperBandState's), or None."""
    try:
        states = newest_state(run_dir, "callback-states-*.pkl")
    except Exception:  # none yet
        return None
    return next((c for c in states.values() if c and "bands" in c), None)


def waiting(run_dir: Path, saved: dict) -> set[str]:
    """The trials paused at a milestone of a bracket that has not let them go (Ray's experiment state still calls
    PAUSED a trial stopped while paused)."""
    return paused_mid_bracket(run_dir, 9) - set(saved["done"])


# Epochs each of 17 trials trains with max_t 9 and digits' reduction factor 3, in three brackets: 3 trials trained
# to 9 epochs; 5 trained to 3, the best 2 of them on to 9; 9 trained to 1, the best 3 on to 3, the best of those
# to 9 (Ray's HyperBand fills the smallest bracket first, BOHB's the largest: the same brackets).
BRACKET_EPOCHS = [1] * 6 + [3] * 5 + [9] * 6


@pytest.mark.parametrize("searcher, scheduler", [("random", "hyperband"), ("bohb", "bohb")])
def test_sweep_interrupted_with_trials_paused_in_brackets_resumes_them_at_their_milestones(tmp_path, searcher,
                                                                                          scheduler):
    """Ctrl+C after a bracket has halved (stopping its worst trials) while HyperBand (or BOHB's) holds trials
    paused at a bracket's milestone; --resume puts back the brackets (algorithms.HyperBandState) and the paused
    trials in them, PAUSED: each waits for its bracket's halving as before and continues from its milestone's
    checkpoint, no stopped trial runs again, and every trial trains the epochs an uninterrupted sweep gives.
    (Brackets rebuilt afresh would hold the finished trials, waiting forever for them, and run the paused ones
    past their milestone.)"""
    if scheduler == "bohb":
        pytest.importorskip("hpbandster")
    run_dir = tmp_path / "runs" / "brackets"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1"}  # Ray's state seen as it goes
    proc = subprocess.Popen(
        cli("--space", "digits", "--num-samples", "17", "--set", "epochs=9", "--set", "batch_size=32",
            "--max-epochs", "9", "--searcher", searcher, "--scheduler", scheduler, "--cpus-per-trial", "1",
            "--storage-path", str(tmp_path / "runs"), "--name", "brackets"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not (
            (saved := saved_brackets(run_dir)) and saved["num_stopped"] and waiting(run_dir, saved)):
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-2000:]
    saved = saved_brackets(run_dir)
    paused = waiting(run_dir, saved)
    assert paused and saved["num_stopped"] > 0, ray_statuses(run_dir)
    assert paused <= set(saved["waiting"])
    before = {trial_id(p.name): (p / "result.json").read_bytes() for p in trial_dirs(run_dir)
              if (p / "result.json").exists()}
    milestones = {t: result["epoch"] for band in saved["bands"] for b in band if b  # each trial's last report, as
                  for t, result in b["_live_trials"].items() if result}  # its bracket holds it

    resumed = subprocess.run(cli("--resume", str(run_dir)), capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    assert len(trials) == 17 and set(trials["status"]) <= {"completed", "stopped"}
    # (Ray's experiment state leaves a trial stopped while paused PAUSED; none is left running or waiting to run)
    assert set(ray_statuses(run_dir).values()) <= {"TERMINATED", "PAUSED"} and len(ray_statuses(run_dir)) == 17
    depth = dict(zip(trials["trial_id"], trials["epochs"]))
    assert sorted(depth.values()) == BRACKET_EPOCHS
    for trial in trial_dirs(run_dir):
        tid, rows = trial_id(trial.name), results(trial)
        by_epoch = {}
        for r in rows:  # a trial running at Ctrl+C trains again, identically, the epochs after its last checkpoint
            if r["epoch"] in by_epoch:
                assert (r["train_loss"], r["val_acc"]) == by_epoch[r["epoch"]], trial.name
            by_epoch[r["epoch"]] = (r["train_loss"], r["val_acc"])
        # every epoch reported, none past its depth (each time a trial starts again, unpaused or resumed, Ray
        # copies its reports back from the run directory; adapter.KeepReports brings that copy up to date first)
        assert set(by_epoch) == set(range(1, depth[tid] + 1)), trial.name
        if tid in saved["done"]:  # stopped by its bracket before Ctrl+C: it did not run again
            assert (trial / "result.json").read_bytes() == before[tid]
        if tid in paused:  # waited at its milestone: its rows kept, and it went on from its milestone's checkpoint
            assert (trial / "result.json").read_bytes().startswith(before[tid])
            old = [json.loads(line) for line in before[tid].decode().splitlines() if line.strip()]
            milestone, new = milestones[tid], rows[len(old):]
            assert milestone in (1, 3) and (new != []) == (depth[tid] > milestone), trial.name
            assert all(r["epoch"] > milestone for r in new), trial.name  # nothing up to it trained again
            # each restore's checkpoint: the epoch before the restored trial's first report
            assert all(r["epoch"] - r["iterations_since_restore"] >= milestone for r in new), trial.name
    brackets = saved_brackets(run_dir)
    held = [b for band in brackets["bands"] for b in band if b]
    assert sorted(len(b["_all_trials"]) for b in held) == [3, 5, 9]
    assert all(b["_live_trials"] == {} and b["_halves"] == 0 for b in held)
    assert brackets["num_stopped"] == 6 + 2 + 3  # the worst at each halving
