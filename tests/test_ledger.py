"""The cost ledger (device-seconds, CPU seconds, peak memory, parameters, samples per trial in trials.parquet),
the cost plot and report lines on a run directory with known numbers, and --budget-hours' callback and scheduler
on real (tiny) Ray Tune sweeps."""
from __future__ import annotations

import json
import math
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.fake_runs import sweep_trials, write_experiment
from tune_app import plots
from tune_app.analyze import main
from tune_app.cost import budget as budget_mod
from tune_app.rundir.layout import BUDGET_FILE
from tune_app.rundir.tables import LEDGER, held_devices, ledger, trials_frame

pytestmark = pytest.mark.e2e

NAN = float("nan")


# ---------------------------------------------------------------- devices held, ledger of one trial

@pytest.mark.parametrize("report, asked, expected", [
    ({"gpus": 0.25, "cpus": 1.0}, (1, 1), ("gpu", 0.25)),  # what Ray assigned beats what was asked
    ({"gpus": 0.0, "cpus": 2.0}, (0.5, 1), ("cpu", 2.0)),  # it held no GPU: its CPUs
    ({}, (0.5, 1), ("gpu", 0.5)),  # the report does not say: the sweep's gpus_per_trial
    ({}, (0, 4), ("cpu", 4.0)),  # gpus_per_trial 0: the CPUs
    ({}, ("auto", 1), (None, NAN)),  # --gpus-per-trial auto and reports that do not say: unknown
    ({}, (None, None), (None, NAN)),  # a plain Ray Tune experiment
    ({"gpus": NAN, "cpus": 1.0}, (2, 1), ("gpu", 2.0)),  # a NaN is no figure
])
def test_held_devices(report, asked, expected):
    kind, count = held_devices(report, *asked)
    assert kind == expected[0] and (count == expected[1] or math.isnan(count) and math.isnan(expected[1]))


def row(epoch, seconds, **more):
    return {"epoch": epoch, "val_acc": 0.5, "epoch_time_s": seconds, "diverged": False, **more}


def test_ledger_of_one_trial():
    history = [row(1, 10.0, cpu_s=12.0, peak_mem_mb=300.0, params=5000, samples_seen=64, gpus=0.5, cpus=1.0),
               row(2, 20.0, cpu_s=18.0, peak_mem_mb=200.0, params=5000, samples_seen=128, gpus=1.0, cpus=1.0),
               row(3, NAN, cpu_s=NAN, peak_mem_mb=NAN, params=5000, samples_seen=192, gpus=1.0, cpus=1.0)]
    got = ledger({"history": history, "resources": {"cpu": 1, "gpu": 0.5}})
    # 10 s on half a GPU, then 20 s on a whole one (retried on twice its share); a missing time counts 0
    assert got == {"device_s": 25.0, "device_kind": "gpu", "cpu_s": 30.0, "peak_mem_mb": 300.0, "params": 5000,
                   "samples_seen": 192}
    # a CPU sweep from its settings alone: wall seconds x CPUs
    assert ledger({"history": [row(1, 10.0), row(2, 5.0)], "resources": {"cpu": 2, "gpu": 0}})["device_s"] == 30.0
    plain = ledger({"history": [row(1, 10.0)]})  # a plain Ray Tune experiment: no figure is made up
    assert math.isnan(plain["device_s"]) and plain["device_kind"] is None and math.isnan(plain["cpu_s"])
    assert math.isnan(plain["peak_mem_mb"]) and plain["params"] is None and plain["samples_seen"] is None
    assert ledger({"history": [], "resources": {"cpu": 1, "gpu": 0}})["device_s"] == 0.0  # never reported
    assert math.isnan(ledger({"history": []})["device_s"])


