"""What a sweep will cost, before anything trains: ``python -m tune_app.search --space NAME --plan``.

One row per configuration: parameter count, estimated peak memory, estimated time per
epoch and per trial, and the total. The estimates come from a short measured probe: for
each distinct cost-relevant configuration (architecture, batch size, dataset; the
trainable's ``COST_KEYS``) the real ``fit`` trains a cold epoch and two measured ones on a slice of
the training set (20 steps, at least 8192 samples) with the whole validation split, in a fresh Ray worker
with the trial's resources, alongside as many other probes as the sweep will run trials at once
(so it shares the machine as a trial will). The faster warm epoch gives training samples/s and
evaluation seconds; an epoch is then
``train size / samples/s + evaluation seconds``. Peak memory is what the trainable itself
reports (``peak_mem_mb``) in that worker, plus the part of the training set the probe did
not touch. A grid is listed in full; a sampled space is listed as ``num_samples`` draws
from its distributions (seeded): the searcher's own picks will differ, the cost mix not much.
"""
from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np

from tune_app.spaces import is_grid

PROBE_STEPS = 20  # training steps per probe epoch, and at least PROBE_SAMPLES samples
PROBE_SAMPLES = 8192
PLAN_FILE = "plan.json"


def configurations(param_space: dict, num_samples: int, seed: int) -> list[dict]:
    """The configurations a sweep will run (a grid, times num_samples), or draws from a sampled space."""
    from ray.tune.search.sample import Domain

    grid = {k: v["grid_search"] for k, v in param_space.items() if is_grid(v)}
    rng = np.random.default_rng(seed)
    random.seed(seed)
    out = []
    for _ in range(num_samples):
        for combo in itertools.product(*grid.values()) if grid else [()]:
            config = dict(zip(grid, combo))
            for key, value in param_space.items():
                if key in grid:
                    continue
                config[key] = value.sample(random_state=rng) if isinstance(value, Domain) else value
            out.append({k: v.item() if isinstance(v, np.generic) else v for k, v in config.items()})
    return out


def cost_key(trainable, config: dict) -> tuple:
    """The values that decide a configuration's time and memory: the trainable's COST_KEYS, and the arguments of
    a model of the user's (``model.NAME``: a width changes both)."""
    keys = [*trainable.COST_KEYS, *sorted(k for k in config if k.startswith("model."))]
    return tuple((k, json.dumps(config.get(k), default=str)) for k in keys)


WARM_EPOCHS = 2  # measured epochs after the first (cold) one; the faster counts
BARRIER_TIMEOUT_S = 300  # a wave that cannot all start at once must not wait forever


class _Wave:
    """Ray actor that lines up the probes of one wave: they start training together, once every worker has
    imported what a trial's process holds, and go on training until all have measured. So each probe shares
    the machine with as many busy neighbours as a trial of the sweep will, and none is starting up."""

    def __init__(self, size: int) -> None:
        self.size, self.ready, self.measured = size, 0, 0

    async def start(self) -> None:
        import asyncio
        import time

        self.ready += 1
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        while self.ready < self.size and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def measured_one(self) -> None:
        self.measured += 1

    def all_measured(self) -> bool:
        return self.measured >= self.size


class _ProbeReporter:
    """Keeps each epoch's metrics; after the cold and the warm epochs, tells the wave, and stops the probe once
    every probe of the wave has measured."""

    def __init__(self, wave) -> None:
        self.wave, self.history = wave, []

    def restore(self):
        return None

    def report(self, metrics: dict, state: dict) -> None:
        import ray

        from trainables.reporting import StopTraining

        self.history.append(dict(metrics))
        if len(self.history) == 1 + WARM_EPOCHS:
            ray.get(self.wave.measured_one.remote())
        if len(self.history) >= 1 + WARM_EPOCHS and ray.get(self.wave.all_measured.remote()):
            raise StopTraining


def _probe(fit, config: dict, data: dict, steps: int, wave, code_paths=()) -> dict:
    """Epochs on a slice of the training set: a cold one, then WARM_EPOCHS measured ones (the faster counts),
    then more while other probes of the wave still measure. The modules a Tune trial's worker holds are imported
    first, so that the memory the worker reports compares with a trial's."""
    import ray

    import tune_app.ray_adapter  # noqa: F401  (Ray Tune, torch: what a trial's process has loaded)
    from trainables.reporting import StopTraining
    from tune_app.usercode import use_paths

    use_paths(code_paths)  # a model of the user's, where tune_app did not start Ray with its runtime_env

    n = min(len(data["y_train"]), max(steps * int(config["batch_size"]), PROBE_SAMPLES))
    probe_data = {**data, "x_train": data["x_train"][:n], "y_train": data["y_train"][:n]}
    reporter = _ProbeReporter(wave)
    ray.get(wave.start.remote())
    try:
        fit({**config, "epochs": 10_000, "max_epochs": 0}, probe_data, reporter)
    except StopTraining:
        pass
    last = max(reporter.history[1:1 + WARM_EPOCHS], key=lambda m: m["samples_per_s"])
    return {"probe_samples": n, "samples_per_s": last["samples_per_s"],
            "eval_s": max(0.0, last["epoch_time_s"] - n / last["samples_per_s"]),
            "peak_mem_mb": max(m["peak_mem_mb"] for m in reporter.history), "params": last["params"],
            "epochs_run": len(reporter.history)}


