"""Every place tune_app reaches past Ray's, Ray Tune's or Optuna's public API, in one room.

Each is here because the public API has no way to do it: ASHA's rungs, HyperBand's brackets and PBT's and PB2's
state are not checkpointed with a sweep, Ray's OptunaSearch does not expose its study, and a few of Ray's helpers
live in ``ray._private``. A Ray or Optuna release may move any of them, so:
- ``TESTED`` names the versions this file was checked against, and pyproject.toml bounds Ray to them;
- tests/test_ray_private.py builds the real objects and checks every name used below, so an upgrade that moves
  one fails there, by name, rather than in the middle of a user's sweep;
- ``version_warning()`` is said once by a sweep that runs on an untested Ray.
Nothing outside this module touches a private name of Ray's or Optuna's (tests/test_layout.py checks).
"""
from __future__ import annotations

TESTED = {"ray": ("2.60",), "optuna": ("4", "5")}  # release prefixes this module was checked against

TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"  # Ray's per-start token notice


def version_warning() -> str | None:
    """One line when the installed Ray or Optuna is not a version this module was checked against."""
    from importlib.metadata import PackageNotFoundError, version

    for package, prefixes in TESTED.items():
        try:
            found = version(package)
        except PackageNotFoundError:
            continue
        if not any(found == p or found.startswith(p + ".") for p in prefixes):
            return (f"{package} {found} is not a version tune_app was tested with ({', '.join(prefixes)}.x); if "
                    f"a sweep fails inside {package}, install {package}=={prefixes[-1]}.*")
    return None


# ---------------------------------------------------------------- ray._private

def bootstrap_address(address: str = "auto") -> str:
    """The head address ``ray.init(address="auto")`` would join (Ray's record of the last cluster started here)."""
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(address) or ""


def path_spec(lines: list[str]):
    """Ray's own .gitignore matcher (the one runtime_env uses to decide what to ship)."""
    from ray._private.thirdparty.pathspec import PathSpec

    return PathSpec.from_lines("gitwildmatch", lines)


def driver_keeps_sigterm() -> None:
    """Leave out Ray's C++ failure-signal handler in this process (the driver; Ray's workers keep theirs). Installed
    when the driver connects, it takes SIGTERM over from Python, and when the driver disconnects it sets SIGTERM back
    to the default, behind Python's back: a batch system's second SIGTERM then kills a driver that is exiting with
    143 (-15 instead). Ray's documented switch, RAY_DISABLE_FAILURE_SIGNAL_HANDLER, read when the driver connects;
    set as Ray's constant rather than in the environment, which the workers of a Ray started here would inherit."""
    from ray._private import ray_constants

    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True


# ---------------------------------------------------------------- Ray's OptunaSearch and Optuna's storage

def optuna_study(searcher):
    """The Optuna study inside Ray's OptunaSearch."""
    return searcher._ot_study


def optuna_trial(searcher, ray_trial_id: str):
    """The Optuna trial Ray's OptunaSearch made for a Ray trial, or None."""
    return searcher._ot_trials.get(ray_trial_id)


def optuna_known_ids(searcher) -> set[int]:
    """The study's internal ids of the trials Ray's OptunaSearch knows."""
    return {t._trial_id for t in searcher._ot_trials.values()}


def optuna_internal_id(trial) -> int:
    """An Optuna trial's id in its storage (not its number)."""
    return trial._trial_id


def optuna_storage(study):
    return study._storage


# ---------------------------------------------------------------- ASHA's rungs

def asha_state(scheduler) -> dict:
    """ASHA's rungs, which trial is in which bracket, and its counters, as plain data."""
    brackets = scheduler._brackets
    return {"rungs": [[(milestone, dict(recorded)) for milestone, recorded in b._rungs] for b in brackets],
            "trial_bracket": {t: brackets.index(b) for t, b in scheduler._trial_info.items()},
            "counter": scheduler._counter, "num_stopped": scheduler._num_stopped}


def set_asha_state(scheduler, state: dict) -> None:
    brackets = scheduler._brackets
    for bracket, rungs in zip(brackets, state["rungs"]):
        bracket._rungs = [(milestone, dict(recorded)) for milestone, recorded in rungs]
    scheduler._trial_info = {t: brackets[i] for t, i in state["trial_bracket"].items()}
    scheduler._counter, scheduler._num_stopped = state["counter"], state["num_stopped"]


# ---------------------------------------------------------------- PBT's and PB2's state

PBT_TRIAL_FIELDS = ("last_score", "last_perturbation_time", "last_train_time", "last_checkpoint", "last_result")


