"""tune_app.cluster.ray_private against the installed Ray and Optuna: every private name it uses is there and does what
tune_app relies on, built on the real objects (an upgrade that moves one fails here, by name); the installed
versions are ones it was checked against; and no other module of tune_app touches those names."""
import ast
import importlib.metadata
import os
from pathlib import Path

import pytest
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tune_app.cluster import ray_private

TUNE_APP = Path(__file__).parents[1] / "tune_app"


def test_the_installed_ray_and_optuna_are_versions_tune_app_was_checked_against():
    assert ray_private.version_warning() is None


def test_an_untested_ray_is_named_in_one_line(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda p: "2.61.0" if p == "ray" else real(p))
    assert ray_private.version_warning() == ("ray 2.61.0 is not a version tune_app was tested with (2.60.x); if a "
                                             "sweep fails inside ray, install ray==2.60.*")


def test_asha_rungs_round_trip_into_a_fresh_scheduler():
    def asha():
        scheduler = ASHAScheduler(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2)
        scheduler.set_search_properties("val_acc", "max")
        return scheduler

    first = asha()
    trials = [Trial("fit", stub=True, trial_id=f"t{i}") for i in range(3)]
    for i, trial in enumerate(trials):
        first.on_trial_add(None, trial)
        first.on_trial_result(None, trial, {"epoch": 1, "val_acc": 0.1 * i, "training_iteration": 1})
    state = ray_private.asha_state(first)
    assert state["rungs"][0][-1] == (1, {"t0": 0.0, "t1": 0.1, "t2": 0.2})
    assert state["trial_bracket"] == {"t0": 0, "t1": 0, "t2": 0}
    second = asha()
    ray_private.set_asha_state(second, state)
    assert ray_private.asha_state(second) == state
    # and the restored rungs decide: a weak new trial at the first rung is stopped against them
    weak = Trial("fit", stub=True, trial_id="t3")
    second.on_trial_add(None, weak)
    assert second.on_trial_result(None, weak, {"epoch": 1, "val_acc": -1.0, "training_iteration": 1}) == "STOP"


def test_pb2_state_round_trips_into_the_fresh_states_of_a_resumed_sweep():
    """PB2's GP data and PBT's per-trial state, taken as plain data and put back into a fresh PB2 to which the
    same trials (new objects, as Ray's restore makes them) were added."""
    from types import SimpleNamespace

    from ray.tune.schedulers.pb2 import PB2

    def pb2(trials):
        scheduler = PB2(time_attr="epoch", perturbation_interval=1, hyperparam_bounds={"lr": [1e-4, 1e-1]})
        scheduler.set_search_properties("val_acc", "max")
        for trial in trials:
            scheduler.on_trial_add(SimpleNamespace(search_alg=None), trial)
        return scheduler

    def trials():
        return [Trial("fit", stub=True, trial_id=f"t{i}", config={"lr": 0.01 * (i + 1)}) for i in range(3)]

    first = pb2(before := trials())
    for epoch in (1, 2):
        for i, trial in enumerate(before):
            per_trial = first._trial_state[trial]
            first._save_trial_state(per_trial, epoch, {"epoch": epoch, "val_acc": 0.1 * i + epoch}, trial)
            per_trial.last_perturbation_time = epoch
    state = ray_private.pbt_state(first)
    assert len(state["pb2"]["data"]) == 6 and set(state["trials"]) == {"t0", "t1", "t2"}
    assert state["trials"]["t2"]["last_score"] == pytest.approx(2.2)
    second = pb2(after := trials())
    assert second.data.empty and second._trial_state[after[2]].last_score is None
    assert ray_private.set_pbt_state(second, state) == 3
    assert second._trial_state[after[2]].last_score == pytest.approx(2.2)
    assert second._trial_state[after[0]].last_perturbation_time == 2
    assert second.data.equals(first.data) and second.last_exploration_time == first.last_exploration_time
    restored = ray_private.pbt_state(second)
    assert restored["trials"] == state["trials"] and restored["pb2"]["data"].equals(state["pb2"]["data"])


class Controller:
    """The calls HyperBand makes on Tune's controller, done as TuneController does them (stop_trial), and a trial's
    report with the scheduler's decision carried out; BOHB's HyperBand also tells the searcher what it pauses."""

    def __init__(self, scheduler, trials):
        from ray.tune.search import SearchGenerator

        from tune_app.search.bohb import PlainBOHB

        self.scheduler, self.trials = scheduler, trials
        self.search_alg = SearchGenerator(PlainBOHB(metric="val_acc", mode="max"))

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
        elif trial.status == Trial.RUNNING:
            self.scheduler.on_trial_complete(self, trial, {})
        trial.set_status(Trial.TERMINATED)

    def report(self, trial, epoch: int, acc: float) -> str:
        trial.set_status(Trial.RUNNING)
        decision = self.scheduler.on_trial_result(self, trial, {"epoch": epoch, "val_acc": acc,
                                                                "training_iteration": epoch})
        if decision == "PAUSE":
            trial.set_status(Trial.PAUSED)
        elif decision == "STOP":
            self.stop_trial(trial)
        return decision


