"""Sweep plots: files on disk (PNG + offline HTML), the best-so-far numbers under each selection rule, the
best-trial marking, colours and layout that keep every trial readable, the retrain's figures, skips."""
from __future__ import annotations

import math
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from PIL import Image

from tune_app import plots
from tune_app.analyze.selection import RULES, rule_column, select_best
from tune_app.plots import retrain_figures
from tune_app.plots.base import RULE_PREFIX
from tune_app.rundir.tables import ELIGIBLE, trials_frame

ALL = ["parallel_coordinates", "slices", "metric_vs_step", "curves", "best_so_far", "importance"]
PNG_SIZES = {"curves": (1100, 770), "importance": (880, 330), "slices": (880, 462)}  # else 8x5 in at 110 dpi
EPOCHS = [5, 4, 3, 5, 2, 1]
TARGET = 5  # epochs each trial was meant to run: shorter ones were stopped
STARTS = [100.0, 50.0, 0.0, 200.0, 10.0, 300.0]  # trials did not start in id order
DIVERGED = "t3"  # its last epoch: inf losses and a (meaningless) val_acc better than any real one
FAILED = "t5"  # raised after its first report
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
OPTIMIZERS = ["adam", "sgd", "adam", "sgd", "adam", "sgd"]
# Where the selection rules disagree: t1 peaks at epoch 3 and falls back at its last; t4's last epoch is its worse;
# the diverged t3 and the failed t5 have real epochs better than any eligible trial's, which must never count.
VAL_ACC = {("t1", 3): 0.85, ("t1", 4): 0.58, ("t4", 2): 0.55, ("t3", 2): 0.95, ("t5", 1): 0.97}
AT_EPOCH = 2
STATUS = {"t0": "completed", "t1": "stopped", "t2": "stopped", "t3": "diverged", "t4": "stopped", "t5": "error"}


def _records() -> list[dict]:
    rows = []
    for i, epochs in enumerate(EPOCHS):
        tid, dt = f"t{i}", 2.0 + 0.5 * i
        for e in range(1, epochs + 1):
            diverged = tid == DIVERGED and e == epochs
            acc = 0.4 + 0.08 * e + 0.03 * ((i * 7) % 5)
            rows.append({"trial_id": tid, "name": f"net_{OPTIMIZERS[i]}_lr{LRS[i]:g}", "epoch": e,
                         "train_loss": math.inf if diverged else 1.2 - acc, "train_acc": acc + 0.02,
                         "val_loss": math.inf if diverged else 1.3 - acc,
                         "val_acc": 0.99 if diverged else VAL_ACC.get((tid, e), acc),
                         "lr": LRS[i], "epoch_time_s": dt, "timestamp": STARTS[i] + e * dt, "diverged": diverged})
    rows[0]["val_acc"] = math.nan  # a missing report must not break the running best either
    rows[1]["epoch_time_s"] = math.nan  # nor a missing timing: it counts as no compute
    return rows


RECORDS = _records()


def _trial_records(rows: list[dict]) -> list[dict]:
    """The reports as the trial records tune_app.rundir.reader hands the tables."""
    out = []
    for i in range(len(EPOCHS)):
        tid = f"t{i}"
        history = [{k: v for k, v in r.items() if k not in ("trial_id", "name")} for r in rows if r["trial_id"] == tid]
        out.append({"trial_id": tid, "name": next(r["name"] for r in rows if r["trial_id"] == tid),
                    "history": history, "target_epochs": TARGET, "config": {"lr": LRS[i], "optimizer": OPTIMIZERS[i]},
                    "error": "RuntimeError: boom" if tid == FAILED else None})
    return out


@pytest.fixture()
def history() -> pd.DataFrame:
    return pd.DataFrame(RECORDS)


def _trials(history: pd.DataFrame, metric: str = "val_acc", mode: str = "max") -> pd.DataFrame:
    """The real trials table (tune_app.rundir.tables.trials_frame) of these reports."""
    return trials_frame(_trial_records(history.to_dict("records")), metric, mode, at_epoch=AT_EPOCH)


def _study(trials: pd.DataFrame, values: dict | None = None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "optimizer": CategoricalDistribution(["adam", "sgd"])}
    study.add_trials([optuna.trial.create_trial(params={"lr": r["config/lr"], "optimizer": r["config/optimizer"]},
                                                distributions=dists,
                                                value=(values or {}).get(r["trial_id"], r["final_val_acc"]))
                      for _, r in trials.iterrows() if r["status"] in ELIGIBLE])
    return study


