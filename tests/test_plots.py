"""Sweep plots: files on disk (PNG + offline HTML), the best-so-far numbers, the best-trial marking, skips."""
from __future__ import annotations

import math
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from PIL import Image

from tune_app import plots

ALL = ["parallel_coordinates", "slices", "metric_vs_step", "curves", "best_so_far", "importance"]
PNG_SIZES = {"curves": (1100, 770), "importance": (880, 330)}  # everything else 8x5 in at 110 dpi
EPOCHS = [5, 4, 3, 5, 2, 1]
STARTS = [100.0, 50.0, 0.0, 200.0, 10.0, 300.0]  # trials did not start in id order
DIVERGED = "t3"  # its last epoch: inf losses and a (meaningless) val_acc better than any real one
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
OPTIMIZERS = ["adam", "sgd", "adam", "sgd", "adam", "sgd"]


def _records() -> list[dict]:
    rows = []
    for i, epochs in enumerate(EPOCHS):
        tid, dt = f"t{i}", 2.0 + 0.5 * i
        for e in range(1, epochs + 1):
            diverged = tid == DIVERGED and e == epochs
            acc = 0.4 + 0.08 * e + 0.03 * ((i * 7) % 5)
            rows.append({"trial_id": tid, "name": f"net_{OPTIMIZERS[i]}_lr{LRS[i]:g}", "epoch": e,
                         "train_loss": math.inf if diverged else 1.2 - acc, "train_acc": acc + 0.02,
                         "val_loss": math.inf if diverged else 1.3 - acc, "val_acc": 0.99 if diverged else acc,
                         "lr": LRS[i], "epoch_time_s": dt, "timestamp": STARTS[i] + e * dt, "diverged": diverged})
    rows[0]["val_acc"] = math.nan  # a missing report must not break the running best either
    rows[1]["epoch_time_s"] = math.nan  # nor a missing timing: it counts as no compute
    return rows


RECORDS = _records()


@pytest.fixture()
def history() -> pd.DataFrame:
    return pd.DataFrame(RECORDS)


def _trials(history: pd.DataFrame) -> pd.DataFrame:
    last = history.groupby("trial_id", sort=True).tail(1).reset_index(drop=True)
    i = last.index
    return pd.DataFrame({"trial_id": last["trial_id"], "name": last["name"],
                         "status": np.where(last["trial_id"] == DIVERGED, "diverged", "completed"),
                         "epochs": last["epoch"], "seconds": last["epoch"] * last["epoch_time_s"],
                         "config/lr": [LRS[k] for k in i], "config/optimizer": [OPTIMIZERS[k] for k in i],
                         "final_val_acc": last["val_acc"], "error": None})


def _study(trials: pd.DataFrame) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "optimizer": CategoricalDistribution(["adam", "sgd"])}
    study.add_trials([optuna.trial.create_trial(params={"lr": r["config/lr"], "optimizer": r["config/optimizer"]},
                                                distributions=dists, value=r["final_val_acc"])
                      for _, r in trials.iterrows() if r["status"] == "completed"])
    return study


IMPORTANCE = pd.DataFrame({"hyperparameter": ["lr", "optimizer"], "fanova": [0.3, 0.7], "ped_anova": [0.6, 0.4]})


def _expected_best_so_far(rows: list[dict], metric: str, mode: str, by_time: bool) -> list[tuple]:
    """A plain loop over the reports, independent of the module's pandas code."""
    fields = ("timestamp", "epoch", "trial_id") if by_time else ("epoch", "trial_id")
    better = max if mode == "max" else min
    total, best, out = 0.0, None, []
    for r in sorted(rows, key=lambda r: [r[f] for f in fields]):
        total += r["epoch_time_s"] if math.isfinite(r["epoch_time_s"]) else 0.0
        if not r["diverged"] and math.isfinite(r[metric]):
            best = r[metric] if best is None else better(best, r[metric])
        out.append((r["trial_id"], r["epoch"], total, math.nan if best is None else best))
    return out


