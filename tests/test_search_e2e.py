"""Real sweeps on a local Ray: digits (Optuna + ASHA) and cifar_vgg6 (grid + FIFO) on CIFAR-10 files."""
import json
import re

import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.fake_datasets import write_cifar10
from tests.wandb_records import read_run
from tune_app.rundir.reader import trial_id_of
from tune_app.rundir.tables import ELIGIBLE
from tune_app.search import main

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def digits_sweep(ray_local, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    argv = ["--space", "digits", "--num-samples", "4", "--set", "epochs=[2,3]", "--max-epochs", "3",
            "--set", "batch_size=[32,64]", "--cpus-per-trial", "1", "--storage-path", str(runs),
            "--name", "digits-tiny", "--seed", "3"]
    return runs / "digits-tiny", argv


@pytest.fixture(scope="module")
def digits_output(digits_sweep, capfd_module):
    run_dir, argv = digits_sweep
    code = main(argv)
    return code, capfd_module()


@pytest.fixture(scope="module")
def capfd_module():
    """Module-scoped capture is not built in; the CLI's own stdout is what matters here."""
    import contextlib
    import io

    buffer = io.StringIO()
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(buffer))
    yield lambda: (stack.close(), buffer.getvalue())[1]
    stack.close()


def read_summary(run_dir):
    s = run_dir / "summary"
    trials = pq.read_table(s / "trials.parquet").to_pandas()
    history = pq.read_table(s / "history.parquet").to_pandas()
    best = json.loads((s / "best_config.json").read_text())
    return trials, history, best


def test_digits_sweep_exits_0_and_prints_best_and_trends(digits_sweep, digits_output):
    code, out = digits_output
    assert code == 0
    assert "tune_app: starting sweep 'digits-tiny' of space 'digits': 4 trials, optuna + asha, 1 CPU / 0 GPU" in out
    assert "W&B runs are kept offline; upload them later with: wandb sync " in out
    assert re.search(r"Best trial digits_cnn_[\w.-]+ \(\w+\), selected by last: val_acc \d+\.\d\d %", out)
    k = json.loads((digits_sweep[0] / "summary" / "best_config.json").read_text())["at_epoch"]
    assert f"### activation (epoch {k})" in out and f"### lr (epoch {k})" in out and "| 95 % CI |" in out


def test_analyze_prints_what_the_sweep_printed(digits_sweep, digits_output, capsys):
    """The sweep ends by analyzing its run directory; running the analysis again gives the same tables."""
    from tune_app import analyze

    run_dir, _ = digits_sweep
    _, sweep_out = digits_output
    before = (run_dir / "summary" / "trends.csv").read_text()
    assert analyze.main([str(run_dir), "--wandb-mode", "disabled"]) == 0
    out = capsys.readouterr().out
    assert out.strip() and out.strip() in sweep_out
    assert "## Importance" in out and (run_dir / "summary" / "report.html").is_file()
    assert (run_dir / "summary" / "trends.csv").read_text() == before


def test_analyze_a_run_directory_copied_elsewhere(digits_sweep, digits_output, tmp_path, capsys):
    """What comes back from a cluster is a copy of the run directory: it analyzes the same."""
    import shutil

    from tune_app import analyze

    run_dir, _ = digits_sweep
    copy = tmp_path / "from-cluster"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("summary", "wandb"))
    assert analyze.main([str(copy), "--wandb-mode", "disabled"]) == 0
    capsys.readouterr()
    for name in ("trends.csv", "topk.json", "importance.csv"):
        assert (copy / "summary" / name).read_text() == (run_dir / "summary" / name).read_text(), name
    best, original = (json.loads((d / "summary" / "best_config.json").read_text()) for d in (copy, run_dir))
    assert {k: best[k] for k in ("config", "trial_id", "value", "at_epoch", "dataset", "git_commit")} == {
        k: original[k] for k in ("config", "trial_id", "value", "at_epoch", "dataset", "git_commit")}


