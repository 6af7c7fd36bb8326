"""--gpus-per-trial auto: each cost-relevant configuration's peak memory is probed, and each trial asks Ray
for the share of a GPU that memory needs. Ray's GPUs here are pretend ones (num_gpus= on a CPU machine) with
a memory figure injected through TUNE_APP_FAKE_GPU_MB; the probes and trials are real."""
import json
import math
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tune_app import search
from tune_app.cluster.adapter import FAULTS_ENV
from tune_app.cost import estimate, gpu_share
from tune_app.rundir.layout import GPU_PLAN_FILE
from tune_app.spaces import load_space

pytestmark = pytest.mark.e2e

FAKE_GPU_MB = 8000  # about a quarter of it per digits trial (a CPU process's peak is ~1 GB)


@pytest.mark.parametrize("peak_mb, gpu_mb, fraction", [
    (1_000, 80_000, 0.0625),   # (1250 + 600) / 80000 = 0.023: 43 would fit, 16 at most share a GPU
    (10_000, 80_000, 0.1666),  # 0.164: 6 per GPU
    (30_000, 80_000, 0.5),     # 0.476: 2 per GPU
    (70_000, 80_000, 1.0),     # more than a GPU: a whole one (it may then run out of memory, status oom)
    (900, 4_000, 0.5),         # 0.431
    (400, 4_000, 0.3333),      # 0.275: 3 per GPU
])
def test_fraction_is_the_measured_peak_plus_headroom_rounded_up_to_a_packing(peak_mb, gpu_mb, fraction):
    got = gpu_share.gpu_fraction(peak_mb, gpu_mb)
    assert got == fraction
    k = round(1 / got)
    assert k * got <= 1  # k trials fit on one GPU in Ray's bookkeeping
    assert got * gpu_mb >= peak_mb * gpu_share.HEADROOM + gpu_share.CONTEXT_MB or got == 1.0


def test_every_cost_relevant_combination_of_the_space_is_probed():
    space = load_space("digits")
    trainable = space.trainable
    configs = gpu_share.cost_configs(trainable, space.param_space, seed=0)
    assert sorted((c["batch_size"], c["batch_norm"]) for c in configs) == sorted(
        (b, n) for b in (32, 64, 128) for n in (True, False))
    keys = {estimate.cost_key(trainable, c) for c in configs}
    assert len(keys) == 6
    fake = {"gpu_mb": 4000, "rows": [{"cost_key": json.dumps(estimate.cost_key(trainable, c)),
                                      "fraction": 0.25 if c["batch_size"] == 32 else 0.5} for c in configs]}
    resources = gpu_share.gpu_resources(trainable, fake, cpus=1)
    assert resources({"dataset": "digits", "model": "digits_cnn", "batch_size": 32, "batch_norm": True,
                      "lr": 0.01}) == {"cpu": 1, "gpu": 0.25}
    assert resources({"dataset": "digits", "model": "digits_cnn", "batch_size": 128, "batch_norm": False,
                      "lr": 0.1}) == {"cpu": 1, "gpu": 0.5}
    # a configuration no probe covered asks for the largest fraction
    assert resources({"dataset": "digits", "model": "digits_cnn", "batch_size": 512}) == {"cpu": 1, "gpu": 0.5}


@pytest.fixture(scope="module")
def fake_gpus(tmp_path_factory):
    """Ray with one pretend GPU of FAKE_GPU_MB; a fault drill file (empty until a test fills it)."""
    import ray

    drill = tmp_path_factory.mktemp("drill") / "faults.json"
    drill.write_text("[]")
    os.environ.update({gpu_share.FAKE_GPU_ENV: str(FAKE_GPU_MB), FAULTS_ENV: str(drill)})  # workers inherit them
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield drill
    ray.shutdown()
    del os.environ[gpu_share.FAKE_GPU_ENV], os.environ[FAULTS_ENV]


def auto_sweep(runs, *extra):
    return search.main(["--space", "digits", "--searcher", "grid", "--scheduler", "fifo", "--gpus-per-trial",
                        "auto", "--set", "batch_size=[32,128]", "--set", "batch_norm=true", "--set", "activation=relu",
                        "--set", "optimizer=adam", "--set", "lr=0.003", "--storage-path", str(runs), "--name", "auto",
                        "--wandb-mode", "disabled", *extra])


def test_auto_probes_and_each_trial_holds_its_configurations_fraction(fake_gpus, tmp_path, capsys):
    assert auto_sweep(tmp_path, "--set", "epochs=2") == 0
    out = capsys.readouterr().out
    assert f"--gpus-per-trial auto on GPUs of {FAKE_GPU_MB} MB" in out
    run_dir = tmp_path / "auto"
    gpu_plan = json.loads((run_dir / GPU_PLAN_FILE).read_text())
    assert gpu_plan["gpu_mb"] == FAKE_GPU_MB and len(gpu_plan["rows"]) == 2
    by_batch = {}
    for row in gpu_plan["rows"]:
        assert row["peak_mb"] > 0
        assert row["fraction"] == gpu_share.gpu_fraction(row["peak_mb"], FAKE_GPU_MB)
        by_batch[int(dict(json.loads(row["cost_key"]))["batch_size"])] = row["fraction"]
    assert set(by_batch) == {32, 128}
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    history = pq.read_table(run_dir / "summary" / "history.parquet").to_pandas()
    assert (trials["status"] == "completed").all() and len(trials) == 2
    for trial_id, batch_size in zip(trials["trial_id"], trials["config/batch_size"]):
        held = history[history["trial_id"] == trial_id]["gpus"].unique().tolist()
        assert held == [by_batch[int(batch_size)]]  # what Ray gave the trial, as it reported it
    spec = json.loads((run_dir / search.SPEC_FILE).read_text())
    assert spec["settings"]["gpus_per_trial"] == "auto"  # a resume plans the same way (from gpu_plan.json)


