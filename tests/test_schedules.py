"""Every schedule's lr, step by step, against its formula written out here (and against torch's
own scheduler where one exists); warm-up, resume from a checkpoint, and PBT's lr change."""
import io
import math

import pytest
import torch
from torch.optim import lr_scheduler

from trainables.optim import SCHEDULES, build_schedule
from trainables.registry import UnknownName

LR, EPOCHS, STEPS = 0.1, 6, 4  # base lr, epochs, optimizer steps per epoch
OPTIONS = {"step_size": 2, "gamma": 0.5, "plateau_patience": 1, "plateau_factor": 0.5}
VAL_LOSS = [1.0, 0.9, 0.95, 0.92, 0.8, 0.85]  # plateau: 2 bad epochs (2, 3) > patience 1 -> halve from epoch 4


def optimizer(lr=LR):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def build(name, opt, **kw):
    return build_schedule(name, opt, EPOCHS, STEPS, **{**OPTIONS, **kw})


def run(schedule, opt, start=0, stop=EPOCHS * STEPS, val_loss=VAL_LOSS):
    """The lr of optimizer steps start..stop-1 (global step numbers), stepping as the trainable does."""
    lrs = []
    for t in range(start, stop):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step_batch()
        if (t + 1) % STEPS == 0:
            schedule.step_epoch(val_loss[t // STEPS])
    return lrs


def per_epoch(lrs_of_epoch):
    return [lrs_of_epoch[t // STEPS] for t in range(EPOCHS * STEPS)]


def one_cycle(t, total, pct_start, lr):
    """OneCycleLR's two cosine phases, written out: lr/25 -> lr by step pct_start*total - 1, then -> lr/25/1e4."""
    peak = pct_start * total - 1
    if t <= peak:
        return lr / 25 + (lr - lr / 25) * (1 - math.cos(math.pi * t / peak)) / 2
    low = lr / 25 / 1e4
    return low + (lr - low) * (1 + math.cos(math.pi * (t - peak) / (total - 1 - peak))) / 2


EXPECTED = {
    "none": [LR] * EPOCHS * STEPS,
    "cosine": per_epoch([LR * (1 + math.cos(math.pi * e / EPOCHS)) / 2 for e in range(EPOCHS)]),
    "step": per_epoch([LR * 0.5 ** (e // 2) for e in range(EPOCHS)]),
    "plateau": per_epoch([LR, LR, LR, LR, LR / 2, LR / 2]),
    "onecycle": [one_cycle(t, EPOCHS * STEPS, 0.3, LR) for t in range(EPOCHS * STEPS)],
}


def test_every_registered_schedule_has_a_trajectory_here():
    assert sorted(EXPECTED) == SCHEDULES.names()


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_lr_of_every_step_matches_the_formula(name):
    opt = optimizer()
    assert run(build(name, opt), opt) == pytest.approx(EXPECTED[name], rel=1e-12)


@pytest.mark.parametrize("name", ["cosine", "step", "plateau", "onecycle"])
def test_lr_of_every_step_matches_torchs_scheduler(name):
    """torch's scheduler on a second optimizer, stepped where ours is."""
    opt, ref_opt = optimizer(), optimizer()
    ours = build(name, opt)
    ref = {"cosine": lambda: lr_scheduler.CosineAnnealingLR(ref_opt, T_max=EPOCHS),
           "step": lambda: lr_scheduler.StepLR(ref_opt, step_size=2, gamma=0.5),
           "plateau": lambda: lr_scheduler.ReduceLROnPlateau(ref_opt, mode="min", factor=0.5, patience=1),
           "onecycle": lambda: lr_scheduler.OneCycleLR(ref_opt, max_lr=LR, total_steps=EPOCHS * STEPS,
                                                       cycle_momentum=False)}[name]()
    for t in range(EPOCHS * STEPS):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9), t
        ref_opt.step()
        ours.step_batch()
        if name == "onecycle" and t + 1 < EPOCHS * STEPS:  # torch raises when stepped past its total
            ref.step()
        if (t + 1) % STEPS == 0:
            ours.step_epoch(VAL_LOSS[t // STEPS])
            if name == "plateau":
                ref.step(VAL_LOSS[t // STEPS])
            elif name != "onecycle":
                ref.step()


def test_warmup_rises_linearly_per_step_then_hands_over():
    opt = optimizer()
    lrs = run(build("none", opt, warmup_epochs=1.5), opt)  # W = 6 steps
    assert lrs == pytest.approx([LR * (k + 1) / 6 for k in range(6)] + [LR] * (EPOCHS * STEPS - 6), rel=1e-12)


def test_warmup_multiplies_the_main_schedule_which_counts_epochs_from_zero():
    opt = optimizer()
    lrs = run(build("step", opt, warmup_epochs=1.5), opt)
    warmup = [min(1.0, (t + 1) / 6) for t in range(EPOCHS * STEPS)]
    assert lrs == pytest.approx([w * lr for w, lr in zip(warmup, EXPECTED["step"])], rel=1e-12)


def test_onecycle_rises_for_the_warmup_epochs_instead_of_30_percent():
    opt = optimizer()
    lrs = run(build("onecycle", opt, warmup_epochs=2), opt)
    assert lrs == pytest.approx([one_cycle(t, EPOCHS * STEPS, 2 / EPOCHS, LR) for t in range(EPOCHS * STEPS)])
    assert max(lrs) == pytest.approx(LR) and lrs.index(max(lrs)) == 2 * STEPS - 1


def test_onecycle_leaves_momentum_alone_and_keeps_its_last_lr_past_the_end():
    opt = optimizer()
    schedule = build("onecycle", opt)
    lrs = run(schedule, opt)
    schedule.step_batch()  # one step too many: the last lr stays, no error
    assert opt.param_groups[0]["lr"] == lrs[-1] == pytest.approx(LR / 25 / 1e4)
    assert opt.param_groups[0]["momentum"] == 0.9


def test_plateau_ignores_a_nan_loss():
    opt = optimizer()
    lrs = run(build("plateau", opt), opt, val_loss=[1.0, math.nan, math.nan, 1.0, 1.0, 1.0])
    # Bad epochs 3 and 4 only; counting the NaNs (as torch does) would halve from epoch 3.
    assert lrs == pytest.approx(per_epoch([LR] * 5 + [LR / 2]), rel=1e-12)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_resume_from_a_checkpoint_mid_epoch_continues_the_same_lrs(name):
    opt = optimizer()
    whole = run(build(name, opt, warmup_epochs=1.5), opt)
    stop = 2 * STEPS + 2  # mid warm-up's end, mid epoch 2, after plateau has seen 2 losses

    opt = optimizer()
    schedule = build(name, opt, warmup_epochs=1.5)
    first = run(schedule, opt, stop=stop)
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "schedule": schedule.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    opt = optimizer()
    schedule = build(name, opt, warmup_epochs=1.5)
    opt.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    assert first + run(schedule, opt, start=stop) == whole


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_set_base_lr_rescales_the_rest_of_the_run(name):
    opt = optimizer()
    whole = run(build(name, opt, warmup_epochs=1.5), opt)
    opt = optimizer()
    schedule = build(name, opt, warmup_epochs=1.5)
    stop = 3 * STEPS + 1
    run(schedule, opt, stop=stop)
    schedule.set_base_lr(3 * LR)
    assert run(schedule, opt, start=stop) == pytest.approx([3 * lr for lr in whole[stop:]], rel=1e-12)


def test_unknown_schedule_lists_the_known_ones():
    with pytest.raises(UnknownName) as e:
        build_schedule("linear", optimizer(), EPOCHS, STEPS)
    assert str(e.value) == "unknown schedule 'linear'; known: cosine, none, onecycle, plateau, step"


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"steps_per_epoch": 0}, {"warmup_epochs": -1},
                                 {"warmup_epochs": EPOCHS + 0.5}, {"gamma": 0.0}, {"step_size": 0},
                                 {"plateau_patience": -1}, {"plateau_factor": 1.0}])
def test_bad_numbers_are_refused_in_one_line(bad):
    args = {"epochs": EPOCHS, "steps_per_epoch": STEPS, **bad}
    with pytest.raises(ValueError) as e:
        build_schedule("cosine", optimizer(), **args)
    assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)
