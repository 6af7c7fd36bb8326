"""Ray's OptunaSearch, resumable after a hard kill and with --retry-errored (see ResumableOptunaSearch)."""
from __future__ import annotations

import optuna as _optuna
from ray.tune.search.optuna import OptunaSearch

from tune_app.cluster import ray_private


class ResumableOptunaSearch(OptunaSearch):
    """After a hard kill the study's journal can be ahead of Ray's last experiment checkpoint, so a trial Ray
    resumes may already be finished in the study. Resumed, it trains to the same numbers (trials are
    deterministic), so the study keeps what it was told instead of failing the sweep. A trial the study
    began after that checkpoint is unknown to Ray and never reports: it is marked failed on restore, so the
    study (and optuna-dashboard) does not show it running forever. An errored trial that --retry-errored
    finishes is added to the study as a new, complete trial."""

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        known, study = ray_private.optuna_known_ids(self), ray_private.optuna_study(self)
        storage = ray_private.optuna_storage(study)
        for t in study.get_trials(deepcopy=False, states=(_optuna.trial.TrialState.RUNNING,)):
            if ray_private.optuna_internal_id(t) not in known:
                storage.set_trial_state_values(ray_private.optuna_internal_id(t), _optuna.trial.TrialState.FAIL)

    def on_trial_result(self, trial_id, result):
        try:
            super().on_trial_result(trial_id, result)
        except _optuna.exceptions.UpdateFinishedTrialError:
            pass

    def on_trial_complete(self, trial_id, result=None, error=False):
        ot_trial, study = ray_private.optuna_trial(self, trial_id), ray_private.optuna_study(self)
        if ot_trial is not None and not error and result and self.metric in result:
            told = ray_private.optuna_storage(study).get_trial(ray_private.optuna_internal_id(ot_trial))
            if told.state == _optuna.trial.TrialState.FAIL:
                # An errored trial run again (--retry-errored) that now finished: the study cannot change a
                # failed trial, so its result joins as a new one and TPE learns from it.
                study.add_trial(_optuna.trial.create_trial(
                    params=told.params, distributions=told.distributions, value=result[self.metric],
                    user_attrs={"ray_trial_id": trial_id, "retried": True}))
                return
        try:
            super().on_trial_complete(trial_id, result, error)
        except _optuna.exceptions.UpdateFinishedTrialError:
            pass
