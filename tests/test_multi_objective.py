"""Several objectives: METRIC and MODE as lists (or --metric a,b --mode max,min), Optuna's multi-objective samplers,
the Pareto front in summary/pareto.csv and best_config.json, and one configuration picked from it by a written
rule."""
import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.test_summary import make_record
from tune_app.analyze.selection import PICK_RULE, pareto_front, pick_from_front
from tune_app.rundir.tables import history_frame, trials_frame
from tune_app.search import main


def dominated_by_pandas(table: pd.DataFrame, objectives) -> set:
    """Independently: the rows some other row is at least as good as on every objective and better on one."""
    out = set()
    for i, a in table.iterrows():
        for j, b in table.iterrows():
            if i == j:
                continue
            better_or_equal = all((b[c] >= a[c]) if mode == "max" else (b[c] <= a[c]) for c, mode in objectives)
            strictly = any((b[c] > a[c]) if mode == "max" else (b[c] < a[c]) for c, mode in objectives)
            if better_or_equal and strictly:
                out.add(a["trial_id"])
    return out


def test_the_front_is_the_non_dominated_trials_and_the_pick_follows_the_rule():
    # (val_acc, params, epoch_time_s) per trial; e is dominated by a; d diverged (never on the front)
    rows = {"a": (0.95, 5000, 2.0), "b": (0.94, 3000, 2.5), "c": (0.80, 1000, 1.0), "e": (0.90, 6000, 2.0),
            "f": (0.95, 5000, 1.5), "g": (0.93, 3000, 1.0)}
    records = []
    for tid, (acc, params, seconds) in rows.items():
        r = make_record(tid, [0.5, acc])
        for h in r["history"]:
            h.update(params=params, epoch_time_s=seconds)
        records.append(r)
    records.append(make_record("d", [0.99, 0.99], diverge=True))
    objectives = [("val_acc", "max"), ("params", "min"), ("epoch_time_s", "min")]
    t = trials_frame(records, "val_acc", "max")
    front = pareto_front(t, objectives)
    table = t[t["status"] != "diverged"].rename(columns={"final_val_acc": "acc", "final_params": "weights",
                                                       "final_epoch_time_s": "s"})
    expected = set(table["trial_id"]) - dominated_by_pandas(table, [("acc", "max"), ("weights", "min"), ("s", "min")])
    assert set(front["trial_id"]) == expected == {"b", "c", "f", "g"}
    # 144 images: a, f, b and g are within noise of the front's best (f: 95 %); of those, the fewest parameters
    # wins (b and g: 3000), then the least time (g)
    picked = pick_from_front(front, history_frame(records), objectives, examples=144)
    assert picked["trial_id"] == "g" and "within noise" in PICK_RULE
    # 100,000 images: only f is within noise of itself, so f
    assert pick_from_front(front, history_frame(records), objectives, examples=100_000)["trial_id"] == "f"


TINY = ["--space", "digits", "--set", "epochs=2", "--max-epochs", "2", "--cpus-per-trial", "1",
        "--wandb-mode", "disabled"]