def test_auto_on_a_machine_without_gpus_means_cpu_trials(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop(gpu_share.FAKE_GPU_ENV, None)
    done = subprocess.run([sys.executable, "-m", "tune_app.search", "--space", "digits", "--plan",
                           "--gpus-per-trial", "auto", "--set", "batch_size=64", "--set", "batch_norm=true",
                           "--storage-path", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--gpus-per-trial auto: the Ray cluster has no GPU; trials run on CPUs" in done.stdout
    assert "total: 20 trials" in done.stdout
    assert list(tmp_path.iterdir()) == []  # --plan writes nothing


def test_a_bad_gpus_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        search.main(["--space", "digits", "--gpus-per-trial", "lots"])
    assert exit_.value.code == 2
    assert "--gpus-per-trial: invalid value 'lots': a number such as 0.25, or auto" in capsys.readouterr().err


def test_a_trial_that_runs_out_of_gpu_memory_is_retried_on_a_larger_share(fake_gpus, tmp_path, capsys):
    """The batch-128 trial runs out of (CUDA) memory once, at epoch 2: it is retried from its epoch-1 checkpoint (one
    every epoch here) on
    twice its share of the GPU and completes; the other trial keeps its share."""
    fake_gpus.write_text(json.dumps([{"epoch": 2, "times": 1, "kind": "oom", "where": {"batch_size": 128}}]))
    try:
        assert auto_sweep(tmp_path, "--set", "epochs=3", "--max-failures", "1", "--checkpoint-every-s", "0") == 0
    finally:
        fake_gpus.write_text("[]")
    run_dir = tmp_path / "auto"
    fractions = {int(dict(json.loads(r["cost_key"]))["batch_size"]): r["fraction"]
                 for r in json.loads((run_dir / GPU_PLAN_FILE).read_text())["rows"]}
    first = fractions[128]
    more = 1.0 if first >= 0.5 else math.floor(10_000 / math.floor(1 / (2 * first))) / 10_000
    assert more > first
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas().set_index("config/batch_size")
    history = pq.read_table(run_dir / "summary" / "history.parquet").to_pandas()
    assert (trials["status"] == "completed").all()
    big = history[history["trial_id"] == trials.loc[128, "trial_id"]].sort_values("epoch")
    assert big["epoch"].tolist() == [1, 2, 3]
    assert big["gpus"].tolist() == [first, more, more]
    small = history[history["trial_id"] == trials.loc[32, "trial_id"]]
    assert small["gpus"].unique().tolist() == [fractions[32]]
    assert f"ran out of GPU memory on {first:g} GPU; retrying it on {more:g}" in capsys.readouterr().out


def test_auto_probes_each_width_of_a_model_of_the_users(fake_gpus, tmp_path, monkeypatch):
    """A model of the user's with a model.width key: each width is its own cost configuration, probed, and each
    trial holds its width's share (the user's module reaches the probes and trials from its folder)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "widemodels.py").write_text(
        "from torch import nn\n\n\n"
        "def wide(num_classes, input_shape, width=8):\n"
        "    c, h, w = input_shape\n"
        "    layers = [nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, num_classes)]\n"
        "    return nn.Sequential(*layers)\n")
    monkeypatch.syspath_prepend(str(project))
    assert search.main(["--space", "digits", "--searcher", "grid", "--scheduler", "fifo", "--gpus-per-trial", "auto",
                        "--set", "model=widemodels:wide", "--set", "model.width=[4,4096]", "--set", "epochs=1",
                        "--set", "batch_size=64", "--set", "batch_norm=true", "--set", "activation=relu",
                        "--set", "optimizer=adam", "--set", "lr=0.003", "--storage-path", str(tmp_path),
                        "--name", "wide", "--wandb-mode", "disabled"]) == 0
    run_dir = tmp_path / "wide"
    rows = json.loads((run_dir / GPU_PLAN_FILE).read_text())["rows"]
    by_width = {int(dict(json.loads(r["cost_key"]))["model.width"]): r["fraction"] for r in rows}
    assert set(by_width) == {4, 4096}
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    history = pq.read_table(run_dir / "summary" / "history.parquet").to_pandas()
    assert (trials["status"] == "completed").all() and len(trials) == 2
    for trial_id, width in zip(trials["trial_id"], trials["config/model.width"]):
        assert history[history["trial_id"] == trial_id]["gpus"].unique().tolist() == [by_width[int(width)]]
    sys.modules.pop("widemodels", None)
