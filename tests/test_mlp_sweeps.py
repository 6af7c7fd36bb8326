"""Studies 3 and 4 through the search CLI on a local Ray: the NumPy MLP's spaces on generated
Fashion-MNIST / MNIST idx files, and --plan's cost estimates."""
import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from ray import tune

from tune_app.cost import estimate
from tune_app.rundir.layout import PLAN_FILE
from tune_app.search import main

pytestmark = pytest.mark.e2e

TINY = ["--set", "epochs=2", "--set", "num_layers=[1,2]", "--set", "hidden_size=16", "--set", "batch_size=[16,32]",
        "--cpus-per-trial", "1", "--wandb-mode", "disabled"]


@pytest.fixture(scope="module")
def data_dir(mnist_dir):
    return mnist_dir


@pytest.fixture(scope="module")
def fashion_sweep(ray_local, data_dir, tmp_path_factory):
    """A tiny fashion_mnist_mlp sweep (its own Optuna + ASHA); returns (run dir, what it printed)."""
    runs = tmp_path_factory.mktemp("runs")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--space", "fashion_mnist_mlp", "--num-samples", "4", "--max-epochs", "2", "--data-dir",
                     str(data_dir), "--storage-path", str(runs), "--name", "fm", *TINY])
    assert code == 0, out.getvalue()
    return runs / "fm", out.getvalue()


def test_fashion_mnist_mlp_sweep(fashion_sweep):
    run_dir, out = fashion_sweep
    tmp_path = run_dir.parent
    trials = pd.read_parquet(tmp_path / "fm" / "summary" / "trials.parquet")
    assert len(trials) == 4 and set(trials["status"]) <= {"completed", "stopped", "diverged"}
    assert all(n.startswith(f"hl_{h}_bs_{b}_ac_") for n, h, b in
               zip(trials["name"], trials["config/num_layers"], trials["config/batch_size"]))
    assert (trials["config/dataset"] == "fashion_mnist").all()
    assert (trials["final_params"] == [784 * 16 + 16 + (16 * 16 + 16) * (h - 1) + 16 * 10 + 10
                                       for h in trials["config/num_layers"]]).all()
    best = json.loads((tmp_path / "fm" / "summary" / "best_config.json").read_text())
    assert best["dataset"]["name"] == "fashion_mnist" and best["dataset"]["train"] == 270
    assert "### loss (epoch" in out  # cross-entropy vs squared error, tabulated


def test_mnist_by_changing_the_dataset(ray_local, data_dir, tmp_path, capsys):
    code = main(["--space", "mnist_mlp", "--max-epochs", "2", "--data-dir", str(data_dir),
                 "--storage-path", str(tmp_path), "--name", "mn", *TINY])
    assert code == 0, capsys.readouterr().err
    trials = pd.read_parquet(tmp_path / "mn" / "summary" / "trials.parquet")
    assert len(trials) == 3 and (trials["config/dataset"] == "mnist").all()


