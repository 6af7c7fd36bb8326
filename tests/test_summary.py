"""Tests for tune_app.summary with hand-built trial records (no Ray needed)."""

import json
import math
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from tune_app import summary
from tune_app.summary import (
    best_config_payload,
    format_best,
    history_frame,
    select_best,
    trend_table,
    trends_markdown,
    trial_status,
    trials_frame,
    write_summary,
)

NAN = float("nan")


def make_record(tid, accs, *, target=3, lr=0.01, activation="relu", batch_size=64, widths=(64, 128),
                error=None, diverge=False, extra=None):
    """A record whose epoch i reports val_acc accs[i]; `diverge` appends a NaN-loss diverged epoch."""
    history = [{"epoch": i, "train_loss": 1.0 / i, "train_acc": acc - 0.01, "val_loss": 1.0 - acc,
                "val_acc": acc, "lr": lr, "epoch_time_s": 2.0, "samples_per_s": 1000.0,
                "peak_mem_mb": 512.0, "params": 1234, "diverged": False}
               for i, acc in enumerate(accs, start=1)]
    if diverge:
        history.append({**history[-1], "epoch": len(history) + 1, "train_loss": NAN, "val_loss": NAN,
                        "val_acc": 0.0, "train_acc": 0.0, "diverged": True})
    config = {"model": "vgg6", "activation": activation, "lr": lr, "batch_size": batch_size,
              "epochs": target, "widths": list(widths), **(extra or {})}
    return {"trial_id": tid, "name": f"t_{tid}", "config": config, "history": history,
            "error": error, "target_epochs": target}


@pytest.fixture
def records():
    return [
        make_record("f", [0.70, 0.85], target=2, lr=0.001),  # ties b on final, fewer epochs
        make_record("a", [0.50, 0.92, 0.80], batch_size=128, extra={"momentum": 0.9}),
        make_record("b", [0.60, 0.90, 0.85], lr=0.001, activation="gelu", widths=(32, 64)),
        make_record("c", [0.55], batch_size=256, activation="gelu"),  # early-stopped
        make_record("d", [0.95, 0.99], lr=0.1, diverge=True),  # best numbers, but diverged
        make_record("e", [0.97], lr=0.001, error="Traceback (most recent call last): boom"),
    ]


def test_trial_status(records):
    statuses = {r["trial_id"]: trial_status(r) for r in records}
    assert statuses == {"f": "completed", "a": "completed", "b": "completed", "c": "stopped",
                        "d": "diverged", "e": "error"}
    assert trial_status({"trial_id": "x", "history": [], "error": None, "target_epochs": 3}) == "stopped"


def test_trials_frame_values(records):
    t = trials_frame(records, "val_acc", "max")
    assert list(t["trial_id"]) == ["a", "b", "c", "d", "e", "f"]
    assert list(t["status"]) == ["completed", "completed", "stopped", "diverged", "error", "completed"]
    assert list(t["epochs"]) == [3, 3, 1, 3, 1, 2]
    assert list(t["seconds"]) == [6.0, 6.0, 2.0, 6.0, 2.0, 4.0]
    t = t.set_index("trial_id")
    assert t.loc["a", "final_val_acc"] == 0.80 and t.loc["a", "best_val_acc"] == 0.92
    assert t.loc["a", "best_epoch"] == 2
    assert t.loc["b", "best_val_acc"] == 0.90 and t.loc["b", "best_epoch"] == 2
    # The diverged epoch (val_acc 0.0, NaN loss) is ignored for best_*, but is the final row.
    assert t.loc["d", "best_val_acc"] == 0.99 and t.loc["d", "best_epoch"] == 2
    assert t.loc["d", "final_val_acc"] == 0.0 and math.isnan(t.loc["d", "final_val_loss"])
    assert "final_epoch" not in t.columns and "final_params" in t.columns
    # Plain columns keep their types; the list column becomes JSON text; a key only some trials have is nullable.
    assert t["config/lr"].dtype == "float64" and t["config/batch_size"].dtype == "int64"
    assert t.loc["b", "config/widths"] == "[32, 64]"
    assert t.loc["a", "config/momentum"] == 0.9 and math.isnan(t.loc["b", "config/momentum"])

    tmin = trials_frame(records, "val_acc", "min").set_index("trial_id")
    assert tmin.loc["a", "best_val_acc"] == 0.50 and tmin.loc["a", "best_epoch"] == 1
    assert tmin.loc["d", "best_val_acc"] == 0.95  # the diverged 0.0 does not count as a minimum


