"""Studies 2 and 5 end to end on generated CIFAR-100 files: the ResNet grid with early stopping, the
robustness sweep ranked by ood_acc, its retrain with per-corruption accuracy and a submission CSV,
and the bad input those spaces can meet."""
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torchvision

from tests.fake_datasets import write_cifar100
from trainables.corruptions import CORRUPTIONS
from trainables.data import prepare
from tune_app import retrain, search

pytestmark = pytest.mark.e2e

N_TRAIN, N_TEST = 60, 20


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("data"), n_train=N_TRAIN, n_test=N_TEST)


def read_summary(run_dir):
    s = run_dir / "summary"
    return (pq.read_table(s / "trials.parquet").to_pandas(), pq.read_table(s / "history.parquet").to_pandas(),
            json.loads((s / "best_config.json").read_text()))


def sets(*pairs):
    return [a for key, value in pairs for a in ("--set", f"{key}={value}")]


def test_cifar100_resnet_grid_runs_and_early_stopping_is_its_own_status(ray_local, data_dir, tmp_path):
    """Both ResNets x both schedules of study 2's grid (the other axes fixed with --set), 3 epochs at most; an
    improvement threshold no run can meet makes every trial stop itself after its second epoch."""
    argv = ["--space", "cifar100_resnet", "--data-dir", str(data_dir), "--cpus-per-trial", "1",
            "--storage-path", str(tmp_path / "runs"), "--name", "grid", "--wandb-mode", "disabled",
            *sets(("mix", "cutmix_mixup"), ("optimizer", "nesterov"), ("lr", 0.01), ("epochs", 3),
                  ("batch_size", 16), ("early_stop_patience", 1), ("early_stop_min_delta", 100.0))]
    assert search.main(argv) == 0
    trials, history, best = read_summary(tmp_path / "runs" / "grid")
    assert sorted(zip(trials["config/model"], trials["config/schedule"])) == [
        ("preact_resnet18", "cosine"), ("preact_resnet18", "plateau"), ("resnet18", "cosine"),
        ("resnet18", "plateau")]
    assert (trials["status"] == "early_stopped").all() and (trials["epochs"] == 2).all()
    assert sorted(trials["final_params"].unique()) == [11_217_316, 11_220_132]  # PreAct / ResNet-18, 100 classes
    assert history.groupby("trial_id")["early_stopped"].apply(list).map(lambda s: s == [False, True]).all()
    assert best["status"] == "early_stopped" and best["config"]["mix"] == "cutmix_mixup"
    assert best["dataset"]["name"] == "cifar100" and best["dataset"]["test"] == N_TEST


@pytest.fixture(scope="module")
def ood_sweep(ray_local, data_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    argv = ["--space", "cifar100_ood", "--data-dir", str(data_dir), "--searcher", "random", "--scheduler", "fifo",
            "--num-samples", "2", "--cpus-per-trial", "1", "--storage-path", str(runs), "--name", "ood",
            "--wandb-mode", "disabled",
            *sets(("model", "small_cnn2"), ("epochs", 2), ("batch_size", 16), ("ood_images", 0),
                  ("ood_severities", "1,5"), ("ood_corruptions", "gaussian_noise,contrast,jpeg"))]
    assert search.main(argv) == 0
    return runs / "ood"


def test_cifar100_ood_ranks_trials_by_accuracy_on_corrupted_validation_images(ood_sweep):
    trials, history, best = read_summary(ood_sweep)
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}
    assert history["ood_acc"].between(0, 1).all() and len(history) == 4
    assert best["metric"] == "ood_acc"
    winner = trials.loc[trials["final_ood_acc"].idxmax()]
    assert best["trial_id"] == winner["trial_id"] and best["value"] == winner["final_ood_acc"]
    # 6 validation images (10 % of 60), 3 corruptions x 2 severities: accuracies are multiples of 1/36
    assert np.allclose((history["ood_acc"] * 36).round(9) % 1, 0)


def heldout_npy(path, n=7):
    x = np.random.default_rng(5).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)  # HWC, as people save them
    np.save(path, x)
    return x


def write_cifar_c(folder, x_test, y_test, names=CORRUPTIONS):
    """CIFAR-100-C's layout: <name>.npy (5 x N, 32, 32, 3) uint8 by severity, and labels.npy."""
    from trainables.corruptions import RELEASE_FILES

    folder.mkdir(parents=True, exist_ok=True)
    hwc = x_test.transpose(0, 2, 3, 1)
    for name in names:
        np.save(folder / RELEASE_FILES[name], np.concatenate([255 - hwc] * 5))  # every severity: the negative
    np.save(folder / "labels.npy", np.tile(y_test, 5))
    return folder


