"""Ray's OptunaSearch with a study that says what tune_app says, resumable after a hard kill and with
--retry-errored (see ResumableOptunaSearch). The study lives in ``<run dir>/optuna.journal``; open it with
``optuna-dashboard <run dir>/optuna.journal``."""
from __future__ import annotations

import math

import optuna as _optuna
from ray.tune.search.optuna import OptunaSearch

from tune_app import trainable
from tune_app.cluster import ray_private

TRIAL_ID = "trial_id"  # the user attribute that names an Optuna trial's Ray trial (its summary row)
TrialState = _optuna.trial.TrialState


def planned_epochs(result: dict) -> int | None:
    """The epochs a trial was planned to run, from the config its result carries (tune_app.trainable.planned_epochs)."""
    config = result.get("config")
    return trainable.planned_epochs(config.get if isinstance(config, dict) else
                                    (lambda key: result.get(f"config/{key}")))


def epoch_of(result: dict) -> int:
    """The step a result is reported at: its epoch, else Ray's training_iteration."""
    return int(result["epoch"] if result.get("epoch") is not None else result["training_iteration"])


def finished_state(result: dict) -> TrialState:
    """COMPLETE for a trial that ran its planned epochs or ended itself (its last report says early_stopped, or
    diverged: it reports a value searchers rank last), PRUNED for one a scheduler stopped before that (ASHA,
    HyperBand, median stopping: Ray calls on_trial_complete for it all the same), as rundir.tables.trial_status
    tells "completed" from "stopped"."""
    if result.get("early_stopped") or result.get("diverged"):
        return TrialState.COMPLETE
    planned = planned_epochs(result)
    return TrialState.COMPLETE if planned is None or epoch_of(result) >= planned else TrialState.PRUNED


class ResumableOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, with the study agreeing with tune_app's summary trial by trial:

    - every Optuna trial carries its Ray trial id as the user attribute ``trial_id``, from the moment Ray asks for
      its config;
    - every epoch reported is an intermediate value at step ``epoch``, the last one included (Ray's searcher steps
      by training_iteration and never hears the result on which a scheduler stops a trial);
    - a trial ends COMPLETE with its last epoch's value when it ran its planned epochs or ended itself, PRUNED
      when a scheduler stopped it early, FAIL when it errored (see finished_state).

    After a hard kill the study's journal can be ahead of Ray's last experiment checkpoint, so a trial Ray
    resumes may already be finished in the study. Resumed, it trains to the same numbers (trials are
    deterministic), so the study keeps what it was told instead of failing the sweep. A trial the study
    began after that checkpoint is unknown to Ray and never reports: it is marked failed on restore, so the
    study (and optuna-dashboard) does not show it running forever. An errored trial that --retry-errored
    finishes is added to the study as a new trial (a failed one cannot change), with every epoch's value and
    ``retried`` set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._retried_values = {}  # {Ray trial id: {epoch: value}} of failed trials run again by --retry-errored

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        self.__dict__.setdefault("_retried_values", {})  # a checkpoint from before the attribute existed
        known, study = ray_private.optuna_known_ids(self), ray_private.optuna_study(self)
        storage = ray_private.optuna_storage(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if ray_private.optuna_internal_id(t) not in known:
                storage.set_trial_state_values(ray_private.optuna_internal_id(t), TrialState.FAIL)

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        ot_trial = ray_private.optuna_trial(self, trial_id)
        if ot_trial is not None:
            self._record(trial_id, ot_trial, None)
        return config

    def on_trial_result(self, trial_id, result):
        ot_trial = ray_private.optuna_trial(self, trial_id)
        if ot_trial is not None and not isinstance(self.metric, list) and self.metric in result:
            self._record(trial_id, ot_trial, result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        ot_trial = ray_private.optuna_trial(self, trial_id)
        if ot_trial is None or isinstance(self.metric, list):
            return super().on_trial_complete(trial_id, result, error)
        if error or not result or self.metric not in result:
            told = self._told(ot_trial)
            if not told.state.is_finished():
                super().on_trial_complete(trial_id, None, error)  # FAIL (error) or PRUNED (stopped before a result)
            return
        told = self._record(trial_id, ot_trial, result)  # Ray calls no on_trial_result for a result that stops
        state = finished_state(result)
        if told.state == TrialState.FAIL:
            self._add_retried(trial_id, told, state)
        elif told.state.is_finished():
            return  # told before a hard kill; resumed, the trial trained to the same numbers
        elif not math.isfinite(float(result[self.metric])):
            super().on_trial_complete(trial_id, None, error=True)  # Optuna takes no NaN as a value
        else:
            # PRUNED is told without a value: Optuna gives it the last intermediate value, this result's
            super().on_trial_complete(trial_id, result if state == TrialState.COMPLETE else None, False)

    def _told(self, ot_trial):
        """The trial as the study has it now (after a hard kill, ahead of Ray's checkpoint of this searcher)."""
        study = ray_private.optuna_study(self)
        return ray_private.optuna_storage(study).get_trial(ray_private.optuna_internal_id(ot_trial))

    def _record(self, trial_id: str, ot_trial, result: dict | None):
        """Tag the trial with its Ray trial id and store the result's value at its epoch; a failed trial that is
        running again (--retry-errored) keeps its values aside for the trial _add_retried makes. Returns the
        trial as the study has it."""
        storage = ray_private.optuna_storage(ray_private.optuna_study(self))
        internal = ray_private.optuna_internal_id(ot_trial)
        told = storage.get_trial(internal)
        value = None if result is None else float(result[self.metric])
        if told.state.is_finished():
            if told.state == TrialState.FAIL and value is not None:
                self._retried_values.setdefault(trial_id, {})[epoch_of(result)] = value
            return told
        try:
            if told.user_attrs.get(TRIAL_ID) != trial_id:
                storage.set_trial_user_attr(internal, TRIAL_ID, trial_id)
            if value is not None and told.intermediate_values.get(epoch_of(result)) != value:
                storage.set_trial_intermediate_value(internal, epoch_of(result), value)
        except _optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished by another writer of the journal in between
        return storage.get_trial(internal)

    def _add_retried(self, trial_id: str, told, state: TrialState) -> None:
        """An errored trial run again (--retry-errored) that now finished: the study cannot change a failed trial,
        so it joins as a new one, with the epochs before the crash and after, and TPE learns from it."""
        values = {**told.intermediate_values, **self._retried_values.pop(trial_id, {})}
        last = values[max(values)]
        ok = math.isfinite(last)
        ray_private.optuna_study(self).add_trial(_optuna.trial.create_trial(
            state=state if ok else TrialState.FAIL, value=last if ok else None, params=told.params,
            distributions=told.distributions, intermediate_values=values,
            user_attrs={TRIAL_ID: trial_id, "retried": True}))
