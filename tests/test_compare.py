"""``python -m tune_app.analyze RUN_A RUN_B``: two sweeps in Ray Tune's layout with known numbers (sweep B's adam
trials exactly 2 points better than A's, everything else equal), compared side by side; bad input is one line."""
import contextlib
import copy
import html.parser
import io
import json
import math

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.fake_runs import sweep_trials, write_experiment
from tune_app.analyze import main

pytestmark = pytest.mark.e2e

BETTER = 0.02  # what sweep B adds to every adam trial's val_acc


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def expected_at_epoch(trials) -> int:
    """The equal-length epoch analyze picks: the deepest a third of the trials reached (as in test_analyze)."""
    depth = [max((h["epoch"] for h in t["history"] if not h["diverged"]), default=0) for t in trials]
    need = math.ceil(sum(d > 0 for d in depth) / 3)
    return max(k for k in range(1, max(depth) + 1) if sum(d >= k for d in depth) >= need)


def better_adam(trials):
    out = copy.deepcopy(trials)
    for t in out:
        if t["config"]["optimizer"] == "adam":
            for h in t["history"]:
                h["val_acc"] += 0 if h["diverged"] else BETTER
    return out


def at_epoch_frame(trials, k: int) -> pd.DataFrame:
    """Each finished trial's val_acc at epoch k, with its optimizer and batch size: what the epoch-k view averages."""
    return pd.DataFrame([{"optimizer": t["config"]["optimizer"], "batch_size": t["config"]["batch_size"],
                          "val_acc": h["val_acc"]}
                         for t in trials if t["how"] == "ok" for h in t["history"] if h["epoch"] == k])


def summaries(*paths) -> dict:
    return {p / f: (p / f).read_bytes() for p in paths for f in (p / "summary").rglob("*") if f.is_file()}


@pytest.fixture(scope="module")
def sweeps():
    a = sweep_trials()
    return a, better_adam(a)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, sweeps):
    """Both sweeps analyzed on their own first, then compared: (run A, run B, stdout, their summaries before)."""
    root = tmp_path_factory.mktemp("compare")
    run_a, run_b = write_experiment(root / "before", sweeps[0]), write_experiment(root / "after", sweeps[1])
    assert main([str(run_a)]) == 0 and main([str(run_b)]) == 0
    before = summaries(run_a, run_b)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(run_a), str(run_b)]) == 0
    return run_a, run_b, out.getvalue(), before


def test_each_sweeps_summary_is_left_as_it_was(compared):
    run_a, run_b, _, before = compared
    assert before and summaries(run_a, run_b) == before


def test_the_folder_beside_run_b_holds_the_four_files(compared):
    _, run_b, _, _ = compared
    out = run_b.parent / "compare-before-vs-after"
    assert {p.name for p in out.iterdir()} == {"trends.csv", "trials.parquet", "compare.md", "compare.html"}


def test_trends_csv_means_per_sweep(compared, sweeps):
    _, run_b, _, _ = compared
    k = expected_at_epoch(sweeps[0])
    trends = pd.read_csv(run_b.parent / "compare-before-vs-after" / "trends.csv")
    assert trends.columns[0] == "sweep" and set(trends["sweep"]) == {"before", "after"}
    at_k = trends[trends["view"] == f"epoch {k}"]
    for label, trials in zip(("before", "after"), sweeps):
        expected = at_epoch_frame(trials, k).groupby("optimizer")["val_acc"].mean()
        got = at_k[(at_k["sweep"] == label) & (at_k["hyperparameter"] == "optimizer")].set_index("value")["mean"]
        assert got.to_dict() == pytest.approx(expected.to_dict())
    means = at_k[at_k["hyperparameter"] == "optimizer"].pivot(index="value", columns="sweep", values="mean")
    assert (means["after"] - means["before"]).to_dict() == pytest.approx({"adam": BETTER, "rmsprop": 0, "sgd": 0})


def test_trials_parquet_holds_both_sweeps(compared, sweeps):
    _, run_b, _, _ = compared
    table = pq.read_table(run_b.parent / "compare-before-vs-after" / "trials.parquet").to_pandas()
    assert table.columns[0] == "sweep" and table["sweep"].value_counts().to_dict() == {"before": 12, "after": 12}
    ids = sorted(t["trial_id"] for t in sweeps[0])
    for label in ("before", "after"):
        assert sorted(table.loc[table["sweep"] == label, "trial_id"]) == ids


def test_compare_md_has_the_difference_built_in(compared, sweeps):
    _, run_b, _, _ = compared
    k = expected_at_epoch(sweeps[0])
    md = (run_b.parent / "compare-before-vs-after" / "compare.md").read_text()
    assert f"## Trends: epoch {k}" in md and "### optimizer (completed)" in md
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in md.split(f"### optimizer (epoch {k})")[1].split("###")[0].splitlines() if line.startswith("| ")}
    assert rows["value"][-2:] == ["B - A", "95 % CI of B - A"]
    assert rows["adam"][-2] == f"+{100 * BETTER:.2f}" and rows["sgd"][-2] == rows["rmsprop"][-2] == "+0.00"
    expected = at_epoch_frame(sweeps[1], k).groupby("optimizer")["val_acc"].agg(["size", "mean"])
    assert rows["adam"][4:6] == [str(expected.loc["adam", "size"]), f"{100 * expected.loc['adam', 'mean']:.2f}"]