def test_plan_prints_estimates_and_writes_nothing(ray_local, data_dir, tmp_path, capsys):
    code = main(["--space", "mlp_lab", "--plan", "--num-samples", "5", "--data-dir", str(data_dir),
                 "--storage-path", str(tmp_path / "runs"), "--set", "hidden_size=[128,256]",
                 "--set", "batch_size=[16,32]", "--set", "epochs=[10,20]"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit() and "hl_1_bs_" in line]
    assert len(rows) == 5
    for line in rows:
        fields = line.split()
        params = int(fields[2].replace(",", ""))
        width = int(fields[1].split("_sz_")[1].split("_")[0])
        assert params == 784 * width + width + width * 10 + 10
        assert float(fields[4]) > 0 and int(fields[5]) in (10, 20)
        assert float(fields[6]) == pytest.approx(float(fields[4]) * int(fields[5]), rel=0.02)
    assert "total: 5 trials" in out and "with 2 trials at a time" in out
    assert not (tmp_path / "runs").exists()


def test_plan_projects_the_wall_time_on_gpu_clusters(ray_local, data_dir, tmp_path, capsys):
    """--plan --gpus 1,4 with half a (pretend) GPU a trial: 2 trials at a time here and on 1 GPU, 8 on 4 GPUs, so
    FIFO's 4 trials take their longest one there."""
    code = main(["--space", "mlp_lab", "--plan", "--num-samples", "4", "--data-dir", str(data_dir),
                 "--storage-path", str(tmp_path / "runs"), "--set", "hidden_size=[128,256]", "--set", "epochs=3",
                 "--scheduler", "fifo", "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.5", "--gpus", "1,4"])
    out = capsys.readouterr().out
    assert code == 0, out
    trial_s = [float(line.split()[6]) for line in out.splitlines() if line.strip()[:1].isdigit() and "hl_1_" in line]
    assert len(trial_s) == 4
    projected = next(line for line in out.splitlines() if line.startswith("projected: "))
    assert projected.startswith("projected: 12 of the 12 planned epochs, about ")
    assert "with 2 trials at a time" in projected
    gpus = next(line for line in out.splitlines() if line.startswith("on GPUs, "))
    assert gpus.startswith("on GPUs, at these estimated epoch times (2 trials a GPU): about ")
    on_one, on_four = gpus.split("about ", 1)[1].split(", ")
    assert on_one.endswith(" on 1 GPU") and on_four.endswith(" on 4 GPUs")
    assert on_four == f"{estimate.duration(max(trial_s))} on 4 GPUs" or \
        float(on_four.split()[0]) == pytest.approx(max(trial_s), abs=1)  # the table rounds to 3 digits
    assert projected.split("about ")[1].split(" with")[0] == on_one.removesuffix(" on 1 GPU")  # 2 at a time both
    assert not (tmp_path / "runs").exists()


def test_estimates_sit_next_to_measurements_after_the_sweep(ray_local, data_dir, tmp_path, capsys):
    code = main(["--space", "mlp_lab", "--num-samples", "3", "--max-epochs", "2", "--data-dir", str(data_dir),
                 "--storage-path", str(tmp_path), "--name", "lab", "--set", "hidden_size=[128,256]",
                 "--set", "batch_size=32", "--wandb-mode", "disabled"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads((tmp_path / "lab" / PLAN_FILE).read_text())
    assert len(rows) == 3 and all(r["est_epoch_s"] > 0 and r["est_peak_mem_mb"] > 0 for r in rows)
    trials = pd.read_parquet(tmp_path / "lab" / "summary" / "trials.parquet")
    assert trials[["est_epoch_s", "epoch_s", "est_trial_s", "est_peak_mem_mb"]].notna().all().all()
    assert (trials["est_trial_s"] == trials["est_epoch_s"] * 2).all()
    by_width = {r["cost_key"]: r["est_epoch_s"] for r in rows}
    assert len(set(by_width)) == len({w for w in trials["config/hidden_size"]})  # one probe per width
    html = (tmp_path / "lab" / "summary" / "report.html").read_text()
    assert "Cost: estimated before the sweep vs measured" in html and "Cost estimates vs measured (3 trials)" in out


def test_configurations_grid_and_sampled():
    space = {"a": tune.grid_search([1, 2]), "b": tune.choice(["x", "y"]), "c": tune.loguniform(1e-3, 1e-1), "d": 7}
    configs = estimate.configurations(space, 3, seed=0)
    assert len(configs) == 6 and [c["a"] for c in configs] == [1, 2] * 3
    assert all(c["b"] in ("x", "y") and 1e-3 <= c["c"] <= 1e-1 and c["d"] == 7 for c in configs)
    assert configs == estimate.configurations(space, 3, seed=0)  # seeded
    assert estimate.duration(90) == "90 s" and estimate.duration(600) == "10.0 min"
    assert estimate.duration(36000) == "10.0 h"


def test_the_report_compares_cross_entropy_with_squared_error(fashion_sweep):
    """Study 3: a trend table and learning curves by loss (the space's CURVES_BY)."""
    run_dir, out = fashion_sweep
    trials = pd.read_parquet(run_dir / "summary" / "trials.parquet")
    assert set(trials["config/loss"]) == {"cross_entropy", "mean_squared_error"}  # both ran
    trends = pd.read_csv(run_dir / "summary" / "trends.csv")
    assert set(trends.loc[trends["hyperparameter"] == "loss", "value"]) == {"cross_entropy", "mean_squared_error"}
    assert (run_dir / "summary" / "plots" / "curves_by_loss.png").is_file()
    page = (run_dir / "summary" / "report.html").read_text()
    assert "Learning curves by loss" in page and "loss=mean_squared_error (mean of" in page


def test_study_3_retrain_confusion_matrix_and_one_image_per_class(fashion_sweep, data_dir):
    from trainables.data import prepare
    from tune_app import retrain

    run_dir, _ = fashion_sweep
    assert retrain.main([str(run_dir), "--configs", "1", "--seeds", "1", "--wandb-mode", "disabled"]) == 0
    result = json.loads((run_dir / "retrain" / "retrain.json").read_text())
    assert result["trainable"] == "numpy_mlp" and result["dataset"]["test"] == 50
    confusion = pd.read_csv(run_dir / "retrain" / "confusion_matrix.csv", index_col=0)
    assert list(confusion.columns) == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                       "Sneaker", "Bag", "Ankle boot"] and int(confusion.to_numpy().sum()) == 50
    assert (run_dir / "retrain" / "samples.png").is_file()
    model = retrain.load_model(run_dir / "retrain" / "model.pt")
    dataset = prepare("fashion_mnist", data_dir)
    assert model.module is None and model.classes[0] == "T-shirt/top"
    assert np.mean(model.predict(dataset.x_test) == dataset.y_test) == result["model"]["test_acc"]
    assert result["configs"][0]["reproduction"]["identical"] is True


def test_plan_works_for_the_pytorch_trainable_too(ray_local, tmp_path, capsys):
    code = main(["--space", "digits", "--plan", "--num-samples", "3", "--set", "batch_norm=true",
                 "--set", "batch_size=64", "--storage-path", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "probing 1 distinct configurations" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and "digits_cnn_" in line]
    assert len(rows) == 3 and all(int(r[2].replace(",", "")) == 53_098 for r in rows)  # digits_cnn with BN
    assert all(float(r[6]) == pytest.approx(float(r[4]) * int(r[5]), rel=0.02) for r in rows)
    assert "total: 3 trials" in out and not (tmp_path / "runs").exists()


def test_probes_of_a_wave_train_side_by_side_until_all_have_measured(ray_local, data_dir):
    """A quick probe keeps its neighbour company until the slow one has measured, as trials will."""
    import ray

    from trainables import numpy_mlp
    from trainables.data import prepare

    dataset = prepare("fashion_mnist", data_dir)
    base = {"dataset": "fashion_mnist", "num_layers": 1, "hidden_size": 64, "epochs": 10}
    configs = [numpy_mlp.resolve(numpy_mlp.PARAMS, {**base, "batch_size": b}) for b in (128, 1)]
    probes = estimate.probe_all(numpy_mlp, configs, ray.put(dataset.sweep_view()), len(dataset.y_train),
                            dataset.x_train.nbytes, 1, 0, concurrency=2)
    fast, slow = (probes[estimate.cost_key(numpy_mlp, c)] for c in configs)
    assert slow["epochs_run"] == 1 + estimate.WARM_EPOCHS < fast["epochs_run"]
    assert fast["samples_per_s"] > slow["samples_per_s"] > 0 and fast["probe_samples"] == slow["probe_samples"] == 270
