"""Which hyperparameter value is better, and how sure are we: trend tables that early stopping
cannot bias, pairwise tables, and importances.

Three views of each trial's metric feed the trend tables:

- ``epoch K`` (the default view): the metric at epoch K for every trial that reached epoch K, so a
  value whose trials ASHA stopped early is compared at the same training length as the others;
- ``completed``: the last epoch's metric, over trials that ran their full length only;
- ``raw``: the last reported metric of every finished trial, whatever its length. This is what a
  table built by hand from W&B's run list shows; it is kept to show how early stopping skews it.

Diverged and failed trials are counted in every table and averaged in none. With --repeats, each trial's
number is the mean of its runs, and ``seed_sd`` says how much its runs differed (the mean over a value's trials of
their runs' standard deviation): a difference between values smaller than that is seed noise.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from tune_app.rundir.layout import RUNS
from tune_app.rundir.tables import ELIGIBLE, bin_label, plain, value_key

VIEWS = ("epoch", "completed", "raw")
TREND_COLUMNS = ("view", "hyperparameter", "value", "completed", "stopped", "diverged", "failed", "n",
                 "mean", "std", "ci95_low", "ci95_high", "best", "median_rank")


def metric_at(history: pd.DataFrame, metric: str, epoch: int) -> pd.Series:
    """Each trial's finite, non-diverged metric at `epoch`, indexed by trial_id."""
    if history.empty or metric not in history:
        return pd.Series(dtype="float64")
    rows = history[(history["epoch"] == epoch) & np.isfinite(history[metric].astype(float))]
    if "diverged" in rows:
        rows = rows[~rows["diverged"].fillna(False).astype(bool)]
    return rows.drop_duplicates("trial_id", keep="last").set_index("trial_id")[metric].astype(float)


def reached(history: pd.DataFrame, metric: str) -> pd.Series:
    """The deepest epoch at which each trial reported a finite, non-diverged metric."""
    if history.empty or metric not in history:
        return pd.Series(dtype="int64")
    rows = history[np.isfinite(history[metric].astype(float))]
    if "diverged" in rows:
        rows = rows[~rows["diverged"].fillna(False).astype(bool)]
    return rows.groupby("trial_id")["epoch"].max().astype("int64")


def default_at_epoch(history: pd.DataFrame, metric: str) -> int | None:
    """The deepest epoch that at least a third of the trials (those that reported anything) reached."""
    depth = reached(history, metric)
    if depth.empty:
        return None
    need = math.ceil(len(depth) / 3)
    return int(max(k for k in range(1, int(depth.max()) + 1) if (depth >= k).sum() >= need))


def like_with_like(trials: pd.DataFrame, at: pd.Series) -> tuple[pd.Series, int | None]:
    """The trials the epoch-K view may compare (``at``: their metric at epoch K) and the planned length it keeps.

    A learning-rate schedule fitted to the planned length (cosine to the end, OneCycle: the trainable's
    ``schedule_spans_run``) puts a trial planned for 20 epochs halfway down its schedule at epoch 10, while one
    planned for 10 has finished annealing there: their epoch-10 numbers are not alike. When trials of such
    schedules differ in planned length, the view keeps those of one planned length (the one with the most trials
    at epoch K; the longer on a tie) and every trial whose schedule does not depend on its length. The completed
    view compares each trial at its own end. Returns (values, the planned length kept, or None when all are
    alike)."""
    t = trials.set_index("trial_id").reindex(at.index)
    if "schedule_spans_run" not in t or "target_epochs" not in t:
        return at, None
    spans = t["schedule_spans_run"].astype("boolean").fillna(True).astype(bool)
    planned = t["target_epochs"]
    if planned[spans].nunique(dropna=True) <= 1:
        return at, None
    counts = planned[spans].value_counts()
    keep = int(max(counts.index, key=lambda length: (counts[length], length)))
    return at[(~spans) | (planned == keep)], keep


def view_values(trials: pd.DataFrame, history: pd.DataFrame, metric: str, at_epoch: int) -> dict[str, pd.Series]:
    """Per view, the metric of each trial it averages (indexed by trial_id). The epoch view compares like with
    like (see like_with_like); ``values["epoch"].attrs["planned"]`` says which planned length it kept."""
    t = trials.set_index("trial_id")
    final = t[f"final_{metric}"].astype(float)
    eligible = t.index[t["status"].isin(ELIGIBLE)]
    at, planned = like_with_like(trials, metric_at(history, metric, at_epoch)[lambda s: s.index.isin(eligible)])
    at.attrs["planned"] = planned
    return {
        "epoch": at,
        "completed": final[(t["status"] == "completed") & np.isfinite(final)],
        "raw": final[t["status"].isin(ELIGIBLE) & np.isfinite(final)],
    }


def view_label(view: str, at_epoch: int) -> str:
    return f"epoch {at_epoch}" if view == "epoch" else view


