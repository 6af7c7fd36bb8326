"""``python -m tune_app.analyze``: on run directories in Ray Tune's layout with known numbers, on a
real plain Ray Tune experiment, its report in headless Chromium, and its W&B summary run."""
import html.parser
import json
import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.fake_runs import sweep_trials, write_experiment
from tests.wandb_records import read_run
from tune_app.analyze import main

pytestmark = pytest.mark.e2e

SUMMARY_FILES = {"trials.parquet", "history.parquet", "trends.csv", "trends.md", "pairs.csv", "importance.csv",
                 "best_config.json", "best_config.yaml", "topk.json", "report.md", "report.html", "plots"}
PLOTS = ["parallel_coordinates", "slices", "metric_vs_step", "curves", "best_so_far", "importance"]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trials():
    return sweep_trials()


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory, trials):
    """One full analysis of a 12-trial experiment in Ray Tune's layout (no tune_app.json)."""
    path = write_experiment(tmp_path_factory.mktemp("a") / "exp", trials)
    code = main([str(path), "--pair", "optimizer,batch_size", "--top-configs", "3"])
    assert code == 0
    return path


def expected_at_epoch(trials) -> int:
    depth = [max((h["epoch"] for h in t["history"] if not h["diverged"]), default=0) for t in trials]
    need = math.ceil(sum(d > 0 for d in depth) / 3)
    return max(k for k in range(1, max(depth) + 1) if sum(d >= k for d in depth) >= need)


def test_summary_files_and_trial_table(analyzed, trials):
    s = analyzed / "summary"
    assert {p.name for p in s.iterdir()} == SUMMARY_FILES  # and no temporary file left over
    table = pd.read_parquet(s / "trials.parquet").set_index("trial_id")
    assert len(table) == 12
    assert table["status"].value_counts().to_dict() == {"stopped": 7, "completed": 3, "diverged": 1, "oom": 1}
    assert table.loc["0011beef", "error"] == "RuntimeError: CUDA error: out of memory"
    assert table.loc["0010beef", "status"] == "diverged"
    k = expected_at_epoch(trials)
    by_id = {t["trial_id"]: t for t in trials}
    for tid, row in table.iterrows():
        at = [h["val_acc"] for h in by_id[tid]["history"] if h["epoch"] == k and not h["diverged"]]
        assert row["at_epoch_val_acc"] == pytest.approx(at[0]) if at else math.isnan(row["at_epoch_val_acc"])
    history = pd.read_parquet(s / "history.parquet")
    assert len(history) == sum(len(t["history"]) for t in trials)


def test_trends_searched_keys_and_equal_epoch_default(analyzed, trials):
    k = expected_at_epoch(trials)
    trends = pd.read_csv(analyzed / "summary" / "trends.csv")
    # Without a tune_app spec, the searched hyperparameters are the config keys that vary between trials.
    assert set(trends["hyperparameter"]) == {"optimizer", "lr", "batch_size"}
    assert list(dict.fromkeys(trends["view"])) == [f"epoch {k}", "completed", "raw"]
    # lr takes 12 distinct values over more than a decade: a sampled log range, grouped by decade.
    lr = trends[(trends["view"] == f"epoch {k}") & (trends["hyperparameter"] == "lr")]
    low, high = min(t["config"]["lr"] for t in trials), max(t["config"]["lr"] for t in trials)
    assert low < 1e-3 and 1e-2 < high < 1e-1
    assert lr["value"].tolist() == [f"[{low:.3g}, 0.001)", "[0.001, 0.01)", f"[0.01, {high:.3g}]"]
    assert lr[["completed", "stopped", "diverged", "failed"]].to_numpy().sum() == 12
    table = {t["trial_id"]: t for t in trials}
    pool = [t for t in table.values() if t["how"] == "ok" and len(t["history"]) >= k]
    optimizer = trends[(trends["view"] == f"epoch {k}") & (trends["hyperparameter"] == "optimizer")].set_index("value")
    for name in ("adam", "sgd", "rmsprop"):
        v = [t["history"][k - 1]["val_acc"] for t in pool if t["config"]["optimizer"] == name]
        assert optimizer.loc[name, "n"] == len(v)
        assert optimizer.loc[name, "mean"] == pytest.approx(np.mean(v) if v else math.nan, nan_ok=True)
    md = (analyzed / "summary" / "trends.md").read_text()
    assert f"## Trends: epoch {k}" in md and "### optimizer (completed)" in md and "| 95 % CI |" in md