def test_history_frame(records):
    h = history_frame(records)
    assert len(h) == 3 + 3 + 1 + 3 + 1 + 2
    assert list(h.columns[:3]) == ["trial_id", "name", "epoch"]
    assert list(h.loc[h["trial_id"] == "b", "val_acc"]) == [0.60, 0.90, 0.85]
    empty = history_frame([])
    assert len(empty) == 0 and {"trial_id", "name", "epoch"} <= set(empty.columns)


def test_select_best_rules_and_modes(records):
    tmax = trials_frame(records, "val_acc", "max")
    # last: b and f tie at 0.85 -> b has more epochs; e (0.97, error) and d never eligible.
    assert select_best(tmax, "val_acc", "max", "last")["trial_id"] == "b"
    # best-epoch: a peaked at 0.92; d peaked at 0.99 but diverged.
    assert select_best(tmax, "val_acc", "max", "best-epoch")["trial_id"] == "a"
    tmin = trials_frame(records, "val_acc", "min")
    # last/min: d's final 0.0 would win, but it diverged -> c (0.55).
    assert select_best(tmin, "val_acc", "min", "last")["trial_id"] == "c"
    assert select_best(tmin, "val_acc", "min", "best-epoch")["trial_id"] == "a"
    with pytest.raises(ValueError):
        select_best(tmax, "val_acc", "max", "median")


def test_select_best_tie_on_trial_id():
    t = trials_frame([make_record("z", [0.5, 0.7]), make_record("y", [0.6, 0.7])], "val_acc", "max")
    assert select_best(t, "val_acc", "max")["trial_id"] == "y"


def test_select_best_none_eligible(records):
    t = trials_frame([r for r in records if r["trial_id"] in ("d", "e")], "val_acc", "max")
    with pytest.raises(ValueError, match="no trial finished without error or divergence; nothing to select"):
        select_best(t, "val_acc", "max")


def test_trend_table_matches_groupby(records):
    t = trials_frame(records, "val_acc", "max")
    table = trend_table(t, ["lr", "activation", "batch_size", "widths"], "val_acc", "max")
    assert list(table.columns) == ["hyperparameter", "value", "runs", "diverged", "errors", "mean", "std", "best"]
    eligible = t[t["status"].isin(["completed", "stopped"])]
    for p in ["lr", "activation", "batch_size", "widths"]:
        sub = table[table["hyperparameter"] == p].set_index("value")
        expected = eligible.groupby(f"config/{p}")["final_val_acc"].agg(["mean", "std", "max", "size"])
        for value, row in expected.iterrows():
            assert sub.loc[value, "mean"] == pytest.approx(row["mean"])
            assert sub.loc[value, "runs"] == row["size"]
            assert sub.loc[value, "best"] == pytest.approx(row["max"])
            if math.isnan(row["std"]):
                assert math.isnan(sub.loc[value, "std"])
            else:
                assert sub.loc[value, "std"] == pytest.approx(row["std"])
    lr = table[table["hyperparameter"] == "lr"].set_index("value")
    assert list(lr.index) == [0.001, 0.01, 0.1]
    assert lr.loc[0.001, ["runs", "diverged", "errors"]].tolist() == [2, 0, 1]
    assert lr.loc[0.001, "mean"] == pytest.approx(0.85)
    assert lr.loc[0.01, "mean"] == pytest.approx(0.675)
    assert lr.loc[0.01, "std"] == pytest.approx(np.std([0.80, 0.55], ddof=1))
    # lr=0.1 only has the diverged trial: counted, never averaged.
    assert lr.loc[0.1, "runs"] == 0 and lr.loc[0.1, "diverged"] == 1 and math.isnan(lr.loc[0.1, "mean"])
    bs = table[table["hyperparameter"] == "batch_size"]
    assert list(bs["value"]) == [64, 128, 256]  # numeric, not string, order
    assert math.isnan(bs.set_index("value").loc[128, "std"])  # one run
    # Minimise: best is the minimum.
    tmin = trend_table(t, ["lr"], "val_acc", "min").set_index("value")
    assert tmin.loc[0.01, "best"] == pytest.approx(0.55)


