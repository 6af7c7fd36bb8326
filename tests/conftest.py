"""Shared fixtures. Tests run offline: W&B offline, no dataset downloads."""
from __future__ import annotations

import os

import pytest

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TUNE_APP_OFFLINE"] = "1"  # never try a download from a test
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def pytest_collection_modifyitems(config, items):
    """The ``gpu`` tests need a GPU: pyproject's ``-m 'not gpu'`` leaves them out, and so does any other ``-m`` that
    does not name them (``-m "not e2e"``); ``-m gpu`` (scripts/gpu_check.py) selects them."""
    if "gpu" in (config.option.markexpr or ""):
        return
    keep = [item for item in items if item.get_closest_marker("gpu") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("gpu")])
        items[:] = keep


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_running(request):
    """A module that leaves an in-process Ray running fails, naming itself, instead of breaking the next
    module's ray.init (one local Ray per module); the Ray is shut down either way."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail(f"{request.module.__name__} left a Ray running in the test process")


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray per test module, sized for a 2-core machine, with one pretend GPU:
    Ray accepts it without hardware, so GPU requests and fractions are scheduled for real
    while the trials themselves run on the CPU. address="local": always a Ray of its own, never another test
    session's that happens to run on this machine."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def faults_file(tmp_path_factory):
    """One local Ray per test module for the fault drills (cluster.adapter's TUNE_APP_FAULTS): Ray's workers
    inherit the driver's environment at ray.init, so the drill file is named before it."""
    import ray

    from tune_app.cluster.adapter import FAULTS_ENV

    path = tmp_path_factory.mktemp("drill") / "faults.json"
    os.environ[FAULTS_ENV] = str(path)
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield path
    ray.shutdown()
    del os.environ[FAULTS_ENV]


@pytest.fixture(scope="session")
def digits():
    from trainables.data import prepare

    return prepare("digits", None, val_fraction=0.1, split_seed=0)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """Generated Fashion-MNIST and MNIST idx files (300 train, 50 test images each) under one --data-dir."""
    from tests.fake_datasets import write_mnist

    root = tmp_path_factory.mktemp("mnist_data")
    write_mnist(root, kind="fashion_mnist", n_train=300, n_test=50)
    write_mnist(root, kind="mnist", n_train=300, n_test=50, seed=1)
    return root
