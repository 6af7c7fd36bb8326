"""``python -m tune_app.train``: study 3's flags, on generated Fashion-MNIST idx files."""
import csv
import pickle

import pytest

from tests.wandb_records import read_run
from tune_app.train import DEFAULTS, build_parser, config_of, main

SMALL = ["-e", "2", "-nhl", "1", "-sz", "16", "-b", "16", "-lr", "0.01"]


@pytest.fixture(scope="module")
def data_dir(mnist_dir):
    return mnist_dir


def history(out):
    with open(out / "history.csv") as fh:
        return list(csv.DictReader(fh))


def test_every_study_3_flag_short_and_long():
    from trainables import numpy_mlp

    short = build_parser().parse_args(["-wp", "p", "-we", "e", "-d", "mnist", "-e", "3", "-b", "8", "-l",
                                       "mean_squared_error", "-o", "nag", "-lr", "0.1", "-m", "0.5", "-beta", "0.8",
                                       "-beta1", "0.7", "-beta2", "0.6", "-eps", "1e-6", "-w_d", "0.01", "-w_i",
                                       "He", "-nhl", "4", "-sz", "32", "-a", "ReLU"])
    long = build_parser().parse_args(["--wandb_project", "p", "--wandb_entity", "e", "--dataset", "mnist",
                                      "--epochs", "3", "--batch_size", "8", "--loss", "mean_squared_error",
                                      "--optimizer", "nag", "--learning_rate", "0.1", "--momentum", "0.5",
                                      "--beta", "0.8", "--beta1", "0.7", "--beta2", "0.6", "--epsilon", "1e-6",
                                      "--weight_decay", "0.01", "--weight_init", "He", "--num_layers", "4",
                                      "--hidden_size", "32", "--activation", "ReLU"])
    assert vars(short) == vars(long)
    config = config_of(short, numpy_mlp)
    assert {k: config[k] for k in ("dataset", "epochs", "batch_size", "loss", "optimizer", "lr", "momentum", "beta",
                                   "beta1", "beta2", "epsilon", "weight_decay", "weight_init", "num_layers",
                                   "hidden_size", "activation")} == {
        "dataset": "mnist", "epochs": 3, "batch_size": 8, "loss": "mean_squared_error", "optimizer": "nag",
        "lr": 0.1, "momentum": 0.5, "beta": 0.8, "beta1": 0.7, "beta2": 0.6, "epsilon": 1e-6,
        "weight_decay": 0.01, "weight_init": "he", "num_layers": 4, "hidden_size": 32, "activation": "relu"}
    # no arguments: the default configuration
    defaults = config_of(build_parser().parse_args([]), numpy_mlp)
    assert defaults["optimizer"] == DEFAULTS["optimizer"] == "nadam" and defaults["weight_init"] == "xavier"
    assert (defaults["num_layers"], defaults["hidden_size"]) == (2, [2048, 1024])  # study 3's best
    assert defaults["dataset"] == "fashion_mnist" and defaults["activation"] == "tanh"


@pytest.mark.parametrize("argv, layers, size", [
    (["-sz", "64", "32"], 2, [64, 32]),  # one width per layer sets the depth
    (["-sz", "64", "32", "16", "-nhl", "3"], 3, [64, 32, 16]),
    (["-sz", "64"], 2, 64),  # one width for every layer, at the default depth
    (["-sz", "64", "-nhl", "4"], 4, 64),
    (["-nhl", "3"], 3, 1024),  # depth alone: the default's last width everywhere
    (["-nhl", "2"], 2, [2048, 1024]),
])
def test_hidden_widths_one_for_all_or_one_per_layer(argv, layers, size):
    from trainables import numpy_mlp

    config = config_of(build_parser().parse_args(argv), numpy_mlp)
    assert (config["num_layers"], config["hidden_size"]) == (layers, size)


def test_choices_are_case_insensitive():
    args = build_parser().parse_args(["-a", "relu", "-w_i", "xavier", "-o", "NADAM", "-l", "Cross_Entropy"])
    assert (args.activation, args.weight_init, args.optimizer, args.loss) == ("ReLU", "Xavier", "nadam",
                                                                              "cross_entropy")


def test_trains_logs_and_saves(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main([*SMALL, "--data-dir", str(data_dir), "--out", str(out), "--wandb-mode", "offline",
                 "-wp", "study3"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = history(out)
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]
    assert 0.0 <= float(rows[-1]["val_acc"]) <= 1.0 and float(rows[-1]["params"]) == 784 * 16 + 16 + 16 * 10 + 10
    assert "epoch 2: train_loss" in printed and "tune_app: done: val_acc" in printed
    with open(out / "state.pkl", "rb") as fh:
        assert pickle.load(fh)["epoch"] == 2
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    run = read_run(run_file)
    assert run["name"].startswith("hl_1_") and run["project"] == "study3" and run["config"]["hidden_size"] == 16
    assert [h["val_acc"] for h in run["history"] if "val_acc" in h] == pytest.approx(
        [float(r["val_acc"]) for r in rows])


def test_image_classifier_through_the_same_cli(tmp_path, capsys):
    out = tmp_path / "ic"
    code = main(["--trainable", "image_classifier", "--set", "dataset=digits", "--set", "epochs=1",
                 "--set", "model=digits_cnn", "--set", "batch_size=64", "--out", str(out), "--wandb-mode", "disabled"])
    assert code == 0, capsys.readouterr().err
    assert len(history(out)) == 1 and float(history(out)[0]["val_acc"]) > 0.3


@pytest.mark.parametrize("argv, message", [
    (["-o", "eve"], "argument -o/--optimizer: invalid choice: 'eve'"),
    (["-nhl", "0"], "num_layers=0"),
    (["-sz", "0"], "hidden_size=0"),
    (["-sz", "64", "32", "-nhl", "3"], "hidden_size=[64, 32] lists 2 widths but num_layers=3"),
    (["-b", "100000"], "batch_size"),
    (["--set", "colour=red"], "unknown key 'colour'"),
    (["--trainable", "xgboost"], "unknown trainable 'xgboost'"),
])
def test_bad_input_is_one_line_and_exit_2(data_dir, tmp_path, capsys, argv, message):
    code = main([*SMALL, "--data-dir", str(data_dir), "--out", str(tmp_path / "o"), "--wandb-mode", "disabled",
                 *argv]) if argv[0] != "-o" else None
    if code is None:  # argparse's own error exits
        with pytest.raises(SystemExit) as exit_info:
            main([*argv])
        code = exit_info.value.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o" / "state.pkl").exists()


def test_missing_dataset_says_where_and_how(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path / "nothing"), "--wandb-mode", "disabled"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fashion_mnist" in err


def test_no_arguments_trains_the_default_configuration(data_dir, tmp_path, capsys):
    """Only where the data lives and where to write: everything else is study 3's best configuration."""
    out = tmp_path / "default"
    assert main(["--data-dir", str(data_dir), "--out", str(out), "--wandb-mode", "disabled"]) == 0
    printed = capsys.readouterr().out
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == list(range(1, DEFAULTS["epochs"] + 1))
    assert int(float(rows[0]["params"])) == 785 * 2048 + 2049 * 1024 + 1025 * 10  # 784 -> 2048 -> 1024 -> 10
    assert "training numpy_mlp hl_2_bs_64_ac_tanh_sz_2048-1024_o_nadam_lr_0.001 on fashion_mnist" in printed
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