BAD = [
    (["--metric", "val_acc,params", "--mode", "max"], "2 metrics (val_acc, params) and 1 modes (max); give one mode"),
    (["--metric", "val_acc,flops", "--mode", "max,min"], "metric 'flops' is not one the trainable reports; use one of"),
    (["--metric", "val_acc,params", "--mode", "max,least"], "mode 'least' for params: use max or min"),
    (["--searcher", "nsga2"], "--searcher nsga2 is for several objectives and the sweep has one (val_acc (max))"),
    (["--metric", "val_acc,params", "--mode", "max,min", "--searcher", "hyperopt"],
     "--searcher hyperopt ranks by one metric and the sweep has val_acc (max), params (min); use --searcher optuna "
     "or nsga2"),
    (["--metric", "val_acc,params", "--mode", "max,min", "--searcher", "random", "--scheduler", "pbt"],
     "--searcher random ranks by one metric"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_objectives_are_one_line_before_ray(argv, message, tmp_path, capsys):
    code = main([*TINY, *argv, "--storage-path", str(tmp_path / "runs"), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def two_objectives(ray_local, tmp_path_factory):
    runs = tmp_path_factory.mktemp("multi")
    code = main([*TINY, "--set", "model=[digits_cnn,small_cnn4]", "--set", "batch_norm=[true,false]",
                 "--num-samples", "6", "--metric", "val_acc,params", "--mode", "max,min", "--searcher", "nsga2",
                 "--scheduler", "fifo", "--seed", "1", "--storage-path", str(runs), "--name", "two"])
    run_dir = runs / "two"
    return code, run_dir


@pytest.mark.e2e
def test_the_pareto_file_is_the_front_recomputed_from_the_trials(two_objectives):
    code, run_dir = two_objectives
    assert code == 0
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    assert len(trials) == 6 and trials["final_params"].nunique() > 1
    table = trials[trials["status"] == "completed"].rename(columns={"final_val_acc": "acc",
                                                                    "final_params": "weights"})
    expected = set(table["trial_id"]) - dominated_by_pandas(table, [("acc", "max"), ("weights", "min")])
    pareto = read_pareto(run_dir)
    assert list(pareto.columns) == ["trial_id", "name", "val_acc", "params", "picked"]
    assert set(pareto["trial_id"]) == expected and pareto["picked"].sum() == 1
    assert list(pareto["val_acc"]) == sorted(pareto["val_acc"], reverse=True)
    for _, row in pareto.iterrows():
        mine = trials.set_index("trial_id").loc[row["trial_id"]]
        assert (row["val_acc"], row["params"]) == (mine["final_val_acc"], mine["final_params"])
    best = json.loads((run_dir / "summary" / "best_config.json").read_text())
    assert best["objectives"] == [{"metric": "val_acc", "mode": "max"}, {"metric": "params", "mode": "min"}]
    assert best["pick_rule"] == PICK_RULE and best["trial_id"] == best["picked"] == \
        pareto.loc[pareto["picked"], "trial_id"].iloc[0]
    assert {p["trial_id"] for p in best["pareto"]} == expected
    assert best["config"]["model"] in ("digits_cnn", "small_cnn4")


@pytest.mark.e2e
def test_every_objective_has_its_trend_tables_and_importance(two_objectives):
    """The second objective gets the first's tables: trends_params.csv (recomputed here from trials.parquet) and
    importance_params.csv, in the report and the summary folder."""
    code, run_dir = two_objectives
    assert code == 0
    summary = run_dir / "summary"
    trials = pq.read_table(summary / "trials.parquet").to_pandas()
    trends = pd.read_csv(summary / "trends_params.csv")
    assert list(trends.columns) == list(pd.read_csv(summary / "trends.csv").columns)
    completed = trials[trials["status"] == "completed"]
    for param in ("model", "batch_norm"):
        rows = trends[(trends["view"] == "completed") & (trends["hyperparameter"] == param)]
        expected = completed.groupby(completed[f"config/{param}"].astype(str))["final_params"]
        assert sorted(rows["value"].astype(str)) == sorted(expected.groups)
        for _, row in rows.iterrows():
            values = expected.get_group(str(row["value"]))
            assert row["n"] == len(values)
            assert row["mean"] == pytest.approx(values.mean())
            assert row["best"] == values.min()  # params: smaller is better
    by_model = trends[(trends["view"] == "completed") & (trends["hyperparameter"] == "model")].set_index("value")
    assert by_model.loc["digits_cnn", "mean"] != by_model.loc["small_cnn4", "mean"]
    importance = pd.read_csv(summary / "importance_params.csv")
    assert list(importance.columns) == ["hyperparameter", "fanova", "ped_anova"]
    searched = {c.removeprefix("config/") for c in trials.columns if c.startswith("config/")}
    assert set(importance["hyperparameter"]) <= searched and "model" in set(importance["hyperparameter"])
    assert importance["fanova"].sum() == pytest.approx(1.0)
    assert importance.iloc[0]["hyperparameter"] == "model"  # the model decides its parameter count
    report = (summary / "report.md").read_text()
    assert "Trends of params: epoch" in report and "Importance for params" in report


@pytest.mark.e2e
def test_optunas_study_is_multi_objective_and_agrees_on_the_front(two_objectives):
    _, run_dir = two_objectives
    study = optuna.load_study(study_name="two", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal"))))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas().set_index("trial_id")
    for t in study.trials:
        row = trials.loc[t.user_attrs["trial_id"]]
        assert t.values == [row["final_val_acc"], row["final_params"]]
    pareto = read_pareto(run_dir)
    assert {t.user_attrs["trial_id"] for t in study.best_trials} == set(pareto["trial_id"])
    assert np.isfinite(trials["device_s"]).all()


@pytest.mark.e2e
def test_resume_refuses_other_objectives(two_objectives, capsys):
    _, run_dir = two_objectives
    code = main(["--resume", str(run_dir), "--metric", "val_acc,peak_mem_mb"])
    err = capsys.readouterr().err
    assert code == 2 and "these differ: metric" in err


@pytest.mark.e2e
def test_the_pareto_plot_draws_the_front_and_stars_the_pick(two_objectives):
    from tune_app.plots.progress import pareto_figures

    _, run_dir = two_objectives
    plots = run_dir / "summary" / "plots"
    assert (plots / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (plots / "pareto.html").is_file()
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    pareto = read_pareto(run_dir)
    fig, pfig = pareto_figures(trials, pareto, [("val_acc", "max"), ("params", "min")])
    __import__("matplotlib.pyplot").pyplot.close(fig)
    every, front, picked = pfig.data
    assert len(every.x) == (trials["status"] == "completed").sum()
    assert list(front.x) == pytest.approx(sorted(100 * pareto["val_acc"]))  # accuracies in percent
    assert (picked.x[0], picked.y[0]) == pytest.approx((100 * pareto.loc[pareto["picked"], "val_acc"].iloc[0],
                                                         pareto.loc[pareto["picked"], "params"].iloc[0]))


@pytest.mark.e2e
def test_a_retrain_takes_the_front_the_picked_configuration_first(two_objectives):
    from tune_app.analyze import top_configs

    _, run_dir = two_objectives
    pareto = read_pareto(run_dir)
    _, top = top_configs(run_dir, None, "--configs")
    ids = [t["trial_id"] for t in top["trials"]]
    assert ids[0] == pareto.loc[pareto["picked"], "trial_id"].iloc[0]
    assert set(ids) <= set(pareto["trial_id"]) and len(ids) == min(3, len(pareto))
    assert top["chosen"].endswith(f"of the Pareto front's {len(pareto)} (the picked configuration first)")


def read_pareto(run_dir: Path) -> pd.DataFrame:
    """pareto.csv as docs/run-directory.md says to read it: a trial id such as 36e71493 is text, not 36 x 10^71493."""
    return pd.read_csv(run_dir / "summary" / "pareto.csv", dtype={"trial_id": str})



@pytest.mark.e2e
def test_the_wandb_summary_run_holds_every_objectives_tables_and_the_front(two_objectives, tmp_path, monkeypatch):
    """Re-analysed (on a copy) with W&B offline: the summary run logs the second objective's trend tables and
    importance beside the first's, and the Pareto front, each equal to the summary folder's CSV."""
    import shutil

    from tests.wandb_records import read_run
    from tune_app.analyze.cli import main as analyze

    code, run_dir = two_objectives
    assert code == 0
    copy = tmp_path / "two"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("wandb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert analyze([str(copy), "--wandb-mode", "offline"]) == 0
    (wandb_dir,) = (copy / "wandb").glob("offline-run-*")
    run = read_run(next(wandb_dir.glob("run-*.wandb")))
    assert run["name"] == "two-summary"
    (row,) = [h for h in run["history"] if "importance/_type" in h]
    logged = {}
    for key, value in row.items():
        head, _, field = key.rpartition("/")
        logged.setdefault(head, {})[field] = value

    def table(name: str) -> dict:
        assert logged[name]["_type"] == "table-file", name
        return json.loads((wandb_dir / "files" / logged[name]["path"]).read_text())

    summary = copy / "summary"
    for metric, trends_csv in (("val_acc", "trends.csv"), ("params", "trends_params.csv")):
        csv = pd.read_csv(summary / trends_csv)
        prefix = "trends" if metric == "val_acc" else "trends_params"
        for view, rows in csv.groupby("view", sort=False):
            logged_rows = table(f"{prefix}/{view}")
            assert len(logged_rows["data"]) == len(rows), (metric, view)
            assert logged_rows["columns"] == [c for c in csv.columns if c != "view"]
    importance = table("importance_params")
    assert [r[0] for r in importance["data"]] == list(pd.read_csv(summary / "importance_params.csv")["hyperparameter"])
    pareto = table("pareto")
    expected = pd.read_csv(summary / "pareto.csv", dtype={"trial_id": str})
    assert pareto["columns"] == list(expected.columns)
    assert sorted(r[0] for r in pareto["data"]) == sorted(expected["trial_id"])
