"""Which trial is best: the selection rules (last epoch, best epoch, equal-length epoch), one tie rule, the set of
trials the validation set cannot tell apart from the best, and the payloads of best_config.json and topk.json.

The tie rule: among trials with exactly the same value, the lower validation loss at the same epoch wins, then the
trial the sweep started first (Ray's order of making them), then the lower trial id.

Within noise: for an accuracy measured on n validation examples, the best trial's and another trial's correct
counts are compared as two binomial samples with Fisher's exact test (one-sided: is the best really better?);
a trial the test cannot separate from the best at the 5 % level is within noise. The test treats the two as
independent samples, which is conservative: both were measured on the same images. For any other metric, or an
accuracy whose n is unknown, a trial is within noise when it is within two standard deviations of the best trial's
metric over its last three epochs (up to the epoch the selection rule looks at).

With --repeats k, the runs measure the noise themselves, seeds and validation sample together: a trial is within
noise when Welch's t-test (one-sided, 5 %) over its k runs' values and the best's, at the epoch the selection rule
looks at, cannot tell it from the best (with no spread in either, only an exact tie is). A diverged run's value is
left out of its trial's.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from tune_app.rundir.layout import RUNS
from tune_app.rundir.tables import (
    ELIGIBLE,
    check_mode,
    config_of,
    is_accuracy,
    objective_column,
    plain,
    status_counts,
    tie_metric,
)

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


TIE_RULE = "lower val_loss at the same epoch, then the trial started first, then the lower trial id"
ALPHA = 0.05  # the within-noise test's level
SPREAD_EPOCHS = 3  # the best trial's last epochs whose spread is the noise of a metric without a count


def tie_column(metric: str, rule: str) -> str | None:
    """The trials-table column that breaks an exact tie under ``rule``: the validation loss at the epoch the rule
    looks at (None when the loss is the metric)."""
    tie = tie_metric(metric)
    return None if tie is None else {"last": "final", "best-epoch": "best_epoch", "at-epoch": "at_epoch"}[rule] + \
        f"_{tie}"


def ranked(trials: pd.DataFrame, metric: str, mode: str, rule: str = "last") -> pd.DataFrame:
    """Eligible trials, best first. Diverged/errored trials are never eligible, however good their
    numbers; trials without a value for the rule's column (no epochs, or short of the equal-length
    epoch) are left out too. Exact ties follow TIE_RULE."""
    _check(mode, rule)
    column, tie = rule_column(metric, rule), tie_column(metric, rule)
    pool = trials[trials["status"].isin(ELIGIBLE) & trials[column].notna()]
    keys = [(column, mode == "min"), (tie, True), ("started", True), ("trial_id", True)]
    keys = [(k, up) for k, up in keys if k is not None and k in pool]
    return pool.sort_values([k for k, _ in keys], ascending=[up for _, up in keys], kind="mergesort",
                            na_position="last")


def tie_break(pool: pd.DataFrame, metric: str, rule: str) -> dict:
    """The tie rule, and the trials tied with the best on the rule's value (the best first), as best_config.json
    records it."""
    column, tie = rule_column(metric, rule), tie_column(metric, rule)
    tied = pool[pool[column] == pool[column].iloc[0]] if len(pool) else pool
    return plain({"rule": TIE_RULE, "tied": [{"trial_id": r["trial_id"], "value": r[column],
                                              "val_loss": r[tie] if tie else None, "started": r.get("started")}
                                             for _, r in tied.iterrows()]})


def _epochs_up_to(history: pd.DataFrame, trial_id: str, metric: str, epoch) -> pd.Series:
    rows = history[(history["trial_id"] == trial_id)]
    if metric not in rows or rows.empty:
        return pd.Series(dtype="float64")
    if epoch is not None and not pd.isna(epoch):
        rows = rows[rows["epoch"] <= int(epoch)]
    if "diverged" in rows:
        rows = rows[~rows["diverged"].fillna(False).astype(bool)]
    values = rows.sort_values("epoch")[metric].astype(float)
    return values[np.isfinite(values)]


def _rule_epoch(row: pd.Series, rule: str, at_epoch) -> int | None:
    """The epoch whose value a selection rule ranks a trial by (None: its last)."""
    epoch = {"last": None, "best-epoch": row.get("best_epoch"), "at-epoch": at_epoch}[rule]
    return None if epoch is None or pd.isna(epoch) else int(epoch)


def _row_at(history: pd.DataFrame, trial_id: str, epoch: int | None) -> pd.Series | None:
    """A trial's history row at ``epoch`` (None: its last), or None when it has none."""
    rows = history[history["trial_id"] == trial_id].sort_values("epoch")
    rows = rows if epoch is None else rows[rows["epoch"] == epoch]
    return None if rows.empty else rows.iloc[-1]