def test_trials_table_has_one_row_per_trial(digits_sweep, digits_output):
    run_dir, _ = digits_sweep
    trials, history, _ = read_summary(run_dir)
    trial_dirs = [p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("digits_cnn_")]
    assert len(trials) == 4 == len(trial_dirs)
    assert sorted(trials["trial_id"]) == sorted(p.name.rsplit("_", 1)[1] for p in trial_dirs)
    assert set(trials["status"]) <= {"completed", "stopped"}
    assert set(trials["config/batch_size"]) <= {32, 64} and set(trials["config/epochs"]) <= {2, 3}
    assert (trials["epochs"] <= trials["target_epochs"]).all()
    assert ((trials["final_val_acc"] >= 0) & (trials["final_val_acc"] <= 1)).all()
    assert (trials["final_params"] > 0).all() and (trials["seconds"] > 0).all()
    # history: one row per trial-epoch, epochs 1..n for every trial
    assert len(history) == trials["epochs"].sum()
    for trial_id, group in history.groupby("trial_id"):
        assert group["epoch"].tolist() == list(range(1, len(group) + 1))
        assert group["val_acc"].iloc[-1] == pytest.approx(
            trials.set_index("trial_id").loc[trial_id, "final_val_acc"])


def test_best_config_is_the_best_row_with_provenance(digits_sweep, digits_output):
    run_dir, _ = digits_sweep
    trials, _, best = read_summary(run_dir)
    eligible = trials[trials["status"].isin(ELIGIBLE)]
    top = eligible.sort_values(["final_val_acc", "epochs"], ascending=False).iloc[0]
    assert best["trial_id"] == top["trial_id"] and best["value"] == pytest.approx(top["final_val_acc"])
    for key in ("activation", "optimizer", "lr", "batch_size", "batch_norm", "epochs"):
        assert best["config"][key] == top[f"config/{key}"]
    assert best["metric"] == "val_acc" and best["mode"] == "max" and best["selection_rule"] == "last"
    assert best["seed"] == 3 and best["space"] == "digits"
    assert best["dataset"]["name"] == "digits" and best["dataset"]["val"] == 144 and best["dataset"]["test"] == 359
    assert len(best["dataset"]["fingerprint"]) == 16
    assert best["versions"]["ray"] and best["versions"]["torch"]
    assert yaml.safe_load((run_dir / "summary" / "best_config.yaml").read_text()) == best


def test_trend_means_equal_a_pandas_recomputation(digits_sweep, digits_output):
    """The raw view (each finished trial's last epoch) recomputed from the trials table."""
    run_dir, _ = digits_sweep
    trials, _, _ = read_summary(run_dir)
    trends = pd.read_csv(run_dir / "summary" / "trends.csv")
    trends = trends[trends["view"] == "raw"]
    eligible = trials[trials["status"].isin(ELIGIBLE)]
    assert set(trends["hyperparameter"]) == {"activation", "optimizer", "lr", "batch_size", "batch_norm", "epochs"}
    for key in ("activation", "optimizer", "batch_size", "epochs"):
        expected = eligible.groupby(f"config/{key}")["final_val_acc"].agg(["count", "mean", "max"])
        got = trends[trends["hyperparameter"] == key].set_index("value")
        assert sorted(map(str, got.index)) == sorted(map(str, expected.index))
        for value, row in expected.iterrows():
            line = got.loc[str(value)] if str(value) in got.index else got.loc[value]
            assert line["n"] == row["count"]
            assert line["mean"] == pytest.approx(row["mean"]) and line["best"] == pytest.approx(row["max"])
    # a sampled lr is grouped by decade, and the rows add up to all trials
    lr = trends[trends["hyperparameter"] == "lr"]
    assert all(re.fullmatch(r"\[[\d.e-]+, [\d.e-]+[)\]]", v) for v in lr["value"])
    assert lr["n"].sum() == len(eligible)


def test_one_wandb_offline_run_per_trial(digits_sweep, digits_output):
    run_dir, _ = digits_sweep
    trials, history, _ = read_summary(run_dir)
    runs = [read_run(next(p.glob("run-*.wandb"))) for p in sorted((run_dir / "wandb").glob("offline-run-*"))]
    summary_runs = [r for r in runs if r["name"] == "digits-tiny-summary"]
    runs = [r for r in runs if r not in summary_runs]
    assert len(summary_runs) == 1 and summary_runs[0]["group"] == "digits-tiny"  # the analysis' own run
    assert sorted(r["id"] for r in runs) == sorted(trials["trial_id"])
    for run in runs:
        trial = trials.set_index("trial_id").loc[run["id"]]
        assert run["name"] == trial["name"] and run["group"] == "digits-tiny" and run["project"] == "tune_app"
        assert run["config"]["activation"] == trial["config/activation"]
        assert run["config"]["lr"] == pytest.approx(trial["config/lr"])
        logged = [h["val_acc"] for h in run["history"] if "val_acc" in h]
        expected = history[history["trial_id"] == run["id"]].sort_values("epoch")["val_acc"].tolist()
        assert logged == pytest.approx(expected)
        assert {"epoch", "train_loss", "val_loss", "lr", "samples_per_s"} <= set(run["history"][0])