def test_trials_frame_ledger_columns_and_types():
    records = [{"trial_id": "a", "config": {"lr": 0.1}, "resources": {"cpu": 2, "gpu": 0},
                "history": [row(1, 10.0, cpu_s=9.0, peak_mem_mb=50.0, params=10, samples_seen=100)]},
               {"trial_id": "b", "config": {"lr": 0.2}, "history": [row(1, 4.0)]}]
    t = trials_frame(records, "val_acc", "max")
    assert list(t.columns[:14]) == ["trial_id", "name", "status", "epochs", "target_epochs", "started",
                                    "schedule_spans_run", "seconds", *LEDGER]
    assert list(t.columns[14:15]) == ["config/lr"]
    assert t["device_s"].tolist()[0] == 20.0 and math.isnan(t["device_s"].tolist()[1])
    assert t["device_kind"].tolist()[0] == "cpu" and pd.isna(t["device_kind"].tolist()[1])
    assert t["params"].dtype == "Int64" and t["samples_seen"].dtype == "Int64" and t["cpu_s"].dtype == "float64"
    assert t["params"].tolist()[0] == 10 and pd.isna(t["params"].tolist()[1])


# ---------------------------------------------------------------- a run directory with known numbers

SETTINGS = {"name": "ledger", "searcher": "random", "scheduler": "asha", "num_samples": 4, "seed": 0,
            "cpus_per_trial": 1, "gpus_per_trial": 0.5, "max_epochs": 3, "wandb_mode": "disabled"}


def _history(start, seconds, accs, cpu, samples, peaks, params, **held):
    rows, t = [], start
    for e, (dt, acc, c, n, peak) in enumerate(zip(seconds, accs, cpu, samples, peaks), start=1):
        t += dt
        diverged = acc is None
        rows.append({"epoch": e, "train_loss": NAN if diverged else 1.0 / e, "train_acc": 0.0 if diverged else acc,
                     "val_loss": NAN if diverged else 1.0 - acc, "val_acc": 0.0 if diverged else acc, "lr": 0.01,
                     "epoch_time_s": dt, "samples_per_s": 1000.0, "peak_mem_mb": peak, "params": params,
                     "cpu_s": c, "samples_seen": n, "diverged": diverged, "timestamp": t,
                     **{k: v[e - 1] for k, v in held.items()}})
    return rows


LEDGER_TRIALS = [
    # finishes second (t = 1060); its reports do not say what it held: the sweep's half GPU -> 60 s x 0.5 = 30
    {"trial_id": "0000beef", "how": "ok", "config": {"optimizer": "adam", "lr": 0.001, "batch_size": 32, "epochs": 3},
     "history": _history(1000, [10, 20, 30], [0.5, 0.7, 0.9], [15, 25, 35], [100, 200, 300], [100, 300, 200], 5000)},
    # finishes first (t = 1030), stopped after 2 epochs; half a GPU, then a whole one (an OOM retry): 20 + 40 = 60
    {"trial_id": "0001beef", "how": "ok", "config": {"optimizer": "sgd", "lr": 0.01, "batch_size": 64, "epochs": 3},
     "history": _history(950, [40, 40], [0.8, 0.75], [50, 50], [200, 400], [500, 800], 7000,
                         gpus=[0.5, 1.0], cpus=[1.0, 1.0])},
    # finishes last (t = 1100), diverged at epoch 2: 40 s x 0.5 = 20; its best is epoch 1's 0.65
    {"trial_id": "0002beef", "how": "ok", "config": {"optimizer": "rmsprop", "lr": 0.1, "batch_size": 32,
                                                      "epochs": 3},
     "history": _history(1060, [20, 20], [0.65, None], [20, 20], [100, 200], [90, 90], 5000)},
    # failed before its first report: no cost, no point on the cost plot
    {"trial_id": "0003beef", "how": "error", "config": {"optimizer": "adam", "lr": 0.003, "batch_size": 64,
                                                         "epochs": 3}, "history": []},
]
BUDGET = {"hours": 0.03, "devices_per_trial": 0.5, "kind": "gpu", "spent_s": 110.0, "trials_started": 4,
          "not_started": 3, "stopped_at": "2026-11-23 10:00:00", "spent_s_at_stop": 108.0, "running_at_stop": 2}


