"""Trend tables, pairwise tables and importance, checked against independent pandas/scipy
computations on a results table the test builds (no Ray needed)."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tune_app.analyze import trends as trend_tables
from tune_app.rundir.tables import history_frame, trials_frame

TARGET = 6
# trial id, optimizer, lr, batch size, epochs reported, how it ended
TRIALS = [
    ("t01", "adam", 3e-4, 32, 6, "ok"), ("t02", "adam", 2e-3, 64, 6, "ok"), ("t03", "sgd", 5e-2, 32, 6, "ok"),
    ("t04", "rmsprop", 4e-3, 64, 6, "ok"), ("t05", "sgd", 2e-4, 64, 2, "ok"), ("t06", "sgd", 7e-4, 32, 2, "ok"),
    ("t07", "rmsprop", 1.5e-4, 32, 2, "ok"), ("t08", "adam", 9e-3, 64, 2, "ok"), ("t09", "rmsprop", 3e-2, 32, 2, "ok"),
    ("t10", "adam", 6e-3, 32, 4, "ok"), ("t11", "sgd", 1e-3, 64, 4, "ok"),
    ("t12", "rmsprop", 8e-2, 64, 5, "diverged"),  # excellent until it blows up at epoch 5
    ("t13", "adam", 1e-4, 32, 1, "error"),
]
BASE = {"adam": 0.60, "sgd": 0.50, "rmsprop": 0.55}


def accuracy(tid: str, opt: str, epoch: int) -> float:
    if tid == "t12":
        return 0.99 if epoch < 5 else 0.0
    return round(BASE[opt] + 0.05 * epoch + 0.01 * (int(tid[1:]) % 5), 6)


@pytest.fixture(scope="module")
def table():
    """The results table: one row per (trial, epoch), built here, independent of tune_app."""
    rows = []
    for tid, opt, lr, bs, depth, how in TRIALS:
        status = {"diverged": "diverged", "error": "error"}.get(how, "completed" if depth == TARGET else "stopped")
        for epoch in range(1, depth + 1):
            rows.append({"trial_id": tid, "optimizer": opt, "lr": lr, "batch_size": bs, "status": status,
                         "epoch": epoch, "val_acc": accuracy(tid, opt, epoch),
                         "diverged": how == "diverged" and epoch == depth})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def records(table):
    out = []
    for tid, opt, lr, bs, _depth, how in TRIALS:
        rows = table[table["trial_id"] == tid]
        history = [{"epoch": int(r.epoch), "val_acc": r.val_acc, "val_loss": math.nan if r.diverged else 1 - r.val_acc,
                    "train_loss": 1.0, "epoch_time_s": 1.0, "diverged": bool(r.diverged)} for r in rows.itertuples()]
        out.append({"trial_id": tid, "name": tid, "history": history, "target_epochs": TARGET,
                    "config": {"optimizer": opt, "lr": lr, "batch_size": bs, "epochs": TARGET},
                    "error": "RuntimeError: boom" if how == "error" else None})
    return out


def expected_k(table) -> int:
    valid = table[~table["diverged"]]
    depth = valid.groupby("trial_id")["epoch"].max()
    need = math.ceil(len(depth) / 3)
    return max(k for k in range(1, depth.max() + 1) if (depth >= k).sum() >= need)


def test_default_epoch_is_deepest_reached_by_a_third(table, records):
    history = history_frame(records)
    # 13 trials reported: 5 must reach K. Epoch 4 is reached by t01-t04, t10, t11 and t12 (valid through
    # epoch 4); epochs 5 and 6 only by the four complete trials.
    assert trend_tables.default_at_epoch(history, "val_acc") == expected_k(table) == 4
    depth = trend_tables.reached(history, "val_acc")
    assert depth["t12"] == 4 and depth["t13"] == 1 and depth["t01"] == 6


def independent(table, at_epoch: int, view: str, param: str) -> pd.DataFrame:
    """mean/std/CI/best/median rank per value with plain pandas and scipy."""
    if view == "epoch":
        pool = table[(table["epoch"] == at_epoch) & table["status"].isin(["completed", "stopped"])]
    else:
        last = table.sort_values("epoch").groupby("trial_id").tail(1)
        ok = ["completed"] if view == "completed" else ["completed", "stopped"]
        pool = last[last["status"].isin(ok)]
    pool = pool.assign(rank=pool["val_acc"].rank(ascending=False))
    out = pool.groupby(param).agg(n=("val_acc", "size"), mean=("val_acc", "mean"), std=("val_acc", "std"),
                                  best=("val_acc", "max"), median_rank=("rank", "median"))
    ci = {v: stats.t.interval(0.95, len(g) - 1, loc=g.mean(), scale=stats.sem(g)) if len(g) > 1 else (np.nan,) * 2
          for v, g in pool.groupby(param)["val_acc"]}
    out["ci95_low"] = [np.maximum(0.0, ci[v][0]) for v in out.index]
    out["ci95_high"] = [np.minimum(1.0, ci[v][1]) for v in out.index]
    counts = table.drop_duplicates("trial_id").groupby([param, "status"]).size().unstack(fill_value=0)
    return out.join(counts, how="outer")


@pytest.mark.parametrize("view", ["epoch", "completed", "raw"])
def test_trend_numbers_match_pandas(table, records, view):
    history = history_frame(records)
    trials = trials_frame(records, "val_acc", "max")
    trends = trend_tables.trends(trials, history, ["optimizer", "batch_size"], "val_acc", "max", at_epoch=4)
    label = {"epoch": "epoch 4"}.get(view, view)
    assert set(trends["view"]) == {"epoch 4", "completed", "raw"}
    for param in ("optimizer", "batch_size"):
        got = trends[(trends["view"] == label) & (trends["hyperparameter"] == param)].set_index("value")
        want = independent(table, 4, view, param)
        assert sorted(got.index, key=str) == sorted(want.index, key=str)
        for value, w in want.iterrows():
            g = got.loc[value]
            for status in ("completed", "stopped", "diverged"):
                assert g[status] == w.get(status, 0), (param, value, status)
            assert g["failed"] == w.get("error", 0)
            assert g["n"] == (0 if pd.isna(w["n"]) else w["n"])
            for column in ("mean", "std", "best", "median_rank", "ci95_low", "ci95_high"):
                assert g[column] == pytest.approx(w[column], nan_ok=True), (view, param, value, column)


def test_diverged_trial_counted_never_averaged(records):
    history = history_frame(records)
    trials = trials_frame(records, "val_acc", "max")
    trends = trend_tables.trends(trials, history, ["optimizer"], "val_acc", "max", at_epoch=4)
    rms = trends[(trends["view"] == "epoch 4") & (trends["value"] == "rmsprop")].iloc[0]
    # t12 (rmsprop) had 0.99 at epoch 4; only t04 (0.55 + 0.2 + 0.04) is averaged.
    assert rms["diverged"] == 1 and rms["n"] == 1 and rms["mean"] == pytest.approx(0.79) and rms["best"] < 0.99
    assert trends["failed"].groupby(trends["view"]).sum().tolist() == [1, 1, 1]


def test_equal_epoch_view_removes_the_early_stopping_bias(records):
    """sgd's trials were mostly stopped at epoch 2: its raw mean mixes lengths, the epoch view does not."""
    history = history_frame(records)
    trials = trials_frame(records, "val_acc", "max")
    trends = trend_tables.trends(trials, history, ["optimizer"], "val_acc", "max", at_epoch=2)
    trends = trends.set_index(["view", "value"])
    at2 = trends.loc[("epoch 2", "sgd")]
    raw = trends.loc[("raw", "sgd")]
    assert at2["n"] == 4 and raw["n"] == 4
    # At epoch 2 every sgd trial has 0.6 + noise; raw adds t03 at epoch 6 (0.8+) and t11 at epoch 4.
    assert at2["mean"] == pytest.approx(np.mean([0.63, 0.60, 0.61, 0.61]))
    assert raw["mean"] > at2["mean"] + 0.05