def _assert_frame_matches(frame: pd.DataFrame, expected: list[tuple]) -> None:
    assert list(frame.columns[:3]) == ["trial_id", "name", "epoch"] and {"compute_s", "best"} <= set(frame.columns)
    assert list(zip(frame["trial_id"], frame["epoch"])) == [(t, e) for t, e, _, _ in expected]
    assert frame["compute_s"].tolist() == pytest.approx([c for _, _, c, _ in expected])
    assert frame["best"].tolist() == pytest.approx([b for _, _, _, b in expected], nan_ok=True)


def test_best_so_far_follows_timestamps_and_ignores_diverged_values(history):
    real = [r["val_acc"] for r in RECORDS if not r["diverged"] and math.isfinite(r["val_acc"])]
    assert 0.99 > max(real)  # so counting the diverged report would change the answer
    frame = plots.best_so_far_frame(history, "val_acc", "max")
    expected = _expected_best_so_far(RECORDS, "val_acc", "max", by_time=True)
    _assert_frame_matches(frame, expected)
    assert frame["best"].max() == pytest.approx(max(real))
    assert (frame["trial_id"].iloc[0], frame["compute_s"].iloc[0]) == ("t2", 3.0)  # t2 started first
    assert frame["compute_s"].iloc[-1] == pytest.approx(sum(r["epoch_time_s"] for r in RECORDS[2:]) + 2.0)
    # Order by epoch then trial_id when there is no timestamp (absent, or missing for some report).
    untimed = _expected_best_so_far(RECORDS, "val_acc", "max", by_time=False)
    assert [t for t, *_ in untimed] != [t for t, *_ in expected]  # the data tells the two orders apart
    frame = plots.best_so_far_frame(history.drop(columns="timestamp"), "val_acc", "max")
    _assert_frame_matches(frame, untimed)
    assert frame["trial_id"].iloc[0] == "t0" and math.isnan(frame["best"].iloc[0])  # its epoch 1 has no value
    history.loc[3, "timestamp"] = math.nan
    _assert_frame_matches(plots.best_so_far_frame(history, "val_acc", "max"), untimed)


def test_best_so_far_min_mode_skips_inf(history):
    frame = plots.best_so_far_frame(history, "val_loss", "min")
    _assert_frame_matches(frame, _expected_best_so_far(RECORDS, "val_loss", "min", by_time=True))
    assert np.isfinite(frame["best"]).all()
    with pytest.raises(ValueError, match="mode"):
        plots.best_so_far_frame(history, "val_loss", "best")


def test_curves_mark_the_best_trial_and_drop_diverged_epochs(history):
    fig, pfig = plots.curves_figures(history, best_trial_id="t1")
    try:
        name = history.loc[history["trial_id"] == "t1", "name"].iloc[0]
        best = [t for t in pfig.data if t.name.startswith("best: ")]
        others = [t for t in pfig.data if not t.name.startswith("best: ")]
        assert len(best) == 4 and {t.name for t in best} == {f"best: {name}"}
        assert len(others) == 4 * (len(EPOCHS) - 1)
        assert min(t.line.width for t in best) > max(t.line.width for t in others)
        assert sum(t.showlegend is True for t in best) == 1
        for t in pfig.data:
            assert np.isfinite(np.asarray(t.y, dtype=float)).all()
        diverged = [t for t in pfig.data if t.name == history.loc[history["trial_id"] == DIVERGED, "name"].iloc[0]]
        assert [len(t.x) for t in diverged] == [EPOCHS[3] - 1] * 4
        val_acc = [t for t in pfig.data if t.yaxis == pfig.data[-1].yaxis]
        assert max(max(t.y) for t in val_acc) > 1  # accuracies are drawn in percent
        assert [text.get_text() for text in fig.legends[0].texts] == [f"best: {name}"]
        assert max(line.get_linewidth() for ax in fig.axes for line in ax.lines) == 2.5
    finally:
        plt.close(fig)