def run_values(history: pd.DataFrame, trial_id: str, metric: str, epoch: int | None) -> np.ndarray:
    """A trial's runs' values of ``metric`` at ``epoch`` (None: its last reported epoch), under --repeats (the
    history's runs/<i>/<metric> columns); empty without repeats. A diverged run's value is left out."""
    columns = [c for c in history.columns if c.startswith(f"{RUNS}/") and c.endswith(f"/{metric}")
               and c.count("/") == 2]
    row = _row_at(history, trial_id, epoch) if columns else None
    if row is None:
        return np.array([])
    values = []
    for c in columns:
        flag = f"{c.rsplit('/', 1)[0]}/diverged"
        if flag in row and not pd.isna(row[flag]) and bool(row[flag]):
            continue
        value = pd.to_numeric(row[c], errors="coerce")
        if not pd.isna(value) and np.isfinite(value):
            values.append(float(value))
    return np.array(values)


def within_noise(pool: pd.DataFrame, history: pd.DataFrame, metric: str, mode: str, rule: str,
                 examples: int | None) -> tuple[list[dict], dict]:
    """The trials (the best first) that the validation set cannot tell apart from the best, each with its value,
    and the rule that decided (see the module's docstring). ``pool``: ranked trials; ``examples``: the number of
    validation examples, when known."""
    if pool.empty:
        return [], {}
    column = rule_column(metric, rule)
    best = pool.iloc[0]
    value = float(best[column])
    epochs = {trial_id: _rule_epoch(row, rule, pool.attrs.get("at_epoch"))
              for trial_id, row in pool.set_index("trial_id").iterrows()}
    best_runs = run_values(history, best["trial_id"], metric, epochs[best["trial_id"]])
    if len(best_runs) > 1:
        k = len(best_runs)

        def separated_runs(trial_id) -> bool:
            other = run_values(history, trial_id, metric, epochs[trial_id])
            gap = (best_runs.mean() - other.mean()) * (1 if mode == "max" else -1)
            if len(other) < 2 or (best_runs.std() == 0 and other.std() == 0):
                return gap > 1e-12  # no spread to test against: only an exact tie is within noise
            return stats.ttest_ind(best_runs, other, equal_var=False,
                                   alternative="greater" if mode == "max" else "less").pvalue < ALPHA

        inside = pool[[not separated_runs(t) for t in pool["trial_id"]]]
        sd = float(best_runs.std(ddof=1))
        band = float(stats.t.ppf(1 - ALPHA, 2 * k - 2) * sd * np.sqrt(2 / k))  # the gap two runs' spread like the
        how = {"test": "welch_t", "alpha": ALPHA, "repeats": k, "seed_sd": sd, "band": band,  # best's would separate
               "text": f"within {fmt_band(band, metric)} over {k} seeds each (the best's runs vary by "
                       f"{fmt_band(sd, metric)}), by Welch's t-test at {100 * ALPHA:g} %"}
    elif is_accuracy(metric) and mode == "max" and examples:
        n = int(examples)
        k_best = round(value * n)

        def separated(k: int) -> bool:
            return stats.fisher_exact([[k_best, n - k_best], [k, n - k]], alternative="greater").pvalue < ALPHA

        low, high = 0, k_best  # the fewest correct answers the test cannot separate from the best's (a bisection)
        while low < high:
            mid = (low + high) // 2
            low, high = (mid + 1, high) if separated(mid) else (low, mid)
        band = (k_best - low) / n
        inside = pool[[not separated(round(float(v) * n)) for v in pool[column]]]
        how = {"test": "fisher_exact", "alpha": ALPHA, "examples": n, "band": band,
               "text": f"within {fmt_band(band, metric)} on {n} validation examples, by Fisher's exact test at "
                       f"{100 * ALPHA:g} %"}
    else:
        epoch = {"last": None, "best-epoch": best["best_epoch"], "at-epoch": pool.attrs.get("at_epoch")}[rule]
        recent = _epochs_up_to(history, best["trial_id"], metric, epoch).tail(SPREAD_EPOCHS)
        spread = float(recent.std(ddof=1)) if len(recent) > 1 else 0.0
        band = 2 * spread
        gap = (value - pool[column].astype(float)) if mode == "max" else (pool[column].astype(float) - value)
        inside = pool[gap <= band + 1e-12]
        how = {"test": "spread", "epochs": len(recent), "band": band,
               "text": f"within {fmt_band(band, metric)}: two standard deviations of the best trial's last "
                       f"{len(recent)} epochs" if len(recent) > 1 else
                       "exact ties only: the best trial has too few epochs to measure its spread"}
    entries = [{"trial_id": r["trial_id"], "trial_name": r["name"], "value": r[column]} for _, r in inside.iterrows()]
    return plain(entries), plain(how)