def probe_all(trainable, configs: list[dict], data_ref, n_train: int, train_bytes: int, cpus: float,
              gpus: float, concurrency: int, code_paths=()) -> dict:
    """One probe per distinct cost key, each a Ray task in a fresh worker (max_calls=1), in waves of as many as
    the sweep will run at once (see _Wave)."""
    import ray

    remote = ray.remote(max_calls=1, num_cpus=cpus, num_gpus=gpus)(_probe)
    wave_actor = ray.remote(num_cpus=0)(_Wave)
    keys = list(dict.fromkeys(cost_key(trainable, c) for c in configs))
    first = {cost_key(trainable, c): c for c in reversed(configs)}
    results = {}
    for start in range(0, len(keys), concurrency):
        batch = keys[start:start + concurrency]
        wave = wave_actor.remote(len(batch))
        futures = [remote.remote(trainable.fit, first[k], data_ref, PROBE_STEPS, wave, code_paths) for k in batch]
        results.update(zip(batch, ray.get(futures)))
        ray.kill(wave)
    for result in results.values():
        result["untouched_mb"] = train_bytes * (1 - result["probe_samples"] / n_train) / 2**20
    return results


def estimate(trainable, configs: list[dict], probes: dict, n_train: int) -> list[dict]:
    rows = []
    for i, c in enumerate(configs, start=1):
        p = probes[cost_key(trainable, c)]
        epoch_s = n_train / p["samples_per_s"] + p["eval_s"]
        epochs = min(int(c["epochs"]), int(c.get("max_epochs") or c["epochs"]))
        rows.append({"config": i, "name": trainable.run_name(c), "params": int(p["params"]), "epochs": epochs,
                     "est_peak_mem_mb": p["peak_mem_mb"] + p["untouched_mb"], "est_epoch_s": epoch_s,
                     "est_trial_s": epoch_s * epochs, "cost_key": json.dumps(cost_key(trainable, c))})
    return rows


def table(rows: list[dict], concurrency: float) -> str:
    head = f"{'#':>4}  {'configuration':<48} {'params':>10} {'est. peak MB':>12} {'s/epoch':>9} {'epochs':>6} " \
           f"{'s/trial':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['config']:>4}  {r['name'][:48]:<48} {r['params']:>10,} {r['est_peak_mem_mb']:>12.0f} "
                     f"{r['est_epoch_s']:>9.3g} {r['epochs']:>6} {r['est_trial_s']:>9.3g}")
    total = math.fsum(r["est_trial_s"] for r in rows)
    lines.append(f"total: {len(rows)} trials, {duration(total)} of training; about {duration(total / concurrency)} "
                 f"with {concurrency:g} trials at a time (before any early stopping)")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def attach(trials, history, rows: list[dict], trainable):
    """Estimates next to what each trial measured: est_epoch_s / epoch_s (median epoch), est_peak_mem_mb /
    final_peak_mem_mb, est_trial_s (at the trial's planned epochs) / seconds."""
    from trainables.params import resolve
    from tune_app.summary import config_of

    by_key = {r["cost_key"]: r for r in rows}
    est_epoch, est_mem = [], []
    for _, row in trials.iterrows():
        try:
            key = json.dumps(cost_key(trainable, resolve(trainable.PARAMS, config_of(row, trials))))
        except ValueError:
            key = None
        hit = by_key.get(key, {})
        est_epoch.append(hit.get("est_epoch_s", math.nan))
        est_mem.append(hit.get("est_peak_mem_mb", math.nan))
    median = history.groupby("trial_id")["epoch_time_s"].median() if "epoch_time_s" in history else {}
    trials = trials.copy()
    trials["est_epoch_s"] = est_epoch
    trials["epoch_s"] = [median.get(t, math.nan) for t in trials["trial_id"]]
    trials["est_trial_s"] = trials["est_epoch_s"] * trials["target_epochs"].astype("float64")
    trials["est_peak_mem_mb"] = est_mem
    return trials


# ---------------------------------------------------------------- --gpus-per-trial auto

GPU_PLAN_FILE = "gpu_plan.json"
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
             cpus: float, code_paths=()) -> dict:
    """Each cost-relevant configuration probed alone on a whole GPU (peak device memory, as the trainable
    reports it, plus the part of the training set the probe did not hold), and the GPU fraction that follows.
    Returns {"gpu_mb", "rows": [{"cost_key", "name", "peak_mb", "fraction"}]}."""
    import ray

    configs = cost_configs(trainable, param_space, seed)
    gpu_mb = ray.get(ray.remote(num_gpus=1, num_cpus=0)(_gpu_memory_mb).remote())
    probes = probe_all(trainable, configs, data_ref, n_train, train_bytes, cpus, 1, 1, code_paths)
    rows = []
    for c in configs:
        p = probes[cost_key(trainable, c)]
        peak = p["peak_mem_mb"] + p["untouched_mb"]
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