IMPORTANCE = pd.DataFrame({"hyperparameter": ["lr", "optimizer"], "fanova": [0.3, 0.7], "ped_anova": [0.6, 0.4]})


def _rule_value(rows: list[dict], rule: str) -> float:
    """A trial's val_acc under a selection rule, by a plain loop over its reports."""
    real = [r["val_acc"] for r in rows if not r["diverged"] and math.isfinite(r["val_acc"])]
    if rule == "last":
        return rows[-1]["val_acc"]
    if rule == "best-epoch":
        return max(real, default=math.nan)
    return next((r["val_acc"] for r in rows if r["epoch"] == AT_EPOCH), math.nan)


def _expected_best_so_far(rows: list[dict], rule: str, by_time: bool = True) -> list[tuple]:
    """(trial_id, compute seconds, running best) per trial as it finished: a plain loop, independent of the
    module's pandas code. Only eligible trials count."""
    fields = ("timestamp", "epoch", "trial_id") if by_time else ("epoch", "trial_id")
    ordered = sorted(rows, key=lambda r: [r[f] for f in fields])
    total, finished = 0.0, {}
    for k, r in enumerate(ordered):
        total += r["epoch_time_s"] if math.isfinite(r["epoch_time_s"]) else 0.0
        if all(later["trial_id"] != r["trial_id"] for later in ordered[k + 1:]):
            finished[r["trial_id"]] = total
    best, out = None, []
    for tid, seconds in finished.items():
        value = _rule_value([r for r in rows if r["trial_id"] == tid], rule)
        if STATUS[tid] in ELIGIBLE and math.isfinite(value):
            best = value if best is None else max(best, value)
        out.append((tid, seconds, math.nan if best is None else best))
    return out


def _assert_frame_matches(frame: pd.DataFrame, expected: list[tuple]) -> None:
    assert list(frame.columns) == ["trial_id", "name", "compute_s", "value", "best"]
    assert frame["trial_id"].tolist() == [t for t, _, _ in expected]
    assert frame["compute_s"].tolist() == pytest.approx([c for _, c, _ in expected])
    assert frame["best"].tolist() == pytest.approx([b for _, _, b in expected], nan_ok=True)


def test_the_plots_name_the_selection_rules_columns():
    assert set(RULE_PREFIX) == set(RULES)
    assert all(plots.base._rule_column("val_acc", rule) == rule_column("val_acc", rule) for rule in RULES)


def test_the_hand_built_trials_tell_the_rules_apart(history):
    trials = _trials(history)
    assert dict(zip(trials["trial_id"], trials["status"])) == STATUS
    finals = [_expected_best_so_far(RECORDS, rule)[-1][2] for rule in RULES]
    assert finals == pytest.approx([0.80, 0.85, 0.68]) and len(set(finals)) == 3


@pytest.mark.parametrize("rule", RULES)
def test_best_so_far_is_the_running_best_of_the_selection_rules_value(history, rule):
    trials = _trials(history)
    frame = plots.best_so_far_frame(trials, history, "val_acc", "max", select=rule)
    expected = _expected_best_so_far(RECORDS, rule)
    _assert_frame_matches(frame, expected)
    assert [t for t, _, _ in expected] == ["t2", "t4", "t1", "t0", "t3", "t5"]  # as they finished, not by id
    assert frame.loc[frame["trial_id"].isin([DIVERGED, FAILED]), "value"].isna().all()  # never eligible
    best = select_best(trials, "val_acc", "max", rule)
    assert frame["best"].iloc[-1] == pytest.approx(best[rule_column("val_acc", rule)])  # ends at the report's best

    fig, pfig = plots.best_so_far_figures(trials, history, "val_acc", "max", select=rule)
    plt.close(fig)
    line = next(t for t in pfig.data if t.name == "best so far")
    assert list(line.y) == pytest.approx([100 * b for _, _, b in expected if not math.isnan(b)])
    assert list(line.x) == pytest.approx([c for _, c, b in expected if not math.isnan(b)])
    points = sorted(t.y[0] for t in pfig.data if t.name != "best so far")
    assert points == pytest.approx(sorted(100 * v for v in frame["value"].dropna()))
    words = {"last": "each trial's last epoch", "best-epoch": "each trial's best epoch",
             "at-epoch": f"each trial at epoch {AT_EPOCH}"}[rule]
    assert pfig.layout.yaxis.title.text == f"val_acc (%), {words}" == fig.axes[0].get_ylabel()


