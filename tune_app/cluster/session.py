"""Ray for a sweep or a retrain: start or join it, and refuse what the cluster cannot do (an address nothing
answers at, a trial bigger than the cluster, a storage folder some nodes do not see) before anything runs."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from tune_app.errors import UsageError, first_line


def check_resources(cluster: dict, settings: dict) -> None:
    """A trial that asks for more than the whole cluster has would wait forever: refuse it."""
    for flag, key in (("--cpus-per-trial", "CPU"), ("--gpus-per-trial", "GPU")):
        wanted = settings[f"{key.lower()}s_per_trial"]
        if wanted != "auto" and wanted > cluster.get(key, 0):
            raise UsageError(f"{flag} {wanted:g}: the Ray cluster has {cluster.get(key, 0):g} {key}s in all; "
                             f"ask for at most that, or join a bigger cluster with --address")


CONNECT_TIMEOUT_S = 10  # Ray itself waits minutes for a head that does not answer


def check_reachable(address: str, given: str) -> None:
    """A cluster address nothing answers at is refused within seconds (ray.init would wait for minutes)."""
    import socket

    target = address.removeprefix("ray://")
    if address == "auto":
        try:
            from tune_app.cluster.ray_private import bootstrap_address

            target = bootstrap_address("auto")
        except Exception:  # noqa: BLE001 - no cluster recorded here: ray.init says so at once
            return
    if address == "local" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as e:
        raise UsageError(f"{given} {address}: nothing answers at {target} within {CONNECT_TIMEOUT_S} s "
                         f"({type(e).__name__}: {e}); start the cluster's head with 'ray start --head' there, or "
                         f"check the host and port") from None


def join_ray(settings: dict, code: dict | None = None) -> bool:
    """Start or join Ray; ``code`` (tune_app.usercode.code_to_ship) goes to every worker through the runtime_env.
    A Ray the caller started already cannot take one: workers on this machine import the code from its folders
    (see cluster.adapter)."""
    import ray

    from tune_app.usercode import runtime_env

    env = runtime_env(code or {})
    started = not ray.is_initialized()
    if started:
        # With no address Ray would join whatever cluster last ran on this machine; tune_app starts its own
        # unless told otherwise (--address, or RAY_ADDRESS as cluster launchers set it).
        address = settings["address"] or os.environ.get("RAY_ADDRESS") or "local"
        check_reachable(address, "--address" if settings["address"] else "RAY_ADDRESS")
        try:
            ray.init(address=address, log_to_driver=False, include_dashboard=False,
                     logging_level=logging.WARNING, configure_logging=True, runtime_env=env)
        except (ConnectionError, RuntimeError, ValueError) as e:
            given = f"--address {address}" if settings["address"] else f"RAY_ADDRESS={address}"
            raise UsageError(f"{given}: cannot join that Ray cluster ({first_line(e)}); "
                             f"start one with 'ray start --head' or leave --address out") from None
    check_resources(ray.cluster_resources(), settings)
    if started:
        from tune_app.cluster.ray_private import version_warning

        warning = version_warning()
        if warning:
            print(f"tune_app: warning: {warning}", file=sys.stderr, flush=True)
    return started


SHARED_CHECK_TIMEOUT_S = 60


def check_shared_storage(root: Path, flag_value: str) -> None:
    """Every node of a multi-node sweep writes its trials' checkpoints and results into the storage, and a trial
    moved to another node reads them back there: a local directory must be one that every node mounts. The
    driver writes a marker file and asks each other node whether it sees it; a node that does not is refused
    before anything runs (Ray would lose that node's checkpoints)."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != here]
    if not others:
        return
    root.mkdir(parents=True, exist_ok=True)
    marker = root / f".tune_app_shared_{uuid.uuid4().hex[:12]}"
    marker.write_text("tune_app")

    def sees(path: str) -> bool:
        return os.path.isfile(path)

    probe = ray.remote(num_cpus=0)(sees)
    try:
        seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(str(marker)) for n in others], timeout=SHARED_CHECK_TIMEOUT_S)
    finally:
        marker.unlink(missing_ok=True)
    blind = [n["NodeManagerAddress"] for n, ok in zip(others, seen) if not ok]
    if blind:
        raise UsageError(f"--storage-path {flag_value}: {len(blind)} of the cluster's {len(others) + 1} nodes "
                         f"({', '.join(blind)}) cannot see {root}, so their trials' checkpoints would be lost; give "
                         f"a directory every node mounts (NFS, EFS) or s3://bucket/path")