def test_trends_markdown(records):
    t = trials_frame(records, "val_acc", "max")
    md = trends_markdown(trend_table(t, ["lr", "activation"], "val_acc", "max"), "val_acc")
    assert "### lr" in md and "### activation" in md and "mean %" in md
    assert "| 0.01 | 2 | 0 | 0 | 67.50 | 17.68 | 80.00 |" in md
    assert "| 0.1 | 0 | 1 | 0 | n/a | n/a | n/a |" in md
    loss_md = trends_markdown(trend_table(t, ["lr"], "val_loss", "min"), "val_loss")
    assert "mean %" not in loss_md and "| 0.01 | 2 | 0 | 0 | 0.325 |" in loss_md


def test_payload_and_format(records):
    t = trials_frame(records, "val_acc", "max")
    best = select_best(t, "val_acc", "max", "last")
    payload = best_config_payload(best, t, "val_acc", "max", "last",
                                  {"seed": np.int64(7), "git_commit": "abc123"})
    json.dumps(payload, allow_nan=False)
    b = next(r for r in records if r["trial_id"] == "b")
    assert payload["config"] == b["config"]  # list decoded, no NaN momentum key
    assert payload["seed"] == 7 and type(payload["seed"]) is int
    assert payload["trials"] == {"total": 6, "completed": 3, "stopped": 1, "diverged": 1, "error": 1}
    assert (payload["value"], payload["best_epoch_value"], payload["best_epoch"], payload["epochs"]) == (
        0.85, 0.90, 2, 3)
    text = format_best(payload)
    assert text.splitlines()[0] == "Best trial t_b (b): val_acc 85.00 % (last epoch), 90.00 % at epoch 2"
    assert "  widths: [32, 64]" in text and "  lr: 0.001" in text


def test_write_summary_files(tmp_path, records):
    out = tmp_path / "summary"
    res = write_summary(out, records, ["lr", "widths"], "val_acc", "max", {"seed": 1}, rule="best-epoch")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["trials.parquet", "history.parquet", "best_config.json", "best_config.yaml", "trends.csv", "trends.md"])
    trials = pq.read_table(out / "trials.parquet")
    assert trials.num_rows == 6 and trials.column_names == list(res["trials"].columns)
    assert pq.read_table(out / "history.parquet").num_rows == 13
    as_json = json.loads((out / "best_config.json").read_text())
    assert as_json == yaml.safe_load((out / "best_config.yaml").read_text()) == res["best"]
    assert as_json["trial_id"] == "a" and as_json["selection_rule"] == "best-epoch"
    a = next(r for r in records if r["trial_id"] == "a")
    assert as_json["config"] == a["config"]
    # Re-read trials table yields the same decoded config.
    reread = pd.read_parquet(out / "trials.parquet")
    row = reread.set_index("trial_id", drop=False).loc["a"]
    assert best_config_payload(row, reread, "val_acc", "max", "best-epoch", {})["config"] == a["config"]
    assert len(pd.read_csv(out / "trends.csv")) == len(res["trends"]) == 3 + 2
    assert "### widths" in (out / "trends.md").read_text()


def test_write_is_atomic(tmp_path, records, monkeypatch):
    write_summary(tmp_path, records, ["lr"], "val_acc", "max", {})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    seen = []

    def failing_replace(src, dst):
        assert os.path.getsize(src) > 0  # the temp file was fully written
        seen.append(src)
        raise OSError("simulated kill")

    monkeypatch.setattr(summary.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated kill"):
        write_summary(tmp_path, records[:2], ["lr"], "val_acc", "max", {})
    assert seen
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # untouched, no temp left


def test_write_summary_no_eligible(tmp_path, records):
    bad = [r for r in records if r["trial_id"] in ("d", "e")]
    res = write_summary(tmp_path, bad, ["lr"], "val_acc", "max", {"seed": 3})
    best = json.loads((tmp_path / "best_config.json").read_text())
    assert best["config"] is None and "nothing to select" in best["reason"] and best["seed"] == 3
    assert best == yaml.safe_load((tmp_path / "best_config.yaml").read_text()) == res["best"]
    assert pq.read_table(tmp_path / "trials.parquet").num_rows == 2
    assert res["trends"]["diverged"].sum() == 1 and res["trends"]["errors"].sum() == 1
    assert format_best(res["best"]).startswith("No best trial")


def test_write_summary_empty(tmp_path):
    res = write_summary(tmp_path, [], ["lr"], "val_acc", "max", {})
    assert res["best"]["config"] is None and len(res["trials"]) == 0
    assert {"trial_id", "name", "epoch"} <= set(pq.read_table(tmp_path / "history.parquet").column_names)