@pytest.fixture(scope="module")
def ledger_run(tmp_path_factory):
    path = write_experiment(tmp_path_factory.mktemp("ledger") / "ledger", LEDGER_TRIALS)
    spec = {"space": "digits", "overrides": {}, "settings": SETTINGS, "metric": "val_acc", "mode": "max",
            "searched": ["optimizer", "lr", "batch_size"], "expected_trials": 4}
    (path / "tune_app.json").write_text(json.dumps(spec))
    (path / BUDGET_FILE).write_text(json.dumps(BUDGET))
    assert main([str(path), "--wandb-mode", "disabled"]) == 0
    return path


def test_trials_parquet_has_every_trials_ledger(ledger_run):
    t = pd.read_parquet(ledger_run / "summary" / "trials.parquet").set_index("trial_id")
    assert t.loc[:, "device_s"].tolist() == [30.0, 60.0, 20.0, 0.0]
    assert t["device_kind"].tolist() == ["gpu"] * 4
    assert t["cpu_s"].tolist()[:3] == [75.0, 100.0, 40.0] and math.isnan(t.loc["0003beef", "cpu_s"])
    assert t["peak_mem_mb"].tolist()[:3] == [300.0, 800.0, 90.0]
    assert t["params"].tolist()[:3] == [5000, 7000, 5000] and pd.isna(t.loc["0003beef", "params"])
    assert t["samples_seen"].tolist()[:3] == [300, 400, 200] and pd.isna(t.loc["0003beef", "samples_seen"])
    assert t.loc["0002beef", "status"] == "diverged" and t.loc["0003beef", "status"] == "oom"
    history = pd.read_parquet(ledger_run / "summary" / "history.parquet")
    assert {"cpu_s", "samples_seen", "gpus", "cpus"} <= set(history.columns)
    assert history.loc[history["trial_id"] == "0001beef", "gpus"].tolist() == [0.5, 1.0]


def test_cost_frame_orders_trials_by_when_they_finished(ledger_run):
    s = ledger_run / "summary"
    t, h = pd.read_parquet(s / "trials.parquet"), pd.read_parquet(s / "history.parquet")
    frame = plots.cost_frame(t, h, "val_acc", "max")
    assert frame["trial_id"].tolist() == ["0001beef", "0000beef", "0002beef"]  # by last report; 0003 never reported
    assert frame["finished"].tolist() == [1030.0, 1060.0, 1100.0]
    assert frame["cum_device_h"].tolist() == pytest.approx([60 / 3600, 90 / 3600, 110 / 3600], rel=1e-12)
    # each trial's value under the selection rule (last epoch): 0002 diverged, so it is never eligible
    assert frame["value"].tolist()[:2] == [0.75, 0.9] and np.isnan(frame["value"].iloc[2])
    assert frame["best"].tolist() == [0.75, 0.9, 0.9]
    low = plots.cost_frame(t, h, "val_loss", "min")  # min mode: 0001's last epoch (0.25), then 0000's (0.1)
    assert low["best"].tolist() == pytest.approx([0.25, 0.1, 0.1])
    untimed = plots.cost_frame(t, h.drop(columns="timestamp"), "val_acc", "max")  # no timestamps: by trial_id
    assert untimed["trial_id"].tolist() == ["0000beef", "0001beef", "0002beef"]
    assert untimed["best"].tolist() == [0.9, 0.9, 0.9]
    assert plots.cost_frame(t.drop(columns="device_s"), h, "val_acc", "max").empty
    assert plots.cost_frame(t.assign(device_s=NAN), h, "val_acc", "max").empty
    with pytest.raises(ValueError, match="mode"):
        plots.cost_frame(t, h, "val_acc", "best")


