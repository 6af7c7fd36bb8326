"""Tests for tune_app.rundir.tables and tune_app.analyze.selection with hand-built trial records (no Ray needed)."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tune_app.analyze.selection import TIE_RULE, best_config_payload, ranked, select_best, top_k_payload
from tune_app.report import sweep as report_sections
from tune_app.rundir.atomic import atomic_write
from tune_app.rundir.tables import history_frame, trial_status, trials_frame

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


def test_at_epoch_column_and_rule(records):
    t = trials_frame(records, "val_acc", "max", at_epoch=2)
    assert t.attrs["at_epoch"] == 2
    at = t.set_index("trial_id")["at_epoch_val_acc"]
    # c stopped at epoch 1 and e failed there: no value at epoch 2; d diverged at epoch 3 but was fine at 2.
    assert at["a"] == 0.92 and at["f"] == 0.85 and math.isnan(at["c"]) and at["d"] == 0.99
    assert select_best(t, "val_acc", "max", "at-epoch")["trial_id"] == "a"  # d is never eligible
    assert select_best(t, "val_acc", "min", "at-epoch")["trial_id"] == "f"  # 0.85 at epoch 2, below b's 0.90
    assert trials_frame(records, "val_acc", "max")["at_epoch_val_acc"].isna().all()


def test_top_k_payload(records):
    t = trials_frame(records, "val_acc", "max", at_epoch=2)
    top = top_k_payload(t, "val_acc", "max", "best-epoch", 3)
    assert [e["trial_id"] for e in top["trials"]] == ["a", "b", "f"] and [e["rank"] for e in top["trials"]] == [1, 2, 3]
    assert [e["value"] for e in top["trials"]] == [0.92, 0.90, 0.85]
    assert top["trials"][1]["config"]["widths"] == [32, 64] and top["at_epoch"] == 2 and top["k"] == 3
    # More asked for than eligible: every eligible trial (a, b, c, f), never d or e.
    assert [e["trial_id"] for e in top_k_payload(t, "val_acc", "max", "last", 10)["trials"]] == ["b", "f", "a", "c"]
    json.dumps(top, allow_nan=False)


def test_payload_and_headline(records):
    t = trials_frame(records, "val_acc", "max", at_epoch=2)
    best = select_best(t, "val_acc", "max", "last")
    payload = best_config_payload(best, t, "val_acc", "max", "last",
                                  {"seed": np.int64(7), "git_commit": "abc123"})
    json.dumps(payload, allow_nan=False)
    b = next(r for r in records if r["trial_id"] == "b")
    assert payload["config"] == b["config"]  # list decoded, no NaN momentum key
    assert payload["seed"] == 7 and type(payload["seed"]) is int
    assert payload["trials"] == {"total": 6, "completed": 3, "stopped": 1, "early_stopped": 0, "diverged": 1,
                                 "oom": 0, "timeout": 0, "error": 1, "interrupted": 0}
    assert (payload["value"], payload["last_value"], payload["best_epoch_value"], payload["best_epoch"],
            payload["at_epoch_value"], payload["epochs"]) == (0.85, 0.85, 0.90, 2, 0.90, 3)
    assert payload["selection_rule"] == "last" and payload["at_epoch"] == 2
    by_best_epoch = best_config_payload(select_best(t, "val_acc", "max", "best-epoch"), t, "val_acc", "max",
                                        "best-epoch", {})
    assert by_best_epoch["trial_id"] == "a" and by_best_epoch["value"] == 0.92
    assert report_sections.headline(payload, "val_acc") == (
        "Best trial t_b (b), selected by last: val_acc 85.00 %; last epoch 85.00, best epoch 90.00 (epoch 2), "
        "at epoch 2 90.00")
    assert ("widths", "[32, 64]") in report_sections.best_section(payload, "val_acc").items


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "best_config.json"
    atomic_write(target, lambda p: p.write_text("old"))
    seen = []

    def failing_replace(src, dst):
        assert os.path.getsize(src) > 0  # the temp file was fully written
        seen.append(src)
        raise OSError("simulated kill")

    from tune_app.rundir import atomic

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated kill"):
        atomic_write(target, lambda p: p.write_text("new"))
    assert seen and target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["best_config.json"]


def test_one_tie_rule_lower_val_loss_then_started_first():
    def rec(tid, acc, loss, order):
        r = make_record(tid, [0.5, acc])
        r["history"][-1]["val_loss"] = loss
        r["order"] = order
        return r

    # "a" is alphabetically first but has the higher loss; "z" and "y" tie on loss too, and "z" started first
    records = [rec("a", 0.9, 0.40, 1), rec("y", 0.9, 0.30, 3), rec("z", 0.9, 0.30, 2), rec("w", 0.8, 0.10, 4)]
    t = trials_frame(records, "val_acc", "max")
    assert dict(zip(t["trial_id"], t["started"])) == {"a": 1, "z": 2, "y": 3, "w": 4}
    assert list(ranked(t, "val_acc", "max")["trial_id"]) == ["z", "y", "a", "w"]
    payload = best_config_payload(select_best(t, "val_acc", "max"), t, "val_acc", "max", "last", {})
    assert payload["trial_id"] == "z"
    assert payload["tie_break"]["rule"] == TIE_RULE
    assert [(e["trial_id"], e["val_loss"], e["started"]) for e in payload["tie_break"]["tied"]] == [
        ("z", 0.30, 2), ("y", 0.30, 3), ("a", 0.40, 1)]
    # without Ray's order (a plain Ray experiment): the first report's time, then the trial id
    for r, stamp in zip(records, (30, 10, 20, 5)):
        r["order"] = None
        r["history"][0]["timestamp"] = stamp
    t = trials_frame(records, "val_acc", "max")
    assert dict(zip(t["trial_id"], t["started"])) == {"w": 1, "y": 2, "z": 3, "a": 4}
    assert select_best(t, "val_acc", "max")["trial_id"] == "y"


@pytest.mark.parametrize("n", [144, 1000])
def test_within_noise_of_an_accuracy_is_fishers_exact_test_on_the_counts(n):
    counts = [n - 3, n - 4, n - 6, n - 9, n - 14, n - 24, n - 40]
    records = [make_record(f"t{i}", [0.1, k / n]) for i, k in enumerate(counts)]
    t = trials_frame(records, "val_acc", "max")
    payload = best_config_payload(select_best(t, "val_acc", "max"), t, "val_acc", "max", "last", {},
                                  history=history_frame(records), examples=n)
    k_best = counts[0]

    def p_value(k):  # independently: is the best's count really greater than k's, out of n each?
        return scipy_stats.fisher_exact([[k_best, n - k_best], [k, n - k]], alternative="greater").pvalue

    expected = [f"t{i}" for i, k in enumerate(counts) if p_value(k) >= 0.05]
    assert [e["trial_id"] for e in payload["within_noise"]] == expected
    assert 1 < len(expected) < len(counts)  # the rule separates some and not others
    assert [e["value"] for e in payload["within_noise"]] == [counts[i] / n for i in range(len(expected))]
    lowest = min(k for k in range(k_best + 1) if p_value(k) >= 0.05)
    rule = payload["noise_rule"]
    assert rule["test"] == "fisher_exact" and rule["examples"] == n and rule["alpha"] == 0.05
    assert rule["band"] == pytest.approx((k_best - lowest) / n)
    assert rule["text"].startswith(f"within {100 * (k_best - lowest) / n:.2f} points on {n} validation examples")


def test_within_noise_without_a_count_is_the_best_trials_spread_over_its_last_epochs():
    def rec(tid, losses):
        r = make_record(tid, [0.5] * len(losses))
        for h, loss in zip(r["history"], losses):
            h["val_loss"] = loss
        r["config"]["epochs"] = r["target_epochs"] = len(losses)
        return r

    records = [rec("best", [0.9, 0.32, 0.30, 0.31]), rec("near", [0.9, 0.33]), rec("far", [0.9, 0.34])]
    t = trials_frame(records, "val_loss", "min")
    payload = best_config_payload(select_best(t, "val_loss", "min"), t, "val_loss", "min", "last", {},
                                  history=history_frame(records))
    spread = float(np.std([0.32, 0.30, 0.31], ddof=1))  # the best's last three epochs
    assert payload["noise_rule"]["test"] == "spread" and payload["noise_rule"]["band"] == pytest.approx(2 * spread)
    assert [e["trial_id"] for e in payload["within_noise"]] == ["best", "near"]  # 0.33 - 0.31 <= 0.02 < 0.03
    # an accuracy without its number of examples falls back to the same rule; one epoch: exact ties only
    t = trials_frame([make_record("x", [0.9]), make_record("y", [0.9]), make_record("z", [0.89])], "val_acc", "max")
    payload = best_config_payload(select_best(t, "val_acc", "max"), t, "val_acc", "max", "last", {},
                                  history=history_frame([make_record(i, [0.9]) for i in "xyz"]))
    assert [e["trial_id"] for e in payload["within_noise"]] == ["x", "y"]
    assert payload["noise_rule"]["text"].startswith("exact ties only")


def repeated(tid, runs, *, lr=0.01, diverged_run=None):
    """A --repeats trial: runs[i] is run i's val_acc per epoch; each epoch's report is their mean (as
    tune_app.repeats reports it), runs/<i>/<name> the runs' own numbers (as reader flattens them)."""
    record = make_record(tid, [float(np.mean(epoch)) for epoch in zip(*runs)], target=len(runs[0]), lr=lr)
    for e, row in enumerate(record["history"]):
        for i, accs in enumerate(runs):
            row.update({f"runs/{i}/seed": 7 + i, f"runs/{i}/epoch": e + 1, f"runs/{i}/val_acc": accs[e],
                        f"runs/{i}/val_loss": 1 - accs[e], f"runs/{i}/epoch_time_s": 1.0 + i,
                        f"runs/{i}/diverged": i == diverged_run and e == len(accs) - 1})
    return record


