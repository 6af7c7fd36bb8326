"""Every place tune_app reaches past Ray's, Ray Tune's or Optuna's public API, in one room.

Each is here because the public API has no way to do it: ASHA's rungs and PBT's and PB2's state are not
checkpointed with a sweep, Ray's OptunaSearch does not expose its study, and a few of Ray's helpers live in
``ray._private``. A Ray or Optuna release may move any of them, so:
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