def resumed(make, before: list, state: dict, stale=()):
    """A fresh scheduler given ``state`` as a resumed sweep gives it: the callback's state first, then new Trial
    objects with the same ids re-added (Ray's order: the most recent first), finished ones TERMINATED and the others
    PENDING, then the sweep's first step. ``stale``: trials stopped while paused, which Ray's experiment state still
    calls PAUSED (it records no trial stopped without a running actor), so that Ray re-adds them PENDING too."""
    from tune_app.search.algorithms import scheduler_state

    scheduler = make()
    callback = scheduler_state(scheduler)
    callback.set_state(state)
    after = [Trial("fit", stub=True, trial_id=t.trial_id) for t in before]
    for old, trial in reversed(list(zip(before, after))):
        trial.set_status(Trial.TERMINATED if old.is_finished() and old.trial_id not in stale else Trial.PENDING)
        scheduler.on_trial_add(None, trial)
    fresh = ray_private.hyperband_state(scheduler)
    callback.on_step_begin(0, after)
    return scheduler, after, fresh


def hyperband():
    from tune_app.search.algorithms import HyperBand

    scheduler = HyperBand(time_attr="epoch", max_t=9, reduction_factor=3)
    scheduler.set_search_properties("val_acc", "max")
    return scheduler


def test_hyperband_brackets_round_trip_into_the_fresh_brackets_of_a_resumed_sweep():
    """max_t 9, reduction factor 3: the first bracket holds 3 trials trained to 9 epochs, the second 5 trained to 3,
    of which the best 2 go on to 9. Taken when t0 waits paused at 9 epochs and t1 reported its 9th (its pause is
    being saved), t2 has not started, and the second bracket has halved: t3 and t6 (the best) wait to be unpaused,
    t4, t5 and t7 were stopped."""
    first = hyperband()
    before = [Trial("fit", stub=True, trial_id=f"t{i}") for i in range(8)]
    tune_controller = Controller(first, before)
    for trial in before:
        first.on_trial_add(tune_controller, trial)
    for trial, acc in zip(before[3:7], (0.5, 0.1, 0.2, 0.6)):
        assert tune_controller.report(trial, 3, acc) == "PAUSE"
    assert tune_controller.report(before[7], 3, 0.3) == "STOP"  # the last to 3: halving, and it is among the worst
    assert tune_controller.report(before[0], 9, 0.9) == "PAUSE"
    before[1].set_status(Trial.RUNNING)
    assert first.on_trial_result(tune_controller, before[1], {"epoch": 9, "val_acc": 0.8}) == "PAUSE"
    status = {t.trial_id: t.status for t in before}
    assert status == {"t0": "PAUSED", "t1": "RUNNING", "t2": "PENDING", "t3": "PAUSED", "t4": "TERMINATED",
                      "t5": "TERMINATED", "t6": "PAUSED", "t7": "TERMINATED"}
    state = ray_private.hyperband_state(first)
    (b0, b1), = state["bands"]
    assert (b0["_n"], b0["_cumul_r"], b0["_halves"], b0["_completed_progress"]) == (3, 9, 0, 18)
    assert (b1["_n"], b1["_cumul_r"], b1["_halves"], b1["_completed_progress"]) == (2, 9, 0, 15)
    assert sorted(b1["_live_trials"]) == sorted(b1["trials_to_unpause"]) == ["t3", "t6"]
    assert b1["_all_trials"] == ["t3", "t4", "t5", "t6", "t7"] and b0["_live_trials"]["t0"]["val_acc"] == 0.9
    assert state["waiting"] == ["t0", "t1", "t3", "t6"] and state["done"] == ["t4", "t5", "t7"]
    assert state["trial_info"]["t4"] == [0, 1, 0] and state["num_stopped"] == 3 and state["current"] == [0, 1]

    second, after, fresh = resumed(hyperband, before, state, stale=("t4", "t5"))
    assert fresh["bands"] != state["bands"]  # Ray's re-add built brackets of its own, finished trials live in them
    restored = ray_private.hyperband_state(second)
    assert restored == state
    # paused again, not PENDING (t1's pause was being saved); stopped ones stopped, whatever Ray's state said
    assert {t.trial_id: t.status for t in after} == {**status, "t1": "PAUSED"}
    before[1].set_status(Trial.PAUSED)  # (its pause saved)
    picked = first.choose_trial_to_run(tune_controller)
    assert picked.trial_id == "t3" and second.choose_trial_to_run(Controller(second, after)).trial_id == "t3"
    # and the restored brackets decide as the saved ones would: t2's 9th epoch finishes the first bracket, which
    # stops the trials waiting in it
    again = Controller(second, after)
    assert tune_controller.report(before[2], 9, 0.1) == again.report(after[2], 9, 0.1) == "STOP"
    assert {t.trial_id: t.status for t in after} == {t.trial_id: t.status for t in before}
    assert after[0].status == after[1].status == "TERMINATED"
    assert ray_private.hyperband_state(second) == ray_private.hyperband_state(first)