def test_continuous_bins_group_like_pd_cut(table, records):
    edges = [1e-4, 1e-3, 1e-2, 1e-1]
    trials = trials_frame(records, "val_acc", "max")
    values = trend_tables.view_values(trials, history_frame(records), "val_acc", 2)["epoch"]
    got = trend_tables.trend_table(trials, values, ["lr"], "max", bins={"lr": edges}).set_index("value")
    assert list(got.index) == ["[0.0001, 0.001)", "[0.001, 0.01)", "[0.01, 0.1]"]
    pool = table[(table["epoch"] == 2) & table["status"].isin(["completed", "stopped"])]
    groups = pd.cut(pool["lr"], edges, right=False, labels=list(got.index))
    want = pool.groupby(groups, observed=True)["val_acc"].agg(["mean", "size"])
    assert got["mean"].tolist() == pytest.approx(want["mean"].tolist())
    assert got["n"].tolist() == want["size"].tolist()


def test_pair_table(table, records):
    trials = trials_frame(records, "val_acc", "max")
    values = trend_tables.view_values(trials, history_frame(records), "val_acc", 4)["epoch"]
    got = trend_tables.pair_table(trials, values, "optimizer", "batch_size").set_index(["a", "b"])
    pool = table[(table["epoch"] == 4) & table["status"].isin(["completed", "stopped"])]
    want = pool.groupby(["optimizer", "batch_size"])["val_acc"].agg(["mean", "size"])
    for (a, b), w in want.iterrows():
        assert got.loc[(a, b), "mean"] == pytest.approx(w["mean"]) and got.loc[(a, b), "n"] == w["size"]
    # A pair whose only trials never reached epoch 4 (sgd, 32: t03 did, t06 did not) still shows its count.
    assert got.loc[("rmsprop", 32), "n"] == 0 and math.isnan(got.loc[("rmsprop", 32), "mean"])