def test_best_so_far_without_timestamps_goes_by_epoch_then_trial(history):
    trials = _trials(history)
    untimed = _expected_best_so_far(RECORDS, "last", by_time=False)
    assert [t for t, *_ in untimed] != [t for t, *_ in _expected_best_so_far(RECORDS, "last")]
    _assert_frame_matches(plots.best_so_far_frame(trials, history.drop(columns="timestamp"), "val_acc", "max"),
                          untimed)
    history.loc[3, "timestamp"] = math.nan  # one report without a time is as good as none
    _assert_frame_matches(plots.best_so_far_frame(trials, history, "val_acc", "max"), untimed)


def test_best_so_far_min_mode_and_bad_arguments(history):
    trials = _trials(history, "val_loss", "min")
    frame = plots.best_so_far_frame(trials, history, "val_loss", "min", select="best-epoch")
    lowest = {tid: min(r["val_loss"] for r in RECORDS if r["trial_id"] == tid and not r["diverged"])
              for tid in STATUS if STATUS[tid] in ELIGIBLE}
    assert frame["best"].iloc[-1] == pytest.approx(min(lowest.values())) and np.isfinite(frame["best"]).all()
    with pytest.raises(ValueError, match="mode"):
        plots.best_so_far_frame(trials, history, "val_loss", "best")
    with pytest.raises(ValueError, match="select"):
        plots.best_so_far_frame(trials, history, "val_loss", "min", select="first")
    assert plots.best_so_far_figures(trials.drop(columns="best_val_loss"), history, "val_loss", "min",
                                     select="best-epoch") is None


@pytest.mark.parametrize("rule", RULES)
def test_cost_counts_the_selection_rules_value_of_eligible_trials(history, rule):
    trials = _trials(history).assign(device_s=[100.0 * (i + 1) for i in range(len(EPOCHS))], device_kind="gpu")
    frame = plots.cost_frame(trials, history, "val_acc", "max", select=rule)
    expected = _expected_best_so_far(RECORDS, rule)
    assert frame["trial_id"].tolist() == [t for t, _, _ in expected]
    assert frame["best"].tolist() == pytest.approx([b for _, _, b in expected], nan_ok=True)
    assert frame["cum_device_h"].iloc[-1] == pytest.approx(2100 / 3600)
    fig, pfig = plots.cost_figures(trials, history, "val_acc", "max", select=rule)
    plt.close(fig)
    line = next(t for t in pfig.data if t.name == "best so far")
    assert line.y[-1] == pytest.approx(100 * select_best(trials, "val_acc", "max", rule)[rule_column("val_acc", rule)])
    assert pfig.layout.yaxis.title.text.startswith("val_acc (%), each trial")


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
    # one connected line per trial, its epochs in order; the PNG draws the same lines
    assert {t.mode for t in pfig.data} == {"lines+markers"}
    assert sorted(t.name for t in pfig.data) == sorted(history.groupby("trial_id")["name"].first())
    assert all(list(t.x) == sorted(t.x) for t in pfig.data)
    lines = fig.axes[0].get_lines()
    assert len(lines) == len(EPOCHS) and all(line.get_linestyle() == "-" for line in lines)
    assert sorted(len(line.get_xdata()) for line in lines) == sorted(len(t.x) for t in pfig.data)

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