def test_cost_plot_files_and_figure(ledger_run):
    out = ledger_run / "summary" / "plots"
    names = [p.stem for p in sorted(out.glob("*.png"))]
    assert "cost" in names
    with Image.open(out / "cost.png") as image:
        assert image.size == (880, 550) and np.asarray(image.convert("L"), dtype=float).std() > 10
    page = (out / "cost.html").read_text()
    assert "Plotly.newPlot" in page and 'src="plotly.min.js"' in page
    t, h = (pd.read_parquet(ledger_run / "summary" / f) for f in ("trials.parquet", "history.parquet"))
    fig, pfig = plots.cost_figures(t, h, "val_acc", "max")
    try:
        line = next(trace for trace in pfig.data if trace.name == "best so far")
        assert list(line.x) == pytest.approx([60 / 3600, 90 / 3600, 110 / 3600])
        assert list(line.y) == pytest.approx([75.0, 90.0, 90.0])  # accuracy in percent, each trial's last epoch
        assert line.line.shape == "hv"
        assert pfig.layout.xaxis.title.text == "cumulative GPU-hours (wall time x GPUs held)"
        assert pfig.layout.title.text == "Best val_acc so far vs cost"
        assert fig.axes[0].get_xlabel() == "cumulative GPU-hours (wall time x GPUs held)"
    finally:
        plots.plt.close(fig)


def test_report_says_the_sweeps_cost_and_that_the_budget_stopped_it(ledger_run):
    ledger_text = ("Cost ledger over 4 trials: 0.0306 device-hours (wall time x the GPUs each trial held) and "
                   "0.0597 CPU-hours (process CPU time; 3 of the 4 trials said).")
    budget_text = ("Stopped by --budget-hours 0.03: 0.03 device-hours were spent at 2026-11-23 10:00:00; no new "
                   "trial started after that (4 started, 2 running then finished, 3 queued never started); "
                   "0.0306 device-hours spent in all.")
    md = (ledger_run / "summary" / "report.md").read_text()
    assert f"\n{ledger_text}\n\n{budget_text}\n" in md
    assert "![Best val_acc so far vs cost](plots/cost.png)" in md
    page = (ledger_run / "summary" / "report.html").read_text()
    assert f"<p>{ledger_text}</p>\n<p>{budget_text}</p>" in page


def test_a_plain_ray_experiment_has_no_ledger_and_does_not_crash(tmp_path):
    path = write_experiment(tmp_path / "exp", sweep_trials())
    assert main([str(path), "--wandb-mode", "disabled"]) == 0
    t = pd.read_parquet(path / "summary" / "trials.parquet")
    assert set(LEDGER) <= set(t.columns) and t["device_s"].isna().all() and t["device_kind"].isna().all()
    assert t["cpu_s"].isna().all() and t["samples_seen"].isna().all()
    assert t["peak_mem_mb"].tolist() == [100.0] * 12  # what the reports do carry is kept
    assert not (path / "summary" / "plots" / "cost.png").exists()
    assert "Cost ledger" not in (path / "summary" / "report.md").read_text()


# ---------------------------------------------------------------- the budget, without Ray running

def test_budget_counts_device_seconds_and_keeps_its_state():
    assert budget_mod.budget_callback(0, 1.0, "gpu") is None and budget_mod.budget_callback(None, 1.0, "gpu") is None
    assert budget_mod.wrap_scheduler("scheduler", None) == "scheduler"
    callback = budget_mod.budget_callback(0.5, 0.25, "gpu")
    b = callback.budget
    assert b.seconds({"epoch_time_s": 100.0}) == 25.0  # a quarter of a GPU, as the sweep asked
    assert b.seconds({"epoch_time_s": 100.0, "gpus": 0.5, "cpus": 1.0}) == 50.0  # what Ray gave it
    assert b.seconds({"time_this_iter_s": 8.0}) == 2.0  # a plain Ray report: Ray's own iteration time
    assert budget_mod.budget_callback(1, 2, "cpu").budget.seconds({"epoch_time_s": 10.0, "cpus": 3.0}) == 30.0
    with pytest.raises(ValueError, match="device kind 'tpu'"):
        budget_mod.budget_callback(1, 1, "tpu")
    with pytest.raises(ValueError, match="budget hours -1"):
        budget_mod.budget_callback(-1, 1, "gpu")
    b.spent_s, b.started, b.not_started = 1900.0, {"a", "b"}, {"c"}
    b.stop = {"stopped_at": "2026-11-23 10:00:00", "spent_s_at_stop": 1800.0, "running_at_stop": 2}
    b._search_alg = object()  # the live search algorithm is never pickled (Tune pickles the Tuner)
    restored = pickle.loads(pickle.dumps(callback))
    assert restored.budget._search_alg is None and restored.budget.spent_s == 1900.0
    fresh = budget_mod.budget_callback(0.5, 0.25, "gpu")
    fresh.set_state(json.loads(json.dumps(callback.get_state())))  # what --resume brings back
    assert (fresh.budget.spent_s, fresh.budget.started, fresh.budget.not_started) == (1900.0, {"a", "b"}, {"c"})
    assert fresh.budget.stop == b.stop
    assert fresh.budget.line() == ("tune_app: budget of 0.5 device-hours spent (0.528 h); no new trials are "
                                   "started, 2 running ones finish")


