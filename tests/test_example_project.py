"""examples/own_model_and_data/, run as a new user runs it: the folder copied somewhere outside the repository,
its images written by make_images.py, then the command-line sweep and run_sweep.py (the Python API end to end),
each in a fresh process started in that folder, small enough to take about a minute each on 2 cores."""
from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "own_model_and_data"
TIMEOUT_S = 600


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd`` with this process's environment (conftest: W&B offline, no downloads)."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=dict(os.environ), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, (f"python {' '.join(args)} exited {proc.returncode}\n--- stdout\n"
                                  f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the example outside the repository, as a student's own folder, with its images written."""
    folder = tmp_path_factory.mktemp("student") / "own_model_and_data"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("digits_png", "runs", "__pycache__"))
    assert REPO not in folder.resolve().parents
    out = run(["make_images.py"], folder)
    assert "wrote 1437 training and 360 test images of 10 classes" in out.stdout
    assert len(list((folder / "digits_png" / "test").glob("*/*.png"))) == 360
    return folder


def test_the_command_line_sweep_of_the_example(project):
    run(["-m", "tune_app.search", "--space", "./space.py", "--num-samples", "2", "--set", "epochs=2",
         "--name", "cli", "--wandb-mode", "disabled"], project)

    summary = project / "runs" / "cli" / "summary"
    trials = pd.read_parquet(summary / "trials.parquet")
    assert len(trials) == 2
    widths = runpy.run_path(str(project / "space.py"))["SPACE"]["model.width"].categories
    assert "config/model.width" in trials.columns
    assert set(trials["config/model.width"]) <= set(widths)
    assert set(trials["config/model"]) == {"models:SmallCNN"}
    assert (trials["epochs"] == 2).all()

    best = json.loads((summary / "best_config.json").read_text())
    assert best["config"]["model"] == "models:SmallCNN"
    assert best["config"]["model.width"] in widths
    assert best["config"]["dataset"] == "imagefolder:digits_png"

    spec = json.loads((project / "runs" / "cli" / "tune_app.json").read_text())
    assert spec["code"] == {"working_dir": str(project.resolve()), "py_modules": []}  # the folder went to Ray


def test_run_sweep_py_sweeps_retrains_and_predicts(project):
    out = run(["run_sweep.py", "--num-samples", "2", "--epochs", "3", "--seeds", "1"], project).stdout

    assert "Best configuration:" in out and "model: models:SmallCNN" in out
    assert "Top trials by validation accuracy:" in out
    assert re.search(r"^Retrain over 1 seeds: test accuracy [0-9.]+", out, re.M), out[-3000:]
    assert re.search(r"^A few test images \(true -> predicted\): (\d -> \d, ){9}\d -> \d$", out, re.M), out[-3000:]
    found = re.search(r"^Test accuracy of the loaded model on all (\d+) test images: ([0-9.]+)", out, re.M)
    assert found, out[-3000:]
    assert int(found.group(1)) == 360
    assert float(found.group(2)) > 0.2  # 10 classes: chance is 0.1
    runs = [p for p in (project / "runs").iterdir() if p.name != "cli"]
    assert len(runs) == 1 and (runs[0] / "retrain" / "model.pt").is_file()
