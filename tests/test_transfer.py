"""--from-run: a sweep that begins with the top configurations of a finished one (study 3 carried from
Fashion-MNIST to MNIST), through the search CLI on a local Ray and generated idx files."""
import hashlib
import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from ray import tune

from tune_app.search import main
from tune_app.search.algorithms import point_value

pytestmark = pytest.mark.e2e

TINY = ["--set", "epochs=2", "--set", "num_layers=[1,2]", "--set", "hidden_size=16", "--set", "batch_size=[16,32]",
        "--max-epochs", "2", "--cpus-per-trial", "1", "--wandb-mode", "disabled"]


@pytest.fixture(scope="module")
def source(ray_local, mnist_dir, tmp_path_factory):
    """A finished 4-trial Fashion-MNIST sweep, and the data directory it read."""
    root = tmp_path_factory.mktemp("transfer")
    code = main(["--space", "fashion_mnist_mlp", "--searcher", "random", "--scheduler", "fifo", "--num-samples", "4",
                 "--data-dir", str(mnist_dir), "--storage-path", str(root / "runs"), "--name", "fm", *TINY])
    assert code == 0
    return root / "runs" / "fm", mnist_dir


def top3(source_dir: Path) -> list[dict]:
    return json.loads((source_dir / "summary" / "topk.json").read_text())["trials"][:3]


def transfer(source, tmp_path, name, *argv):
    source_dir, data = source
    return main(["--space", "mnist_mlp", "--from-run", str(source_dir), "--data-dir", str(data),
                 "--storage-path", str(tmp_path), "--name", name, *TINY, *argv])


def searched_configs(trials: pd.DataFrame, keys: list[str]) -> list[dict]:
    return [{k: row[f"config/{k}"] for k in keys} for _, row in trials.iterrows()]


def test_the_top_three_run_in_the_new_space(source, tmp_path, capsys):
    source_dir, _ = source
    code = transfer(source, tmp_path, "mn", "--searcher", "random", "--scheduler", "fifo")
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"3 trials, beginning with the top 3 configurations of {source_dir}, random + fifo" in out
    spec = json.loads((tmp_path / "mn" / "tune_app.json").read_text())
    top = top3(source_dir)
    searched = spec["searched"]
    assert "dataset" not in searched and {"num_layers", "lr", "optimizer", "batch_size", "loss"} <= set(searched)
    points = [{k: t["config"][k] for k in searched} for t in top]
    assert spec["from_run"] == str(source_dir) and spec["top_k"] == 3 and spec["settings"]["num_samples"] == 3
    assert spec["points"] == points and spec["from_trials"] == [t["trial_id"] for t in top]
    assert all(t["config"]["dataset"] == "fashion_mnist" for t in top)

    trials = pd.read_parquet(tmp_path / "mn" / "summary" / "trials.parquet").sort_values("trial_id")
    # Ray numbers the random searcher's trials in the order it made them: the points, best first.
    assert len(trials) == 3 and searched_configs(trials, searched) == points
    assert (trials["config/dataset"] == "mnist").all() and (trials["config/hidden_size"] == 16).all()
    assert (trials["epochs"] == 2).all() and trials["final_val_acc"].between(0, 1).all()
    best = json.loads((tmp_path / "mn" / "summary" / "best_config.json").read_text())
    assert best["dataset"]["name"] == "mnist" and best["config"]["dataset"] == "mnist"

    # --resume needs no --from-run: the spec has it, and a different one is refused.
    code = main(["--resume", str(tmp_path / "mn"), "--from-run", str(tmp_path)])
    assert code == 2 and "these differ: from_run" in capsys.readouterr().err
    code = main(["--resume", str(tmp_path / "mn")])
    out = capsys.readouterr().out
    assert code == 0 and "resuming sweep 'mn' of space 'mnist_mlp': 3 trials, beginning with the top 3" in out
    again = pd.read_parquet(tmp_path / "mn" / "summary" / "trials.parquet").sort_values("trial_id")
    assert list(again["trial_id"]) == list(trials["trial_id"])