def fmt_band(band: float, metric: str) -> str:
    return f"{100 * band:.2f} points" if is_accuracy(metric) else f"{band:.4g}"


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
                        provenance: dict, history: pd.DataFrame | None = None, examples: int | None = None) -> dict:
    """JSON-safe record of the winner, enough to retrain it and to know where it came from.
    `value` is the number the selection rule ranked by; the others are there for comparison. ``tie_break``: the
    trials tied with it and the rule that chose; ``within_noise``: the trials the validation set cannot tell
    apart from it (``history``, ``examples``: see within_noise)."""
    pool = ranked(trials, metric, mode, rule)
    pool.attrs["at_epoch"] = trials.attrs.get("at_epoch")
    noise, how = within_noise(pool, history if history is not None else pd.DataFrame(columns=["trial_id", "epoch"]),
                              metric, mode, rule, examples)
    payload = {"config": config_of(best, trials), **_trial_numbers(best, metric, rule), "metric": metric,
               "mode": mode, "selection_rule": rule, "at_epoch": trials.attrs.get("at_epoch"),
               "tie_break": tie_break(pool, metric, rule), "within_noise": noise, "noise_rule": how,
               "trials": status_counts(trials), **provenance}
    if history is not None:
        runs = runs_of(history, best["trial_id"], metric, _rule_epoch(best, rule, trials.attrs.get("at_epoch")))
        if runs:  # --repeats: value is their mean; each run's seed and value (a retrain of one seed repeats it)
            payload["runs"] = runs
    return plain(payload)


def runs_of(history: pd.DataFrame, trial_id: str, metric: str, epoch: int | None) -> list[dict]:
    """--repeats: each of a trial's runs at ``epoch`` (None: its last) as {"repeat", "seed", "value"}; empty
    without repeats."""
    row = _row_at(history, trial_id, epoch)
    if row is None:
        return []
    found = sorted({int(c.split("/")[1]) for c in history.columns if c.startswith(f"{RUNS}/") and c.count("/") == 2})
    out = []
    for i in found:
        value, seed = row.get(f"{RUNS}/{i}/{metric}"), row.get(f"{RUNS}/{i}/seed")
        out.append({"repeat": i, "seed": None if seed is None or pd.isna(seed) else int(seed),
                    "value": None if value is None or pd.isna(value) else float(value)})
    return out


