"""What a sweep will cost, before anything trains: ``python -m tune_app.search --space NAME --plan``.

One row per configuration: parameter count, estimated peak memory, estimated time per epoch and per trial, and
the total. The estimates come from a short measured probe: for each distinct cost-relevant configuration
(architecture, batch size, dataset; the trainable's ``COST_KEYS``) the real ``fit`` trains a cold epoch and two
measured ones on a slice of the training set (20 steps, at least 8192 samples) with the whole validation split, in
a Ray worker with the trial's resources, alongside as many other probes as the sweep will run trials at once (so
it shares the machine as a trial will). The workers of one wave take the next wave's probes, each with its peak
memory reset, warm as the reused actors of a sweep's trials are. The faster warm epoch gives training samples/s
and evaluation seconds; an epoch is then ``train size / samples/s + evaluation seconds``. Peak memory is what the
trainable itself reports (``peak_mem_mb``) in that worker, plus the part of the training set the probe did not
touch. A grid is listed in full; a sampled space is listed as ``num_samples`` draws from its distributions
(seeded): the searcher's own picks will differ, the cost mix not much.
"""
from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np

PROBE_STEPS = 20  # training steps per probe epoch, and at least PROBE_SAMPLES samples
PROBE_SAMPLES = 8192


def configurations(param_space: dict, num_samples: int, seed: int) -> list[dict]:
    """The configurations a sweep will run (a grid, times num_samples), or draws from a sampled space."""
    from ray.tune.search.sample import Domain

    from tune_app.spaces import is_grid

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

    import tune_app.cluster.adapter  # noqa: F401  (Ray Tune, torch: what a trial's process has loaded)
    from trainables.reporting import StopTraining
    from tune_app.usercode import use_paths

    use_paths(code_paths)  # a model of the user's, where tune_app did not start Ray with its runtime_env
    reset_peak_memory()  # a worker that probed before

    n = probe_samples(len(data["y_train"]), int(config["batch_size"]), steps)
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


def reset_peak_memory() -> None:
    """From here on, this process's peak memory as a trainable reports it: Linux's resident high-water mark (which
    getrusage's ru_maxrss follows, though never below the peak of the process it was exec'd from: for Ray's
    workers, the raylet's) and torch's CUDA peak."""
    import sys

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def probe_samples(n_train: int, batch_size: int, steps: int = PROBE_STEPS) -> int:
    """The training images a probe trains on: ``steps`` batches, at least PROBE_SAMPLES, at most the training set."""
    return min(n_train, max(steps * batch_size, PROBE_SAMPLES))


def untouched_mb(train_bytes: int, probe_samples: int, n_train: int) -> float:
    """The part of the training set (uint8 on the device) a probe on ``probe_samples`` images did not hold."""
    return train_bytes * (1 - probe_samples / n_train) / 2**20


def probe_all(trainable, configs: list[dict], data_ref, n_train: int, train_bytes: int, cpus: float,
              gpus: float, concurrency: int, code_paths=()) -> dict:
    """One probe per distinct cost key, each a Ray task, in waves of as many as the sweep will run at once (see
    _Wave). A wave's workers take the next wave's probes (a worker's start and imports cost seconds a probe); each
    probe resets its worker's peak memory first, which takes Linux (elsewhere, each probe has a fresh worker)."""
    import sys

    import ray

    fresh = {} if sys.platform == "linux" else {"max_calls": 1}
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, **fresh)(_probe)
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
        result["untouched_mb"] = untouched_mb(train_bytes, result["probe_samples"], n_train)
    return results


def estimate(trainable, configs: list[dict], probes: dict, n_train: int, repeats: int = 1) -> list[dict]:
    """Each configuration's estimated peak memory, seconds per epoch and per trial; ``repeats`` (--repeats): a
    trial trains that many runs, one after another each epoch, and holds their models at once."""
    rows = []
    for i, c in enumerate(configs, start=1):
        p = probes[cost_key(trainable, c)]
        epoch_s = (n_train / p["samples_per_s"] + p["eval_s"]) * repeats
        epochs = min(int(c["epochs"]), int(c.get("max_epochs") or c["epochs"]))
        rows.append({"config": i, "name": trainable.run_name(c), "params": int(p["params"]), "epochs": epochs,
                     "est_peak_mem_mb": p["peak_mem_mb"] * repeats + p["untouched_mb"], "est_epoch_s": epoch_s,
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
    from tune_app.rundir.tables import config_of

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
