"""A real three-node Ray cluster on this machine (ray.cluster_utils.Cluster): a head that runs no trials, a CPU
worker and a worker with two (pretend) GPUs. Trials spread over the nodes, GPU trials land only on the GPU
node, and a worker removed mid-sweep has its trials retried elsewhere from their checkpoints."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cpu = cluster.add_node(num_cpus=2)
    gpu = cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    yield cluster, cpu, gpu
    cluster.shutdown()


def sweep(cluster, runs: Path, name: str, *extra, wait=True):
    argv = [sys.executable, "-m", "tune_app.search", "--space", "digits", "--address", cluster.address,
            "--scheduler", "fifo", "--cpus-per-trial", "1", "--storage-path", str(runs), "--name", name,
            "--wandb-mode", "disabled", *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    run = subprocess.run(argv, capture_output=True, text=True, timeout=400, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def reports(run_dir: Path) -> dict[str, list[dict]]:
    """Every trial's reports as Ray wrote them, by trial folder."""
    out = {}
    for folder in sorted(p for p in run_dir.glob("digits_cnn_*") if p.is_dir()):
        lines = (folder / "result.json").read_text().splitlines() if (folder / "result.json").exists() else []
        out[folder.name] = [json.loads(line) for line in lines if line.strip()]
    return out


def test_trials_spread_over_the_nodes_and_gpu_trials_only_on_the_gpu_node(nodes, tmp_path):
    cluster, cpu, gpu = nodes
    # Random search makes all four trials at once (Optuna makes them one by one, and with actors reused the
    # first node's two processes may train them all): four 1-CPU trials at once need both workers.
    sweep(cluster, tmp_path, "cpu", "--searcher", "random", "--num-samples", "4", "--set", "epochs=2",
          "--max-epochs", "2")
    used = {r["node_id"] for rows in reports(tmp_path / "cpu").values() for r in rows}
    assert used == {cpu.node_id, gpu.node_id}  # none on the head

    sweep(cluster, tmp_path, "gpu", "--num-samples", "4", "--set", "epochs=2", "--max-epochs", "2",
          "--gpus-per-trial", "0.5")
    used = {r["node_id"] for rows in reports(tmp_path / "gpu").values() for r in rows}
    assert used == {gpu.node_id}
    trials = pq.read_table(tmp_path / "gpu" / "summary" / "trials.parquet").to_pandas()
    assert len(trials) == 4 and (trials["status"] == "completed").all()


def test_a_worker_removed_mid_sweep_has_its_trials_finished_elsewhere(nodes, tmp_path):
    cluster, cpu, gpu = nodes
    proc = sweep(cluster, tmp_path, "lose", "--searcher", "random", "--num-samples", "4", "--set", "epochs=8",
                 "--max-epochs", "8", "--max-failures", "3", "--checkpoint-every-s", "0", wait=False)  # each epoch
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        on_cpu = [rows for rows in reports(tmp_path / "lose").values() if rows and rows[-1]["node_id"] == cpu.node_id]
        if on_cpu and all(rows[-1]["epoch"] < 8 for rows in on_cpu):
            break
        time.sleep(0.3)
    assert proc.poll() is None, "the sweep ended before a node could be removed"
    cluster.remove_node(cpu)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    trials = pq.read_table(tmp_path / "lose" / "summary" / "trials.parquet").to_pandas()
    assert len(trials) == 4 and (trials["status"] == "completed").all()
    moved = [rows for rows in reports(tmp_path / "lose").values() if rows[0]["node_id"] == cpu.node_id
             and rows[-1]["node_id"] == gpu.node_id]
    assert moved, "no trial moved from the removed node"
    for rows in moved:
        # Continued to the end. The report in flight when the node died can be missing from result.json while
        # its checkpoint was saved (Ray then resumes after it): at most that one epoch.
        assert rows[-1]["epoch"] == 8 and len(set(range(1, 9)) - {r["epoch"] for r in rows}) <= 1
        resumed_at = next(r["epoch"] for r in rows if r["node_id"] == gpu.node_id)
        assert resumed_at > 1  # from the checkpoint the removed node had saved, not from scratch