def test_trials_parquet_under_repeats_has_one_row_per_run_with_its_seed_and_numbers():
    from tune_app.rundir.tables import run_records, runs_frame

    records = [repeated("b", [[0.5, 0.8], [0.6, 0.7], [0.4, 0.9]]), repeated("a", [[0.3, 0.4], [0.5, 0.6]])]
    assert [(r["trial_id"], r["repeat"], r["config"]["seed"]) for r in run_records(records)] == \
        [("b", 0, 7), ("b", 1, 8), ("b", 2, 9), ("a", 0, 7), ("a", 1, 8)]
    runs = runs_frame(records, "val_acc", "max", at_epoch=1)
    assert list(runs.columns[:3]) == ["trial_id", "repeat", "name"]
    assert list(zip(runs["trial_id"], runs["repeat"], runs["config/seed"])) == \
        [("a", 0, 7), ("a", 1, 8), ("b", 0, 7), ("b", 1, 8), ("b", 2, 9)]
    assert list(runs["final_val_acc"]) == [0.4, 0.6, 0.8, 0.7, 0.9]
    assert list(runs["at_epoch_val_acc"]) == [0.3, 0.5, 0.5, 0.6, 0.4]
    assert list(runs["seconds"]) == [2.0, 4.0, 2.0, 4.0, 6.0]  # each run's own epoch times
    assert list(runs["status"]) == ["completed"] * 5 and list(runs["started"]) == [1, 1, 2, 2, 2]
    # the trial's own row is the mean its reports carried
    t = trials_frame(records, "val_acc", "max")
    assert t.set_index("trial_id").loc["b", "final_val_acc"] == pytest.approx(0.8)