def _luminance(colour: str) -> float:
    r, g, b = to_rgb(colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_optuna_plots_show_accuracy_in_percent(written):
    figures = {p.name: p.figure for p in written["plots"]}
    values = [t.value for t in written["study"].trials]
    assert max(values) < 1  # the caller's study keeps its fractions; only the plots are in percent
    scale = figures["parallel_coordinates"].data[-1].marker  # the colour-bar trace
    assert scale.colorbar.title.text == "val_acc (%) (colour by rank)" and scale.reversescale is False
    assert list(scale.colorbar.ticktext) == [f"{100 * v:.4g}" for v in np.quantile(values, [0, .25, .5, .75, 1])]
    points = sorted(y for t in figures["slices"].data if t.y is not None for y in t.y)
    assert points == pytest.approx(sorted([100 * v for v in values] * 2))  # one slice per hyperparameter


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_parallel_coordinates_keep_weak_trials_visible(history, direction):
    """One diverged-looking trial far below the rest: on a linear scale every other line would share one dark
    blue. By rank, the lines spread over the whole (visible) scale and the bar still reads in the metric."""
    trials = _trials(history)
    eligible = trials.loc[trials["status"].isin(ELIGIBLE), "trial_id"].tolist()
    values = dict(zip(eligible, [0.05, 0.86, 0.87, 0.88]))  # 5 % for the first, then close together
    if direction == "minimize":
        values = {k: 1 - v for k, v in values.items()}  # a loss: the 0.95 is the outlier now
    study = _study(trials, values)
    study._directions = [optuna.study.StudyDirection.MINIMIZE] if direction == "minimize" else study._directions
    fig, pfig = plots.parallel_coordinates_figures(study, "val_loss" if direction == "minimize" else "val_acc")
    try:
        bar = pfig.data[-1].marker
        assert (bar.cmin, bar.cmax, bar.reversescale) == (0, 1, False)
        assert list(bar.colorbar.tickvals) == [0, 0.25, 0.5, 0.75, 1]
        ends = (bar.colorbar.ticktext[0], bar.colorbar.ticktext[-1])
        assert ends == (("5", "88") if direction == "maximize" else ("0.95", "0.12"))  # worst, best (in %)
        lines = [t for t in pfig.data if t.mode == "lines"]
        assert len(lines) == len(values)
        by_value = sorted(lines, key=lambda t: t.y[0], reverse=direction == "minimize")  # worst first
        shades = [_luminance(t.line.color) for t in by_value]
        assert shades == sorted(shades, reverse=True) and len(set(shades)) == len(shades)  # darker as better
        assert shades[0] < 0.8  # the weakest line is a visible blue on white, not white
        assert shades[1] - shades[-1] > 0.15  # the close ones still differ
        collection = next(c for c in fig.axes[0].collections if c.colorbar is not None)
        ranks = collection.get_array()
        assert sorted(ranks) == pytest.approx([0, 1 / 3, 2 / 3, 1])
        assert (collection.norm.vmin, collection.norm.vmax) == (0, 1)
        assert [t.get_text() for t in collection.colorbar.ax.get_yticklabels()] == list(bar.colorbar.ticktext)
    finally:
        plt.close(fig)


def test_slices_wrap_into_rows_and_print_categories_plainly(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dists = {"activation": CategoricalDistribution(["elu", "relu", "gelu"]),
             "lr": FloatDistribution(1e-4, 1e-1, log=True), "batch_size": CategoricalDistribution([32, 64]),
             "depth": IntDistribution(1, 8),
             "wd": FloatDistribution(0.0, 0.1), "norm": CategoricalDistribution([True, False, None])}
    rng = np.random.default_rng(0)
    for i in range(12):
        params = {"activation": ["elu", "relu", "gelu"][i % 3], "lr": float(10 ** rng.uniform(-4, -1)),
                  "batch_size": [32, 64][i % 2], "depth": int(1 + i % 8), "wd": float(rng.uniform(0, 0.1)),
                  "norm": [True, False, None][i % 3]}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.5 + 0.03 * i))
    fig, pfig = plots.slices_figures(study, "val_acc")
    try:
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.axison]
        assert len(panels) == len(dists)
        assert {ax.get_subplotspec().get_gridspec().ncols for ax in panels} == {plots.params.SLICE_COLUMNS}
        rows = {ax.get_subplotspec().rowspan.start for ax in panels}
        assert rows == {0, 1}  # six panels, three to a row
        activation = next(ax for ax in panels if ax.get_title() == "activation")
        assert [t.get_text() for t in activation.get_xticklabels()] == ["elu", "relu", "gelu"]
        norm = next(ax for ax in panels if ax.get_title() == "norm")
        assert [t.get_text() for t in norm.get_xticklabels()] == ["True", "False", "None"]
        assert next(ax for ax in panels if ax.get_title() == "lr").get_xscale() == "log"
        xaxes = {k: pfig.layout[k] for k in pfig.layout if k.startswith("xaxis")}
        assert len({tuple(a.domain) for a in xaxes.values()}) == plots.params.SLICE_COLUMNS
        assert len({tuple(pfig.layout["y" + k[1:]].domain) for k in xaxes}) == 2
        categories = [t for t in pfig.data if t.name == "activation"][0]
        assert set(categories.x) == {"elu", "relu", "gelu"} and not any("'" in x for x in categories.x)
        assert xaxes["xaxis" + categories.xaxis[1:]].categoryarray == ("elu", "relu", "gelu")
        assert sorted(categories.y) == pytest.approx([100 * (0.5 + 0.03 * i) for i in range(12)])
        fig.savefig(tmp_path / "slices.png", dpi=fig.dpi)
        with Image.open(tmp_path / "slices.png") as image:
            width, height = image.size
            assert width <= 1400 and height > width / 2  # fits a page: wrapped, not one long row
            assert np.asarray(image.convert("L"), dtype=float).std() > 10
    finally:
        plt.close(fig)


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


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100 = [f"aquarium_fish{i}" if i % 5 == 0 else f"maple_tree_{i}" for i in range(100)]  # its longest is 13