def test_compare_html_parses(compared):
    _, run_b, _, _ = compared

    class Tags(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.open, self.tables, self.heads = [], 0, []

        def handle_starttag(self, tag, attrs):
            self.tables += tag == "table"
            if tag in ("table", "details", "ul"):
                self.open.append(tag)

        def handle_endtag(self, tag):
            if tag in ("table", "details", "ul"):
                assert self.open.pop() == tag

        def handle_data(self, data):
            if "B - A" in data:
                self.heads.append(data)

    page = Tags()
    page.feed((run_b.parent / "compare-before-vs-after" / "compare.html").read_text())
    assert page.open == [] and page.tables >= 9 and "B - A" in page.heads  # 3 views x 3 hyperparameters


def test_printed_output_has_both_best_lines(compared, sweeps):
    _, _, out, _ = compared
    assert "A (before): Best trial" in out and "B (after): Best trial" in out
    assert out.count("Within noise of the best:") == 2
    assert f"epoch {expected_at_epoch(sweeps[0])}, both sweeps' equal-length epoch" in out and "| adam |" in out


def test_python_compare_is_the_module_and_the_function(compared, tmp_path):
    import tune_app.analyze
    import tune_app.analyze.compare as module
    from tune_app.analyze import compare

    run_a, run_b, _, _ = compared
    assert compare is module is tune_app.analyze.compare and callable(compare)
    c = tune_app.analyze.compare(run_a, run_b, out=tmp_path / "c", quiet=True)
    assert c.out == tmp_path / "c" and c.labels == ("before", "after")
    written = pd.read_csv(tmp_path / "c" / "trends.csv")
    assert len(written) == len(c.trends) and list(written.columns) == list(c.trends.columns)
    adam = c.table[(c.table["view"] == f"epoch {c.at_epoch}") & (c.table["value"] == "adam")]
    assert adam["diff"].item() == pytest.approx(BETTER)
    with pytest.raises(tune_app.UsageError, match="unknown option 'pairs'"):
        compare(run_a, run_b, pairs=["lr,optimizer"])


def test_the_smaller_equal_length_epoch_is_used_and_said(tmp_path, sweeps, capsys):
    short = copy.deepcopy(sweeps[0])
    for t in short:
        t["history"] = t["history"][:3]
    k_long, k_short = expected_at_epoch(sweeps[0]), expected_at_epoch(short)
    assert k_short < k_long
    run_a, run_b = write_experiment(tmp_path / "long", sweeps[0]), write_experiment(tmp_path / "short", short)
    code, out, _ = cli(capsys, run_a, run_b)
    assert code == 0
    assert f"epoch {k_short}, the smaller of the two sweeps' equal-length epochs ({k_long} and {k_short})" in out
    trends = pd.read_csv(tmp_path / "compare-long-vs-short" / "trends.csv")
    assert set(trends.groupby("sweep")["view"].first()) == {f"epoch {k_short}"}


def test_ranges_sampled_apart_share_bins(tmp_path, capsys):
    """Two plain experiments whose lr samples differ are grouped by one set of bins, so their rows line up."""
    run_a = write_experiment(tmp_path / "a", sweep_trials(seed=0))
    run_b = write_experiment(tmp_path / "b", sweep_trials(seed=1))
    assert cli(capsys, run_a, run_b, "--out", tmp_path / "c")[0] == 0
    trends = pd.read_csv(tmp_path / "c" / "trends.csv")
    lr = trends[trends["hyperparameter"] == "lr"]
    labels = {s: list(g.drop_duplicates("value")["value"]) for s, g in lr.groupby("sweep")}
    assert labels["a"] == labels["b"] and len(labels["a"]) >= 3


# ---------------------------------------------------------------- bad input

def with_spec(path, space="digits", metric="val_acc", mode="max"):
    spec = {"space": space, "overrides": {}, "metric": metric, "mode": mode,
            "searched": ["optimizer", "lr", "batch_size"]}
    (path / "tune_app.json").write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize("case, message", [
    ("spaces", "are sweeps of different spaces (space digits and space cifar_vgg6)"),
    ("plain and spec", "are sweeps of different spaces (space digits and a Ray Tune experiment over batch_size, lr, "
                       "optimizer)"),
    ("metrics", "is analyzed for val_acc (max) and"),
    ("modes", "is analyzed for val_acc (max) and"),
    ("no such metric", "metric 'f1' was never reported in"),
    ("twice", "is given twice; compare two different run directories"),
    ("twice, spelled apart", "is given twice"),
    ("three", "3 run directories"),
    ("a flag for one", "--pair is for the analysis of one run directory"),
    ("out into a summary", "a comparison leaves each sweep's summary as it is"),
])
def test_bad_input_one_line_nothing_written(tmp_path, sweeps, capsys, case, message):
    run_a = with_spec(write_experiment(tmp_path / "a", sweeps[0]))
    run_b = write_experiment(tmp_path / "b", sweeps[1])
    if case != "plain and spec":
        with_spec(run_b, space="cifar_vgg6" if case == "spaces" else "digits",
                  metric="val_loss" if case == "metrics" else "val_acc", mode="min" if case in ("metrics", "modes")
                  else "max")
    argv = {"no such metric": [run_a, run_b, "--metric", "f1"], "twice": [run_a, run_a],
            "twice, spelled apart": [run_a, f"{run_b}/../a/"], "three": [run_a, run_b, run_a],
            "a flag for one": [run_a, run_b, "--pair", "optimizer,lr"],
            "out into a summary": [run_a, run_b, "--out", run_a / "summary"]}.get(case, [run_a, run_b])
    code, _, err = cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    if case == "metrics":
        assert "val_loss (min)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    assert not (run_a / "summary").exists() and not (run_b / "summary").exists()


def test_out_with_one_run_directory_is_one_line(tmp_path, sweeps, capsys):
    run_a = write_experiment(tmp_path / "a", sweeps[0])
    code, _, err = cli(capsys, run_a, "--out", tmp_path / "c")
    assert code == 2 and err.count("\n") == 1 and "--out" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