def test_bohb_brackets_round_trip_into_the_fresh_brackets_of_a_resumed_sweep():
    """BOHB's HyperBand fills its largest bracket first (max_t 9, reduction factor 3: 9 trials from 1 epoch, the
    best 3 to 3 epochs, the best of those to 9) and pauses trials in a bracket it has not filled. Five trials
    reported their first epoch and were paused; with none running, the bracket halved: t1 and t3 stopped, t0, t2
    and t4 unpaused; t2 reached 3 epochs and waits. Taken then, and given to a fresh scheduler."""
    pytest.importorskip("hpbandster")
    from tune_app.search.algorithms import BOHBHyperBand

    def bohb():
        scheduler = BOHBHyperBand(time_attr="epoch", max_t=9, reduction_factor=3)
        scheduler.set_search_properties("val_acc", "max")
        return scheduler

    first = bohb()
    before = [Trial("fit", stub=True, trial_id=f"t{i}") for i in range(5)]
    tune_controller = Controller(first, before)
    for trial in before:
        first.on_trial_add(tune_controller, trial)
    for trial, acc in zip(before, (0.3, 0.1, 0.5, 0.2, 0.4)):
        assert tune_controller.report(trial, 1, acc) == "PAUSE"
    assert first.choose_trial_to_run(tune_controller).trial_id == "t0"  # no trial runs: the bracket halves
    assert tune_controller.report(before[2], 3, 0.7) == "PAUSE"
    status = {t.trial_id: t.status for t in before}
    assert status == {"t0": "PAUSED", "t1": "TERMINATED", "t2": "PAUSED", "t3": "TERMINATED", "t4": "PAUSED"}
    state = ray_private.hyperband_state(first)
    (bracket,), = state["bands"]
    assert (bracket["_n"], bracket["_cumul_r"], bracket["_halves"]) == (3, 3, 1)
    assert bracket["_live_trials"]["t2"]["epoch"] == 3 and bracket["trials_to_unpause"] == ["t0", "t4"]
    assert state["waiting"] == ["t0", "t2", "t4"] and state["done"] == ["t1", "t3"] and state["num_stopped"] == 2

    second, after, fresh = resumed(bohb, before, state, stale=("t1", "t3"))
    assert fresh["bands"] != state["bands"]
    assert ray_private.hyperband_state(second) == state
    assert {t.trial_id: t.status for t in after} == status
    again = Controller(second, after)
    assert first.choose_trial_to_run(tune_controller).trial_id == second.choose_trial_to_run(again).trial_id == "t0"
    for controller, trials in ((tune_controller, before), (again, after)):  # t0 and t4 to 3: the bracket halves
        assert controller.report(trials[0], 3, 0.6) == "PAUSE"
        assert controller.report(trials[4], 3, 0.8) == "CONTINUE"  # the best of the three goes on to 9
    assert {t.trial_id: t.status for t in after} == {t.trial_id: t.status for t in before}
    assert [t.trial_id for t in after if t.status == "TERMINATED"] == ["t0", "t1", "t2", "t3"]
    assert ray_private.hyperband_state(second) == ray_private.hyperband_state(first)