def pbt_state(scheduler) -> dict:
    """PBT's state of each trial (by trial id: its last score, when it was last perturbed, the checkpoint others
    exploit) and, for PB2, the GP's data (every trial's rewards at its perturbation times), as plain data. A
    checkpoint still being saved when the state is taken is left out (the trial's next one takes its place)."""
    from ray.train._internal.session import _FutureTrainingResult

    trials = {}
    for trial, per_trial in scheduler._trial_state.items():
        fields = {k: getattr(per_trial, k) for k in PBT_TRIAL_FIELDS}
        if isinstance(fields["last_checkpoint"], _FutureTrainingResult):
            fields["last_checkpoint"] = None
        trials[trial.trial_id] = fields
    state = {"trials": trials, "num_perturbations": scheduler._num_perturbations,
             "num_checkpoints": scheduler._num_checkpoints}
    if hasattr(scheduler, "last_exploration_time"):  # PB2
        state["pb2"] = {"data": scheduler.data, "current": scheduler.current,
                        "last_exploration_time": scheduler.last_exploration_time}
    return state


def set_pbt_state(scheduler, state: dict) -> int:
    """Put ``pbt_state`` back into the states the scheduler made afresh for a resumed sweep's trials; returns how
    many trials it found."""
    by_id = {trial.trial_id: per_trial for trial, per_trial in scheduler._trial_state.items()}
    found = 0
    for trial_id, fields in state["trials"].items():
        if trial_id in by_id:
            found += 1
            for key, value in fields.items():
                setattr(by_id[trial_id], key, value)
    scheduler._num_perturbations = state["num_perturbations"]
    scheduler._num_checkpoints = state["num_checkpoints"]
    for key, value in state.get("pb2", {}).items():
        setattr(scheduler, key, value)
    return found


# ---------------------------------------------------------------- HyperBand's brackets (and BOHB's)

class FinishedBracketStopsSaving:
    """A HyperBand whose finished bracket stops every trial it still holds. Ray's ``cleanup_full`` stops only the
    PAUSED ones; a trial told to pause at the bracket's last milestone is RUNNING until Tune has saved its pause
    checkpoint, and when the bracket's other trials reach that milestone before the save is back, it was skipped,
    then paused in a finished bracket that never unpauses it: the sweep waited forever (Ray's insufficient
    resources warning, no trial running; on a slow machine a --resume of test_resume.py's bracket drill did). Stopped
    here as Ray stops a saving trial at a halving. Mixed into search.algorithms.HyperBand."""

    def _process_bracket(self, tune_controller, bracket) -> str:
        if bracket.finished():
            for trial in bracket.current_trials():
                if trial.status == "RUNNING" and trial.is_saving:
                    tune_controller.stop_trial(trial)
        return super()._process_bracket(tune_controller, bracket)


HYPERBAND_TRIAL_FIELDS = ("_live_trials", "_all_trials", "trials_to_unpause")  # a bracket's fields that hold trials


def hyperband_state(scheduler) -> dict:
    """HyperBand's bands and brackets as plain data, trials by id: each bracket's counters (every field of Ray's
    bracket that holds no trial: ``_n``, ``_r``, ``_cumul_r``, ``_halves``, ``_completed_progress``, ...), its live
    trials with the last result it holds of each, all its trials and those it is unpausing; the scheduler's
    pointer to the bracket new trials join, each trial's bracket, its count of stopped trials. And what a resumed
    sweep must make of the trials Ray re-adds as PENDING: ``waiting``, the live trials of an unfinished bracket
    that wait for its next halving (paused, or reported their milestone and being paused), to be PAUSED again;
    ``done``, the trials the brackets let go (stopped or completed; not errored, which --retry-errored runs
    again), to be TERMINATED again: Ray's experiment state can still call such a trial PAUSED, as it does not
    record a trial stopped while paused, and it would run again."""
    where, bands, waiting = {}, [], []
    for i, band in enumerate(scheduler._hyperbands):
        bands.append([])
        for j, bracket in enumerate(band):
            if bracket is None:
                bands[-1].append(None)
                continue
            where[id(bracket)] = [i, j]
            fields = {k: v for k, v in vars(bracket).items() if k not in HYPERBAND_TRIAL_FIELDS}
            fields["_live_trials"] = {t.trial_id: result for t, result in bracket._live_trials.items()}
            fields["_all_trials"] = [t.trial_id for t in bracket._all_trials]
            if hasattr(bracket, "trials_to_unpause"):
                fields["trials_to_unpause"] = sorted(t.trial_id for t in bracket.trials_to_unpause)
            bands[-1].append(fields)
            if not bracket.finished():
                waiting += [t.trial_id for t in bracket._live_trials
                            if t.status == "PAUSED" or not bracket.continue_trial(t)]
    pointers = dict(scheduler._state)
    current = pointers.pop("bracket")
    done = [t.trial_id for t, (bracket, _) in scheduler._trial_info.items()
            if t not in bracket._live_trials and t.status != "ERROR"]
    return {"bands": bands, "current": None if current is None else where[id(current)], "pointers": pointers,
            "trial_info": {t.trial_id: [*where[id(bracket)], band] for t, (bracket, band) in
                           scheduler._trial_info.items()},
            "num_stopped": scheduler._num_stopped, "waiting": waiting, "done": done}


