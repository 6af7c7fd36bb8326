"""The user's own space, model, data and trainable, end to end on a local Ray that tune_app starts itself (as a
new user's command does), so the user's folder reaches the trials through Ray's runtime_env.

The project is written by the tests into a folder outside the repository: a model module, a trainable module,
space files, a PNG image folder and an npz, all from scikit-learn's bundled digits."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import tune_app
from tests.user_project import MODELS, OWN_FIT, write_pngs
from tune_app import search
from tune_app.errors import UsageError
from tune_app.spaces import load_space

pytestmark = pytest.mark.e2e

MODEL_SPACE = '''
"""TinyNet on a PNG folder: python -m tune_app.search --space ./model_space.py"""
from ray import tune

TRAINABLE = "image_classifier"
METRIC, MODE = "val_acc", "max"
SPACE = {
    "dataset": "imagefolder:digits_png",
    "model": "mymodels:TinyNet",
    "model.hidden": tune.choice([16, 48]),
    "optimizer": "adam",
    "lr": tune.choice([0.003, 0.01]),
    "batch_size": 64,
    "epochs": 2,
}
SETTINGS = {"searcher": "random", "scheduler": "fifo", "num_samples": 2, "cpus_per_trial": 1}
'''

FIT_SPACE = '''
"""The user's own trainable: python -m tune_app.search --space fit_space"""
from ray import tune
from sklearn.datasets import load_digits

TRAINABLE = "own_fit:fit"
METRIC, MODE = "acc", "max"
SPACE = {"lr": tune.loguniform(0.05, 1.0), "epochs": 4}
SETTINGS = {"searcher": "optuna", "scheduler": "fifo", "num_samples": 3, "cpus_per_trial": 0.5}


def load_data():
    d = load_digits()
    x = d.data / 16.0
    return {"x": x[:1000], "y": d.target[:1000], "xv": x[1000:1400], "yv": d.target[1000:1400],
            "xt": x[1400:], "yt": d.target[1400:]}
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's project folder, and a working directory to run commands from (the project itself)."""
    root = tmp_path_factory.mktemp("user_project")
    (root / "mymodels.py").write_text(MODELS)
    (root / "own_fit.py").write_text(OWN_FIT)
    (root / "model_space.py").write_text(MODEL_SPACE)
    (root / "fit_space.py").write_text(FIT_SPACE)
    write_pngs(root / "digits_png")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images[:400] * 255 / 16).astype(np.uint8)  # (N, H, W)
    np.savez(root / "digits.npz", x_train=x[:300], y_train=d.target[:300], x_test=x[300:], y_test=d.target[300:400])
    return root


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    yield project
    for name in ("mymodels", "own_fit", "model_space", "fit_space", "broken_space"):
        sys.modules.pop(name, None)


def args(*more, name: str, storage, wandb: str = "disabled") -> list[str]:
    return [*more, "--name", name, "--storage-path", str(storage), "--wandb-mode", wandb]


# ---------------------------------------------------------------- finding a space (no Ray)

def test_a_space_is_found_by_path_by_module_name_and_as_a_module(in_project, tmp_path, monkeypatch):
    by_path = load_space("./model_space.py")
    assert by_path.ref == str(in_project / "model_space.py") and by_path.name == "model_space"
    assert by_path.code == {"working_dir": str(in_project), "py_modules": []}
    monkeypatch.chdir(tmp_path)  # a dotted module from PYTHONPATH, whatever the current directory
    by_name = load_space("fit_space")
    assert by_name.ref == "fit_space" and by_name.trainable.ref == "own_fit:fit" and not by_name.trainable.builtin
    assert by_name.trainable.METRICS == ("epoch", "loss", "acc") and by_name.trainable.PARAMS is None
    import fit_space

    assert load_space(fit_space).ref == "fit_space"
    assert load_space("digits").ref == "digits" and load_space("digits").code == {"working_dir": None,
                                                                                  "py_modules": []}


