"""--address joins an existing multi-node Ray cluster (two nodes started on this machine)."""
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=6)  # 7 CPUs in all: a number a fresh local Ray would not have
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def node_ids(run_dir) -> set[str]:
    """The Ray nodes a sweep's trials reported from (every report carries its node)."""
    return {json.loads(line)["node_id"] for result in run_dir.glob("*/result.json")
            for line in result.read_text().splitlines()}


def cluster_nodes(cluster) -> set[str]:
    return {node.node_id for node in cluster.list_all_nodes()}


def test_search_joins_the_cluster_with_address(two_node_cluster, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "tune_app.search", "--space", "digits", "--address", two_node_cluster.address,
         "--num-samples", "2", "--set", "epochs=2", "--max-epochs", "2", "--cpus-per-trial", "1",
         "--storage-path", str(tmp_path), "--name", "on-cluster", "--wandb-mode", "disabled"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert node_ids(tmp_path / "on-cluster") <= cluster_nodes(two_node_cluster)  # trained there, not on a new Ray
    trials = pq.read_table(tmp_path / "on-cluster" / "summary" / "trials.parquet").to_pandas()
    assert len(trials) == 2 and (trials["status"] == "completed").all()
    assert json.loads((tmp_path / "on-cluster" / "summary" / "best_config.json").read_text())["config"]

    # the winner's seeds as Ray tasks on the same cluster, spread over its two nodes
    run = subprocess.run(
        [sys.executable, "-m", "tune_app.retrain", str(tmp_path / "on-cluster"), "--address",
         two_node_cluster.address, "--configs", "1", "--seeds", "2", "--wandb-mode", "disabled"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    retrained = json.loads((tmp_path / "on-cluster" / "retrain" / "retrain.json").read_text())
    nodes = {r["node"] for r in retrained["configs"][0]["runs"]}
    assert nodes == {n.node_id for n in two_node_cluster.list_all_nodes()}


def test_a_trial_larger_than_the_cluster_is_refused(two_node_cluster, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "tune_app.search", "--space", "digits", "--address", two_node_cluster.address,
         "--cpus-per-trial", "8", "--storage-path", str(tmp_path), "--name", "big"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "tune_app: error: --cpus-per-trial 8: the Ray cluster has 7 CPUs in all; "
        "ask for at most that, or join a bigger cluster with --address")
    assert list(tmp_path.iterdir()) == []


def test_without_address_a_sweep_starts_its_own_ray(two_node_cluster, tmp_path):
    """Ray alone would join the cluster that last started on this machine; tune_app starts a local one."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run(
        [sys.executable, "-m", "tune_app.search", "--space", "digits", "--num-samples", "1", "--set", "epochs=1",
         "--max-epochs", "1", "--storage-path", str(tmp_path), "--name", "local", "--wandb-mode", "disabled"],
        capture_output=True, text=True, timeout=300, env={**env, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert node_ids(tmp_path / "local") and node_ids(tmp_path / "local").isdisjoint(cluster_nodes(two_node_cluster))
