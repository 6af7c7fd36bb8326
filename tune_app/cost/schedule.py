"""How long a sweep takes once its scheduler stops trials early: an event simulation of ASHA, Ray-free.

``--plan`` (with ``--gpus N``) and scripts/gpu_check.py's study-1 projection use it: each trial's epochs take
its estimated seconds, ``slots`` trials train at once, and at each rung ASHA stops a trial whose metric is below
the rung's ``1 - 1/reduction_factor`` quantile of the values recorded there so far, as Ray's
``AsyncHyperBandScheduler`` (one bracket) decides (tests/test_schedule_sim.py replays the same results through
Ray's own scheduler). A trial's metric is a fixed random draw, the same at every epoch: only ranks matter to ASHA,
and which configurations do well is what a plan cannot know.
"""
from __future__ import annotations

import heapq
import math

import numpy as np


def asha_rungs(max_t: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The milestones of Ray's ASHA (one bracket), highest first: grace_period * rf^k below max_t."""
    count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return [int(grace_period * reduction_factor**k) for k in reversed(range(count))]


class Asha:
    """ASHA's stopping rule over the results trials report (the larger value is the better)."""

    def __init__(self, rungs: list[int], reduction_factor: float) -> None:
        self.rf = reduction_factor
        self.recorded: list[tuple[int, dict]] = [(m, {}) for m in rungs]

    def stops(self, trial, epoch: int, value: float) -> bool:
        for milestone, recorded in self.recorded:
            if epoch >= milestone and trial in recorded:
                return False  # decided at this rung already; milestones are highest first
            if epoch < milestone or trial in recorded:
                continue
            below = bool(recorded) and value < np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100)
            recorded[trial] = value
            return below
        return False


def simulate(trials: list[dict], slots: int, rule: Asha | None = None, seed: int = 0) -> dict:
    """Trials (``epochs``, ``epoch_s`` each) in order, ``slots`` at a time, a freed slot taking the next; ``rule``
    None: every trial trains its epochs. Returns {"epochs": trained, "wall_s": when the last one ended,
    "stopped": trials stopped early}."""
    quality = np.random.default_rng(seed).random(len(trials))
    pending = list(range(len(trials)))[::-1]
    running: list[tuple[float, int, int]] = []
    clock, trained, stopped = 0.0, 0, 0

    def start(at: float) -> None:
        if pending:
            i = pending.pop()
            heapq.heappush(running, (at + trials[i]["epoch_s"], i, 1))

    for _ in range(max(1, slots)):
        start(0.0)
    while running:
        clock, i, epoch = heapq.heappop(running)
        trained += 1
        says_stop = rule is not None and rule.stops(i, epoch, quality[i])  # a last epoch at a rung is recorded too
        early = says_stop and epoch < trials[i]["epochs"]
        if epoch >= trials[i]["epochs"] or early:
            stopped += early
            start(clock)
        else:
            heapq.heappush(running, (clock + trials[i]["epoch_s"], i, epoch + 1))
    return {"epochs": trained, "wall_s": clock, "stopped": stopped}


def asha_for(settings: dict) -> Asha | None:
    """The rule a sweep's scheduler applies, where it is ASHA's; None for every other scheduler."""
    if settings.get("scheduler") != "asha":
        return None
    max_t = int(settings["max_epochs"])
    return Asha(asha_rungs(max_t, min(int(settings["grace_period"]), max_t), settings["reduction_factor"]),
                settings["reduction_factor"])


def gpu_slots(gpus: int, gpus_per_trial: float, max_concurrent: int | None = None) -> int:
    """Trials at once on ``gpus`` GPUs when each holds ``gpus_per_trial`` (0.25: four a GPU; 2: one per two)."""
    slots = math.floor(gpus / gpus_per_trial + 1e-9)
    return min(slots, max_concurrent) if max_concurrent else slots


def projection(rows: list[dict], settings: dict, concurrency: int, gpus: list[int] = ()) -> str:
    """--plan's projected wall time: the estimated trials (``est_epoch_s``, ``epochs``) through the scheduler's
    early stopping (ASHA simulated; every other scheduler as if it stopped none) at ``concurrency`` trials at once,
    and on each cluster of ``gpus`` GPUs at ``gpus_per_trial`` each."""
    from tune_app.cost.estimate import duration

    trials = [{"epochs": int(r["epochs"]), "epoch_s": float(r["est_epoch_s"])} for r in rows]
    planned = sum(t["epochs"] for t in trials)
    scheduler = settings.get("scheduler", "fifo")
    here = simulate(trials, concurrency, asha_for(settings), settings.get("seed") or 0)
    how = {"asha": "ASHA stopping trials at its rungs (simulated)", "fifo": "every trial trains all its epochs"}.get(
        scheduler, f"as if {scheduler} stopped no trial early: an upper bound")
    lines = [f"projected: {here['epochs']:,} of the {planned:,} planned epochs, about {duration(here['wall_s'])} "
             f"with {concurrency} trials at a time; {how}"]
    if gpus:
        share = float(settings["gpus_per_trial"])
        parts = []
        for n in gpus:
            slots = gpu_slots(n, share, settings.get("max_concurrent"))
            if slots < 1:
                parts.append(f"none on {n} GPU{'s' * (n > 1)} (a trial holds {share:g})")
                continue
            wall = simulate(trials, slots, asha_for(settings), settings.get("seed") or 0)["wall_s"]
            parts.append(f"{duration(wall)} on {n} GPU{'s' * (n > 1)}")
        per_gpu = f"{gpu_slots(1, share):g} trials a GPU" if share <= 1 else f"{share:g} GPUs a trial"
        lines.append(f"on GPUs, at these estimated epoch times ({per_gpu}): about {', '.join(parts)}")
    return "\n".join(lines)