def test_within_noise_under_repeats_is_welchs_t_test_over_the_runs():
    best = [0.90, 0.92, 0.91]
    others = {"near": [0.90, 0.89, 0.915], "far": [0.85, 0.86, 0.84], "wide": [0.70, 0.95, 0.99],
              "split": [0.50, 0.95, 0.96]}
    records = [repeated("best", [[0.5, v] for v in best])] + \
        [repeated(t, [[0.5, v] for v in values]) for t, values in others.items()]
    t = trials_frame(records, "val_acc", "max")
    payload = best_config_payload(select_best(t, "val_acc", "max"), t, "val_acc", "max", "last", {},
                                  history=history_frame(records), examples=144)
    assert payload["trial_id"] == "best" and payload["value"] == pytest.approx(np.mean(best))
    assert payload["runs"] == [{"repeat": i, "seed": 7 + i, "value": v} for i, v in enumerate(best)]

    def separated(values):  # independently, with scipy: is the best's mean really greater?
        return scipy_stats.ttest_ind(best, values, equal_var=False, alternative="greater").pvalue < 0.05

    ranked_ids = list(ranked(t, "val_acc", "max")["trial_id"])
    expected = [i for i in ranked_ids if i == "best" or not separated(others[i])]
    assert [e["trial_id"] for e in payload["within_noise"]] == expected
    assert "near" in expected and "wide" in expected and "far" not in expected  # the rule separates some
    rule = payload["noise_rule"]
    sd = float(np.std(best, ddof=1))
    assert rule["test"] == "welch_t" and rule["repeats"] == 3 and rule["seed_sd"] == pytest.approx(sd)
    assert rule["band"] == pytest.approx(scipy_stats.t.ppf(0.95, 4) * sd * math.sqrt(2 / 3))
    assert rule["text"].startswith(f"within {100 * rule['band']:.2f} points over 3 seeds each")
    line = report_sections.headline(payload, "val_acc")
    assert "(the mean of 3 runs: seed 7 90.00, seed 8 92.00, seed 9 91.00)" in line