# ---------------------------------------------------------------- real sweeps

def _trainable_factory(barrier: Path, epochs: int = 3, together: int = 2):
    """Trials that each report ``epochs`` epochs of 360 s; the first ``together`` wait for one another before
    their first report, so that all of them are running when the budget runs out."""

    def trainable(config):
        from ray import tune

        (barrier / tune.get_context().get_trial_id()).touch()
        deadline = time.monotonic() + 60
        while len(list(barrier.iterdir())) < together and time.monotonic() < deadline:
            time.sleep(0.02)
        for epoch in range(1, epochs + 1):
            tune.report({"epoch": epoch, "score": config["x"] + epoch / 10, "epoch_time_s": 360.0})

    return trainable


def _sweep(tmp_path, name, param_space, search_alg=None, scheduler=None, hours=0.3, reuse_actors=False):
    from ray import tune

    barrier = tmp_path / f"{name}-barrier"
    barrier.mkdir()
    run_dir = tmp_path / name
    callback = budget_mod.budget_callback(hours, 1.0, "cpu", run_dir)
    tuner = tune.Tuner(
        tune.with_resources(_trainable_factory(barrier), {"cpu": 1}), param_space=param_space,
        tune_config=tune.TuneConfig(metric="score", mode="max", search_alg=search_alg,
                                    scheduler=budget_mod.wrap_scheduler(scheduler, callback),
                                    num_samples=1 if search_alg is None else 6, reuse_actors=reuse_actors),
        # as tune_app.search reports progress: a table sorted by the metric, whose rows read every trial's last result
        run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), callbacks=[callback], verbose=1,
                                  progress_reporter=tune.CLIReporter(metric_columns=["epoch", "score"],
                                                                     sort_by_metric=True, max_report_frequency=1)))
    results = tuner.fit()
    return run_dir, results, callback.budget


def _ran(run_dir: Path) -> dict[str, list[int]]:
    """Each trial folder that holds results: its epochs."""
    out = {}
    for result in run_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        out[result.parent.name] = [r["epoch"] for r in rows]
    return out


@pytest.mark.parametrize("reuse_actors", [False, True])
def test_budget_stops_a_grid_sweep_and_the_running_trials_finish(ray_local, tmp_path, capsys, reuse_actors):
    """Six grid trials, two at a time on 2 CPUs, all six queued from the start: 0.3 h is spent with the third
    report of 360 s, while the first two run; they finish (three reports each), the four queued never start,
    not even in a finished trial's worker process (reuse_actors)."""
    from ray import tune

    run_dir, results, budget = _sweep(tmp_path, "grid", {"x": tune.grid_search([1, 2, 3, 4, 5, 6])},
                                      reuse_actors=reuse_actors)
    out = capsys.readouterr().out
    line = "tune_app: budget of 0.3 device-hours spent (0.3 h); no new trials are started, 2 running ones finish"
    assert out.count("tune_app: budget of") == 1 and line in out
    ran = _ran(run_dir)
    assert len(ran) == 2 and all(epochs == [1, 2, 3] for epochs in ran.values())
    assert len(results) == 6 and results.num_errors == 0
    saved = json.loads((run_dir / BUDGET_FILE).read_text())
    assert saved == {"hours": 0.3, "devices_per_trial": 1.0, "kind": "cpu", "spent_s": 6 * 360.0,
                     "trials_started": 2, "not_started": 4, "stopped_at": saved["stopped_at"],
                     "spent_s_at_stop": 3 * 360.0, "running_at_stop": 2}
    assert budget.started == {r.metrics["trial_id"] for r in results if "epoch" in r.metrics}
    assert sum("epoch" not in r.metrics for r in results) == 4  # in Ray's results, without a report
    # the summary says so too (a plain Ray experiment's summary: no ledger, but the budget's line)
    assert main([str(run_dir), "--metric", "score", "--wandb-mode", "disabled"]) == 0
    md = (run_dir / "summary" / "report.md").read_text()
    assert "Stopped by --budget-hours 0.3: 0.3 device-hours were spent at" in md
    assert "(2 started, 2 running then finished, 4 queued never started); 0.6 device-hours spent in all." in md
    assert len(pd.read_parquet(run_dir / "summary" / "trials.parquet")) == 2