def test_best_config_topk_and_pairs(analyzed, trials):
    s = analyzed / "summary"
    best = json.loads((s / "best_config.json").read_text())
    finished = [t for t in trials if t["how"] == "ok"]
    winner = max(finished, key=lambda t: (t["history"][-1]["val_acc"], len(t["history"])))
    assert best["trial_id"] == winner["trial_id"] and best["selection_rule"] == "last"
    assert best["value"] == pytest.approx(winner["history"][-1]["val_acc"])
    assert best["at_epoch"] == expected_at_epoch(trials) and best["config"] == winner["config"]
    top = json.loads((s / "topk.json").read_text())
    ranked = sorted(finished, key=lambda t: (-t["history"][-1]["val_acc"], -len(t["history"]), t["trial_id"]))
    assert [e["trial_id"] for e in top["trials"]] == [t["trial_id"] for t in ranked[:3]] and top["k"] == 3
    assert [e["rank"] for e in top["trials"]] == [1, 2, 3] and top["trials"][0]["config"] == winner["config"]
    pairs = pd.read_csv(s / "pairs.csv")
    assert set(zip(pairs["first"], pairs["second"])) == {("optimizer", "batch_size")}
    assert pairs["n"].sum() == sum(1 for t in finished if len(t["history"]) >= best["at_epoch"])
    importance = pd.read_csv(s / "importance.csv")
    assert set(importance["hyperparameter"]) <= {"optimizer", "lr", "batch_size"}
    assert importance["fanova"].sum() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("rule", ["best-epoch", "at-epoch"])
def test_select_rules(tmp_path, trials, rule, capsys):
    path = write_experiment(tmp_path / "exp", trials)
    assert cli(capsys, path, "--select", rule, "--at-epoch", 2)[0] == 0
    best = json.loads((path / "summary" / "best_config.json").read_text())
    finished = [t for t in trials if t["how"] == "ok"]
    if rule == "best-epoch":
        winner = max(finished, key=lambda t: max(h["val_acc"] for h in t["history"]))
        value = max(h["val_acc"] for h in winner["history"])
    else:
        winner = max(finished, key=lambda t: t["history"][1]["val_acc"])
        value = winner["history"][1]["val_acc"]
    assert best["trial_id"] == winner["trial_id"] and best["value"] == pytest.approx(value)
    assert best["selection_rule"] == rule and best["at_epoch"] == 2


