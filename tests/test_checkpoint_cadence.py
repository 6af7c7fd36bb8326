"""Which reports carry a checkpoint (--checkpoint-every-s, cluster.adapter.Cadence): the scheduler's decision epochs,
the last epoch and every N seconds, on real sweeps of a user's trainable on one local Ray; and a crash retried
from the last of those checkpoints, so a trial trains again only the epochs after it."""
import csv
import json
import sys

import pytest

import tune_app
from tune_app import search
from tune_app.cluster.adapter import Cadence
from tune_app.search.plan import FALLBACK_SETTINGS
from tune_app.search.tuner import checkpoint_cadence

pytestmark = pytest.mark.e2e

SLOW_FIT = '''
"""Sleeps through each epoch; its score grows with x."""
import time

METRICS = ("epoch", "score")


def fit(config, data, reporter):
    start = time.monotonic()  # the reports carry the trial's own clock: Ray's time_total_s also counts its waits
    state = reporter.restore() or {"epoch": 0}
    for epoch in range(state["epoch"] + 1, config["epochs"] + 1):
        time.sleep(config["sleep"])
        reporter.report({"epoch": epoch, "score": epoch * config["x"], "seconds": time.monotonic() - start},
                        {"epoch": epoch})
'''

SPACE = '''
from ray import tune

TRAINABLE = "slow_fit:fit"
METRIC, MODE = "score", "max"
SPACE = {{"epochs": {epochs}, "sleep": {sleep}, "x": tune.grid_search({xs})}}
SETTINGS = {{"searcher": "grid", "scheduler": "{scheduler}", "num_samples": 1, "grace_period": 1, "reduction_factor": 3,
             "cpus_per_trial": 1, "keep_checkpoints": 100}}
'''