def test_a_loss_that_explodes_puts_loss_panels_on_a_log_axis(history):
    fig, pfig = plots.curves_figures(history)
    plt.close(fig)
    assert pfig.layout.yaxis.type == "linear" and fig.axes[0].get_yscale() == "linear"
    spiked = history.copy()
    spiked.loc[spiked.index[0], "train_loss"] = 1200.0  # finite, not flagged diverged
    fig, pfig = plots.curves_figures(spiked)
    try:
        assert pfig.layout.yaxis.type == "log" and fig.axes[0].get_yscale() == "log"  # train_loss
        assert pfig.layout.yaxis3.type == "linear" and fig.axes[2].get_yscale() == "linear"  # train_acc
    finally:
        plt.close(fig)


def test_metric_vs_step_and_importance_figures(history):
    fig, pfig = plots.metric_vs_step_figures(history, "val_acc")
    plt.close(fig)
    assert len(pfig.data) == len(EPOCHS) and pfig.layout.title.text == "val_acc vs epoch, all trials"
    assert pfig.layout.yaxis.title.text == "val_acc (%)"
    points = sum(len(t.x) for t in pfig.data)
    assert points == len(RECORDS) - 2  # every finite report; the NaN one and the diverged epoch left out
    assert max(max(t.y) for t in pfig.data) < 99.0  # the diverged epoch's 0.99 is not a measurement
    assert "%{fullData.name}" in pfig.data[0].hovertemplate

    fig, pfig = plots.importance_figures(IMPORTANCE)
    ax = fig.axes[0]
    try:
        assert [t.get_text() for t in ax.get_yticklabels()] == ["optimizer", "lr"] and ax.yaxis_inverted()
        assert [t.name for t in pfig.data] == ["fANOVA", "PED-ANOVA"]
        assert list(pfig.data[0].y) == ["optimizer", "lr"] and list(pfig.data[1].x) == [0.4, 0.6]
    finally:
        plt.close(fig)
    assert plots.importance_figures(IMPORTANCE.iloc[0:0]) is None


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.plot_divs = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.refs += [(tag, k, v) for k, v in attrs.items() if k in ("src", "href")]
        self.plot_divs += tag == "div" and "plotly-graph-div" in (attrs.get("class") or "")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    history = pd.DataFrame(RECORDS)
    trials = _trials(history)
    out = tmp_path_factory.mktemp("sweep") / "summary" / "plots"
    study, style, figures = _study(trials), plt.rcParams["axes.facecolor"], set(plt.get_fignums())
    result = plots.write_plots(out, trials, history, "val_acc", "max", study=study, importance=IMPORTANCE,
                               best_trial_id="t1")
    return {"out": out, "plots": result, "study": study, "style": style, "figures": figures}


def test_write_plots_writes_every_plot_in_order(written):
    out, result = written["out"], written["plots"]
    assert [p.name for p in result] == ALL
    assert set(plt.get_fignums()) == written["figures"]  # every matplotlib figure closed
    assert plt.rcParams["axes.facecolor"] == written["style"]  # optuna's ggplot style did not leak
    assert not list(out.glob(".*"))  # no temp file left behind
    bundle = out / "plotly.min.js"
    assert bundle.stat().st_size > 1_000_000
    for p in result:
        assert (p.png, p.html) == (out / f"{p.name}.png", out / f"{p.name}.html")
        assert p.title and p.figure.layout.title.text == p.title
        data = p.png.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(p.png) as img:
            assert img.size == PNG_SIZES.get(p.name, (880, 550)), p.name
            assert np.asarray(img.convert("L"), dtype=float).std() > 10, f"{p.name}.png looks blank"
        text = p.html.read_text(encoding="utf-8")
        page = _Page()
        page.feed(text)
        assert page.plot_divs == 1 and "Plotly.newPlot" in text and '"displaylogo": false' in text
        assert ("script", "src", "plotly.min.js") in page.refs
        assert not [v for _, _, v in page.refs if v and ("http://" in v or "https://" in v)], p.name
        assert (p.html.parent / "plotly.min.js").samefile(bundle)


