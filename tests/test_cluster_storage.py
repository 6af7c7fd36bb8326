"""A multi-node sweep whose --storage-path some node cannot see is refused before anything runs.

The cluster is real: a head started by ``ray.cluster_utils.Cluster`` and a worker node started with
``ray start`` inside its own mount namespace (``unshare``), where a tmpfs covers the run directory's
parent, as a machine with its own local disk would. The driver's marker file is invisible there, so
the sweep is refused in one line; a directory both see passes the same check."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tune_app import search
from tune_app.cluster import session

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")]


def can_unshare() -> bool:
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def split_cluster(tmp_path_factory):
    """(cluster address, a directory only the head sees, a directory both see)."""
    import ray
    from ray.cluster_utils import Cluster

    if not can_unshare():
        pytest.fail("unshare --mount is not permitted here: the test needs root or user namespaces")
    root = tmp_path_factory.mktemp("storage")
    private, shared = root / "head_only", root / "shared"
    private.mkdir()
    shared.mkdir()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    ray_cli = Path(sys.executable).parent / "ray"
    worker = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs {private} && exec {ray_cli} start --address {cluster.address} --num-cpus 1 "
         f"--block --disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    deadline = time.monotonic() + 90
    while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sum(n["Alive"] for n in ray.nodes()) == 2, "the worker node did not join"
    yield cluster.address, private, shared
    ray.shutdown()
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(timeout=60)
    cluster.shutdown()


def test_a_directory_one_node_cannot_see_is_refused(split_cluster, capsys):
    address, private, _ = split_cluster
    code = search.main(["--space", "digits", "--address", address, "--storage-path", str(private),
                        "--name", "sweep", "--num-samples", "2", "--wandb-mode", "disabled"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0
    assert "1 of the cluster's 2 nodes" in err and f"cannot see {private}" in err and "s3://" in err
    assert list(private.iterdir()) == []  # nothing started, the marker removed


def test_a_directory_every_node_sees_passes(split_cluster):
    _, _, shared = split_cluster
    session.check_shared_storage(shared, str(shared))  # no error
    assert list(shared.iterdir()) == []