@pytest.fixture
def project(tmp_path, monkeypatch, faults_file):
    (tmp_path / "slow_fit.py").write_text(SLOW_FIT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    faults_file.write_text("[]")
    yield tmp_path
    sys.modules.pop("slow_fit", None)


def sweep(project, name, scheduler="fifo", epochs=9, sleep=0.0, xs=(1.0, 2.0), **settings):
    (project / f"{name}.py").write_text(SPACE.format(epochs=epochs, sleep=sleep, xs=list(xs), scheduler=scheduler))
    return tune_app.sweep(f"./{name}.py", name=name, storage_path=str(project / "runs"), wandb_mode="disabled",
                          **settings)


def reports(run_dir, trial_id):
    """A trial's reports as Ray wrote them, retries included: (epoch, seconds since the trial began, by its own clock
    (or Ray's time_total_s), whether it holds a checkpoint)."""
    lines = next(run_dir.glob(f"*{trial_id}*/result.json")).read_text().splitlines()
    return [(r["epoch"], r.get("seconds", r["time_total_s"]), bool(r.get("checkpoint_dir_name")))
            for r in map(json.loads, lines)]


# ---------------------------------------------------------------- the rule, without Ray

def test_the_decision_epochs_of_each_scheduler():
    base = {"max_epochs": 20, "grace_period": 3, "reduction_factor": 3, "checkpoint_every_s": 30}
    assert checkpoint_cadence({**base, "scheduler": "asha"}) == Cadence(30.0, (3, 9, 20), 20)  # Ray's rungs 3, 9
    assert checkpoint_cadence({**base, "scheduler": "asha", "grace_period": 1, "max_epochs": 9}).epochs == (1, 3, 9)
    assert checkpoint_cadence({**base, "scheduler": "pbt"}).epochs == (3, 6, 9, 12, 15, 18)  # PBT perturbs there
    assert checkpoint_cadence({**base, "scheduler": "pb2"}).epochs == (3, 6, 9, 12, 15, 18)
    assert checkpoint_cadence({**base, "scheduler": "fifo"}).epochs == ()
    assert checkpoint_cadence({**base, "scheduler": "median"}).epochs == ()
    assert checkpoint_cadence({**base, "scheduler": "hyperband"}).epochs is None  # pauses at any bracket's milestone
    assert checkpoint_cadence({**base, "scheduler": "bohb"}).epochs is None
    assert checkpoint_cadence({k: v for k, v in base.items() if k != "checkpoint_every_s"} | {"scheduler": "fifo"}) \
        == Cadence(30.0, (), 20)  # a sweep recorded before the setting existed: the default
    assert Cadence().every_s == FALLBACK_SETTINGS["checkpoint_every_s"] == 30  # a reporter made without one


def test_a_report_is_checkpointed_at_decision_epochs_the_last_epoch_and_after_every_s():
    cadence = Cadence(every_s=30, epochs=(3, 9), max_epochs=20)
    config = {"epochs": 12}
    due = [e for e in range(1, 13) if cadence.due(config, {"epoch": e}, seconds=1.0)]
    assert due == [3, 9, 12]  # rungs and the planned last epoch (epochs 12 < max_epochs 20)
    assert cadence.due({"epochs": 12, "max_epochs": 10}, {"epoch": 10}, 1.0)  # epochs capped by max_epochs
    assert cadence.due({}, {"epoch": 20}, 1.0) and not cadence.due({}, {"epoch": 19}, 1.0)  # no epochs key: max_epochs
    assert cadence.due(config, {"epoch": 5}, seconds=30.0) and not cadence.due(config, {"epoch": 5}, seconds=29.9)
    assert cadence.due(config, {"epoch": 5, "early_stopped": True}, 1.0)  # the trainable's own last report
    assert cadence.due(config, {"epoch": 5, "diverged": True}, 1.0)
    assert all(Cadence(every_s=0).due(config, {"epoch": e}, 0.0) for e in range(1, 13))  # 0: every epoch
    assert all(Cadence(30, None, 20).due(config, {"epoch": e}, 0.0) for e in range(1, 13))  # HyperBand: every epoch


# ---------------------------------------------------------------- real sweeps

def test_fifo_checkpoints_the_last_epoch_and_every_n_seconds(project):
    every = 1.0
    result = sweep(project, "seconds", epochs=12, sleep=0.25, checkpoint_every_s=every)
    assert len(result.trials) == 2
    for trial_id in result.trials["trial_id"]:
        rows = reports(result.run_dir, trial_id)
        assert [r[0] for r in rows] == list(range(1, 13))
        saved = [epoch for epoch, _, checkpointed in rows if checkpointed]
        assert saved[-1] == 12 and 2 <= len(saved) < 12, saved  # not every epoch, the last one always
        last = 0.0  # when the last checkpoint's report came, by the trial's clock (it began at 0)
        for epoch, seconds, checkpointed in rows[:-1]:
            if checkpointed:  # at least every_s after the one before (give or take the moment a report takes)...
                assert seconds - last >= every - 0.05, (epoch, seconds, last)
                last = seconds
            else:  # ...and none skipped once every_s had passed
                assert seconds - last < every + 0.05, (epoch, seconds, last)
        kept = sorted(p.name for p in next(result.run_dir.glob(f"*{trial_id}*")).glob("checkpoint_*"))
        assert len(kept) == len(saved)  # the checkpoint folders are exactly those reports' (--keep-checkpoints 100)


def test_asha_checkpoints_at_its_rungs_and_a_crash_resumes_from_the_last_rung(project, faults_file):
    """Rungs at epochs 1, 3 and 9; x=3's trial (the best, which ASHA never stops) crashes once before it reports
    epoch 5, and its retry starts from epoch 3's checkpoint: it reports epoch 4 again, and no earlier one."""
    faults_file.write_text(json.dumps([{"epoch": 5, "times": 1, "where": {"x": 3.0}}]))
    result = sweep(project, "rungs", scheduler="asha", epochs=9, xs=(1.0, 2.0, 3.0))
    trials = result.trials.set_index("config/x")
    assert trials.loc[3.0, "status"] == "completed" and trials.loc[3.0, "epochs"] == 9
    rows = reports(result.run_dir, trials.loc[3.0, "trial_id"])
    assert [r[0] for r in rows] == [1, 2, 3, 4, 4, 5, 6, 7, 8, 9]
    assert [epoch for epoch, _, checkpointed in rows if checkpointed] == [1, 3, 9]
    for trial_id in result.trials["trial_id"]:  # every trial, stopped by ASHA or not: its rungs reached, no more
        rows = reports(result.run_dir, trial_id)
        reached = max(r[0] for r in rows)
        assert [e for e, _, checkpointed in rows if checkpointed] == [e for e in (1, 3, 9) if e <= reached]


def test_a_retried_trial_keeps_the_reports_made_after_rays_last_save(project, faults_file):
    """--keep-checkpoints 1: Ray copies the trial's reports into the run directory at each of its checkpoints (the
    rungs 1 and 3), so that copy lacks epoch 4's report when the trial crashes before epoch 5. Ray replaces the
    driver's reports with that copy as the retry starts from epoch 3; tune_app's KeepReports saves them first."""
    faults_file.write_text(json.dumps([{"epoch": 5, "times": 1, "where": {"x": 3.0}}]))
    result = sweep(project, "synced", scheduler="asha", epochs=6, sleep=0.3, xs=(3.0,), keep_checkpoints=1)
    trial_id = result.trials["trial_id"][0]
    rows = reports(result.run_dir, trial_id)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 4, 5, 6]  # the crashed run's epoch 4, then the retry's
    with open(next(result.run_dir.glob(f"*{trial_id}*")) / "progress.csv", newline="") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2, 3, 4, 4, 5, 6]  # Ray's CSV logger's too


def test_checkpoint_every_s_0_checkpoints_every_epoch_and_a_negative_value_is_refused(project, capsys):
    result = sweep(project, "every", epochs=3, xs=(1.0,), checkpoint_every_s=0)
    rows = reports(result.run_dir, result.trials["trial_id"][0])
    assert [(epoch, checkpointed) for epoch, _, checkpointed in rows] == [(1, True), (2, True), (3, True)]
    assert search.main(["--space", "./every.py", "--checkpoint-every-s", "-5"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == \
        ["tune_app: error: --checkpoint-every-s -5: must be 0 (every epoch) or more"]
