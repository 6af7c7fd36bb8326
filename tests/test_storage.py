"""Run directories in S3: a real S3-compatible server (moto's server mode) on loopback as
``--storage-path s3://...``. A sweep writes there, every trial crashes once and errors; with the
working copy on this machine deleted, ``--resume s3://... --retry-errored`` brings the run down
and finishes every trial from its checkpoint in S3; ``tune_app.analyze s3://...`` reads the
results from there and writes the summary back. Bad storage is refused in one line before
anything runs: an unknown scheme, no bucket, missing or wrong credentials."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tune_app import analyze, search
from tune_app.cluster import storage
from tune_app.cluster.adapter import FAULTS_ENV

pytestmark = pytest.mark.e2e

BUCKET = "sweeps"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(env_extra: dict | None = None):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env_extra or {})})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 on loopback with a bucket; the environment that points pyarrow (and so Ray's workers, which
    inherit it at ray.init) at it; a fault drill file; one local Ray."""
    import boto3
    import ray

    proc, endpoint = start_moto()
    saved = dict(os.environ)
    cache = tmp_path_factory.mktemp("cache")
    drill = tmp_path_factory.mktemp("drill") / "faults.json"
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint, "TUNE_APP_CACHE": str(cache), FAULTS_ENV: str(drill)})
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield {"endpoint": endpoint, "cache": cache, "drill": drill}
    ray.shutdown()
    os.environ.clear()
    os.environ.update(saved)
    proc.kill()
    proc.wait()


def argv(*extra):
    return ["--space", "digits", "--searcher", "optuna", "--scheduler", "fifo", "--num-samples", "3",
            "--set", "activation=[relu,tanh]", "--set", "optimizer=adam", "--set", "lr=0.003",
            "--set", "batch_size=64", "--set", "epochs=3", "--set", "batch_norm=true",
            "--cpus-per-trial", "1", "--wandb-mode", "offline", *extra]


def s3_files(prefix: str) -> dict[str, int]:
    fs, root = storage.filesystem(f"s3://{BUCKET}/{prefix}")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path[len(root) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}


def read_parquet(uri: str):
    fs, path = storage.filesystem(uri)
    return pq.read_table(path, filesystem=fs).to_pandas()


@pytest.fixture(scope="module")
def crashed(s3):
    """Every trial crashes once at epoch 2 and, with --max-failures 0, ends as error, after its epoch-1 checkpoint."""
    s3["drill"].write_text(json.dumps([{"epoch": 2, "times": 1}]))
    uri = f"s3://{BUCKET}/runs/crashy"
    code = search.main(argv("--storage-path", f"s3://{BUCKET}/runs", "--name", "crashy", "--max-failures", "0",
                            "--checkpoint-every-s", "0"))  # a checkpoint every epoch: epoch 1's reaches S3
    return code, uri, s3_files("runs/crashy")


def test_a_sweep_writes_its_run_directory_to_s3(crashed):
    code, uri, files = crashed
    assert code == 1  # every trial failed: nothing to call best, and the sweep can be resumed
    assert "tune_app.json" in files and "optuna.journal" in files and "tuner.pkl" in files
    assert any(f.startswith("experiment_state") for f in files)
    trial_dirs = {f.split("/")[0] for f in files if f.endswith("/result.json")}
    assert len(trial_dirs) == 3
    # checkpoints went to S3 from the trials' workers: one per trial, at epoch 1
    assert len({f.split("/")[0] for f in files if "/checkpoint_000000/" in f}) == 3
    assert sum(f.endswith("/error.txt") for f in files) == 3
    trials = read_parquet(f"{uri}/summary/trials.parquet")
    assert sorted(trials["status"]) == ["error"] * 3
    assert trials["epochs"].tolist() == [1, 1, 1]
    assert all("FaultDrill" in e for e in trials["error"])
    spec = json.loads(storage.filesystem(f"{uri}/tune_app.json")[0]
                      .open_input_stream(f"{BUCKET}/runs/crashy/tune_app.json").read())
    assert spec["space"] == "digits" and "run_uri" not in spec and "run_dir" not in spec


@pytest.fixture(scope="module")
def resumed(crashed, s3):
    code, uri, _ = crashed
    mirror = storage.mirror_dir(uri)
    assert mirror.is_dir() and str(mirror).startswith(str(s3["cache"]))
    shutil.rmtree(mirror)  # only S3 has the sweep now
    code = search.main(["--resume", uri, "--retry-errored"])
    return code, uri, mirror