def _overlaps(texts) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes meet. A slanted label's box is not its shape: those are compared along
    the axis instead (see test_confusion_labels)."""
    boxes = [(t.get_text(), t.get_window_extent()) for t in texts if t.get_text()]
    return [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1:] if box.overlaps(other)]


def _confusion(k: int) -> np.ndarray:
    rng = np.random.default_rng(k)
    return rng.integers(0, 30, (k, k)) + np.diag(np.full(k, 900))


@pytest.mark.parametrize(("classes", "shown"), [(CIFAR10, 10), (CIFAR100, 100), ([f"c{i}" for i in range(400)], None)])
def test_confusion_labels_are_readable_and_apart(classes, shown, tmp_path):
    k = len(classes)
    fig = retrain_figures.confusion_figure(_confusion(k), classes, "CIFAR test set, seed 0")
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        xs, ys = ax.get_xticklabels(), ax.get_yticklabels()
        assert [t.get_text() for t in xs] == [t.get_text() for t in ys]
        if shown:
            assert [t.get_text() for t in ys] == classes  # every class named
        else:  # 400 rows cannot all be read: every n-th class, evenly
            steps = set(np.diff(ax.get_yticks()))
            assert len(steps) == 1 and 1 < steps.pop() <= 3 and len(ys) > k / 3
        assert min(t.get_fontsize() for t in ys) >= retrain_figures.MIN_FONT
        if k == 10:
            assert min(t.get_fontsize() for t in ys) >= 10 and ax.title.get_fontsize() >= 12
            counts = ax.texts
            assert len(counts) == 100 and min(t.get_fontsize() for t in counts) >= 8
        assert not _overlaps(ys)
        if xs[0].get_rotation() == 90:
            assert not _overlaps(xs)
        else:  # slanted at 45 degrees: neighbours' baselines lie apart by their spacing times sin 45
            spacing = np.diff([t.get_window_extent().x1 for t in xs]).min() * 72 / fig.dpi
            assert spacing * math.sin(math.pi / 4) > 1.2 * xs[0].get_fontsize()
        assert not [t for t in xs if t.get_window_extent().overlaps(ax.xaxis.label.get_window_extent())]
        assert not _overlaps([*ys, ax.yaxis.label])
    finally:
        plt.close(fig)
    path = retrain_figures.confusion_png(tmp_path / "confusion.png", _confusion(k), classes, "test set")
    with Image.open(path) as image:
        assert image.format == "PNG" and 700 <= min(image.size) and max(image.size) <= 2200
        assert np.asarray(image.convert("L"), dtype=float).std() > 10


@pytest.mark.parametrize("classes", [CIFAR10, CIFAR100])
def test_sample_captions_are_readable_and_apart(classes, tmp_path):
    k = len(classes)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2 * k, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(2 * k) % k
    predicted = np.where(labels % 3 == 0, (labels + 1) % k, labels)  # every third class wrong
    fig = retrain_figures.samples_figure(images, labels, predicted, classes)
    try:
        fig.canvas.draw()
        titles = [ax.title for ax in fig.axes if ax.title.get_text()]
        assert len(titles) == k
        assert titles[0].get_text() == f"{classes[0]}\n→ {classes[1]}" and titles[0].get_color() == "red"
        assert titles[1].get_color() == "green"
        suptitle = next(t for t in fig.texts if t.get_text() == fig.get_suptitle())
        assert min(t.get_fontsize() for t in titles) >= 9 and suptitle.get_fontsize() >= 12
        assert not _overlaps([*titles, suptitle])
        images_boxes = [ax.get_window_extent() for ax in fig.axes if ax.images]
        assert not [t.get_text() for t in titles for box in images_boxes if t.get_window_extent().overlaps(box)]
        rows = {round(ax.get_position().y0, 3) for ax in fig.axes}
        assert len(rows) == (2 if k == 10 else 10)  # 10 classes in two rows of five, 100 in ten of ten
    finally:
        plt.close(fig)
    path = retrain_figures.samples_png(tmp_path / "samples.png", images, labels, predicted, classes)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] <= 1900
        assert np.asarray(image.convert("L"), dtype=float).std() > 10
