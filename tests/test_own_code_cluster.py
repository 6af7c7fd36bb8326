"""The user's own code reaches trials on a node that cannot see the user's folder.

The cluster is real: a head from ``ray.cluster_utils.Cluster`` with no CPUs (no trial can run there) and a worker
node started with ``ray start`` inside its own mount namespace (``unshare``), where a tmpfs covers the user's
project folder, as on a machine that has none of the user's files. The sweep joins the cluster itself
(``--address``), the path on which tune_app ships the space's folder as Ray's runtime_env ``working_dir``: the
model of the user's (``shipped_models:TinyNet``) and a trainable of the user's (``shipped_fit:fit``) must be
imported on the worker all the same. (Module names of their own: no other test imports them.)"""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from tests.user_project import MODELS, OWN_FIT, write_pngs
from tune_app import search
from tune_app.rundir.reader import ray_statuses

pytestmark = pytest.mark.cluster

SPACE_PY = """
'''TinyNet of the user's on a digits PNG folder.'''
from ray import tune

TRAINABLE = "image_classifier"
METRIC, MODE = "val_acc", "max"
SPACE = {
    "dataset": "imagefolder:digits_png",
    "model": "shipped_models:TinyNet",
    "model.hidden": tune.choice([8, 24]),
    "optimizer": "adam",
    "lr": tune.loguniform(1e-3, 1e-2),
    "batch_size": 64,
    "epochs": 3,
}
SETTINGS = {"searcher": "random", "scheduler": "fifo", "num_samples": 3, "cpus_per_trial": 1}
"""

FIT_SPACE_PY = """
'''The user's own trainable on sklearn's digits.'''
from ray import tune
from sklearn.datasets import load_digits

TRAINABLE = "shipped_fit:fit"
METRIC, MODE = "acc", "max"
SPACE = {"lr": tune.loguniform(1e-2, 1.0), "epochs": 3}
SETTINGS = {"searcher": "optuna", "scheduler": "asha", "num_samples": 4, "cpus_per_trial": 1}


def load_data():
    d = load_digits()
    x = d.data / 16.0
    return {"x": x[:300], "y": d.target[:300], "xv": x[300:400], "yv": d.target[300:400]}
"""

# A driver of its own (the test process never joins Ray: the sweeps do, with their runtime_env). It waits for
# both nodes, then runs a 1-CPU task, which only the worker node can take, that looks for the project there.
PROBE = """
import json, sys, time
import ray

address, project = sys.argv[1], sys.argv[2]
ray.init(address=address, include_dashboard=False, log_to_driver=False)
deadline = time.monotonic() + 90
while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)


@ray.remote(num_cpus=1)
def look(folder):
    import importlib, os, sys
    sys.path.insert(0, folder)
    try:
        importlib.import_module("shipped_models")
        error = None
    except ImportError as e:
        error = type(e).__name__
    return {"node": ray.get_runtime_context().get_node_id(), "files": sorted(os.listdir(folder)), "error": error}


nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
seen = ray.get(look.remote(project), timeout=60) if len(nodes) == 2 else None
print(json.dumps({"nodes": nodes, "driver_node": ray.get_runtime_context().get_node_id(), "seen": seen}))
"""


