"""scripts/slurm/*.sbatch under a real Slurm (tests/real_slurm.py: slurmctld and two slurmd, nodes n1 and n2, on
this machine, with accounting): submitted with sbatch, Ray started by srun steps on both nodes, a sweep run to its
summary and recorded by sacct, and the faults a batch user meets: scancel mid-sweep, the job's --time limit, a
worker node whose Ray never joins.

tests/test_slurm_scripts.py keeps the fake-based tests for what a real Slurm cannot give here (GPUs).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.real_slurm import ENDED, Slurm, free_ports, job_processes, missing
from tune_app.rundir.reader import ray_statuses

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "slurm"
# The GPU requests of the scripts turned off, as a user without GPUs would; one CPU per node for Ray.
NO_GPU_CLUSTER = ("--nodes=2", "--cpus-per-task=1", "--gpus-per-task=0")
SWEEP = ("--scheduler", "fifo", "--cpus-per-trial", "1", "--wandb-mode", "disabled")

# A trainable that sleeps through its epochs: a sweep of known length, so that the faults land mid-sweep.
TRIALS = 64
PACED = '''
from ray import tune

TRAINABLE = "paced:fit"
METRIC, MODE = "score", "max"
SPACE = {"x": tune.grid_search(list(range(64))), "epochs": 2}
SETTINGS = {"searcher": "grid", "scheduler": "fifo", "num_samples": 1}
'''.replace("64", str(TRIALS))
# Each job sets the pace (seconds per epoch): slow while a fault is to land mid-sweep, fast for the last job.
PACED_FIT = '''
import os
import time


def fit(config, data, reporter):
    state = reporter.restore()
    for epoch in range((state["epoch"] if state else 0) + 1, config["epochs"] + 1):
        time.sleep(float(os.environ["PACE_S"]))
        reporter.report({"epoch": epoch, "score": config["x"] * epoch}, {"epoch": epoch})
'''


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    gone = missing()
    assert not gone, f"a real Slurm is needed for this test ({', '.join(gone)} missing): " \
                     f"apt-get install slurm-wlm munge (.ci/run installs them)"
    cluster = Slurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def job_env(tmp_path):
    """The submitting shell's environment: this Python's bin first on PATH (TUNE_APP_ENV empty: no virtualenv to
    activate), run directories and Ray's port of the test's own, and Ray's token authentication as a user gets it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_"))}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", TUNE_APP_ENV="",
               TUNE_APP_STORAGE=str(tmp_path / "runs"), TUNE_APP_DATA=str(tmp_path / "data"),
               RAY_HEAD_PORT=str(free_ports(1)[0]), RAY_WAIT_TIMEOUT="120", PYTHONPATH=str(REPO))
    return env


def output(job: dict) -> str:
    return Path(job["StdOut"]).read_text()