def test_report_html_is_self_contained(analyzed):
    text = (analyzed / "summary" / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and len(text) > 1_000_000  # plotly.js inlined
    assert "Best configuration" in text and "<caption>optimizer</caption>" in text and "95 % CI" in text
    assert "fANOVA" in text and text.count("Plotly.newPlot") == len(PLOTS)

    class Refs(html.parser.HTMLParser):
        refs = []

        def handle_starttag(self, tag, attrs):
            self.refs += [(tag, v) for k, v in attrs if k in ("src", "href") and v]

    parser = Refs()
    parser.feed(text)
    assert parser.refs == []  # nothing to load: no script, stylesheet, image or font from anywhere
    md = (analyzed / "summary" / "report.md").read_text()
    linked = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(linked) == len(PLOTS) and all((analyzed / "summary" / p).is_file() for p in linked)
    assert "| optimizer \\ batch_size |" in md


def test_plot_files(analyzed):
    plots = analyzed / "summary" / "plots"
    for name in PLOTS:
        png = plots / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as image:
            assert image.width >= 400 and np.asarray(image.convert("L")).std() > 5
        page = (plots / f"{name}.html").read_text()
        assert "Plotly.newPlot" in page and 'src="plotly.min.js"' in page
    assert (plots / "plotly.min.js").stat().st_size > 1_000_000


def test_report_renders_in_headless_chromium(analyzed, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is needed for this test: apt-get install chromium (.ci/run installs it)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--window-size=1280,2400"]
    url = (analyzed / "summary" / "report.html").as_uri()
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", url], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, tables and plots
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    # plotly.js ran from the file itself: every figure was drawn as SVG.
    assert dom.count('class="main-svg"') >= len(PLOTS) and "Best configuration" in dom


def test_wandb_summary_run_offline(tmp_path, trials, capsys):
    path = write_experiment(tmp_path / "exp", trials)
    assert cli(capsys, path, "--wandb-mode", "offline", "--wandb-project", "proj")[0] == 0
    (run_dir,) = (path / "wandb").glob("offline-run-*")
    run = read_run(next(run_dir.glob("run-*.wandb")))
    assert run["name"] == "exp-summary" and run["group"] == "exp" and run["project"] == "proj"
    assert run["config"]["best"]["optimizer"] in ("adam", "sgd", "rmsprop")
    (row,) = [h for h in run["history"] if "importance/_type" in h]
    logged = {}  # {"trends/epoch 4": {"_type": ..., "path": ...}, ...}
    for key, value in row.items():
        head, _, field = key.rpartition("/")
        logged.setdefault(head, {})[field] = value
    k = expected_at_epoch(trials)
    assert logged[f"trends/epoch {k}"]["_type"] == "table-file" and logged["importance"]["_type"] == "table-file"
    assert {f"plots/{p}" for p in PLOTS} <= set(logged) and logged["plots/curves"]["_type"] == "image-file"
    assert (run_dir / "files" / logged["plots/curves"]["path"]).read_bytes()[:4] == b"\x89PNG"
    table = json.loads((run_dir / "files" / logged[f"trends/epoch {k}"]["path"]).read_text())
    assert table["columns"][:3] == ["hyperparameter", "value", "completed"]
    csv = pd.read_csv(path / "summary" / "trends.csv")
    assert len(table["data"]) == int((csv["view"] == f"epoch {k}").sum())
    # the summary run names the best trial best_config.json names, and the trials within noise of it
    best = json.loads((path / "summary" / "best_config.json").read_text())
    summary = run["summary"]
    assert (summary["best_trial_id"], summary["best_trial"]) == (best["trial_id"], best["trial_name"])
    assert summary["within_noise"] == len(best["within_noise"]) >= 1
    assert summary["tie_break"].startswith("lower val_loss")
    (row,) = [h for h in run["history"] if "within_noise/_type" in h]
    noise = json.loads((run_dir / "files" / row["within_noise/path"]).read_text())
    assert [r[0] for r in noise["data"]] == [e["trial_id"] for e in best["within_noise"]]


def test_plain_ray_tune_experiment(ray_local, tmp_path, capsys):
    """An experiment made with Ray Tune alone (no tune_app): metric and mode from the command line."""
    from ray import tune

    def objective(config):
        for _ in range(3):
            tune.report({"score": config["x"] * 10 + (1 if config["kind"] == "b" else 0)})

    tune.Tuner(objective, param_space={"x": tune.grid_search([1, 2, 3]), "kind": tune.grid_search(["a", "b"])},
               run_config=tune.RunConfig(name="plain", storage_path=str(tmp_path), verbose=0)).fit()
    code, out, _ = cli(capsys, tmp_path / "plain", "--metric", "score", "--mode", "max", "--top-configs", "2")
    assert code == 0
    s = tmp_path / "plain" / "summary"
    best = json.loads((s / "best_config.json").read_text())
    assert best["config"] == {"x": 3, "kind": "b"} and best["value"] == 31 and best["at_epoch"] == 3
    trends = pd.read_csv(s / "trends.csv")
    x = trends[(trends["view"] == "epoch 3") & (trends["hyperparameter"] == "x")]
    assert x["value"].tolist() == ["1", "2", "3"] or x["value"].tolist() == [1, 2, 3]
    assert x["mean"].tolist() == pytest.approx([10.5, 20.5, 30.5]) and (x["completed"] == 2).all()
    assert [e["config"] for e in json.loads((s / "topk.json").read_text())["trials"]] == [
        {"x": 3, "kind": "b"}, {"x": 3, "kind": "a"}]
    assert "Best trial" in out and "selected by last: score 31" in out


# ---------------------------------------------------------------- bad input

def test_not_a_sweep(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, tmp_path / "empty")
    assert code == 2 and err.count("\n") == 1 and "is not a sweep" in err
    assert not (tmp_path / "empty" / "summary").exists()
    code, _, err = cli(capsys, tmp_path / "missing")
    assert code == 2 and "no such directory" in err


@pytest.mark.parametrize("argv, message", [
    (["--pair", "optimizer,momentum"], "--pair optimizer,momentum: 'momentum' is not a searched hyperparameter"),
    (["--pair", "optimizer"], "--pair optimizer: give two hyperparameters"),
    (["--at-epoch", "7"], "--at-epoch 7: no trial reached that epoch (the deepest any trial reached is 6)"),
    (["--metric", "f1"], "metric 'f1' was never reported"),
    (["--top-configs", "0"], "--top-configs 0: must be at least 1"),
])
def test_bad_input_one_line_nothing_written(tmp_path, trials, capsys, argv, message):
    path = write_experiment(tmp_path / "exp", trials)
    code, _, err = cli(capsys, path, *argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (path / "summary").exists()


def test_bad_input_leaves_an_earlier_summary_intact(analyzed, capsys):
    before = {p.name: p.read_bytes() for p in (analyzed / "summary").iterdir() if p.is_file()}
    code, _, err = cli(capsys, analyzed, "--at-epoch", "99")
    assert code == 2 and "--at-epoch 99" in err
    assert {p.name: p.read_bytes() for p in (analyzed / "summary").iterdir() if p.is_file()} == before


def test_no_finished_trial(tmp_path, trials, capsys):
    failed = [t for t in trials if t["how"] != "ok"]
    path = write_experiment(tmp_path / "exp", failed)
    code, _, err = cli(capsys, path)
    assert code == 2 and err.count("\n") == 1
    assert "no trial finished without error or divergence" in err and "1 failed, 1 diverged" in err
    s = path / "summary"
    # The trials table is written so the errors can be read; nothing half-written is left.
    assert pd.read_parquet(s / "trials.parquet")["status"].tolist() == ["diverged", "oom"]  # CUDA out of memory
    assert not [p for p in s.rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((s / "best_config.json").read_text())["config"] is None


def test_saved_options_repeat_the_choices_a_summary_was_made_with(analyzed, trials, tmp_path):
    from tune_app.analyze import saved_options

    assert saved_options(analyzed) == {"select": "last", "at_epoch": expected_at_epoch(trials), "top_k": 3,
                                       "pairs": ["optimizer,batch_size"]}
    assert saved_options(tmp_path) == {}  # never analyzed: the defaults apply


def whole(path) -> bool:
    """A summary file that a reader can use: parses as what its name says."""
    import pyarrow.parquet as pq
    import yaml

    if path.suffix == ".parquet":
        return pq.read_table(path).num_rows > 0
    if path.suffix == ".json":
        return bool(json.loads(path.read_text()))
    if path.suffix == ".yaml":
        return bool(yaml.safe_load(path.read_text()))
    if path.suffix == ".csv":
        return len(pd.read_csv(path)) > 0
    if path.suffix == ".png":
        with Image.open(path) as image:
            image.load()
        return True
    if path.suffix == ".html":
        return path.read_text().rstrip().endswith("</html>")
    return path.stat().st_size > 0


@pytest.mark.parametrize("fraction", [0.35, 0.6, 0.8, 0.95])
def test_a_kill_during_the_export_leaves_every_file_whole(tmp_path, trials, fraction):
    """SIGKILL lands somewhere in a re-analysis (at a fraction of what a whole one takes): every summary file
    the first analysis wrote is still there, each one whole (the old version or the new, never half of one)."""
    import sys
    import time

    path = write_experiment(tmp_path / "exp", trials)
    command = [sys.executable, "-m", "tune_app.analyze", str(path), "--wandb-mode", "disabled"]
    started = time.monotonic()
    subprocess.run([*command, "--top-configs", "3"], check=True, capture_output=True)
    duration = time.monotonic() - started
    summary = path / "summary"
    before = {p.relative_to(summary): p.read_bytes() for p in summary.rglob("*")
              if p.is_file() and not p.name.startswith(".")}
    proc = subprocess.Popen([*command, "--top-configs", "5", "--pair", "optimizer,lr"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(duration * fraction)
    proc.kill()
    proc.wait()
    after = {p.relative_to(summary) for p in summary.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert set(before) <= after
    broken = [str(p) for p in after if (summary / p).read_bytes() != before.get(p) and not whole(summary / p)]
    assert broken == []
    assert len(json.loads((summary / "topk.json").read_text())["trials"]) in (3, 5)
