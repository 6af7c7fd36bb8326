"""Bad input, every command: exit code 2, at most two lines, no traceback, and nothing created or changed on disk.

One finished sweep (real Ray, digits) is the run directory the analyze/retrain cases point at; every case runs the
command's real ``main`` in this process with the current directory in a scratch folder, and the folder holding
the run and the scratch folder are compared file by file (size and modification time) before and after."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.readonly import chmod_tree, unprivileged
from tune_app import analyze, retrain, search, train

pytestmark = pytest.mark.e2e

SEARCH = ["--space", "digits", "--num-samples", "1", "--set", "epochs=1", "--searcher", "random", "--scheduler",
          "fifo", "--wandb-mode", "disabled"]


@pytest.fixture(scope="module")
def done(ray_local, tmp_path_factory):
    """(a finished sweep's run directory, the storage folder holding it)."""
    runs = tmp_path_factory.mktemp("fuzz_runs")
    assert search.main(["--space", "digits", "--num-samples", "2", "--set", "epochs=1", "--max-epochs", "1",
                        "--searcher", "random", "--scheduler", "fifo", "--storage-path", str(runs), "--name", "done",
                        "--wandb-mode", "disabled"]) == 0
    broken = runs / "broken_spec"  # a copy of the run whose tune_app.json was cut short
    shutil.copytree(runs / "done", broken)
    (broken / "tune_app.json").write_text((broken / "tune_app.json").read_text()[:40])
    torn = runs / "broken_topk"
    shutil.copytree(runs / "done", torn)
    (torn / "summary" / "topk.json").write_text("{\"k\": 5, \"tri")
    unknown = runs / "unknown_space"
    shutil.copytree(runs / "done", unknown)
    spec = (unknown / "tune_app.json").read_text().replace('"space": "digits"', '"space": "gone_study"')
    (unknown / "tune_app.json").write_text(spec)
    (runs / "not_a_model.pt").write_text("plain text, not a checkpoint")
    (runs / "a_file").write_text("x")
    (runs / "empty_dir").mkdir()
    return runs / "done", runs


def cases(run: str, runs: str) -> dict[str, tuple]:
    """name -> (main, argv, a piece of the one line)."""
    s, a, r, t = search.main, analyze.main, retrain.main, train.main
    return {
        # search: the space and --set
        "unknown space": (s, ["--space", "nope"], "unknown space 'nope'"),
        "missing space file": (s, ["--space", "./missing.py"], "no such file"),
        "no space": (s, [], "--space is required"),
        "set without =": (s, [*SEARCH, "--set", "lr"], "expected key=value"),
        "unknown key": (s, [*SEARCH, "--set", "nope=1"], "unknown --set key 'nope'"),
        "text for a float": (s, [*SEARCH, "--set", "lr=abc"], "lr='abc'"),
        "negative lr": (s, [*SEARCH, "--set", "lr=-1"], "lr=-1"),
        "empty list": (s, [*SEARCH, "--set", "activation=[]"], "an empty list"),
        "unknown choice": (s, [*SEARCH, "--set", "activation=[relu,nope]"], "activation='nope'"),
        "huge integer": (s, [*SEARCH, "--set", "batch_size=99999999999999999999"], "too large"),
        "zero batch": (s, [*SEARCH, "--set", "batch_size=0"], "batch_size=0"),
        "unknown dataset": (s, [*SEARCH, "--set", "dataset=nope"], "unknown dataset 'nope'"),
        "missing image folder": (s, [*SEARCH, "--set", "dataset=imagefolder:/nonexistent/x"], "no such folder"),
        "missing npz": (s, [*SEARCH, "--set", "dataset=npz:/nonexistent/x.npz"], "no such file"),
        "empty dataset path": (s, [*SEARCH, "--set", "dataset=imagefolder:"], "names no path"),
        "negative split seed": (s, [*SEARCH, "--set", "split_seed=-1"], "split_seed=-1"),
        "no validation split": (s, [*SEARCH, "--set", "val_fraction=0"], "val_fraction=0"),
        "all validation": (s, [*SEARCH, "--set", "val_fraction=1"], "val_fraction=1"),
        "cuda without gpus": (s, [*SEARCH, "--set", "device=cuda"], "device=cuda needs a GPU"),
        "missing model module": (s, [*SEARCH, "--set", "model=nomodule:Net"], "cannot import nomodule"),
        "model arg for a built-in": (s, [*SEARCH, "--set", "model.hidden=3"], "model.hidden"),
        "bad model name": (s, [*SEARCH, "--set", "model=nope"], "model='nope'"),
        "string for a bool": (s, [*SEARCH, "--set", "batch_norm=maybe"], "batch_norm='maybe'"),
        # search: settings
        "zero samples": (s, [*SEARCH, "--num-samples", "0"], "--num-samples 0"),
        "zero epochs": (s, [*SEARCH, "--max-epochs", "0"], "--max-epochs 0"),
        "zero cpus": (s, [*SEARCH, "--cpus-per-trial", "0"], "--cpus-per-trial 0"),
        "infinite cpus": (s, [*SEARCH, "--cpus-per-trial", "inf"], "finite"),
        "nan cpus": (s, [*SEARCH, "--cpus-per-trial", "nan"], "finite"),
        "negative gpus": (s, [*SEARCH, "--gpus-per-trial", "-1"], "--gpus-per-trial -1"),
        "fractional gpus over one": (s, [*SEARCH, "--gpus-per-trial", "1.5"], "--gpus-per-trial 1.5"),
        "gpus as a word": (s, [*SEARCH, "--gpus-per-trial", "lots"], "invalid value 'lots'"),
        "unknown searcher": (s, [*SEARCH, "--searcher", "nope"], "--searcher"),
        "unknown scheduler": (s, [*SEARCH, "--scheduler", "nope"], "--scheduler"),
        "negative failures": (s, [*SEARCH, "--max-failures", "-1"], "--max-failures -1"),
        "no checkpoints": (s, [*SEARCH, "--keep-checkpoints", "0"], "--keep-checkpoints 0"),
        "negative timeout": (s, [*SEARCH, "--trial-timeout", "-1"], "--trial-timeout -1"),
        "negative budget": (s, [*SEARCH, "--budget-hours", "-1"], "--budget-hours -1"),
        "zero concurrency": (s, [*SEARCH, "--max-concurrent", "0"], "--max-concurrent 0"),
        "pbt with optuna": (s, [*SEARCH, "--scheduler", "pbt", "--searcher", "optuna"], "--scheduler pbt"),
        "grid over a range": (s, ["--space", "digits", "--searcher", "grid", "--wandb-mode", "disabled"], "grid"),
        "top-k without from-run": (s, [*SEARCH, "--top-k", "2"], "--from-top needs --from-run"),  # + the note
        "missing from-run": (s, [*SEARCH, "--from-run", "/nonexistent/run"], "--from-run /nonexistent/run"),
        "retry without resume": (s, [*SEARCH, "--retry-errored"], "--retry-errored goes with --resume"),
        # search: names and places
        "name ..": (s, [*SEARCH, "--name", ".."], "--name '..'"),
        "name .": (s, [*SEARCH, "--name", "."], "--name '.'"),
        "name up and out": (s, [*SEARCH, "--name", "../x"], "--name '../x'"),
        "absolute name": (s, [*SEARCH, "--name", "/tmp/elsewhere"], "--name '/tmp/elsewhere'"),
        "storage in /proc": (s, [*SEARCH, "--storage-path", "/proc/x", "--name", "p"], "/proc/x"),
        "storage is a file": (s, [*SEARCH, "--storage-path", f"{runs}/a_file", "--name", "f"], "a_file"),
        "unknown scheme": (s, [*SEARCH, "--storage-path", "ftp://host/x", "--name", "f"], "ftp"),
        "a finished run's name": (s, [*SEARCH, "--storage-path", runs, "--name", "done"], "already holds a sweep"),
        # search --resume
        "resume without a name": (s, ["--resume"], "--resume needs the run directory"),
        "resume nothing": (s, ["--resume", "/nonexistent/run"], "holds no tune_app sweep"),
        "resume an empty dir": (s, ["--resume", f"{runs}/empty_dir"], "holds no tune_app sweep"),
        "resume with another seed": (s, ["--resume", run, "--seed", "7"], "seed"),
        "resume with another lr": (s, ["--resume", run, "--set", "lr=0.1"], "lr"),
        "resume with another searcher": (s, ["--resume", run, "--searcher", "optuna"], "searcher"),
        "resume a cut spec": (s, ["--resume", f"{runs}/broken_spec"], "is not valid JSON"),
        # analyze
        "analyze nothing": (a, ["/nonexistent/run"], "no such directory"),
        "analyze an empty dir": (a, [f"{runs}/empty_dir"], "is not a sweep"),
        "analyze an unknown metric": (a, [run, "--metric", "nope"], "'nope' was never reported"),
        "analyze an unknown rule": (a, [run, "--select", "nope"], "--select"),
        "analyze top 0": (a, [run, "--top-configs", "0"], "--top-configs 0"),
        "analyze an unknown pair": (a, [run, "--pair", "lr,nope"], "nope"),
        "analyze a cut spec": (a, [f"{runs}/broken_spec"], "is not valid JSON"),
        "analyze an unknown space": (a, [f"{runs}/unknown_space"], "gone_study"),
        # retrain
        "retrain nothing": (r, ["/nonexistent/run"], "no such directory"),
        "retrain no seeds": (r, [run, "--seeds", "0"], "--seeds 0"),
        "retrain word seeds": (r, [run, "--seed-list", "a,b"], "--seed-list a,b"),
        "retrain zero epochs": (r, [run, "--epochs", "0"], "--epochs 0"),
        "retrain too many": (r, [run, "--configs", "99"], "--configs 99"),
        "retrain a text file": (r, [run, "--evaluate", f"{runs}/not_a_model.pt"], "not a readable model file"),
        "retrain zero cpus": (r, [run, "--cpus-per-trial", "0"], "--cpus-per-trial 0"),
        "retrain unknown corruption": (r, [run, "--corruptions", "nope"], "nope"),
        "retrain a cut topk": (r, [f"{runs}/broken_topk"], "is not valid JSON"),
        # train
        "train an unknown trainable": (t, ["--trainable", "nope"], "unknown trainable 'nope'"),
        "train a negative lr": (t, ["--trainable", "image_classifier", "--set", "lr=-1"], "lr=-1"),
        "train into /proc": (t, ["--trainable", "image_classifier", "--set", "dataset=digits", "--set", "epochs=1",
                                 "--out", "/proc/x", "--wandb-mode", "disabled"], "/proc/x"),
        "train a list": (t, ["--trainable", "image_classifier", "--set", "lr=[0.1,0.2]"], "one value per key"),
    }


CASES = list(cases("RUN", "RUNS"))


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if "wandb" in path.parts:
                    continue
                st = path.lstat()
                out[str(path)] = (st.st_size if path.is_file() else -1, st.st_mtime_ns)
    return out


def test_there_are_at_least_sixty_cases_over_all_four_commands():
    assert len(CASES) >= 60
    mains = {main for main, _, _ in cases("RUN", "RUNS").values()}
    assert mains == {search.main, analyze.main, retrain.main, train.main}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, done, tmp_path, monkeypatch, capsys):
    run, runs = done
    main, argv, said = cases(str(run), str(runs))[case]
    monkeypatch.chdir(tmp_path)
    before = snapshot(runs, tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (out[-1500:], err[-1500:])
    assert "Traceback" not in out + err
    assert 1 <= len(lines) <= 2 and said in lines[-1], lines
    assert snapshot(runs, tmp_path) == before


READ_ONLY = {  # name -> (module, argv, the one line); RUN is a read-only copy of the finished sweep
    "search under a locked folder": ("search", [*SEARCH, "--storage-path", "LOCKED/runs", "--name", "x"],
                                     "cannot create the run directory LOCKED/runs/x (Permission denied); give a "
                                     "--storage-path you can write to"),
    "analyze a read-only run": ("analyze", ["RUN"], "RUN is not writable (Permission denied) and analyze writes its "
                                                    "summary/ there; make it writable, or analyze a copy of it"),
    "retrain a read-only run": ("retrain", ["RUN", "--seeds", "1", "--wandb-mode", "disabled"],
                                "RUN is not writable (Permission denied) and retrain writes its retrain/ folder "
                                "there; make it writable, or retrain a copy of it"),
    "resume a read-only run": ("search", ["--resume", "RUN"], "cannot lock the run directory RUN (Permission "
                                                               "denied); make it writable to resume it"),
}


@pytest.mark.parametrize("case", list(READ_ONLY))
def test_a_folder_the_user_cannot_write_to_is_one_line_exit_2_and_changes_nothing(case, done, tmp_path):
    run, _ = done
    module, argv, said = READ_ONLY[case]
    copy, locked = tmp_path / "run", tmp_path / "locked"
    shutil.copytree(run, copy)
    locked.mkdir()
    chmod_tree(tmp_path, writable=False)
    try:
        before = snapshot(tmp_path)
        argv = [a.replace("RUN", str(copy)).replace("LOCKED", str(locked)) for a in argv]
        done_ = subprocess.run(unprivileged([sys.executable, "-m", f"tune_app.{module}", *argv]), capture_output=True,
                               text=True, timeout=300, cwd=tmp_path)
        after = snapshot(tmp_path)
    finally:
        chmod_tree(tmp_path, writable=True)
    said = said.replace("RUN", str(copy)).replace("LOCKED", str(locked))
    assert done_.returncode == 2, done_.stderr[-2000:]
    lines = done_.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tune_app: error: {said}"), lines
    assert "Traceback" not in done_.stdout
    assert after == before
