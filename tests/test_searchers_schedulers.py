"""Every searcher and every scheduler runs a real (tiny) digits sweep to the end."""
import json

import pyarrow.parquet as pq
import pytest

from tune_app.search import main
from tune_app.search.algorithms import SCHEDULERS, SEARCHERS

pytestmark = pytest.mark.e2e

TINY = ["--space", "digits", "--set", "batch_size=128", "--cpus-per-trial", "1", "--wandb-mode", "disabled"]
# grid needs lists everywhere; the rest sample digits' own space
SEARCHER_ARGS = {
    "grid": ["--set", "lr=[0.001,0.003]", "--set", "activation=relu", "--set", "optimizer=adam",
             "--set", "batch_norm=true", "--set", "epochs=2"],
    "random": ["--num-samples", "2", "--set", "epochs=2"],
    "optuna": ["--num-samples", "2", "--set", "epochs=2"],
    "hyperopt": ["--num-samples", "2", "--set", "epochs=2"],
    "gp": ["--num-samples", "2", "--set", "epochs=2"],
    "cmaes": ["--num-samples", "2", "--set", "epochs=2"],
    "bohb": ["--num-samples", "2", "--set", "epochs=2"],
    "nsga2": ["--num-samples", "2", "--set", "epochs=2", "--metric", "val_acc,params", "--mode", "max,min"],
}


def sweep(tmp_path, *argv):
    code = main([*TINY, *argv, "--storage-path", str(tmp_path), "--name", "s"])
    summary = tmp_path / "s" / "summary"
    return code, pq.read_table(summary / "trials.parquet").to_pandas(), json.loads(
        (summary / "best_config.json").read_text())


def report_spans(run_dir):
    """Each trial's (start, last report) from its own reports, in start order."""
    spans = []
    for folder in run_dir.glob("digits_cnn_*"):
        rows = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]
        spans.append((rows[0]["timestamp"] - rows[0]["time_total_s"], rows[-1]["timestamp"]))
    return sorted(spans)


def test_every_searcher_is_covered():
    assert sorted(SEARCHER_ARGS) == SEARCHERS.names()


@pytest.mark.parametrize("searcher", SEARCHERS.names())
def test_every_searcher_completes_a_sweep_with_both_cores_busy_and_one_worker_each(searcher, ray_local, tmp_path):
    """4 trials of 1 CPU on 2 CPUs: two at a time (search.runner.pending_trials keeps as many trials waiting as
    run), trained by two worker processes, Ray Tune's trial actors reused from trial to trial."""
    four = ["--set", "activation=[relu,tanh]"] if searcher == "grid" else ["--num-samples", "4"]
    code, trials, best = sweep(tmp_path, "--searcher", searcher, "--scheduler", scheduler_for(searcher),
                               *SEARCHER_ARGS[searcher], *four, "--set", "epochs=1")
    assert code == 0
    assert len(trials) == 4 and (trials["status"] == "completed").all() and (trials["epochs"] == 1).all()
    assert best["searcher"] == searcher and best["trial_id"] in set(trials["trial_id"])
    if searcher == "grid":
        assert sorted(trials["config/lr"]) == [0.001, 0.001, 0.003, 0.003]
    else:
        assert trials["config/lr"].nunique() == 4  # sampled, not a default
    spans = report_spans(tmp_path / "s")
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans  # two trials trained at once
    pids = {json.loads(line)["pid"] for folder in (tmp_path / "s").glob("digits_cnn_*")
            for line in (folder / "result.json").read_text().splitlines() if line.strip()}
    assert len(pids) == 2, pids  # not a process per trial


def scheduler_for(searcher: str) -> str:
    return "bohb" if searcher == "bohb" else "fifo"  # BOHB runs with its own HyperBand


@pytest.mark.parametrize("scheduler", SCHEDULERS.names())
def test_every_scheduler_completes_a_sweep(scheduler, ray_local, tmp_path):
    searcher = {"pbt": "random", "pb2": "random", "bohb": "bohb"}.get(scheduler, "optuna")
    code, trials, best = sweep(tmp_path, "--searcher", searcher, "--scheduler", scheduler, "--num-samples", "3",
                               "--set", "epochs=3", "--max-epochs", "3")
    assert code == 0
    assert len(trials) == 3 and set(trials["status"]) <= {"completed", "stopped"}
    assert (trials["epochs"] >= 1).all() and (trials["epochs"] <= 3).all()
    assert best["scheduler"] == scheduler and best["config"] is not None


# BOHB's HyperBand pauses a trial at a rung and resumes it later, so its trials' report spans interleave by design,
# one at a time or not: the span test cannot tell, and BOHB goes through the same ConcurrencyLimiter as gp and cmaes.
@pytest.mark.parametrize("searcher", [s for s in SEARCHERS.names() if s != "bohb"])
def test_max_concurrent_holds_for_every_searcher(searcher, ray_local, tmp_path):
    """--max-concurrent 1 on 2 CPUs of 1-CPU trials: no two trials overlap (Ray applies max_concurrent_trials
    to Searchers only; random search's generator takes it itself). Overlap is read from the trials' own reports:
    a trial's first epoch began after the previous trial's last report."""
    code, trials, _ = sweep(tmp_path, "--searcher", searcher, "--scheduler", "fifo", "--max-concurrent", "1",
                            *SEARCHER_ARGS[searcher], "--set", "epochs=4", "--max-epochs", "4")
    assert code == 0 and len(trials) == 2
    (a_start, a_end), (b_start, b_end) = report_spans(tmp_path / "s")
    assert b_start >= a_end - 1  # timestamps are whole seconds

