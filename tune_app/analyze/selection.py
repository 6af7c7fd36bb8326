"""Which trial is best: the selection rules (last epoch, best epoch, equal-length epoch), the ranking, and the
payloads of best_config.json and topk.json."""
from __future__ import annotations

import pandas as pd

from tune_app.rundir.tables import ELIGIBLE, check_mode, config_of, plain, status_counts

RULES = ("last", "best-epoch", "at-epoch")


NO_ELIGIBLE = "no trial finished without error or divergence; nothing to select"


class NoEligibleTrialError(ValueError):
    """Raised by select_best when no trial is eligible; a ValueError, which analyze.compute catches to say why."""


def _check(mode: str, rule: str = "last") -> None:
    check_mode(mode)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, not {rule!r}")


def rule_column(metric: str, rule: str) -> str:
    """The trials-table column a selection rule ranks by: the last epoch's metric, the trial's best
    epoch, or the metric at the analysis' equal-length epoch."""
    return {"last": "final", "best-epoch": "best", "at-epoch": "at_epoch"}[rule] + f"_{metric}"


def ranked(trials: pd.DataFrame, metric: str, mode: str, rule: str = "last") -> pd.DataFrame:
    """Eligible trials, best first. Diverged/errored trials are never eligible, however good their
    numbers; trials without a value for the rule's column (no epochs, or short of the equal-length
    epoch) are left out too. Ties go to the longer-trained trial, then to the trial id."""
    _check(mode, rule)
    column = rule_column(metric, rule)
    pool = trials[trials["status"].isin(ELIGIBLE) & trials[column].notna()]
    return pool.sort_values([column, "epochs", "trial_id"], ascending=[mode == "min", False, True], kind="mergesort")


def select_best(trials: pd.DataFrame, metric: str, mode: str, rule: str = "last") -> pd.Series:
    """The winning row under `rule` (see ranked)."""
    pool = ranked(trials, metric, mode, rule)
    if pool.empty:
        raise NoEligibleTrialError(NO_ELIGIBLE)
    return pool.iloc[0]


def _trial_numbers(row: pd.Series, metric: str, rule: str) -> dict:
    return {"trial_id": row["trial_id"], "trial_name": row["name"], "value": row[rule_column(metric, rule)],
            "last_value": row[f"final_{metric}"], "best_epoch_value": row[f"best_{metric}"],
            "best_epoch": row["best_epoch"], "at_epoch_value": row[f"at_epoch_{metric}"], "epochs": row["epochs"],
            "status": row["status"]}


def best_config_payload(best: pd.Series, trials: pd.DataFrame, metric: str, mode: str, rule: str,
                        provenance: dict) -> dict:
    """JSON-safe record of the winner, enough to retrain it and to know where it came from.
    `value` is the number the selection rule ranked by; the others are there for comparison."""
    payload = {"config": config_of(best, trials), **_trial_numbers(best, metric, rule), "metric": metric,
               "mode": mode, "selection_rule": rule, "at_epoch": trials.attrs.get("at_epoch"),
               "trials": status_counts(trials), **provenance}
    return plain(payload)


def top_k_payload(trials: pd.DataFrame, metric: str, mode: str, rule: str, k: int) -> dict:
    """The k best configurations under `rule`, best first, for a retrain of several candidates."""
    pool = ranked(trials, metric, mode, rule).head(k)
    entries = [{"rank": i, **_trial_numbers(row, metric, rule), "config": config_of(row, trials)}
               for i, (_, row) in enumerate(pool.iterrows(), start=1)]
    return plain({"metric": metric, "mode": mode, "selection_rule": rule, "at_epoch": trials.attrs.get("at_epoch"),
                   "k": k, "trials": entries})