def test_optuna_study_is_file_backed_in_the_run_directory(digits_sweep, digits_output):
    run_dir, _ = digits_sweep
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal")))
    study = optuna.load_study(study_name="digits-tiny", storage=storage)
    assert len(study.trials) == 4
    assert {"activation", "optimizer", "lr", "batch_size", "batch_norm", "epochs"} <= set(study.trials[0].params)


def test_cifar_vgg6_grid_fifo_on_cifar10_files(ray_local, tmp_path, capsys):
    data_dir = write_cifar10(tmp_path / "data", n_train_per_batch=20, n_test=20)
    fixed = {"optimizer": "nadam", "lr": 0.001, "batch_size": 32, "epochs": 1, "batch_norm": "true",
             "cutout": 16, "weight_decay": 0, "seed": 42}
    argv = ["--space", "cifar_vgg6", "--searcher", "grid", "--scheduler", "fifo", "--data-dir", str(data_dir),
            "--set", "activation=[relu,gelu]", "--set", "autoaugment=[true,false]", "--cpus-per-trial", "1",
            "--gpus-per-trial", "0.5",
            "--storage-path", str(tmp_path / "runs"), "--name", "vgg", "--wandb-mode", "disabled"]
    for key, value in fixed.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    trials, history, best = read_summary(tmp_path / "runs" / "vgg")
    assert len(trials) == 4 and (trials["status"] == "completed").all()
    combos = sorted(zip(trials["config/activation"], trials["config/autoaugment"]))
    assert combos == [("gelu", False), ("gelu", True), ("relu", False), ("relu", True)]
    assert (trials["config/optimizer"] == "nadam").all() and (trials["final_params"] == 2_360_522).all()
    assert best["dataset"] == {**best["dataset"], "name": "cifar10", "train": 90, "val": 10, "test": 20}
    assert best["trial_name"].startswith("vgg6_") and best["trial_name"].endswith("_nadam_bs32_lr0.001")
    trends = pd.read_csv(tmp_path / "runs" / "vgg" / "summary" / "trends.csv")
    assert set(trends["hyperparameter"]) == {"activation", "autoaugment"}
    assert not (tmp_path / "runs" / "vgg" / "wandb").exists()  # --wandb-mode disabled


def test_trials_asking_for_more_than_the_cluster_has_are_refused(ray_local, tmp_path, capsys):
    code = main(["--space", "digits", "--gpus-per-trial", "2", "--storage-path", str(tmp_path / "runs"),
                 "--name", "big"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--gpus-per-trial 2: the Ray cluster has 1 GPUs in all" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="makes a trial fail by asking for a GPU this machine lacks")
def test_a_trial_that_errors_is_recorded_and_never_best(ray_local, tmp_path, capsys):
    # device=cuda on a machine without a GPU: that trial fails before its first report (each trial holds half of
    # the fixture's pretend GPU: without a GPU asked for, device=cuda is refused before Ray starts)
    fixed = ["activation=relu", "optimizer=adam", "lr=0.003", "batch_size=64", "batch_norm=true", "epochs=1"]
    argv = ["--space", "digits", "--searcher", "grid", "--scheduler", "fifo", "--set", "device=[cpu,cuda]",
            "--cpus-per-trial", "1", "--gpus-per-trial", "0.5", "--storage-path", str(tmp_path), "--name", "err",
            "--wandb-mode", "disabled"]
    code = main(argv + [arg for item in fixed for arg in ("--set", item)])
    assert code == 0
    trials, _, best = read_summary(tmp_path / "err")
    assert dict(zip(trials["config/device"], trials["status"])) == {"cpu": "completed", "cuda": "error"}
    assert best["config"]["device"] == "cpu" and best["trials"]["error"] == 1
    error = trials.set_index("config/device").loc["cuda", "error"]
    assert re.fullmatch(r"\w+Error: .*(CUDA|NVIDIA).*", error), error  # one line: the exception and its message
    assert pd.isna(trials.set_index("config/device").loc["cpu", "error"])
    dirs = sorted(p.name for p in (tmp_path / "err").iterdir() if p.name.startswith("digits_cnn_"))
    assert sorted(trials["trial_id"]) == sorted(trial_id_of(d) for d in dirs)


def test_trial_ids_are_read_back_from_trial_folder_names():
    assert trial_id_of("vgg6_gelu_nadam_bs64_lr0.001_eb39c_00001") == "eb39c_00001"
    assert trial_id_of("digits_cnn_elu_adamw_bs64_lr1e-05_da21e079") == "da21e079"