def test_budget_stops_a_searcher_and_its_queued_trial_never_starts(ray_local, tmp_path, capsys):
    """Optuna with ASHA (wrapped): a model-based searcher's next trial is made and queued while two run; when the
    budget runs out, the search ends and that queued trial is stopped before it starts."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=0))
    asha = tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=3, grace_period=3)
    run_dir, results, budget = _sweep(tmp_path, "optuna", {"x": tune.uniform(0, 1)}, search_alg=searcher,
                                      scheduler=asha)
    assert capsys.readouterr().out.count("no new trials are started, 2 running ones finish") == 1
    ran = _ran(run_dir)
    assert len(ran) == 2 and all(epochs == [1, 2, 3] for epochs in ran.values())
    assert len(budget.started) == 2 and len(budget.not_started) == 1
    assert len(results) == 3  # two ran; the third was made and queued, then stopped: no further trial was made
    saved = budget_mod.read_budget(run_dir)
    assert (saved["trials_started"], saved["not_started"], saved["spent_s"]) == (2, 1, 6 * 360.0)


def test_a_budget_that_is_not_reached_changes_nothing(ray_local, tmp_path, capsys):
    from ray import tune

    run_dir, results, budget = _sweep(tmp_path, "roomy", {"x": tune.grid_search([1, 2, 3])}, hours=10)
    assert "tune_app: budget of" not in capsys.readouterr().out
    assert sorted(map(len, _ran(run_dir).values())) == [3, 3, 3] and budget.stop is None
    saved = budget_mod.read_budget(run_dir)
    assert (saved["stopped_at"], saved["trials_started"], saved["spent_s"]) == (None, 3, 9 * 360.0)


def test_budget_hours_through_the_command(ray_local, tmp_path, capsys):
    """--budget-hours on tune_app's own command: 6 trials of digits one at a time and a budget (0.0036 device-
    seconds) that the first trial's first epoch spends: that trial finishes, no other starts, the sweep says so
    and exits 0, and its summary and report hold the one trial and the budget line."""
    from tune_app import search

    code = search.main(["--space", "digits", "--searcher", "random", "--scheduler", "fifo", "--num-samples", "6",
                        "--set", "epochs=3", "--set", "batch_size=64", "--cpus-per-trial", "2",  # one at a time
                        "--budget-hours", "0.000001", "--storage-path", str(tmp_path), "--name", "budget",
                        "--wandb-mode", "disabled"])
    out = capsys.readouterr().out
    assert code == 0
    assert "tune_app: stopped by --budget-hours 1e-06: 1 of 6 trials started" in out
    run_dir = tmp_path / "budget"
    budget = json.loads((run_dir / "budget.json").read_text())
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    assert len(trials) == 1 and budget["trials_started"] == 1
    assert trials["status"].tolist() == ["completed"] and trials["epochs"].tolist() == [3]
    assert budget["spent_s"] >= 0.000001 * 3600
    assert math.isclose(trials["device_s"].sum(), budget["spent_s"], rel_tol=0.05)
    assert "Stopped by --budget-hours" in (run_dir / "summary" / "report.md").read_text()
    spec = json.loads((run_dir / search.SPEC_FILE).read_text())
    assert spec["settings"]["budget_hours"] == 0.000001
