"""The cluster launch files in scripts/cluster/: valid YAML asking for what the README says, and commands
that tune_app's own parser accepts."""
import shlex
from pathlib import Path

import pytest
import yaml

from tune_app.search import build_parser

CLUSTER = Path(__file__).resolve().parent.parent / "scripts" / "cluster"


def search_args(command: str):
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "tune_app.search"], argv
    return build_parser().parse_args(argv[3:])


def test_the_rayjob_runs_study_one_on_the_cluster_it_starts():
    job = yaml.safe_load((CLUSTER / "kuberay_rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    args = search_args(job["spec"]["entrypoint"])
    assert (args.space, args.address, args.gpus_per_trial) == ("cifar_vgg6", "auto", 0.25)
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    (workers,) = cluster["workerGroupSpecs"]
    worker = workers["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # trials run on the GPU workers
    # one shared volume under the storage path and the data dir, in every pod
    for pod in (head, worker):
        assert {"name": "shared", "mountPath": "/shared"} in pod["containers"][0]["volumeMounts"]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "tune-app-shared"
    assert args.storage_path.startswith("/shared/") and args.data_dir.startswith("/shared/")


def test_the_ray_up_cluster_has_gpu_workers_and_shared_storage():
    config = yaml.safe_load((CLUSTER / "ray_up.yaml").read_text())
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["resources"]["GPU"] == 4 and types["gpu_worker"]["max_workers"] <= config["max_workers"]
    setup = "\n".join(config["setup_commands"])
    assert "mount -t nfs4" in setup and "/shared" in setup and "pip install -q -e ~/tune_app" in setup
    assert config["file_mounts"] == {"~/tune_app": "."}
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])
    documented = (CLUSTER / "ray_up.yaml").read_text().split("\n#   cd ~/tune_app && ")[1].split("\n#   ray down")[0]
    args = search_args(documented.replace("\\\n#      ", ""))
    assert (args.address, args.storage_path) == ("auto", "/shared/runs")


@pytest.mark.parametrize("name", ["ray_up.yaml", "kuberay_rayjob.yaml"])
def test_every_launch_file_is_in_the_cluster_readme(name):
    assert f"[`{name}`]({name})" in (CLUSTER / "README.md").read_text()