def test_a_model_module_outside_the_space_folder_is_shipped_too(in_project, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "farmodels.py").write_text(MODELS)
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "far_space.py").write_text(MODEL_SPACE.replace("mymodels:TinyNet", "farmodels:TinyNet"))
    sys.path.insert(0, str(lib))
    try:
        space = load_space(str(spaces / "far_space.py"))
    finally:
        sys.path.remove(str(lib))
        sys.modules.pop("farmodels", None)
    assert space.code == {"working_dir": str(spaces), "py_modules": [str(lib / "farmodels.py")]}


def test_a_code_folder_over_the_package_limit_is_refused_in_one_line(tmp_path, monkeypatch):
    from tune_app import usercode

    (tmp_path / "weights").mkdir()
    for i in range(3):
        (tmp_path / "weights" / f"part{i}.bin").write_bytes(os.urandom(600_000))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "old.bin").write_bytes(os.urandom(3_000_000))  # run directories are never shipped
    monkeypatch.setattr(usercode, "PACKAGE_LIMIT_MB", 1)
    with pytest.raises(UsageError) as e:
        usercode.runtime_env({"working_dir": str(tmp_path), "py_modules": []})
    assert str(e.value).startswith(f"{tmp_path} holds 2 MiB to ship to Ray's workers, over the 1 MiB limit "
                                   f"(largest: weights/part")
    assert ".rayignore" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / ".rayignore").write_text("weights/\n")
    env = usercode.runtime_env({"working_dir": str(tmp_path), "py_modules": []})
    assert env["working_dir"] == str(tmp_path) and "runs/" in env["excludes"]


# ---------------------------------------------------------------- sweeps (tune_app starts Ray and ships the code)

def test_own_model_on_an_image_folder_sweeps_analyzes_retrains_and_loads(in_project, tmp_path, capsys):
    import ray

    runs = tmp_path / "runs"
    assert search.main(args("--space", "./model_space.py", name="model", storage=runs, wandb="offline")) == 0
    assert not ray.is_initialized()  # the Ray tune_app started ended with the sweep
    run_dir = runs / "model"
    spec = json.loads((run_dir / "tune_app.json").read_text())
    assert spec["space"] == str(in_project / "model_space.py") and spec["code"]["working_dir"] == str(in_project)
    assert spec["provenance"]["dataset"]["name"] == f"imagefolder:{in_project / 'digits_png'}"
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}
    assert set(trials["config/model.hidden"]) <= {16, 48} and set(trials["config/model"]) == {"mymodels:TinyNet"}
    history = pq.read_table(run_dir / "summary" / "history.parquet").to_pandas()
    assert len(history) == 4 and history["val_acc"].between(0, 1).all()
    # params counts TinyNet's weights for its hidden size: 64*h + h + h*10 + 10 on 8x8 grayscale
    for _, t in trials.iterrows():
        h = int(t["config/model.hidden"])
        assert set(history[history["trial_id"] == t["trial_id"]]["params"]) == {64 * h + h + h * 10 + 10}
    assert "model.hidden" in (run_dir / "summary" / "trends.md").read_text()
    from tests.wandb_records import read_run

    logged = {}
    for f in (run_dir / "wandb").glob("offline-run-*/run-*.wandb"):
        run = read_run(f)
        if run["job_type"] not in ("analysis", "retrain"):
            logged[run["config"]["model.hidden"]] = run["config"]["model"]
    assert set(logged) == set(trials["config/model.hidden"]) and set(logged.values()) == {"mymodels:TinyNet"}

    again = tune_app.analyze(run_dir, quiet=True)
    assert again.best_config["model"] == "mymodels:TinyNet" and again.best_config["model.hidden"] in (16, 48)
    assert len(again.trials) == 2 and len(again.history) == 4

    result = tune_app.retrain(run_dir, top_k=1, seeds=1, wandb_mode="disabled")
    test_acc = result["configs"][0]["test_acc"]["mean"]
    assert 0.2 < test_acc <= 1 and result["configs"][0]["reproduction"]["identical"]
    model = tune_app.load_model(run_dir)
    assert type(model.module).__name__ == "TinyNet"
    from trainables.data import prepare

    data = prepare(f"imagefolder:{in_project / 'digits_png'}", None)
    assert model.evaluate(data.x_test, data.y_test)[1] == pytest.approx(test_acc)
    assert not ray.is_initialized()


