"""--repeats k without Ray: k runs of one configuration in lockstep, each the same run as one trained alone with its
seed, reported as their mean, checkpointed and resumed together."""
import math

import numpy as np
import pytest

from tests.test_image_classifier import BASE, strip
from trainables import image_classifier as ic
from trainables.reporting import LocalReporter, StopTraining
from tune_app.repeats import RUNS, STATES, combine, fit_repeats, seeds

CONFIG = {**BASE, "crop_padding": 1, "cutout": 2, "seed": 5}  # augmentation draws from the generators every batch


def alone(config, data):
    reporter = LocalReporter()
    ic.fit(config, data, reporter)
    return reporter.history


def test_each_run_is_the_run_its_seed_trains_alone_and_the_report_is_their_mean(digits):
    reporter = LocalReporter()
    fit_repeats(ic.fit, CONFIG, digits.sweep_view(), reporter, 3)
    solo = [alone({**CONFIG, "seed": s}, digits.sweep_view()) for s in (5, 6, 7)]
    assert [h["epoch"] for h in reporter.history] == [1, 2, 3]
    for epoch, report in enumerate(reporter.history):
        runs = report[RUNS]
        assert [runs[str(r)]["seed"] for r in range(3)] == [5, 6, 7]
        for r in range(3):  # to the last digit, though the runs took turns drawing random numbers
            assert strip([{k: v for k, v in runs[str(r)].items() if k != "seed"}]) == strip([solo[r][epoch]])
        assert report["val_acc"] == pytest.approx(np.mean([solo[r][epoch]["val_acc"] for r in range(3)]), abs=1e-15)
        assert report["train_loss"] == pytest.approx(np.mean([solo[r][epoch]["train_loss"] for r in range(3)]))
        assert report["epoch_time_s"] == pytest.approx(sum(runs[str(r)]["epoch_time_s"] for r in range(3)))
        assert report["params"] == 53_098 and isinstance(report["params"], int)
        assert report["samples_seen"] == 3 * solo[0][epoch]["samples_seen"]
    assert len({round(s[-1]["val_acc"], 6) for s in solo} | {round(s[-1]["train_loss"], 6) for s in solo}) > 2
    assert len(reporter.state[STATES]) == 3


def test_a_stopped_trial_resumes_all_its_runs_from_the_checkpoint(digits):
    whole = LocalReporter()
    fit_repeats(ic.fit, CONFIG, digits.sweep_view(), whole, 2)
    first = LocalReporter(stop_after=1)
    with pytest.raises(StopTraining):  # a scheduler's stop reaches the runs, which unwind
        fit_repeats(ic.fit, CONFIG, digits.sweep_view(), first, 2)
    rest = LocalReporter(state=first.state)
    fit_repeats(ic.fit, CONFIG, digits.sweep_view(), rest, 2)
    assert [h["epoch"] for h in rest.history] == [2, 3]
    for a, b in zip(whole.history[1:], rest.history):
        assert a["val_acc"] == b["val_acc"] and a["train_loss"] == b["train_loss"]
        assert strip([a[RUNS]["1"]]) == strip([b[RUNS]["1"]])


def test_the_trial_ends_with_its_first_run_to_end_and_a_failing_run_fails_it(digits):
    def fit(config, data, reporter):
        for epoch in range(1, 5 - config["seed"]):  # seed 0 trains 4 epochs, seed 1 trains 3
            reporter.report({"epoch": epoch, "val_acc": 0.1 * epoch + config["seed"] / 100,
                             "diverged": epoch == 3 and config["seed"] == 1}, {"epoch": epoch})

    reporter = LocalReporter()
    fit_repeats(fit, {"seed": 0}, None, reporter, 2)
    assert [h["epoch"] for h in reporter.history] == [1, 2, 3]
    assert [h["val_acc"] for h in reporter.history] == pytest.approx([0.105, 0.205, 0.305])
    assert [h["diverged"] for h in reporter.history] == [False, False, True]  # any run's flag is the trial's

    def failing(config, data, reporter):
        reporter.report({"epoch": 1, "val_acc": 0.5}, {})
        if config["seed"] == 1:
            raise RuntimeError("run 1 failed")
        reporter.report({"epoch": 2, "val_acc": 0.5}, {})

    with pytest.raises(RuntimeError, match="run 1 failed"):
        fit_repeats(failing, {"seed": 0}, None, LocalReporter(), 2)


def test_a_stopped_trial_leaves_no_run_thread_behind(digits):
    import threading

    before = threading.active_count()
    first = LocalReporter(stop_after=2)
    with pytest.raises(StopTraining):
        fit_repeats(ic.fit, CONFIG, digits.sweep_view(), first, 3)
    assert threading.active_count() == before


def test_combine_takes_means_sums_highest_and_any_flag():
    out = combine([{"epoch": 2, "val_acc": 0.5, "epoch_time_s": 1.0, "peak_mem_mb": 10.0, "params": 7,
                    "diverged": False, "note": "a"},
                   {"epoch": 2, "val_acc": 0.7, "epoch_time_s": 2.0, "peak_mem_mb": 30.0, "params": 7,
                    "diverged": True, "note": "b"}], [0, 1])
    assert out["epoch"] == 2 and out["val_acc"] == pytest.approx(0.6) and out["epoch_time_s"] == 3.0
    assert out["peak_mem_mb"] == 30.0 and out["params"] == 7 and out["diverged"] is True and out["note"] == "a"
    assert out[RUNS] == {"0": {"seed": 0, "epoch": 2, "val_acc": 0.5, "epoch_time_s": 1.0, "peak_mem_mb": 10.0,
                               "params": 7, "diverged": False},
                         "1": {"seed": 1, "epoch": 2, "val_acc": 0.7, "epoch_time_s": 2.0, "peak_mem_mb": 30.0,
                               "params": 7, "diverged": True}}
    assert math.isnan(combine([{"val_loss": math.nan}, {"val_loss": 1.0}], [0, 1])["val_loss"])
    assert seeds({"seed": 4}, 3) == [4, 5, 6] and seeds({}, 2) == [0, 1]