def test_optuna_plots_show_accuracy_in_percent(written):
    figures = {p.name: p.figure for p in written["plots"]}
    values = [t.value for t in written["study"].trials]
    assert max(values) < 1  # the caller's study keeps its fractions; only the plots are in percent
    scale = figures["parallel_coordinates"].data[-1].marker  # optuna's colour-bar trace
    assert scale.colorbar.title.text == "val_acc (%)" and scale.reversescale is False  # best is dark, as in optuna
    assert (scale.cmin, scale.cmax) == pytest.approx((100 * min(values), 100 * max(values)))
    points = sorted(y for t in figures["slices"].data if t.y is not None for y in t.y)
    assert points == pytest.approx(sorted([100 * v for v in values] * 2))  # one slice per hyperparameter


def test_skipped_plots_without_study_or_importance(tmp_path, history):
    before = set(plt.get_fignums())
    result = plots.write_plots(tmp_path, _trials(history), history, "val_acc", "max", study=None,
                               importance=pd.DataFrame(columns=["hyperparameter", "fanova", "ped_anova"]))
    assert [p.name for p in result] == ["metric_vs_step", "curves", "best_so_far"]
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(
        ["plotly.min.js"] + [f"{p.name}.{ext}" for p in result for ext in ("png", "html")])
    assert set(plt.get_fignums()) == before


def test_foreign_history_missing_columns(tmp_path, history):
    """A run without train metrics, timings or divergence flags: skip what cannot be drawn, do not crash."""
    foreign = history.drop(columns=["train_loss", "train_acc", "epoch_time_s", "timestamp", "diverged"])
    result = plots.write_plots(tmp_path, _trials(history), foreign, "val_loss", "min", best_trial_id="t1")
    assert [p.name for p in result] == ["metric_vs_step", "curves"]
    curves = result[1].figure
    assert {t.name for t in curves.data if t.name.startswith("best: ")} == {"best: net_sgd_lr0.0003"}
    assert all(np.isfinite(np.asarray(t.y, dtype=float)).all() for t in curves.data)
    assert result[0].figure.layout.yaxis.title.text == "val_loss"
    assert plots.curves_figures(foreign[["trial_id", "name", "epoch"]]) is None


def test_curves_by_groups_trials_by_a_hyperparameter_and_averages_each_epoch(history, tmp_path):
    trials = _trials(history)
    fig, pfig = plots.curves_by_figures(history, trials, "optimizer")
    plt.close(fig)
    # train_acc's traces come first; the dict keeps each value's last trace: its val_acc mean
    means = {t.name: (list(t.x), list(t.y)) for t in pfig.data if t.name.startswith("optimizer=")}
    # val_acc panel (the second): every value's mean over the trials that reached that epoch, diverged epochs out
    valid = history[~history["diverged"] & history["val_acc"].notna()].assign(
        optimizer=lambda d: d["trial_id"].map(dict(zip(trials["trial_id"], trials["config/optimizer"]))))
    for optimizer in ("adam", "sgd"):
        rows = valid[valid["optimizer"] == optimizer]
        expected = rows.groupby("epoch")["val_acc"].mean() * 100
        n = rows["trial_id"].nunique()
        x, y = means[f"optimizer={optimizer} (mean of {n})"]
        assert x == expected.index.tolist() and y == pytest.approx(expected.tolist(), rel=1e-12)
    faint = [t for t in pfig.data if not t.name.startswith("optimizer=")]
    assert len(faint) == 2 * len(trials)  # every trial, faint, in both panels (train_acc, val_acc)
    assert plots.curves_by_figures(history, trials.assign(**{"config/optimizer": "adam"}), "optimizer") is None
    assert plots.curves_by_figures(history, trials, "momentum") is None
    written = plots.write_plots(tmp_path, trials, history, "val_acc", "max", curves_by=("optimizer",))
    assert "curves_by_optimizer" in [p.name for p in written]
    with Image.open(tmp_path / "curves_by_optimizer.png") as image:
        assert np.asarray(image.convert("L")).std() > 5
