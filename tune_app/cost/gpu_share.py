"""``--gpus-per-trial auto``: each cost-relevant configuration is probed alone on a whole GPU, and each trial asks
Ray for the share of a GPU its configuration's measured peak memory needs, so that trials that fit pack onto one
device and a trial that ran out of memory is retried on a larger share."""
from __future__ import annotations

import itertools
import json
import math

from tune_app.cost.estimate import configurations, cost_key, probe_all

HEADROOM = 1.25  # measured peak memory times this: allocator fragmentation, a larger last batch
CONTEXT_MB = 600  # what a CUDA process holds beyond max_memory_allocated (context, cuDNN/cuBLAS workspaces)
MAX_PER_GPU = 16  # trials sharing one GPU at most
FAKE_GPU_ENV = "TUNE_APP_FAKE_GPU_MB"  # a GPU's memory where Ray's GPUs are pretend ones (num_gpus= on a CPU)


def gpu_fraction(peak_mb: float, gpu_mb: float) -> float:
    """The share of one GPU a trial asks Ray for: the measured peak plus headroom, rounded up to 1/k so that k
    trials fill the GPU exactly. A trial that needs more than a whole GPU still gets one (it trains on one
    device); it may then run out of memory, which its status says."""
    need = (peak_mb * HEADROOM + CONTEXT_MB) / gpu_mb
    return 1.0 if need >= 1 else one_of(min(MAX_PER_GPU, math.floor(1 / need)))


def one_of(k: int) -> float:
    """1/k of a GPU as Ray counts fractions (to 4 decimals), rounded down so that k of them fit in one."""
    return math.floor(10_000 / k) / 10_000


def larger_share(held: float) -> float:
    """The next packing up from ``held``, at least twice it: for a trial that ran out of memory on ``held``."""
    return 1.0 if held >= 0.5 else one_of(math.floor(1 / (2 * held)))


def _gpu_memory_mb() -> float:
    import os

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 2**20
    if os.environ.get(FAKE_GPU_ENV):
        return float(os.environ[FAKE_GPU_ENV])
    raise RuntimeError(f"Ray lists a GPU here but torch sees no CUDA device (set {FAKE_GPU_ENV} for pretend GPUs)")


def cost_configs(trainable, param_space: dict, seed: int) -> list[dict]:
    """One configuration per combination of the cost-relevant values (COST_KEYS) the space can take, resolved
    against the trainable's defaults: every trial of the sweep, whatever the searcher picks, matches one."""
    from trainables.params import resolve
    from tune_app.spaces import domain_values

    keys = [k for k in (*trainable.COST_KEYS, *sorted(k for k in param_space if k.startswith("model.")))
            if k in param_space]
    base = configurations(param_space, 1, seed)[0]
    choices = [domain_values(param_space[k]) or [base[k]] for k in keys]
    return [resolve(trainable.PARAMS, {**base, **dict(zip(keys, combo))}) for combo in itertools.product(*choices)]


def gpu_plan(trainable, param_space: dict, seed: int, data_ref, n_train: int, train_bytes: int,
             cpus: float, code_paths=(), repeats: int = 1) -> dict:
    """Each cost-relevant configuration probed alone on a whole GPU (peak device memory, as the trainable
    reports it, plus the part of the training set the probe did not hold), and the GPU fraction that follows.
    ``repeats`` (--repeats): a trial holds that many models at once, so the probe's peak counts that many times
    (the training set once).
    Returns {"gpu_mb", "rows": [{"cost_key", "name", "peak_mb", "fraction"}]}."""
    import ray

    configs = cost_configs(trainable, param_space, seed)
    gpu_mb = ray.get(ray.remote(num_gpus=1, num_cpus=0)(_gpu_memory_mb).remote())
    probes = probe_all(trainable, configs, data_ref, n_train, train_bytes, cpus, 1, 1, code_paths)
    rows = []
    for c in configs:
        p = probes[cost_key(trainable, c)]
        peak = p["peak_mem_mb"] * repeats + p["untouched_mb"]
        rows.append({"cost_key": json.dumps(cost_key(trainable, c)), "name": trainable.run_name(c),
                     "peak_mb": peak, "fraction": gpu_fraction(peak, gpu_mb)})
    return {"gpu_mb": gpu_mb, "headroom": HEADROOM, "context_mb": CONTEXT_MB, "rows": rows}


def gpu_resources(trainable, plan: dict, cpus: float):
    """``tune.with_resources``'s per-configuration resources from a gpu_plan: each trial asks for its own
    configuration's fraction (a configuration no probe matched asks for the largest)."""
    from trainables.params import resolve

    fractions = {r["cost_key"]: r["fraction"] for r in plan["rows"]}
    largest = max(fractions.values())

    def resources(config: dict) -> dict:
        key = json.dumps(cost_key(trainable, resolve(trainable.PARAMS, config)))
        return {"cpu": cpus, "gpu": fractions.get(key, largest)}

    return resources


def gpu_table(plan: dict) -> str:
    lines = [f"tune_app: --gpus-per-trial auto on GPUs of {plan['gpu_mb']:.0f} MB (measured peak x {HEADROOM:g} + "
             f"{CONTEXT_MB} MB each):"]
    for r in plan["rows"]:
        per_gpu = round(1 / r["fraction"]) if r["fraction"] < 1 else 1
        lines.append(f"  {r['name'][:48]:<48} peak {r['peak_mb']:>8.0f} MB -> {r['fraction']:g} GPU "
                     f"({per_gpu} per GPU)")
    return "\n".join(lines)
