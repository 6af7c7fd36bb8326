"""python -m tune_app.retrain on a tiny digits sweep: seeds, test-set numbers, reproduction, the model file,
confusion matrix, report section, W&B, schedules that scale with --epochs, and bad input."""
import hashlib
import html.parser
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.wandb_records import read_run
from trainables.data import prepare
from tune_app import retrain, search

pytestmark = pytest.mark.e2e

TIMING = ("epoch_time_s", "samples_per_s", "peak_mem_mb", "cpu_s")


@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    code = search.main(["--space", "digits", "--num-samples", "4", "--set", "epochs=[2,3]", "--max-epochs", "3",
                        "--set", "batch_size=[32,64]", "--cpus-per-trial", "1", "--storage-path", str(runs),
                        "--name", "tiny", "--seed", "3", "--wandb-mode", "disabled"])
    assert code == 0
    return runs / "tiny"


@pytest.fixture(scope="module")
def retrained(sweep):
    """The best configuration retrained with 2 seeds, W&B offline."""
    assert retrain.main([str(sweep), "--configs", "1", "--seeds", "2", "--wandb-mode", "offline"]) == 0
    return json.loads((sweep / "retrain" / "retrain.json").read_text())


def copy_of(sweep, tmp_path) -> Path:
    """A copy of the sweep, so a test's retrain does not replace the shared one."""
    return Path(shutil.copytree(sweep, tmp_path / "tiny"))


def summary_of(run_dir) -> dict:
    return json.loads((run_dir / "retrain" / "retrain.json").read_text())