def set_hyperband_state(scheduler, state: dict, trials) -> int:
    """Rebuild ``hyperband_state``'s brackets around ``trials`` (a resumed sweep's Trial objects, matched by id),
    replacing the brackets the scheduler made afresh as the resumed trials were added to it. A finished trial
    stays out of the live sets; an errored one that runs again (``--retry-errored``) rejoins its bracket from its
    last result; an unfinished trial the saved state does not know joins as a new trial would.
    Returns how many of ``trials`` the saved brackets held."""
    from ray.tune.schedulers.hyperband import _Bracket

    by_id = {t.trial_id: t for t in trials}

    def bracket(fields):
        made = _Bracket.__new__(_Bracket)
        made.__dict__.update({k: v for k, v in fields.items() if k not in HYPERBAND_TRIAL_FIELDS})
        made._live_trials = {by_id[t]: result for t, result in fields["_live_trials"].items()
                             if t in by_id and not by_id[t].is_finished()}
        made._all_trials = [by_id[t] for t in fields["_all_trials"] if t in by_id]
        if "trials_to_unpause" in fields:
            made.trials_to_unpause = {by_id[t] for t in fields["trials_to_unpause"] if t in by_id}
        return made

    bands = [[None if fields is None else bracket(fields) for fields in band] for band in state["bands"]]
    scheduler._hyperbands = bands
    current = state["current"]
    scheduler._state = {**state["pointers"], "bracket": None if current is None else bands[current[0]][current[1]]}
    scheduler._trial_info = {by_id[t]: (bands[i][j], band) for t, (i, j, band) in state["trial_info"].items()
                             if t in by_id}
    scheduler._num_stopped = state["num_stopped"]
    for trial in trials:
        if trial.is_finished():
            continue
        if trial not in scheduler._trial_info:
            scheduler.on_trial_add(None, trial)
            continue
        held = scheduler._trial_info[trial][0]
        if trial not in held._live_trials:
            last = trial.last_result
            held._live_trials[trial] = last if last and held._time_attr in last else None
    return sum(t in by_id for t in state["trial_info"])


def forget_cached_decision(tune_controller, trial_id: str) -> None:
    """Drop the decision (PAUSE, STOP) Tune's controller was to carry out on a trial once its save resolved. The
    controller keeps these in its experiment state, so a trial that Ctrl+C caught while HyperBand was pausing it
    would be paused again, behind the restored scheduler's back, at its first checkpoint after --resume: never
    to run again. ``tune_controller``: what Tune hands a scheduler (a wrapper around the controller)."""
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    controller._cached_trial_decisions.pop(trial_id, None)


def trial_logs(trial):
    """(the driver's copy, the storage filesystem, the run directory's copy) of each of a trial's report files
    (Ray's JSON and CSV loggers'). Ray's loggers write the driver's copy (a staging folder under /tmp/ray) and Ray
    copies it into the run directory when it saves its experiment state; a trial that restarts from a checkpoint
    has its driver copy replaced by the run directory's (``LoggerCallback._restore_from_remote``)."""
    from pathlib import Path

    from ray.tune.result import EXPR_PROGRESS_FILE, EXPR_RESULT_FILE

    storage = trial.storage
    local, remote = Path(trial.local_path), Path(storage.trial_fs_path)
    return [(local / name, storage.storage_filesystem, (remote / name).as_posix())
            for name in (EXPR_RESULT_FILE, EXPR_PROGRESS_FILE)]


def saved_state_keeps_every_stop() -> None:
    """Have Tune's controller put every trial it stops into its next experiment state. Its ``_schedule_trial_stop``
    sets the trial's status (ERROR, TERMINATED) and then, only while the trial still has an actor, marks the trial
    for the experiment state, where it is cached by trial id. A trial whose actor had already died (killed by
    --trial-timeout, or lost with its node) after a retry from scratch therefore stayed RUNNING there: the sweep
    then counted it unfinished ("Interrupted", 130) and --resume would have run it again. Idempotent."""
    from ray.tune.execution.tune_controller import TuneController

    stop = TuneController._schedule_trial_stop
    if getattr(stop, "tune_app_marks", False):
        return

    def _schedule_trial_stop(self, trial, exception=None):
        stop(self, trial, exception)
        self._mark_trial_to_checkpoint(trial)

    _schedule_trial_stop.tune_app_marks = True
    TuneController._schedule_trial_stop = _schedule_trial_stop