def test_trend_tables_under_repeats_show_the_seed_spread():
    from tune_app.analyze.trends import trends

    records = [repeated("a", [[0.5, 0.80], [0.5, 0.84]], lr=0.01), repeated("b", [[0.5, 0.70], [0.5, 0.76]], lr=0.01),
               repeated("c", [[0.5, 0.60], [0.5, 0.61]], lr=0.1, diverged_run=None)]
    t = trials_frame(records, "val_acc", "max", at_epoch=2)
    table = trends(t, history_frame(records), ["lr"], "val_acc", "max", 2)
    assert list(table.columns).index("seed_sd") == list(table.columns).index("std") + 1
    epoch = table[table["view"] == "epoch 2"].set_index("value")
    sd = lambda a, b: float(np.std([a, b], ddof=1))  # noqa: E731
    assert epoch.loc[0.01, "seed_sd"] == pytest.approx((sd(0.80, 0.84) + sd(0.70, 0.76)) / 2)
    assert epoch.loc[0.1, "seed_sd"] == pytest.approx(sd(0.60, 0.61))
    assert epoch.loc[0.01, "mean"] == pytest.approx((0.82 + 0.73) / 2)
    assert table[table["view"] == "raw"].set_index("value").loc[0.1, "seed_sd"] == pytest.approx(sd(0.60, 0.61))
    shown = report_sections.trend_sections(table, "val_acc")[0]
    assert "seed sd the mean of their standard deviations" in shown.note
    head, rows = shown.tables[0].head, shown.tables[0].rows
    assert head[head.index("std") + 1] == "seed sd"
    assert [row[head.index("seed sd")] for row in rows] == [f"{100 * epoch.loc[v, 'seed_sd']:.2f}" for v in (0.01, 0.1)]
