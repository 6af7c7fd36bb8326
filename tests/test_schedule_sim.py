"""tune_app.cost.schedule: the ASHA simulation behind --plan --gpus and gpu_check's study-1 projection decides as
Ray's own ASHAScheduler does, result for result."""
from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune_app.cost.schedule import Asha, asha_rungs, gpu_slots, projection, simulate


@pytest.mark.parametrize("max_t, grace, rf, want", [(80, 5, 3, [45, 15, 5]), (20, 1, 2, [16, 8, 4, 2, 1]),
                                                    (10, 1, 4, [4, 1])])
def test_rungs_are_rays(max_t, grace, rf, want):
    """Ray's formula: int(log(max_t / grace) / log(rf) + 1) rungs at grace * rf^k (the decisions below check them)."""
    assert asha_rungs(max_t, grace, rf) == want


@pytest.mark.parametrize("seed", range(4))
def test_every_decision_matches_rays_scheduler(seed):
    """Random trials report interleaved, as concurrent trials do; each result goes to both rules."""
    rnd = random.Random(seed)
    max_t, grace, rf = 27, 1, 3
    ray_asha = ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=max_t, grace_period=grace,
                             reduction_factor=rf)
    ours = Asha(asha_rungs(max_t, grace, rf), rf)
    trials = {f"t{i}": SimpleNamespace(trial_id=f"t{i}") for i in range(40)}
    for t in trials.values():
        ray_asha.on_trial_add(None, t)
    epoch = dict.fromkeys(trials, 0)
    alive = set(trials)
    decisions = stops = 0
    while alive:
        tid = rnd.choice(sorted(alive))
        epoch[tid] += 1
        value = rnd.random()
        ray_stop = ray_asha.on_trial_result(None, trials[tid], {"epoch": epoch[tid], "m": value}) == TrialScheduler.STOP
        our_stop = ours.stops(tid, epoch[tid], value) or epoch[tid] >= max_t
        assert our_stop == ray_stop, (tid, epoch[tid], value)
        decisions += 1
        stops += ray_stop and epoch[tid] < max_t
        if ray_stop:
            alive.discard(tid)
    assert decisions > 100 and stops > 10  # the comparison covered many early stops


def test_simulation_counts_epochs_and_wall_time():
    trials = [{"epochs": 9, "epoch_s": 2.0} for _ in range(12)]
    full = simulate(trials, slots=4)
    assert full == {"epochs": 108, "wall_s": pytest.approx(3 * 9 * 2.0), "stopped": 0}
    asha = simulate(trials, slots=4, rule=Asha(asha_rungs(9, 1, 3), 3))
    assert 12 <= asha["epochs"] < 108 and asha["stopped"] > 0
    assert asha["wall_s"] < full["wall_s"]
    assert simulate(trials, slots=12)["wall_s"] == pytest.approx(18.0)


def test_projection_here_and_on_gpu_clusters():
    rows = [{"epochs": 10, "est_epoch_s": 6.0}] * 8  # 8 trials of a minute
    fifo = {"scheduler": "fifo", "gpus_per_trial": 0.25, "max_epochs": 10, "grace_period": 1, "reduction_factor": 3}
    text = projection(rows, fifo, concurrency=2, gpus=[1, 2, 3])
    lines = text.splitlines()
    assert lines[0] == ("projected: 80 of the 80 planned epochs, about 4.0 min with 2 trials at a time; every trial "
                        "trains all its epochs")
    # 4 a GPU: 8 trials of 60 s take 2 rounds on 1 GPU, 1 on 2 (and on 3)
    assert lines[1] == ("on GPUs, at these estimated epoch times (4 trials a GPU): about 2.0 min on 1 GPU, "
                        "60 s on 2 GPUs, 60 s on 3 GPUs")
    asha = projection(rows, {**fifo, "scheduler": "asha"}, concurrency=2, gpus=[1])
    epochs = int(asha.split()[1].replace(",", ""))
    assert 8 <= epochs < 80 and "ASHA stopping trials at its rungs" in asha
    assert "an upper bound" in projection(rows, {**fifo, "scheduler": "hyperband"}, concurrency=2)
    two_each = projection(rows, {**fifo, "gpus_per_trial": 2}, concurrency=2, gpus=[1, 4])
    assert two_each.splitlines()[1].endswith(
        "(2 GPUs a trial): about none on 1 GPU (a trial holds 2), 4.0 min on 4 GPUs")


def test_gpu_slots():
    assert gpu_slots(1, 0.25) == 4 and gpu_slots(1, 0.3333) == 3 and gpu_slots(4, 0.5) == 8
    assert gpu_slots(3, 2) == 1 and gpu_slots(8, 0.25, max_concurrent=5) == 5