def untimed(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def test_numbers_are_the_seeds_mean_and_std(sweep, retrained):
    best = json.loads((sweep / "summary" / "best_config.json").read_text())
    (c,) = retrained["configs"]
    assert (c["rank"], c["trial_id"], c["search"]["value"]) == (1, best["trial_id"], best["value"])
    own = best["config"]["seed"]
    assert c["seeds"] == [own, own + 1] and [r["seed"] for r in c["runs"]] == [own, own + 1]
    epochs = min(best["config"]["epochs"], best["config"]["max_epochs"])
    assert c["epochs"] == epochs and all(len(r["history"]) == epochs for r in c["runs"])
    tests = [r["test_acc"] for r in c["runs"]]
    vals = [r["val_acc"] for r in c["runs"]]
    assert c["test_acc"] == {"mean": statistics.fmean(tests), "std": statistics.stdev(tests), "n": 2}
    assert c["retrain_val"] == {"mean": statistics.fmean(vals), "std": statistics.stdev(vals), "n": 2}
    assert c["gap_search_minus_test"] == pytest.approx(best["value"] - statistics.fmean(tests), abs=1e-15)
    assert c["gap_search_minus_retrain_val"] == pytest.approx(best["value"] - statistics.fmean(vals), abs=1e-15)
    assert all(0.5 < t <= 1 for t in tests)  # a real model: chance is 0.1
    # the per-class accuracies average the seeds' confusion diagonals
    assert len(c["per_class_acc"]) == 10 and statistics.fmean(c["per_class_acc"]) == pytest.approx(
        statistics.fmean(tests), abs=0.02)


def test_the_trials_own_seed_reproduces_the_sweep_exactly(sweep, retrained):
    best = json.loads((sweep / "summary" / "best_config.json").read_text())
    rep = retrained["configs"][0]["reproduction"]
    assert rep["seed"] == best["config"]["seed"] and rep["epoch"] == best["epochs"]
    assert rep["identical"] is True and rep["retrain"] == best["last_value"] and rep["difference"] == 0.0
    swept = pd.read_parquet(sweep / "summary" / "history.parquet")
    swept = swept[swept["trial_id"] == best["trial_id"]].sort_values("epoch")
    run = retrained["configs"][0]["runs"][0]
    assert [h["val_loss"] for h in run["history"]] == swept["val_loss"].tolist()
    assert [h["train_loss"] for h in run["history"]] == swept["train_loss"].tolist()


def test_the_test_split_is_disjoint_from_the_searchs_splits(retrained):
    dataset = prepare("digits", None, val_fraction=0.1, split_seed=0)
    assert retrained["dataset"] == {"name": "digits", "fingerprint": dataset.fingerprint(),
                                    "classes": [str(i) for i in range(10)], "train": 1294, "val": 144, "test": 359}
    view = retrain.training_view(dataset, "train")
    assert "x_test" not in view and "y_test" not in view  # fit never receives the test set
    seen = {x.tobytes() for x in view["x_train"]} | {x.tobytes() for x in view["x_val"]}
    test = {x.tobytes() for x in dataset.x_test}
    assert len(test) == 359 and not seen & test and len(seen) + len(test) == 1797  # all of digits, once


def test_model_file_reloads_and_reproduces_the_test_accuracy(sweep, retrained):
    model = retrain.load_model(sweep / "retrain" / "model.pt")
    dataset = prepare("digits", None)
    kept = retrained["model"]
    run = next(r for r in retrained["configs"][0]["runs"] if r["seed"] == kept["seed"])
    predicted = model.predict(dataset.x_test)
    assert (predicted == dataset.y_test).mean() == kept["test_acc"] == run["test_acc"]
    assert model.evaluate(dataset.x_test, dataset.y_test) == (pytest.approx(run["test_loss"], rel=1e-6),
                                                               kept["test_acc"])
    assert isinstance(model.module, torch.nn.Module) and model.config["seed"] == kept["seed"]
    assert model.classes == [str(i) for i in range(10)]
    # the seed kept is the one with the better validation accuracy (the test set never chooses)
    assert run["val_acc"] == max(r["val_acc"] for r in retrained["configs"][0]["runs"])
    with pytest.raises(ValueError, match=r"images of shape \(3, 8, 8\); this model takes \(1, 8, 8\)"):
        model.predict(np.zeros((2, 3, 8, 8), np.uint8))


def test_confusion_matrix_sums_to_the_test_set_and_names_the_most_confused(sweep, retrained):
    out = sweep / "retrain"
    table = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    assert table.shape == (10, 10) and int(table.to_numpy().sum()) == 359
    assert table.to_numpy().tolist() == retrained["confusion_matrix"]
    assert table.sum(axis=1).tolist() == retrained["test_per_class_n"]
    per_class = pd.read_csv(out / "per_class.csv")
    np.testing.assert_allclose(per_class["acc_kept_model"], np.diag(table) / table.sum(axis=1), atol=1e-6)
    assert (np.diag(table).sum() / 359) == retrained["model"]["test_acc"]
    off = table.to_numpy().copy()
    np.fill_diagonal(off, 0)
    counts = [p["count"] for p in retrained["most_confused"]]
    assert counts == sorted(off[off > 0].tolist(), reverse=True)[:10]
    for name in ("confusion_matrix.png", "samples.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 400 and np.asarray(image.convert("L")).std() > 5


def test_the_report_gains_a_self_contained_retrain_section(sweep, retrained):
    page = (sweep / "summary" / "report.html").read_text()
    assert "<h2>Retrain on the test set</h2>" in page and retrained["configs"][0]["trial_name"] in page

    class Refs(html.parser.HTMLParser):
        refs = []

        def handle_starttag(self, tag, attrs):
            self.refs += [v for k, v in attrs if k in ("src", "href") and v]

    parser = Refs()
    parser.feed(page)
    assert len(parser.refs) == 2 and all(r.startswith("data:image/png;base64,") for r in parser.refs)
    md = (sweep / "summary" / "report.md").read_text()
    assert "## Retrain on the test set" in md and "Reproduction:" in md
    linked = [line.split("](")[1].rstrip(")") for line in md.splitlines()
              if line.startswith("![") and "retrain" in line]
    assert len(linked) == 2 and all((sweep / "summary" / p).resolve().is_file() for p in linked)


def test_wandb_has_a_run_per_seed_and_the_model_artifact(sweep, retrained):
    c = retrained["configs"][0]
    runs = {r["name"]: r for r in map(read_run, sweep.glob("wandb/offline-run-*/run-*.wandb"))}
    names = {f"{c['trial_name']}-retrain-seed{s}" for s in c["seeds"]}
    assert set(runs) == names
    for seed_run in c["runs"]:
        logged = runs[f"{c['trial_name']}-retrain-seed{seed_run['seed']}"]
        assert logged["group"] == "tiny" and logged["job_type"] == "retrain"
        assert [h["val_acc"] for h in logged["history"]] == [h["val_acc"] for h in seed_run["history"]]
    artifacts = [a for r in runs.values() for a in r["artifacts"]]
    assert len(artifacts) == 1
    (a,) = artifacts
    assert (a["type"], a["name"], a["aliases"], a["files"]) == ("model", "tiny-model", ["best", "latest"],
                                                                ["model.pt"])
    assert a["metadata"]["seed"] == retrained["model"]["seed"] and a["metadata"]["test_acc"] == \
        retrained["model"]["test_acc"]


def test_same_seed_same_numbers_and_the_schedule_scales_with_epochs(sweep, retrained, tmp_path):
    run_dir = copy_of(sweep, tmp_path)
    args = [str(run_dir), "--configs", "1", "--seed-list", "11", "--epochs", "4", "--wandb-mode", "disabled"]
    assert retrain.main(args) == 0
    first = summary_of(run_dir)["configs"][0]
    assert retrain.main(args) == 0
    second = summary_of(run_dir)["configs"][0]
    (a,), (b,) = first["runs"], second["runs"]
    assert a["seed"] == b["seed"] == 11 and len(a["history"]) == 4
    assert untimed(a["history"]) == untimed(b["history"])
    assert (a["test_acc"], a["test_loss"]) == (b["test_acc"], b["test_loss"])
    # the digits space anneals lr with cosine over the run: T_max follows --epochs
    lr0 = first["config"]["lr"]
    expected = [lr0 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [h["lr"] for h in a["history"]] == pytest.approx(expected, rel=1e-12)
    assert first["epochs"] == 4 and first["reproduction"] is None  # another length: nothing to compare


def test_train_plus_val_folds_the_validation_split_in(sweep, retrained, tmp_path):
    run_dir = copy_of(sweep, tmp_path)
    assert retrain.main([str(run_dir), "--configs", "1", "--train-on", "train+val", "--seed-list", "1", "--epochs", "2",
                         "--wandb-mode", "disabled"]) == 0
    r = summary_of(run_dir)
    assert (r["dataset"]["train"], r["dataset"]["val"], r["dataset"]["test"]) == (1438, 0, 359)
    (run,) = r["configs"][0]["runs"]
    assert run["val_acc"] is None and all(h["val_acc"] is None for h in run["history"])
    assert 0.3 < run["test_acc"] <= 1 and "no validation split" in r["model"]["chosen_by"]


def test_top_k_checks_the_search_ranking(sweep, retrained, tmp_path):
    run_dir = copy_of(sweep, tmp_path)
    assert retrain.main([str(run_dir), "--configs", "2", "--seeds", "1", "--wandb-mode", "disabled"]) == 0
    r = summary_of(run_dir)
    topk = json.loads((sweep / "summary" / "topk.json").read_text())["trials"]
    assert [c["trial_id"] for c in r["configs"]] == [t["trial_id"] for t in topk[:2]]
    tests = [c["test_acc"]["mean"] for c in r["configs"]]
    order = [1, 2] if tests[0] >= tests[1] else [2, 1]
    assert r["ranking"]["test_order"] == order and r["ranking"]["holds"] == (order == [1, 2])
    assert r["ranking"]["kendall_tau"] == (1.0 if order == [1, 2] else -1.0)


def folder_digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def break_best_trial(run_dir: Path) -> None:
    best = json.loads((run_dir / "summary" / "best_config.json").read_text())
    (params,) = [p for p in run_dir.glob("*/params.json") if p.parent.name.endswith(best["trial_id"])]
    params.write_text(json.dumps({**json.loads(params.read_text()), "colour": "red"}))


def write_bad_model(run_dir: Path) -> Path:
    payload = torch.load(run_dir / "retrain" / "model.pt", weights_only=False)
    payload["config"]["batch_norm"] = not payload["config"]["batch_norm"]
    torch.save(payload, run_dir / "other.pt")
    return run_dir / "other.pt"


@pytest.mark.parametrize("case, message", [
    ("missing", "no such directory; pass a run directory such as runs/<name>"),
    ("not a sweep", "is not a sweep: it holds no tune_app.json and no trial folders"),
    ("no results", "none of its 0 trials has reported a result yet"),
    ("unknown key", "trial {best}'s configuration is not accepted by this version of tune_app: unknown key 'colour'"),
    ("top-k", "--configs 9: tiny has 4 trials to rank by last"),
    ("weights", "the weights do not fit model digits_cnn"),
    ("seed list", "--seed-list 1,x: give whole numbers separated by commas"),
    ("epochs", "--epochs 0: must be at least 1"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_overwritten(sweep, retrained, tmp_path, capsys, case, message):
    run_dir = copy_of(sweep, tmp_path)
    before = folder_digest(run_dir / "retrain")
    target, extra = run_dir, []
    if case == "missing":
        target = tmp_path / "nowhere"
    elif case == "not a sweep":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "no results":
        target = tmp_path / "fresh"
        target.mkdir()
        shutil.copy(run_dir / "tune_app.json", target)
    elif case == "unknown key":
        break_best_trial(run_dir)
    elif case == "top-k":
        extra = ["--configs", "9"]
    elif case == "weights":
        extra = ["--evaluate", str(write_bad_model(run_dir))]
    elif case == "seed list":
        extra = ["--seed-list", "1,x"]
    elif case == "epochs":
        extra = ["--epochs", "0"]
    code = retrain.main([str(target), *extra, "--wandb-mode", "disabled"])
    err = capsys.readouterr().err
    best = json.loads((sweep / "summary" / "best_config.json").read_text())["trial_name"]
    assert code == 2 and err.startswith("tune_app: error: ") and err.count("\n") == 1, err
    assert message.format(best=best) in err
    assert folder_digest(run_dir / "retrain") == before


def test_evaluate_prints_a_model_files_test_accuracy(sweep, retrained, capsys):
    assert retrain.main([str(sweep), "--evaluate", str(sweep / "retrain" / "model.pt")]) == 0
    assert f"accuracy {100 * retrained['model']['test_acc']:.2f} %" in capsys.readouterr().out


def test_the_tune_app_entry_point_runs_retrain(tmp_path):
    run = subprocess.run([str(Path(sys.executable).parent / "tune-app"), "retrain", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        f"tune_app: error: {tmp_path / 'nowhere'}: no such directory; pass a run directory such as runs/<name>"]


def test_a_retrain_logging_to_wandb_prints_tune_apps_lines_not_wandbs_banners(sweep, tmp_path):
    run_dir = copy_of(sweep, tmp_path)
    done = subprocess.run([sys.executable, "-m", "tune_app.retrain", str(run_dir), "--configs", "1", "--seeds", "2",
                           "--epochs", "1",
                           "--wandb-mode", "offline"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (done.stdout + done.stderr).splitlines()
    assert [line for line in lines if line.lower().startswith("wandb")] == []
    assert sum("wandb sync" in line for line in lines) == 1  # where the offline runs are: tune_app says it once
    assert len(list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))) >= 2  # and W&B did log them


def test_by_default_a_retrain_takes_the_trials_within_noise_of_the_best(sweep, retrained):
    """Without --configs the retrain's candidates are the trials the validation set cannot tell apart from the
    best (best_config.json's within_noise, ranked as the summary ranked them), at most 3."""
    best = json.loads((sweep / "summary" / "best_config.json").read_text())
    noise = [e["trial_id"] for e in best["within_noise"]]
    assert noise[0] == best["trial_id"] and best["noise_rule"]["test"] == "fisher_exact"
    assert best["noise_rule"]["examples"] == best["dataset"]["val"]
    plan = retrain.make_plan(retrain.build_parser().parse_args([str(sweep)]))
    assert [c.trial_id for c in plan.candidates] == noise[:3]
    assert plan.chosen.startswith(f"the {len(noise)} within noise of the best (within ")
    one = retrain.make_plan(retrain.build_parser().parse_args([str(sweep), "--configs", "1"]))
    assert [c.trial_id for c in one.candidates] == [best["trial_id"]] and one.chosen == "--configs 1"