def test_a_bracket_that_finishes_while_a_trials_pause_is_being_saved_stops_that_trial():
    """The first bracket (3 trials to 9 epochs): t0 reports its 9th epoch and is paused, but Tune is still saving
    its pause checkpoint (RUNNING, is_saving) when t1 and t2 report theirs and the bracket finishes. Ray's
    cleanup_full stops only the PAUSED t1; t0, paused once its save came back, waited forever in a finished bracket
    (a sweep that hung, or a --resume that did). tune_app's HyperBand stops it as Ray stops a saving trial at a
    halving. (BOHB's HyperBand pauses t2 too, then processes the bracket once no trial runs.)"""
    scheduler = hyperband()
    trials = [Trial("fit", stub=True, trial_id=f"t{i}") for i in range(3)]
    controller = Controller(scheduler, trials)
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
    trials[0].set_status(Trial.RUNNING)
    assert scheduler.on_trial_result(controller, trials[0], {"epoch": 9, "val_acc": 0.9}) == "PAUSE"
    trials[0].temporary_state.saving_to = object()  # Tune saves the pause checkpoint before it pauses the trial
    assert controller.report(trials[1], 9, 0.8) == "PAUSE"
    assert controller.report(trials[2], 9, 0.7) == "STOP"  # the bracket is finished
    assert {t.trial_id: t.status for t in trials} == {"t0": "TERMINATED", "t1": "TERMINATED", "t2": "TERMINATED"}
    (bracket,) = [b for band in scheduler._hyperbands for b in band if b]
    assert bracket._live_trials == {} and scheduler._num_stopped == 0


def test_a_hyperband_bracket_holds_no_trial_but_in_the_fields_its_state_maps_by_id():
    """hyperband_state copies every other field of Ray's bracket as it is: a Ray that adds a field holding trials
    must be mapped by id too, or a resumed sweep's brackets would hold the old sweep's Trial objects."""
    scheduler = hyperband()
    trial = Trial("fit", stub=True, trial_id="t0")
    scheduler.on_trial_add(None, trial)
    scheduler.on_trial_result(None, trial, {"epoch": 1, "val_acc": 0.5})
    (bracket,), = ray_private.hyperband_state(scheduler)["bands"]
    plain = {k: v for k, v in bracket.items() if k not in ray_private.HYPERBAND_TRIAL_FIELDS}
    assert all(isinstance(v, (int, float, str, bool, type(None))) for v in plain.values()), plain
    assert {"_n", "_r", "_cumul_r", "_n0", "_r0", "_halves", "_completed_progress"} <= set(plain)
    assert set(ray_private.HYPERBAND_TRIAL_FIELDS) <= set(bracket)


def test_a_resumed_trial_is_not_paused_by_a_decision_tune_saved_for_its_last_run(ray_local, tmp_path):
    """Tune's controller keeps the decision it is to carry out on a trial once the trial's save resolves (HyperBand's
    PAUSE) in the experiment state it saves, so a sweep resumed after Ctrl+C caught a trial being paused would pause
    it again at its first checkpoint, behind the restored brackets' back: forget_cached_decision drops it, through
    what Tune hands a scheduler."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.tune_controller import TuneController

    controller = TuneController(storage=StorageContext(storage_path=str(tmp_path), experiment_dir_name="x"))
    controller._cached_trial_decisions.update(t0="PAUSE", t1="STOP")
    assert controller.__getstate__()["_cached_trial_decisions"] == {"t0": "PAUSE", "t1": "STOP"}  # saved with it
    ray_private.forget_cached_decision(controller._wrapped(), "t0")
    assert controller._cached_trial_decisions == {"t1": "STOP"}


def test_a_trial_stopped_after_its_actor_died_is_saved_as_stopped(ray_local, tmp_path):
    """A trial retried from scratch whose actor then died (--trial-timeout killed it, its node went) is stopped by
    Tune's controller without an actor; the experiment state it saves must say ERROR, not the RUNNING it cached at
    the retry's start (the sweep would count it unfinished and --resume would run it again)."""
    import json

    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.tune_controller import TuneController

    ray_private.saved_state_keeps_every_stop()
    ray_private.saved_state_keeps_every_stop()  # twice: one wrapper
    controller = TuneController(storage=StorageContext(storage_path=str(tmp_path), experiment_dir_name="x"))
    trials = [Trial("fit", stub=True, trial_id=f"t{i}") for i in range(2)]
    for trial in trials:
        controller.add_trial(trial)
        controller._set_trial_status(trial, Trial.RUNNING)  # restarted: Tune caches it RUNNING
        controller._mark_trial_to_checkpoint(trial)
    assert all(json.loads(s[0])["status"] == "RUNNING" for s in controller._get_trial_checkpoints().values())
    assert trials[0] not in controller._trial_to_actor  # its actor is gone
    controller._schedule_trial_stop(trials[0], exception=RuntimeError("killed by --trial-timeout"))
    controller._schedule_trial_stop(trials[1])
    saved = {t: json.loads(s[0])["status"] for t, s in controller._get_trial_checkpoints().items()}
    assert saved == {"t0": "ERROR", "t1": "TERMINATED"}