def test_ci_is_student_t_and_clipped():
    v = pd.Series([0.90, 0.92, 0.94])
    low, high = trend_tables.ci95(v)
    assert (low, high) == pytest.approx(stats.t.interval(0.95, 2, loc=0.92, scale=stats.sem(v)))
    assert trend_tables.ci95(pd.Series([0.5, 0.99]), (0, 1))[1] == 1.0
    assert all(math.isnan(x) for x in trend_tables.ci95(pd.Series([0.5])))


def synthetic_trials(n=48, seed=0):
    """lr drives the metric (peak at 1e-2.5); `noise` and `flag` do not."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-4, -1))
        noise = str(rng.choice(["a", "b", "c"]))
        acc = 0.95 - 0.25 * abs(math.log10(lr) + 2.5) + 0.005 * rng.normal()
        records.append({"trial_id": f"s{i:02d}", "name": f"s{i:02d}", "target_epochs": 1, "error": None,
                        "config": {"lr": lr, "noise": noise, "flag": bool(rng.integers(2))},
                        "history": [{"epoch": 1, "val_acc": acc, "epoch_time_s": 1.0}]})
    return records


def test_importance_ranks_the_driving_hyperparameter_first():
    records = synthetic_trials()
    trials = trials_frame(records, "val_acc", "max", at_epoch=1)
    values = trend_tables.view_values(trials, history_frame(records), "val_acc", 1)["epoch"]
    dists = trend_tables.distributions(trials, ["lr", "noise", "flag"], {"lr": ("float", 1e-4, 1e-1, True)})
    assert dists["lr"].log and dists["noise"].choices == ("a", "b", "c") and dists["flag"].choices == (False, True)
    study = trend_tables.build_study(trials, values, dists, "max")
    assert len(study.trials) == 48 and study.direction.name == "MAXIMIZE"
    imp = trend_tables.importance(study).set_index("hyperparameter")
    assert imp.index[0] == "lr"
    for column in ("fanova", "ped_anova"):
        assert imp[column].sum() == pytest.approx(1.0, abs=1e-6)
        assert imp.loc["lr", column] > 0.5 > max(imp.loc["noise", column], imp.loc["flag", column])


def test_importance_over_a_40_value_grid_and_20_named_choices():
    """A grid of 40 widths and 20 named options (categorical to Optuna): fANOVA sees them as ordered axes
    (it would one-hot encode them and take hours), while the study keeps its categories for the plots."""
    rng = np.random.default_rng(3)
    names = [f"opt{i:02d}" for i in range(20)]
    records = []
    for i in range(80):
        width, name = int(rng.integers(40)) * 8, names[int(rng.integers(20))]
        records.append({"trial_id": f"t{i:03d}", "name": f"t{i:03d}", "config": {"width": width, "opt": name},
                        "history": [{"epoch": 1, "val_acc": 0.5 + width / 1000 + rng.normal(0, 0.002)}]})
    trials = trials_frame(records, "val_acc", "max", at_epoch=1)
    values = trend_tables.view_values(trials, history_frame(records), "val_acc", 1)["epoch"]
    dists = trend_tables.distributions(trials, ["width", "opt"], {})
    assert len(dists["width"].choices) > 30 and len(dists["opt"].choices) == 20
    study = trend_tables.build_study(trials, values, dists, "max")
    imp = trend_tables.importance(study).set_index("hyperparameter")
    assert list(imp.index) == ["width", "opt"] and imp.loc["width", "fanova"] > 0.9
    assert imp["fanova"].sum() == pytest.approx(1.0, abs=1e-6)
    assert study.trials[0].distributions["opt"].choices == tuple(sorted(set(trials["config/opt"])))


def test_importance_empty_when_nothing_varies():
    records = synthetic_trials(n=1)
    trials = trials_frame(records, "val_acc", "max", at_epoch=1)
    values = trend_tables.view_values(trials, history_frame(records), "val_acc", 1)["epoch"]
    study = trend_tables.build_study(trials, values, trend_tables.distributions(trials, ["noise"], {}), "max")
    assert trend_tables.importance(study).empty


def schedule_records(spans: bool) -> list[dict]:
    """Cosine-scheduled trials of two planned lengths whose lr is confounded with the length: the 10-epoch trials
    (lr 0.1) finish annealing at epoch 10 (0.90, 0.91); the 20-epoch ones (lr 0.01) are halfway down their
    schedule there (0.80, 0.82) and end better (0.95, 0.96)."""
    def record(tid, epochs, lr, curve):
        history = [{"epoch": e, "val_acc": v, "val_loss": 1 - v, "diverged": False} for e, v in enumerate(curve, 1)]
        return {"trial_id": tid, "name": tid, "config": {"epochs": epochs, "lr": lr, "schedule": "cosine"},
                "history": history, "error": None, "target_epochs": epochs, "schedule_spans_run": spans}

    short = lambda end: [round(end - 0.02 * (10 - e), 4) for e in range(1, 11)]  # noqa: E731
    long = lambda mid, end: [round(mid - 0.02 * (10 - e), 4) for e in range(1, 11)] + \
        [round(mid + (end - mid) * e / 10, 4) for e in range(1, 11)]  # noqa: E731
    return [record("s1", 10, 0.1, short(0.90)), record("s2", 10, 0.1, short(0.91)),
            record("l1", 20, 0.01, long(0.80, 0.95)), record("l2", 20, 0.01, long(0.82, 0.96))]


def test_the_epoch_view_compares_like_with_like_when_the_schedule_follows_the_planned_length():
    records = schedule_records(spans=True)
    history, trials = history_frame(records), trials_frame(records, "val_acc", "max", at_epoch=10)
    # the old view (every trial at epoch 10) ranks the 10-epoch schedule first: it compares a finished cosine
    # with one halfway down
    old = trend_tables.metric_at(history, "val_acc", 10).groupby(lambda tid: tid[0]).mean()
    assert old["s"] > old["l"]
    table = trend_tables.trends(trials, history, ["epochs", "lr"], "val_acc", "max", at_epoch=10)
    assert table.attrs["planned"] == 20  # two trials each: the longer planned length is kept
    at10 = table[table["view"] == "epoch 10"].set_index(["hyperparameter", "value"])
    assert list(at10.loc["epochs"].index) == [10, 20] and list(at10.loc["epochs"]["n"]) == [0, 2]
    assert at10.loc[("epochs", 20), "mean"] == pytest.approx((0.80 + 0.82) / 2)
    completed = table[table["view"] == "completed"].set_index(["hyperparameter", "value"])
    assert completed.loc[("epochs", 20), "mean"] > completed.loc[("epochs", 10), "mean"]  # each at its own end
    assert completed.loc[("epochs", 20), "median_rank"] < completed.loc[("epochs", 10), "median_rank"]
    from tune_app.report.documents import trends_markdown

    md = trends_markdown(table, "val_acc")
    assert "trials planned for 20 epochs that reached it" in md and "in the completed view" in md


def test_a_schedule_that_ignores_the_planned_length_keeps_every_trial_at_epoch_k():
    records = schedule_records(spans=False)
    history, trials = history_frame(records), trials_frame(records, "val_acc", "max", at_epoch=10)
    table = trend_tables.trends(trials, history, ["epochs"], "val_acc", "max", at_epoch=10)
    at10 = table[table["view"] == "epoch 10"].set_index("value")
    assert table.attrs["planned"] is None and list(at10["n"]) == [2, 2]
    assert at10.loc[10, "mean"] == pytest.approx(0.905) and at10.loc[20, "mean"] == pytest.approx(0.81)