def test_an_npz_dataset_and_a_function_model_from_python(in_project, tmp_path):
    sweep = tune_app.sweep("./model_space.py", name="npz", storage_path=str(tmp_path / "runs"), wandb_mode="disabled",
                           set={"dataset": "npz:digits.npz", "model": "mymodels:tiny", "model.hidden": [4, 12],
                                "image_size": 16, "epochs": 1})
    assert sweep.run_dir == tmp_path / "runs" / "npz"
    assert len(sweep.trials) == 2 and set(sweep.trials["config/model.hidden"]) <= {4, 12}
    # 16x16 after image_size: the first layer holds 256 * hidden weights
    h = sweep.best_config["model.hidden"]
    best = sweep.trials[sweep.trials["config/model.hidden"] == h].iloc[0]
    assert set(sweep.history[sweep.history["trial_id"] == best["trial_id"]]["params"]) == {256 * h + h + h * 10 + 10}
    # the same API call runs again in the same process (a re-run notebook cell), into another directory
    second = tune_app.sweep("./model_space.py", name="npz2", storage_path=str(tmp_path / "runs"),
                            wandb_mode="disabled", set={"dataset": "npz:digits.npz", "epochs": 1}, num_samples=1)
    assert len(second.trials) == 1 and second.best_config["dataset"] == "npz:digits.npz"


def test_own_trainable_with_load_data_resumes_after_a_crash_and_retrains(in_project, tmp_path, monkeypatch):
    from tune_app.cluster.adapter import FAULTS_ENV

    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps([{"epoch": 3, "times": 1, "kind": "crash"}]))
    monkeypatch.setenv(FAULTS_ENV, str(faults))
    runs = tmp_path / "runs"
    code = search.main(args("--space", "fit_space", "--max-failures", "0", "--checkpoint-every-s", "0", name="own",
                            storage=runs))  # a checkpoint every epoch: the resumed trials continue from epoch 2
    run_dir = runs / "own"
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    # every trial crashed at epoch 3 (the drill) and was not retried: no trial finished, the sweep says so
    assert code == 1 and list(trials["status"]) == ["error"] * 3 and list(trials["epochs"]) == [2, 2, 2]
    assert search.main(["--resume", str(run_dir), "--retry-errored"]) == 0
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    history = pq.read_table(run_dir / "summary" / "history.parquet").to_pandas()
    assert set(trials["status"]) == {"completed"} and len(trials) == 3
    for _, rows in history.groupby("trial_id"):  # each continued from its epoch-2 checkpoint, no epoch twice
        assert list(rows.sort_values("epoch")["epoch"]) == [1, 2, 3, 4]
    assert history["acc"].between(0, 1).all() and len(history) == 12
    assert (history["loss"] > 0).all()  # every number the trainable reports is kept, not only the metric
    best = json.loads((run_dir / "summary" / "best_config.json").read_text())
    assert best["metric"] == "acc" and set(best["config"]) >= {"lr", "epochs", "seed"}

    result = tune_app.retrain(run_dir, top_k=1, seed_list=[0, 5])  # the trial's own seed 0, and 5
    config = result["configs"][0]
    assert config["seeds"] == [0, 5]
    assert config["reproduction"]["identical"] and config["test"]["test_acc"]["n"] == 2
    assert 0.5 < config["test"]["test_acc"]["mean"] <= 1
    assert result["trainable"] == "own_fit:fit"