def test_ray_tune_keeps_as_many_trials_waiting_as_the_sweep_runs_at_once(monkeypatch):
    """Ray Tune reads TUNE_MAX_PENDING_TRIALS_PG as its controller is made: one waiting trial for a searcher by
    itself, as many as tune_app.search.runner.pending_trials says during a sweep, Ray's own choice again after."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search import SearchGenerator

    from tune_app.search.runner import PENDING_ENV, pending_trials

    monkeypatch.delenv(PENDING_ENV, raising=False)
    searcher = SearchGenerator(OptunaSearch(metric="val_acc", mode="max"))
    assert _get_max_pending_trials(searcher) == 1
    with pending_trials(2):
        assert _get_max_pending_trials(searcher) == 2
    assert _get_max_pending_trials(searcher) == 1 and PENDING_ENV not in os.environ
    with pending_trials(None):  # grid, random, --max-concurrent: Ray's choice
        assert _get_max_pending_trials(searcher) == 1
    monkeypatch.setenv(PENDING_ENV, "5")  # the user's
    with pending_trials(2):
        assert _get_max_pending_trials(searcher) == 5


def test_the_optuna_study_inside_rays_searcher_is_reached():
    searcher = OptunaSearch(space={"lr": tune.uniform(0, 1)}, metric="val_acc", mode="max", seed=0)
    searcher.suggest("ray_trial_1")
    trial = ray_private.optuna_trial(searcher, "ray_trial_1")
    assert ray_private.optuna_trial(searcher, "nope") is None
    internal = ray_private.optuna_internal_id(trial)
    assert ray_private.optuna_known_ids(searcher) == {internal}
    study = ray_private.optuna_study(searcher)
    told = ray_private.optuna_storage(study).get_trial(internal)
    assert told.state.name == "RUNNING" and 0 <= told.params["lr"] <= 1


def test_rays_helpers_are_where_they_were():
    assert ray_private.bootstrap_address("127.0.0.1:6379").endswith(":6379")
    spec = ray_private.path_spec(["*.pyc", "data/"])
    assert spec.match_file("pkg/a.pyc") and spec.match_file("data/x.npz") and not spec.match_file("pkg/a.py")
    import importlib.util

    assert importlib.util.find_spec(ray_private.TOKEN_AUTH_LOGGER) is not None  # the module whose logger it is


SIGTERM_AFTER_SHUTDOWN = """
import signal, sys
import ray
from tune_app.cluster import ray_private

def caught(signum):  # the kernel's view: Python's getsignal cannot see what Ray's C++ code set
    line = next(x for x in open("/proc/self/status") if x.startswith("SigCgt:"))
    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)

for keep in (False, True):
    if keep:
        ray_private.driver_keeps_sigterm()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    signal.signal(signal.SIGTERM, lambda *a: None)  # as TermAsInterrupt does after ray.init
    ray.shutdown()
    print(keep, caught(signal.SIGTERM), flush=True)
"""


def test_the_driver_keeps_its_sigterm_handler_past_ray_shutdown():
    """Ray's C++ failure-signal handler sets SIGTERM back to the default as the driver disconnects (a SIGTERM then
    kills a driver on its way out with 143); leaving it out keeps the handler."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_SHUTDOWN], capture_output=True, text=True,
                         timeout=120, cwd=TUNE_APP.parent)
    assert run.stdout.splitlines() == ["False False", "True True"], run.stderr[-2000:]


def private_names() -> set[str]:
    """The private names ray_private reaches: attributes of others' objects and ray._private modules."""
    names = set()
    for node in ast.walk(ast.parse((TUNE_APP / "cluster" / "ray_private.py").read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            names.add(node.attr)
        if isinstance(node, ast.ImportFrom) and node.module and "._" in node.module:
            names.add(node.module)
    return names


def test_no_other_module_touches_those_names():
    names = private_names()
    assert {"_ot_trials", "_brackets", "_rungs", "ray._private.services"} <= names
    found = {}
    for path in TUNE_APP.rglob("*.py"):
        if path.name == "ray_private.py":
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr in names:
                found.setdefault(path.name, []).append(node.attr)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module = getattr(node, "module", None) or ""
                if any(n.startswith("ray.") and "._" in n for n in [module, *(a.name for a in node.names)]):
                    found.setdefault(path.name, []).append(module)
    assert found == {}


@pytest.mark.parametrize("package,bound", [("ray", "<2.61"), ("optuna", "<6")])
def test_pyproject_bounds_ray_and_optuna_to_the_tested_versions(package, bound):
    text = (TUNE_APP.parent / "pyproject.toml").read_text()
    line = next(x for x in text.splitlines() if x.strip().startswith(f'"{package}'))
    assert bound in line