def reports(run_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for path in sorted(run_dir.glob("*/result.json")):
        out[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def assert_nothing_left(job_id: str) -> None:
    """No process of the job on either node and no Ray daemon on this machine (a few seconds to go)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        left = job_processes(job_id) + ray_daemons()
        if not left:
            return
        time.sleep(1)
    raise AssertionError(f"job {job_id} left processes behind:\n" + "\n".join(left))


def ray_daemons() -> list[str]:
    found = subprocess.run(["pgrep", "-a", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout
    return [line[:200] for line in found.splitlines() if "pgrep" not in line]


def test_ray_cluster_sbatch_runs_a_sweep_on_both_nodes(slurm, job_env, tmp_path):
    job_id = slurm.sbatch(*NO_GPU_CLUSTER, str(SCRIPTS / "ray_cluster.sbatch"), "--space", "digits",
                          "--num-samples", "4", "--set", "epochs=2", "--max-epochs", "2", "--searcher", "random",
                          *SWEEP, cwd=tmp_path, env=job_env)
    job = slurm.wait(job_id, timeout=400)
    log = output(job)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    assert job["NodeList"] == "n[1-2]"
    assert Path(job["StdOut"]) == tmp_path / f"slurm-tune_app_ray-{job_id}.out"  # the script's --output
    assert "workers on n2, 1 CPUs and 0 GPUs each" in log and "all 2 Ray nodes are up" in log
    assert "Best trial digits_cnn_" in log  # the sweep's summary, in the job's output file
    run_dir = tmp_path / "runs" / f"digits-{job_id}"
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}
    nodes = {rows[-1]["node_id"] for rows in reports(run_dir).values()}
    assert len(nodes) == 2  # one CPU on each node, trials on both
    assert_nothing_left(job_id)
    assert accounted(slurm, job_id) == {"State": "COMPLETED", "ExitCode": "0:0", "NodeList": "n[1-2]"}


def test_one_gpu_sbatch_prints_the_plan_then_runs_the_sweep(slurm, job_env, tmp_path):
    job_id = slurm.sbatch("--cpus-per-task=2", "--gres=none", str(SCRIPTS / "one_gpu.sbatch"), "--space", "digits",
                          "--num-samples", "2", "--set", "epochs=1", "--max-epochs", "1", "--searcher", "random",
                          *SWEEP, cwd=tmp_path, env=job_env)
    job = slurm.wait(job_id, timeout=400)
    log = output(job)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    assert "on n1: CPUs 2, GPUs 0" in log or "on n2: CPUs 2, GPUs 0" in log
    plan, _, sweep = log.partition("tune_app: running: ")
    assert "tune_app: estimates first:" in plan and "tune_app: probing 2 distinct configurations" in plan
    assert "Best trial digits_cnn_" in sweep
    trials = pq.read_table(tmp_path / "runs" / f"digits-{job_id}" / "summary" / "trials.parquet").to_pandas()
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}
    assert_nothing_left(job_id)
    assert accounted(slurm, job_id)["State"] == "COMPLETED"


def accounted(slurm: Slurm, job_id: str) -> dict[str, str]:
    """``sacct``'s record of an ended job (State, ExitCode, NodeList): slurmctld sends it to slurmdbd soon after."""
    deadline = time.time() + 60
    while (record := slurm.accounting(job_id)).get("State", "RUNNING") in ("RUNNING", "PENDING", "COMPLETING"):
        assert time.time() < deadline, f"sacct has no final record of job {job_id}: {record}"
        time.sleep(1)
    return {k: v for k, v in record.items() if k != "Elapsed"}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"waited {timeout:.0f}s for {what}"
        time.sleep(1)


def finished(run_dir: Path) -> dict[str, bytes]:
    """result.json of every trial Ray's experiment state records as finished, by trial folder (a trial that
    reported its last epoch but was not yet recorded may be continued from its last checkpoint)."""
    done = {trial_id for trial_id, status in ray_statuses(run_dir).items() if status == "TERMINATED"}
    return {p.parent.name: p.read_bytes() for p in run_dir.glob("*/result.json")
            if any(p.parent.name.endswith(f"_{trial_id}") for trial_id in done)}


def test_a_sweep_cancelled_then_timed_out_resumes_with_every_trial_once(slurm, job_env, tmp_path):
    (tmp_path / "paced_space.py").write_text(PACED)
    (tmp_path / "paced.py").write_text(PACED_FIT)
    cluster = (*NO_GPU_CLUSTER[:1], "--cpus-per-task=2", "--gpus-per-task=0")  # 4 trials at once
    run_dir = tmp_path / "runs" / "paced"
    script = str(SCRIPTS / "ray_cluster.sbatch")

    slow, fast = {**job_env, "PACE_S": "3"}, {**job_env, "PACE_S": "0.05"}

    first = slurm.sbatch(*cluster, script, "--space", str(tmp_path / "paced_space.py"), "--name", "paced",
                         "--cpus-per-trial", "1", "--wandb-mode", "disabled", cwd=tmp_path, env=slow)
    wait_for(lambda: len(finished(run_dir)) >= 2 or slurm.state(first) in ENDED, 300, "2 finished trials")
    assert slurm.state(first) == "RUNNING"
    slurm.run("scancel", first)
    job = slurm.wait(first, timeout=120)
    log = output(job)
    assert job["JobState"] == "CANCELLED", log[-3000:]
    assert_nothing_left(first)
    assert accounted(slurm, first)["State"].startswith("CANCELLED")  # "CANCELLED by 0": root cancelled it
    # Slurm signals the driver and Ray on both nodes at once: the driver stops within TUNE_APP_TERM_GRACE_S (20 s;
    # or sooner, when its node's Ray goes first), so the script still stops Ray before Slurm's KillWait (30 s).
    assert "tune_app: stopping Ray on n1 n2" in log
    done = finished(run_dir)
    assert 2 <= len(done) < TRIALS

    # The job's --time limit (one minute; Slurm checks it every 30 s): the same SIGTERM, then SIGKILL.
    second = slurm.sbatch(*cluster, "--time=1", script, "--resume", str(run_dir), cwd=tmp_path, env=slow)
    job = slurm.wait(second, timeout=240)
    log = output(job)
    assert job["JobState"] == "TIMEOUT", log[-3000:]
    assert_nothing_left(second)
    assert accounted(slurm, second)["State"] == "TIMEOUT"
    assert "tune_app: stopping Ray on n1 n2" in log
    assert all((run_dir / name / "result.json").read_bytes() == content for name, content in done.items())
    more = finished(run_dir)
    assert len(done) < len(more) < TRIALS, "the time limit did not land mid-sweep"

    third = slurm.sbatch(*cluster, script, "--resume", str(run_dir), cwd=tmp_path, env=fast)
    job = slurm.wait(third, timeout=400)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), output(job)[-4000:]
    trials = pq.read_table(run_dir / "summary" / "trials.parquet").to_pandas()
    assert sorted(trials["config/x"]) == list(range(TRIALS))  # every trial exactly once
    assert set(trials["status"]) == {"completed"}
    assert all((run_dir / name / "result.json").read_bytes() == content for name, content in more.items())
    for name, rows in reports(run_dir).items():  # an epoch trained again after a fault reports the same score
        x = rows[0]["config"]["x"]
        assert {(r["epoch"], r["score"]) for r in rows} == {(1, x), (2, 2 * x)}, name
    assert_nothing_left(third)


def test_a_worker_whose_ray_never_joins_fails_the_job_in_one_line(slurm, job_env, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    real = shutil.which("ray", path=job_env["PATH"])
    # On n2, `ray start` hangs as a worker behind a firewall would; everywhere else it is the real ray.
    (shim / "ray").write_text(f'#!/bin/bash\n[[ $SLURMD_NODENAME == n2 && $1 == start ]] && exec sleep 600\n'
                              f'exec {real} "$@"\n')
    (shim / "ray").chmod(0o755)
    env = {**job_env, "PATH": f"{shim}:{job_env['PATH']}", "RAY_WAIT_TIMEOUT": "10"}
    job_id = slurm.sbatch(*NO_GPU_CLUSTER, str(SCRIPTS / "ray_cluster.sbatch"), "--space", "digits", *SWEEP,
                          cwd=tmp_path, env=env)
    job = slurm.wait(job_id, timeout=200)
    log = output(job)
    assert (job["JobState"], job["ExitCode"]) == ("FAILED", "1:0"), log[-3000:]
    errors = [line for line in log.splitlines() if "RAY_WAIT_TIMEOUT" in line]
    assert errors == ["tune_app: only 1 of 2 Ray nodes joined within 10s (RAY_WAIT_TIMEOUT); the Ray output above "
                      "tells why the others did not"]
    assert not (tmp_path / "runs").exists()  # no sweep started
    assert_nothing_left(job_id)
    assert accounted(slurm, job_id) == {"State": "FAILED", "ExitCode": "1:0", "NodeList": "n[1-2]"}