def top_k_payload(trials: pd.DataFrame, metric: str, mode: str, rule: str, k: int,
                  pool: pd.DataFrame | None = None) -> dict:
    """The k best configurations under `rule`, best first, for a retrain of several candidates (``pool``: these
    trials, in this order, instead: a Pareto front)."""
    pool = (ranked(trials, metric, mode, rule) if pool is None else pool).head(k)
    entries = [{"rank": i, **_trial_numbers(row, metric, rule), "config": config_of(row, trials)}
               for i, (_, row) in enumerate(pool.iterrows(), start=1)]
    return plain({"metric": metric, "mode": mode, "selection_rule": rule, "at_epoch": trials.attrs.get("at_epoch"),
                   "k": k, "trials": entries})


# ---------------------------------------------------------------- several objectives

PICK_RULE = ("among the Pareto front, the trials within noise of its best on the first objective (the within-noise "
             "rule), then the best on the second objective, then the third, ...; then the tie rule")


def pareto_front(trials: pd.DataFrame, objectives: list[tuple[str, str]]) -> pd.DataFrame:
    """The eligible trials no other eligible trial dominates (at least as good on every objective, better on one),
    each objective at the trial's last epoch (device_s: its whole cost). Trials missing an objective are left
    out."""
    columns = [objective_column(m) for m, _ in objectives]
    pool = trials[trials["status"].isin(ELIGIBLE)]
    if any(c not in pool for c in columns):
        return pool.iloc[:0]
    values = pool[columns].astype(float)
    pool, values = pool[np.isfinite(values).all(axis=1)], values[np.isfinite(values).all(axis=1)]
    signs = np.array([-1.0 if mode == "max" else 1.0 for _, mode in objectives])
    cost = values.to_numpy() * signs  # every objective as one to minimise
    keep = [not any((cost[j] <= cost[i]).all() and (cost[j] < cost[i]).any() for j in range(len(cost)) if j != i)
            for i in range(len(cost))]
    return pool[keep]


def pick_from_front(front: pd.DataFrame, history: pd.DataFrame, objectives: list[tuple[str, str]],
                    examples: int | None) -> pd.Series:
    """The one configuration PICK_RULE takes from the front."""
    (metric, mode), rest = objectives[0], objectives[1:]
    if objective_column(metric) == f"final_{metric}":
        pool = ranked(front, metric, mode, "last")
        noise, _ = within_noise(pool, history, metric, mode, "last", examples)
        candidates = pool[pool["trial_id"].isin([e["trial_id"] for e in noise])] if noise else pool.head(1)
    else:
        column = objective_column(metric)
        candidates = front[front[column] == (front[column].max() if mode == "max" else front[column].min())]
    keys = [(objective_column(m), d == "min") for m, d in rest]
    keys += [(objective_column(metric), mode == "min"), ("started", True), ("trial_id", True)]
    keys = [(k, up) for k, up in keys if k in candidates]
    return candidates.sort_values([k for k, _ in keys], ascending=[up for _, up in keys], kind="mergesort").iloc[0]


def pareto_payload(front: pd.DataFrame, objectives: list[tuple[str, str]], picked: str) -> dict:
    """best_config.json's record of the front: the objectives, each front trial's values, the pick and its rule."""
    return plain({"objectives": [{"metric": m, "mode": d} for m, d in objectives], "pick_rule": PICK_RULE,
                  "picked": picked,
                  "pareto": [{"trial_id": r["trial_id"], "trial_name": r["name"],
                              "values": {m: r[objective_column(m)] for m, _ in objectives}}
                             for _, r in front.iterrows()]})


def pareto_table(front: pd.DataFrame, objectives: list[tuple[str, str]], picked: str) -> pd.DataFrame:
    """pareto.csv: one row per front trial: trial_id, name, each objective's value (named by the metric), and
    whether it is the one picked; ordered by the first objective, best first."""
    table = pd.DataFrame({"trial_id": front["trial_id"], "name": front["name"],
                          **{m: front[objective_column(m)].astype(float) for m, _ in objectives}})
    table["picked"] = table["trial_id"] == picked
    metric, mode = objectives[0]
    return table.sort_values(metric, ascending=mode == "min", kind="mergesort").reset_index(drop=True)