def test_the_sweeps_code_gone_is_one_line_for_resume_and_analyze(in_project, tmp_path, capsys):
    from tune_app import analyze

    project = tmp_path / "moved"
    project.mkdir()
    for f in ("mymodels.py", "model_space.py"):
        (project / f).write_text((in_project / f).read_text())
    runs = tmp_path / "runs"
    assert search.main(args("--space", str(project / "model_space.py"), "--set", "epochs=1", "--num-samples", "1",
                            "--set", f"dataset=imagefolder:{in_project / 'digits_png'}", name="gone",
                            storage=runs)) == 0
    (project / "model_space.py").unlink()
    capsys.readouterr()
    assert analyze.main([str(runs / "gone")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no such file ({project / 'model_space.py'})" in err[0]


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written

BAD_SPACES = {
    "no_space.py": ("TRAINABLE = 'image_classifier'\nMETRIC, MODE = 'val_acc', 'max'\n",
                    "is not a space: it has no SPACE"),
    "raises.py": ("import math\n\nx = 1\nraise ValueError('bad value here')\n",
                  "raised ValueError (raises.py line 4): bad value here"),
    "syntax.py": ("SPACE = {\n", "raised SyntaxError (syntax.py line 1)"),
}


def model_space(**entries) -> str:
    space = {"dataset": "imagefolder:digits_png", "epochs": 1, "batch_size": 64, **entries}
    return (f"TRAINABLE = 'image_classifier'\nMETRIC, MODE = 'val_acc', 'max'\nSPACE = {space!r}\n"
            f"SETTINGS = {{'searcher': 'random', 'scheduler': 'fifo', 'num_samples': 1}}\n")


BAD_MODELS = {
    "missing_module": ({"model": "nomodule:Net"}, "cannot import nomodule"),
    "missing_attr": ({"model": "mymodels:Nope"}, "Nope"),
    "not_callable": ({"model": "mymodels:NOT_CALLABLE"}, "not an nn.Module class or a function"),
    "no_num_classes": ({"model": "mymodels:no_num_classes"}, "num_classes"),
    "not_a_module": ({"model": "mymodels:not_a_module"}, "str"),
    "wrong_shape": ({"model": "mymodels:wrong_shape"}, "(2, 11)"),
    "arg_for_builtin": ({"model": "digits_cnn", "model.hidden": 3}, "model.hidden"),
}


def bad_project(root: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad input: (search arguments, a piece of the one line it must give)."""
    cases = {}
    for name, (text, said) in BAD_SPACES.items():
        (root / name).write_text(text)
        cases[name] = (["--space", f"./{name}"], said)
    for name, (entries, said) in BAD_MODELS.items():
        (root / f"{name}.py").write_text(model_space(**entries))
        cases[name] = (["--space", f"./{name}.py"], said)
    cases["no_file"] = (["--space", "./missing.py"], "no such file")
    cases["unknown_module"] = (["--space", "nosuch.module"], "unknown space 'nosuch.module'")
    # image folders
    (root / "empty_folder" / "train").mkdir(parents=True)
    (root / "one_class" / "train" / "a").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (8, 8)).save(root / "one_class" / "train" / "a" / "0.png")
    for cls in ("a", "b"):
        (root / "mixed" / "train" / cls).mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "mixed" / "train" / "a" / "0.png")
    Image.new("L", (9, 9)).save(root / "mixed" / "train" / "b" / "1.png")
    for cls in ("a", "b"):
        (root / "unreadable" / "train" / cls).mkdir(parents=True)
        Image.new("L", (8, 8)).save(root / "unreadable" / "train" / cls / "ok.png")
    (root / "unreadable" / "train" / "b" / "broken.png").write_bytes(b"not a png")
    for cls in ("a", "b"):
        (root / "test_extra" / "train" / cls).mkdir(parents=True)
        Image.new("L", (8, 8)).save(root / "test_extra" / "train" / cls / "0.png")
    (root / "test_extra" / "test" / "zebra").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "test_extra" / "test" / "zebra" / "0.png")
    for folder, said in (("empty_folder", "class"), ("one_class", "at least two classes"), ("mixed", "image_size"),
                         ("unreadable", "broken.png"), ("test_extra", "zebra")):
        cases[f"images_{folder}"] = (["--space", "./model_space.py", "--set", f"dataset=imagefolder:{folder}"], said)
    np.savez(root / "no_x.npz", y_train=np.zeros(3))
    np.savez(root / "lengths.npz", x_train=np.zeros((3, 8, 8), np.uint8), y_train=np.zeros(4, np.int64))
    np.savez(root / "floats.npz", x_train=np.zeros((3, 8, 8), np.float32), y_train=np.zeros(3, np.int64))
    for file, said in (("no_x", "x_train"), ("lengths", "4"), ("floats", "float32")):
        cases[f"npz_{file}"] = (["--space", "./model_space.py", "--set", f"dataset=npz:{file}.npz"], said)
    # the user's own trainable
    for name, trainable, said in (("no_fit", "own_fit:nofit", "own_fit has no attribute 'nofit'"),
                                  ("two_args", "own_fit:two_args", "fit(config, data, reporter)"),
                                  ("no_trainable_module", "gone_module:fit", "cannot import gone_module")):
        (root / f"{name}.py").write_text(FIT_SPACE.replace('"own_fit:fit"', repr(trainable)))
        cases[name] = (["--space", f"./{name}.py"], said)
    (root / "load_fails.py").write_text(FIT_SPACE.replace("    d = load_digits()",
                                                          "    raise OSError('the share is not mounted')"))
    cases["load_data_raises"] = (["--space", "./load_fails.py"], "load_data() raised OSError: the share is not mounted")
    return cases


@pytest.fixture(scope="module")
def bad_cases(project):
    return bad_project(project)


@pytest.mark.parametrize("case", [*BAD_SPACES, *BAD_MODELS, "no_file", "unknown_module", "images_empty_folder",
                                  "images_one_class", "images_mixed", "images_unreadable", "images_test_extra",
                                  "npz_no_x", "npz_lengths", "npz_floats", "no_fit", "two_args",
                                  "no_trainable_module", "load_data_raises"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, bad_cases, in_project, tmp_path, capsys):
    import ray

    given, said = bad_cases[case]
    runs = tmp_path / "runs"
    assert search.main(args(*given, name="bad", storage=runs)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tune_app: error: ") and said in err[0], err
    assert not runs.exists() and not ray.is_initialized()  # refused before anything was written or Ray started


def test_bad_input_from_python_is_a_usage_error(in_project, tmp_path):
    with pytest.raises(UsageError, match="unknown setting 'num_sample'"):
        tune_app.sweep("./model_space.py", num_sample=3)
    with pytest.raises(UsageError, match="cannot import nomodule"):
        tune_app.sweep("./model_space.py", set={"model": "nomodule:Net"}, storage_path=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError, match="no retrain/model.pt"):
        tune_app.load_model(tmp_path)
    with pytest.raises(UsageError, match="evaluate= trains nothing"):
        tune_app.retrain(tmp_path, evaluate="model.pt")
    with pytest.raises(UsageError, match="unknown option 'seed'"):
        tune_app.retrain(tmp_path, seed=3)


def test_the_settings_are_typed_and_kept_in_the_spec(in_project, tmp_path):
    from tune_app.settings import SweepSettings

    spec = search.spec_of(SweepSettings.from_kwargs("./model_space.py", num_samples=5, set={"lr": 0.01},
                                                    storage_path=str(tmp_path), name="typed"))
    assert spec["options"]["num_samples"] == 5 and spec["options"]["set"] == {"lr": 0.01}
    assert spec["options"]["space"] == "./model_space.py" and spec["settings"]["num_samples"] == 5
    assert spec["space"] == str(in_project / "model_space.py") and spec["workdir"] == str(in_project)
    assert spec["settings"]["max_epochs"] == 2  # the space's epochs, as no setting says otherwise
    assert not (tmp_path / "typed").exists()  # planning writes nothing


def test_a_space_inside_tune_apps_checkout_ships_its_own_folder(tmp_path, monkeypatch):
    example = Path(__file__).resolve().parents[1] / "examples" / "own_model_and_data"
    monkeypatch.chdir(tmp_path)  # run from elsewhere: the folder still reaches the workers
    try:
        space = load_space(str(example / "space.py"))
    finally:
        for name in ("space", "models"):
            sys.modules.pop(name, None)
    assert space.code == {"working_dir": str(example), "py_modules": []}


def test_two_projects_with_a_models_module_of_the_same_name_each_get_their_own(tmp_path):
    for project, cls in (("a", "OnlyInA"), ("b", "OnlyInB")):
        (tmp_path / project).mkdir()
        (tmp_path / project / "models.py").write_text(MODELS.replace("class TinyNet", f"class {cls}"))
        (tmp_path / project / "space.py").write_text(model_space(model=f"models:{cls}"))
    try:
        first = load_space(str(tmp_path / "a" / "space.py"))
        second = load_space(str(tmp_path / "b" / "space.py"))  # models:OnlyInB is found in b's models.py
    finally:
        for name in ("space", "models"):
            sys.modules.pop(name, None)
    assert first.param_space["model"] == "models:OnlyInA" and second.param_space["model"] == "models:OnlyInB"
    assert second.code == {"working_dir": str(tmp_path / "b"), "py_modules": []}


def test_a_space_without_defaults_runs_with_tune_apps_own(in_project, tmp_path):
    from tune_app.settings import SweepSettings

    defaults = 'SETTINGS = {"searcher": "optuna", "scheduler": "fifo", "num_samples": 3, "cpus_per_trial": 0.5}\n'
    assert defaults in FIT_SPACE
    (in_project / "bare_space.py").write_text(FIT_SPACE.replace(defaults, ""))
    spec = search.spec_of(SweepSettings.from_kwargs("./bare_space.py", storage_path=str(tmp_path)))
    s = spec["settings"]
    assert (s["searcher"], s["scheduler"], s["num_samples"], s["cpus_per_trial"]) == ("optuna", "fifo", 10, 1)
    assert s["max_epochs"] == 4  # the space's epochs


def test_a_dataset_with_an_empty_path_is_read_as_text():
    from tune_app.spaces import parse_overrides

    assert parse_overrides(["dataset=imagefolder:", "dataset2=npz:x.npz"]) == {"dataset": "imagefolder:",
                                                                               "dataset2": "npz:x.npz"}


def test_a_lost_wandb_run_is_named(tmp_path):
    """A trial whose W&B run file holds no history (cut off when its logging actor shut down) is found."""
    from tune_app.integrations.wandb_files import missing_runs

    whole = tmp_path / "wandb" / "offline-run-20261128_000000-aaaaa_00000"
    cut = tmp_path / "wandb" / "offline-run-20261128_000001-aaaaa_00001"
    whole.mkdir(parents=True)
    cut.mkdir()
    (cut / "run-aaaaa_00001.wandb").write_bytes(b":W&B\x00\x01\x00")  # the 7-byte header and nothing else
    import wandb

    run = wandb.init(mode="offline", dir=str(tmp_path / "w"), id="aaaaa_00000", project="t")
    for i in range(3):
        run.log({"epoch": i + 1, "val_acc": 0.5})
    run.finish()
    written = next((tmp_path / "w" / "wandb").glob("offline-run-*aaaaa_00000/run-aaaaa_00000.wandb"))
    (whole / written.name).write_bytes(written.read_bytes())
    assert missing_runs(tmp_path, {"aaaaa_00000": 3, "aaaaa_00001": 2, "bbbbb_00002": 1}) == [
        "aaaaa_00001", "bbbbb_00002"]
    assert missing_runs(tmp_path, {"aaaaa_00000": 4}) == ["aaaaa_00000"]  # 3 rows where 4 epochs were reported


def test_a_model_of_the_users_trains_with_augmentation_mixed_precision_and_channels_last(in_project, digits):
    """The built-in trainer's options reach a model of the user's as they reach the built-ins: crop, flip,
    Cutout, MixUp, bf16 autocast and channels_last, on the CPU; and --predict's path (predict on new images)."""
    from trainables import image_classifier
    from trainables.reporting import LocalReporter

    config = {"dataset": "digits", "model": "mymodels:TinyNet", "model.hidden": 24, "optimizer": "adam",
              "lr": 0.01, "batch_size": 64, "epochs": 2, "crop_padding": 1, "flip": True, "cutout": 2,
              "mix": "mixup", "amp": "bf16", "channels_last": "on"}
    reporter = LocalReporter()
    image_classifier.fit(config, digits.sweep_view(), reporter)
    assert [h["epoch"] for h in reporter.history] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) and 0 <= h["val_acc"] <= 1 for h in reporter.history)
    assert reporter.history[-1]["params"] == 64 * 24 + 24 + 24 * 10 + 10
    predicted = image_classifier.predict(reporter.state, digits.x_test[:20], digits.sweep_view())
    assert predicted.shape == (20,) and set(predicted) <= set(range(10))