@pytest.fixture(scope="module")
def blind_cluster(tmp_path_factory):
    """A head with no CPUs and a worker node that sees an empty tmpfs where the user's project folder is."""
    from ray.cluster_utils import Cluster

    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        pytest.fail(f"cannot build the cluster: unshare --mount is not permitted here ({probe.stderr.strip()}); "
                    f"the test needs root or user namespaces")
    project = tmp_path_factory.mktemp("project")
    for name, text in (("shipped_models.py", MODELS), ("shipped_space.py", SPACE_PY), ("shipped_fit.py", OWN_FIT),
                       ("shipped_fit_space.py", FIT_SPACE_PY)):
        (project / name).write_text(textwrap.dedent(text).lstrip())
    # The images live where the sweeps are started (the cwd), not in the project: the space names them
    # relative to the cwd (imagefolder:digits_png), and the driver alone reads them (trials get the arrays
    # through Ray's object store), so the project folder holds nothing but the code that must be shipped.
    workspace = tmp_path_factory.mktemp("workspace")
    write_pngs(workspace / "digits_png")
    runs = tmp_path_factory.mktemp("runs")  # outside the project: both nodes see it (checked by the sweep)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    ray_cli = Path(sys.executable).parent / "ray"
    worker = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs {project} && exec {ray_cli} start --address {cluster.address} --num-cpus 2 "
         f"--block --disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        check = subprocess.run([sys.executable, "-c", PROBE, cluster.address, str(project)], capture_output=True,
                               text=True, timeout=150, cwd=project)
        if worker.poll() is not None:
            pytest.fail(f"the worker node did not start: {worker.stderr.read().strip()[-2000:]}")
        assert check.returncode == 0, check.stderr[-3000:]
        found = json.loads(check.stdout.strip().splitlines()[-1])
        head = cluster.head_node.node_id
        assert len(found["nodes"]) == 2, "the worker node did not join"
        assert found["driver_node"] == head  # a driver on this machine runs on the head node
        worker_node = next(n for n in found["nodes"] if n != head)
        # The test means something: on the worker the project folder is empty and its module cannot be imported.
        assert found["seen"] == {"node": worker_node, "files": [], "error": "ModuleNotFoundError"}
        assert (project / "shipped_models.py").is_file()  # while the driver's machine has it
        yield {"address": cluster.address, "project": project, "workspace": workspace, "runs": runs,
               "head": head, "worker": worker_node}
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)
        cluster.shutdown()


def sweep(c: dict, space: str, name: str) -> int:
    return search.main(["--space", str(c["project"] / space), "--address", c["address"],
                        "--storage-path", str(c["runs"]), "--name", name, "--searcher", "random",
                        "--scheduler", "fifo", "--num-samples", "2", "--set", "epochs=2", "--wandb-mode",
                        "disabled", "--cpus-per-trial", "1"])


def reported_nodes(run_dir: Path) -> list[str]:
    """The node_id of every report, as Ray wrote the trials' result.json (tune_app's history does not keep it)."""
    rows = [json.loads(line) for f in sorted(run_dir.glob("*/result.json"))
            for line in f.read_text().splitlines() if line.strip()]
    return [r["node_id"] for r in rows]


def check_ran_on_worker(c: dict, run_dir: Path) -> None:
    nodes = reported_nodes(run_dir)
    assert len(nodes) == 4  # 2 trials x 2 epochs
    assert set(nodes) == {c["worker"]} and c["head"] not in nodes


def test_a_model_of_the_users_is_shipped_to_a_node_without_the_project(blind_cluster, monkeypatch):
    c = blind_cluster
    monkeypatch.chdir(c["workspace"])
    assert sweep(c, "shipped_space.py", "shipped") == 0
    run_dir = c["runs"] / "shipped"
    assert set(ray_statuses(run_dir).values()) == {"TERMINATED"} and len(ray_statuses(run_dir)) == 2
    trials = pd.read_parquet(run_dir / "summary" / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "completed").all() and (trials["epochs"] == 2).all()
    assert set(trials["config/model.hidden"]) <= {8, 24}
    assert (trials["config/model"] == "shipped_models:TinyNet").all()
    check_ran_on_worker(c, run_dir)
    spec = json.loads((run_dir / "tune_app.json").read_text())
    assert spec["code"]["working_dir"] == str(c["project"].resolve())
    assert spec["code"]["py_modules"] == []
    assert "model.hidden" in spec["searched"]


def test_a_trainable_of_the_users_is_shipped_to_a_node_without_the_project(blind_cluster, monkeypatch, tmp_path):
    c = blind_cluster
    monkeypatch.chdir(tmp_path)  # anywhere but the project: the space is found by its path
    assert sweep(c, "shipped_fit_space.py", "own_fit") == 0
    run_dir = c["runs"] / "own_fit"
    assert set(ray_statuses(run_dir).values()) == {"TERMINATED"} and len(ray_statuses(run_dir)) == 2
    trials = pd.read_parquet(run_dir / "summary" / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "completed").all() and (trials["epochs"] == 2).all()
    history = pd.read_parquet(run_dir / "summary" / "history.parquet")
    assert len(history) == 4 and history["acc"].between(0, 1).all()
    assert sorted(history["epoch"]) == [1, 1, 2, 2]
    check_ran_on_worker(c, run_dir)
    spec = json.loads((run_dir / "tune_app.json").read_text())
    assert spec["code"]["working_dir"] == str(c["project"].resolve())