def test_resume_from_s3_finishes_every_trial_from_its_checkpoint(resumed, s3):
    code, uri, mirror = resumed
    assert code == 0
    trials = read_parquet(f"{uri}/summary/trials.parquet")
    history = read_parquet(f"{uri}/summary/history.parquet")
    assert len(trials) == 3 and sorted(trials["status"]) == ["completed"] * 3
    for trial_id in trials["trial_id"]:
        assert history[history["trial_id"] == trial_id]["epoch"].tolist() == [1, 2, 3]  # epoch 1 not trained again
    injected = Path(str(s3["drill"]) + ".log").read_text().split()
    assert len(injected) == 3  # each trial crashed once, in the first run only
    best = json.loads(storage.filesystem(uri)[0].open_input_stream(
        f"{BUCKET}/runs/crashy/summary/best_config.json").read())
    assert best["config"]["activation"] in ("relu", "tanh") and 0.5 < best["value"] <= 1
    # the Optuna study came back from S3 and was not started over: 3 trials, all complete
    import optuna
    from optuna.storages.journal import JournalFileBackend

    study_storage = optuna.storages.JournalStorage(JournalFileBackend(str(mirror / "optuna.journal")))
    (study,) = optuna.get_all_study_summaries(study_storage)
    told = optuna.load_study(study_name=study.study_name, storage=study_storage).trials
    assert [t.state.name for t in told] == ["FAIL"] * 3 + ["COMPLETE"] * 3  # the crashes, then the retried trials
    final = dict(zip(trials["trial_id"], trials["final_val_acc"]))
    assert {t.user_attrs["trial_id"]: t.value for t in told[3:]} == final
    assert sorted(map(str, (t.params for t in told[3:]))) == sorted(map(str, (t.params for t in told[:3])))
    assert (mirror / "wandb").is_dir() and s3_files("runs/crashy/wandb")


def test_analyze_reads_an_s3_run_and_writes_its_summary_back(resumed, s3, capsys):
    _, uri, mirror = resumed
    before = read_parquet(f"{uri}/summary/trials.parquet")
    shutil.rmtree(mirror)
    fs, _ = storage.filesystem(uri)
    fs.delete_file(f"{BUCKET}/runs/crashy/summary/topk.json")
    assert analyze.main([uri, "--top-configs", "2", "--wandb-mode", "disabled"]) == 0
    topk = json.loads(fs.open_input_stream(f"{BUCKET}/runs/crashy/summary/topk.json").read())
    assert len(topk["trials"]) == 2
    after = read_parquet(f"{uri}/summary/trials.parquet")
    assert after[["trial_id", "status", "final_val_acc"]].equals(before[["trial_id", "status", "final_val_acc"]])
    assert f"{uri}/summary" in capsys.readouterr().out


def test_a_new_sweep_is_refused_where_one_exists_in_s3(resumed, capsys):
    _, uri, _ = resumed
    before = s3_files("runs/crashy")
    assert search.main(argv("--storage-path", f"s3://{BUCKET}/runs", "--name", "crashy")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a sweep" in err and f"--resume {uri}" in err
    assert s3_files("runs/crashy") == before


# ------------------------------------------------------------------------- refused in one line

@pytest.mark.parametrize("path, words", [
    ("ftp://host/runs", "unknown storage scheme 'ftp://'"),
    ("hdfs://namenode/runs", "unknown storage scheme 'hdfs://'"),
    ("s3://", "name a bucket"),
])
def test_a_storage_path_that_cannot_work_is_refused(path, words, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUNE_APP_CACHE", str(tmp_path / "cache"))
    assert search.main(["--space", "digits", "--storage-path", path, "--name", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err
    assert not (tmp_path / "cache").exists()


def test_a_bucket_that_does_not_exist_is_refused(s3, capsys):
    assert search.main(argv("--storage-path", "s3://no-such-bucket/runs", "--name", "x")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot write to S3" in err and "s3://no-such-bucket/runs/x" in err
    assert not storage.mirror_dir("s3://no-such-bucket/runs/x").exists()


@pytest.fixture(scope="module")
def locked_s3():
    """A second moto server that checks credentials (as S3 does)."""
    proc, endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    yield endpoint
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("keys, words", [
    ({}, "no credentials found: set AWS_ACCESS_KEY_ID"),
    ({"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong"}, "check the credentials"),
])
def test_missing_or_wrong_credentials_are_refused(keys, words, locked_s3, tmp_path, capsys, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", locked_s3)
    monkeypatch.setenv("TUNE_APP_CACHE", str(tmp_path / "cache"))
    for key, value in keys.items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    assert search.main(["--space", "digits", "--storage-path", f"s3://{BUCKET}/runs", "--name", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot write to S3" in err and words in err
    assert time.monotonic() - started < 30
    assert not (tmp_path / "cache").exists()


def test_resume_of_an_s3_path_that_holds_no_sweep_is_refused(s3, capsys):
    assert search.main(["--resume", f"s3://{BUCKET}/runs/nothing-here"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds no tune_app sweep" in err and f"s3://{BUCKET}/runs/nothing-here" in err