def ci95(values: pd.Series, bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """Student-t 95 % confidence interval of the mean (NaN with fewer than two values), clipped to
    the metric's possible range when it has one (an accuracy lies in [0, 1])."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
    low, high = values.mean() - half, values.mean() + half
    return (max(low, bounds[0]), min(high, bounds[1])) if bounds else (low, high)


def bounds_of(metric: str) -> tuple[float, float] | None:
    return (0.0, 1.0) if metric.endswith("acc") else None


def _groups(trials: pd.DataFrame, param: str, bins: dict):
    """(label, rows) per value of `param`; a continuous range is grouped by its bin edges."""
    column = f"config/{param}"
    present = trials[trials[column].notna()]
    if param in bins:
        edges = bins[param]
        index = np.clip(np.searchsorted(edges, present[column].astype(float), side="right") - 1, 0, len(edges) - 2)
        return [(bin_label(edges, i), group) for i, group in present.groupby(index)]
    return sorted(((plain(v), g) for v, g in present.groupby(column, sort=False)), key=lambda kv: value_key(kv[0]))


def seed_spread(history: pd.DataFrame, values: pd.Series, metric: str, epoch: int | None) -> pd.Series:
    """--repeats: each trial's standard deviation over its runs of ``metric`` at ``epoch`` (None: its last), for
    the trials of ``values``; empty without repeats."""
    from tune_app.analyze.selection import run_values

    out = {}
    for trial_id in values.index:
        runs = run_values(history, trial_id, metric, epoch)
        if len(runs) > 1:
            out[trial_id] = float(np.std(runs, ddof=1))
    return pd.Series(out, dtype="float64")


def trend_table(trials: pd.DataFrame, values: pd.Series, params: list[str], mode: str,
                bins: dict | None = None, bounds: tuple[float, float] | None = None,
                spread: pd.Series | None = None) -> pd.DataFrame:
    """For each hyperparameter value: how its trials ended, and mean/std/95 % CI/best/median rank of
    `values` (one number per trial averaged; see view_values). Rank 1 is the best trial of the view. ``spread``
    (--repeats: see seed_spread) adds ``seed_sd``, the mean over the value's trials of their runs' spread."""
    bins = bins or {}
    ranks = values.rank(ascending=mode == "min", method="average")
    rows = []
    for p in params:
        if f"config/{p}" not in trials:
            continue
        for label, group in _groups(trials, p, bins):
            ids = group["trial_id"]
            v = values[values.index.isin(ids)]
            status = group["status"]
            low, high = ci95(v, bounds)
            rows.append({"hyperparameter": p, "value": label,
                         "completed": int((status == "completed").sum()),
                         "stopped": int(status.isin(["stopped", "early_stopped"]).sum()),
                         "diverged": int((status == "diverged").sum()),
                         "failed": int((~status.isin([*ELIGIBLE, "diverged"])).sum()),
                         "n": len(v), "mean": v.mean() if len(v) else math.nan,
                         "std": v.std(ddof=1) if len(v) > 1 else math.nan, "ci95_low": low, "ci95_high": high,
                         "best": (v.max() if mode == "max" else v.min()) if len(v) else math.nan,
                         "median_rank": ranks[ranks.index.isin(ids)].median() if len(v) else math.nan})
            if spread is not None:
                within = spread[spread.index.isin(v.index)]
                rows[-1]["seed_sd"] = within.mean() if len(within) else math.nan
    columns = list(TREND_COLUMNS[1:])
    if spread is not None:
        columns.insert(columns.index("std") + 1, "seed_sd")
    return pd.DataFrame(rows, columns=columns)


def trends(trials, history, params, metric, mode, at_epoch, bins=None) -> pd.DataFrame:
    """All three views in one long table, its first column naming the view. ``attrs["planned"]``: the planned
    length the epoch view kept (see like_with_like), or None."""
    values = view_values(trials, history, metric, at_epoch)
    repeats = any(c.startswith(f"{RUNS}/") for c in history.columns)
    frames = [trend_table(trials, values[v], params, mode, bins, bounds_of(metric),
                          seed_spread(history, values[v], metric, at_epoch if v == "epoch" else None)
                          if repeats else None).assign(view=view_label(v, at_epoch))
              for v in VIEWS]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    columns = list(TREND_COLUMNS)
    if repeats:
        columns.insert(columns.index("std") + 1, "seed_sd")
    table = table[columns]
    table.attrs["planned"] = values["epoch"].attrs.get("planned")
    return table


def pair_table(trials: pd.DataFrame, values: pd.Series, a: str, b: str, bins: dict | None = None) -> pd.DataFrame:
    """Mean of `values` and trial count for every (a, b) value pair, in long form."""
    bins = bins or {}
    rows = []
    for label_a, group_a in _groups(trials, a, bins):
        for label_b, group in _groups(group_a, b, bins):
            v = values[values.index.isin(group["trial_id"])]
            rows.append({"a": label_a, "b": label_b, "n": len(v), "mean": v.mean() if len(v) else math.nan,
                         "std": v.std(ddof=1) if len(v) > 1 else math.nan})
    return pd.DataFrame(rows, columns=["a", "b", "n", "mean", "std"])


# ---------------------------------------------------------------- importance (Optuna)

def distributions(trials: pd.DataFrame, params: list[str], ranges: dict) -> dict:
    """Optuna distributions for the searched hyperparameters: the space's ranges where known, the
    values seen otherwise (categorical). Non-scalar values are compared as text."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for p in params:
        column = trials.get(f"config/{p}")
        if column is None or column.isna().all():
            continue
        if p in ranges:
            kind, low, high, log = ranges[p]
            cls = IntDistribution if kind == "int" else FloatDistribution
            out[p] = cls(low=int(low) if kind == "int" else float(low),
                         high=int(high) if kind == "int" else float(high), log=bool(log))
        else:
            choices = sorted({_choice(v) for v in column.dropna()}, key=value_key)
            out[p] = CategoricalDistribution(choices)
    return out


def _choice(value):
    value = plain(value)
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def build_study(trials: pd.DataFrame, values: pd.Series, dists: dict, mode: str):
    """An in-memory Optuna study holding each trial of `values` with its searched hyperparameters,
    so Optuna's importance and visualization modules can run over a finished sweep."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    t = trials.set_index("trial_id")
    # a conditional key (drawn by some trials only: momentum for SGD) has no value to attribute in the others, so
    # importance is over the keys every trial of the view has
    present = t.reindex(values.index)
    dists = {p: d for p, d in dists.items() if f"config/{p}" in present and present[f"config/{p}"].notna().all()}
    frozen = []
    for tid, value in values.items():
        row = t.loc[tid]
        params = {}
        for p, dist in dists.items():
            raw = row.get(f"config/{p}")
            if raw is None or (isinstance(raw, float) and math.isnan(raw)) or raw is pd.NA:
                break
            v = _choice(raw)
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                params[p] = v
            else:
                params[p] = int(v) if isinstance(dist, optuna.distributions.IntDistribution) else float(v)
                if not dist.low <= params[p] <= dist.high:
                    break
        else:
            frozen.append(optuna.trial.create_trial(params=params, distributions=dists, value=float(value),
                                                    user_attrs={"trial_id": tid, "name": row["name"]}))
    study.add_trials(frozen)
    return study


def importance(study, seed: int = 0) -> pd.DataFrame:
    """fANOVA and PED-ANOVA importances (each sums to 1) of the study's hyperparameters, sorted by fANOVA.
    Empty when there is nothing to attribute: fewer than two trials, or no hyperparameter that varies."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

    columns = ["hyperparameter", "fanova", "ped_anova"]
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    values = {t.value for t in trials}
    varying = [p for p in (trials[0].params if trials else {}) if len({str(t.params[p]) for t in trials}) > 1]
    if len(trials) < 2 or len(values) < 2 or not varying:
        return pd.DataFrame(columns=columns)
    # PED-ANOVA contrasts the top quantile with the rest: take at least two trials as the top.
    quantile = min(0.5, max(0.1, 2 / len(trials)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fanova = get_param_importances(_few_categories(study), evaluator=FanovaImportanceEvaluator(seed=seed),
                                       params=varying)
        ped = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile),
                                    params=varying)
    table = pd.DataFrame({"hyperparameter": varying, "fanova": [float(fanova.get(p, 0.0)) for p in varying],
                          "ped_anova": [float(ped.get(p, 0.0)) for p in varying]})
    return table.sort_values(["fanova", "ped_anova"], ascending=False, kind="mergesort").reset_index(drop=True)


FANOVA_CATEGORIES = 12  # Optuna's fANOVA one-hot encodes a categorical: its time doubles with every two choices


def _few_categories(study):
    """The study for fANOVA, each categorical hyperparameter with more than FANOVA_CATEGORIES choices made an
    ordered one: numbers (a grid of 40 learning rates) by their value, on a log scale when they span 100x or more,
    anything else by its position among the choices. Optuna's fANOVA would take hours over such a key (40 choices:
    2^40 cells per tree); a forest splits an ordered axis as well. The study itself, plots' labels included, keeps
    the categories."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    wide = {p: d for p, d in trials[0].distributions.items()
            if isinstance(d, CategoricalDistribution) and len(d.choices) > FANOVA_CATEGORIES} if trials else {}
    if not wide:
        return study
    ordered = {}
    for p, d in wide.items():
        if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in d.choices):
            low, high = float(min(d.choices)), float(max(d.choices))
            ordered[p] = (FloatDistribution(low, high, log=low > 0 and high >= 100 * low), float)
        else:
            ordered[p] = (IntDistribution(0, len(d.choices) - 1), list(d.choices).index)
    copy = optuna.create_study(direction=study.direction)
    copy.add_trials([optuna.trial.create_trial(
        params={p: ordered[p][1](v) if p in ordered else v for p, v in t.params.items()},
        distributions={p: ordered[p][0] if p in ordered else d for p, d in t.distributions.items()},
        value=t.value) for t in trials])
    return copy