def test_ood_retrain_scores_each_corruption_and_writes_a_submission(ood_sweep, data_dir, tmp_path):
    x = heldout_npy(tmp_path / "heldout.npy")
    assert retrain.main([str(ood_sweep), "--configs", "1", "--seeds", "1", "--predict", str(tmp_path / "heldout.npy"),
                         "--wandb-mode", "disabled"]) == 0
    out = ood_sweep / "retrain"
    summary = json.loads((out / "retrain.json").read_text())
    rob = summary["robustness"]
    assert rob["names"] == ["gaussian_noise", "contrast", "jpeg"] and rob["severities"] == [1, 5]
    table = pd.read_csv(out / "robustness.csv")
    assert list(table.columns) == ["corruption", "severity", "acc"] and len(table) == 6
    assert table["acc"].mul(N_TEST).round(9).mod(1).eq(0).all()  # whole images right out of 20
    assert rob["ood_acc"] == pytest.approx(table["acc"].mean())
    assert rob["per_corruption"]["jpeg"] == pytest.approx(table[table["corruption"] == "jpeg"]["acc"].mean())
    assert summary["configs"][0]["test_ood_acc"]["mean"] == pytest.approx(rob["ood_acc"])
    # the submission: one row per held-out image, ids are row numbers, labels the kept model's predictions
    sub = pd.read_csv(out / "submission.csv")
    model = retrain.load_model(out / "model.pt")
    assert list(sub.columns) == ["id", "label"] and sub["id"].tolist() == list(range(7))
    assert sub["label"].tolist() == model.predict(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).tolist()
    report = (ood_sweep / "summary" / "report.md").read_text()
    assert "### Accuracy on corrupted test images" in report and "| jpeg |" in report


def test_retrain_reads_cifar_c_files_when_given_a_directory(ood_sweep, data_dir, tmp_path):
    ds = prepare("cifar100", data_dir)
    folder = write_cifar_c(tmp_path / "CIFAR-100-C", ds.x_test, ds.y_test)
    run = tmp_path / "ood"
    import shutil
    shutil.copytree(ood_sweep, run)
    assert retrain.main([str(run), "--configs", "1", "--seeds", "1",
                         "--corruption-dir", str(folder), "--corruptions", "contrast",
                         "--severities", "2", "--wandb-mode", "disabled"]) == 0
    summary = json.loads((run / "retrain" / "retrain.json").read_text())
    model = retrain.load_model(run / "retrain" / "model.pt")
    _, negative_acc = model.evaluate(np.ascontiguousarray(255 - ds.x_test), ds.y_test)
    assert summary["robustness"]["source"] == str(folder)
    assert summary["robustness"]["sets"] == [{"corruption": "contrast", "severity": 2, "acc": negative_acc}]


@pytest.mark.parametrize("argv, message", [
    (["--corruption-dir", "{missing}"], "contrast.npy"),
    (["--corruptions", "fog"], "--corruptions: unknown corruption 'fog'"),
    (["--predict", "{nothing}"], "--predict"),
])
def test_retrain_bad_robustness_input_is_one_line_and_exit_2(ood_sweep, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.format(missing=tmp_path / "empty", nothing=tmp_path / "nothing.npy") for a in argv]
    before = sorted(p.name for p in ood_sweep.iterdir())
    assert retrain.main([str(ood_sweep), "--seeds", "1", "--wandb-mode", "disabled", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert sorted(p.name for p in ood_sweep.iterdir()) == before


def resnet_file(path, arch):
    torch.manual_seed(0)
    torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), path)
    return path


@pytest.mark.parametrize("overrides, message", [
    ([("model", "resnet19")], "model='resnet19': choose one of"),
    ([("schedule", "cyclic")], "schedule='cyclic': choose one of"),
    ([("mix", "mosaic")], "mix='mosaic': choose one of"),
    ([("ood_corruptions", "fog")], "ood_corruptions='fog': unknown corruption"),
    ([("model", "tv_resnet18"), ("pretrained_weights", "{r50}")], "do not fit tv_resnet18"),
    ([("model", "tv_resnet18"), ("pretrained_weights", "{missing}")], "nothing.pth"),
    ([("model", "small_cnn2"), ("pretrained_weights", "{r50}")], "no model here takes them"),
])
def test_bad_space_input_stops_before_ray_with_one_line(tmp_path, capsys, overrides, message):
    r50 = resnet_file(tmp_path / "r50.pth", "resnet50")
    argv = ["--space", "cifar100_ood", "--data-dir", str(tmp_path / "no-data"), "--storage-path",
            str(tmp_path / "runs"), *sets(*[(k, str(v).format(r50=r50, missing=tmp_path / "nothing.pth"))
                                            for k, v in overrides])]
    assert search.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()