def test_optuna_evaluates_the_points_first_then_its_own(source, tmp_path, capsys):
    source_dir, _ = source
    code = transfer(source, tmp_path, "mn5", "--num-samples", "5")  # the space's optuna + asha
    out = capsys.readouterr().out
    assert code == 0, out
    assert "5 trials, beginning with the top 3 configurations" in out and "optuna + asha" in out
    spec = json.loads((tmp_path / "mn5" / "tune_app.json").read_text())
    searched = spec["searched"]
    points = [{k: t["config"][k] for k in searched} for t in top3(source_dir)]
    study = optuna.load_study(study_name="mn5", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "mn5" / "optuna.journal"))))
    ordered = sorted(study.trials, key=lambda t: t.number)
    assert len(ordered) == 5
    assert [t.params for t in ordered[:3]] == points
    assert all("fixed_params" in t.system_attrs for t in ordered[:3])
    assert not any("fixed_params" in t.system_attrs for t in ordered[3:])  # TPE's own
    trials = pd.read_parquet(tmp_path / "mn5" / "summary" / "trials.parquet")
    ran = searched_configs(trials, searched)
    assert len(trials) == 5 and all(p in ran for p in points) and (trials["config/dataset"] == "mnist").all()


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_bad_input_is_one_line_exit_2_and_nothing_written(source, tmp_path, capsys):
    source_dir, data = source
    first = top3(source_dir)[0]
    layers = first["config"]["num_layers"]
    mn, src = ["--space", "mnist_mlp", *TINY], ["--from-run", str(source_dir)]
    bad = [
        ([*mn, "--from-top", "3"], "--from-top needs --from-run RUN_DIR"),
        ([*mn, *src, "--searcher", "grid"], "--searcher grid runs every combination of its lists and takes no "
                                            "configurations from --from-run"),
        ([*mn, *src, "--set", "num_layers=[3,4]"],
         f"--from-run {source_dir}: trial {first['trial_name']} ({first['trial_id']}) has num_layers={layers}, "
         f"which space mnist_mlp cannot take (choose from 3, 4); widen it with --set num_layers=[3,4,{layers}]"),
        (["--space", "digits", *src],
         f"--from-run {source_dir}: that sweep's space fashion_mnist_mlp trains numpy_mlp, space digits trains "
         f"image_classifier; configurations transfer only between spaces of one trainable"),
        ([*mn, *src, "--from-top", "9"], "--from-top 9: fm has 4 trials to rank by last"),
        ([*mn, *src, "--from-top", "0"], "--from-top 0: must be at least 1"),
        ([*mn, *src, "--num-samples", "2"],
         "--num-samples 2: fewer than the 3 configurations --from-run transfers; give at least 3, or --from-top 2"),
        ([*mn, "--from-run", str(tmp_path / "nope")],
         f"--from-run {tmp_path / 'nope'}: no such directory; give a finished sweep's run directory"),
    ]
    before = snapshot(source_dir)
    for argv, message in bad:
        code = main([*argv, "--data-dir", str(data), "--storage-path", str(tmp_path / "runs"), "--name", "new"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("tune_app: error: ") and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "runs").exists()
    assert snapshot(source_dir) == before


def test_a_point_takes_the_value_its_domain_holds():
    assert point_value(tune.choice([32, 64, 128]), 64.0) == 64 and type(point_value(tune.choice([32, 64]), 64.0)) is int
    assert point_value({"grid_search": ["relu", "tanh"]}, "tanh") == "tanh"
    assert point_value(tune.loguniform(1e-4, 1e-2), 1e-3) == 1e-3
    assert point_value(tune.randint(1, 5), 4.0) == 4
    with pytest.raises(ValueError) as refused:
        point_value(tune.loguniform(1e-4, 1e-2), 0.5)
    assert refused.value.args == ("a range from 0.0001 to 0.01", [1e-4, 1e-2, 0.5])
    with pytest.raises(ValueError):
        point_value(tune.randint(1, 5), 5)  # randint's upper bound is exclusive
    with pytest.raises(ValueError) as refused:
        point_value(tune.choice([0, 1]), True)  # True == 1, but it is not the category 1
    assert refused.value.args[0] == "choose from 0, 1"
