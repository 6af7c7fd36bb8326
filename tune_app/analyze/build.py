"""A sweep's analysis as one object (``Analysis``), computed from its run directory before anything is written:
the trials and history tables, trend and pair tables, importances, the best configuration and the top k."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tune_app.analyze import trends as trend_tables
from tune_app.analyze.selection import (
    NO_ELIGIBLE,
    RULES,
    best_config_payload,
    pareto_front,
    pareto_payload,
    pareto_table,
    pick_from_front,
    ranked,
    select_best,
    top_k_payload,
    within_noise,
)
from tune_app.errors import UsageError
from tune_app.rundir import reader
from tune_app.rundir.layout import RETRAIN_DIR, SPEC_FILE
from tune_app.rundir.tables import (
    ELIGIBLE,
    history_frame,
    plain,
    repeats_of,
    runs_frame,
    status_counts,
    trials_frame,
)

log = logging.getLogger("tune_app")



@dataclass
class Analysis:
    sweep: reader.Sweep
    at_epoch: int
    select: str
    trials: pd.DataFrame
    history: pd.DataFrame
    trends: pd.DataFrame
    pairs: dict
    importance: pd.DataFrame
    importance_trials: int
    best: dict
    topk: dict
    runs: pd.DataFrame | None = None  # --repeats: one row per run (trials.parquet); trials has one per trial
    pareto: pd.DataFrame | None = None  # several objectives: the Pareto front (pareto.csv)
    plots: list = field(default_factory=list)
    paths: dict = field(default_factory=dict)
    study: object = None  # the in-memory Optuna study importance and the Optuna plots run over
    retrain: dict | None = None  # <run dir>/retrain/retrain.json, when tune_app.retrain has run
    curves_by: tuple[str, ...] = ()  # hyperparameters whose values get learning curves side by side
    # several objectives: each further one's trend tables and importances, by metric (trends_<metric>.csv, ...)
    objective_trends: dict = field(default_factory=dict)
    objective_importance: dict = field(default_factory=dict)
    objective_importance_trials: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.sweep.name

    @property
    def metric(self) -> str:
        return self.sweep.metric

    @property
    def view(self) -> str:
        return f"epoch {self.at_epoch}"

    @property
    def overview(self) -> str:
        c = status_counts(self.trials)
        spec = self.sweep.spec or {}
        settings = spec.get("settings", {})
        how = (f"space {spec.get('space')}, {settings.get('searcher')} + {settings.get('scheduler')}; " if spec
               else "a Ray Tune experiment; ")
        return (f"{how}{c['total']} trials: {c['completed']} completed, {c['stopped']} stopped early, "
                f"{_other_endings(c)}{c['diverged']} diverged, {c['error']} failed. Metric {self.metric} "
                f"({self.sweep.mode}); "
                f"trends compared at epoch {self.at_epoch}; best selected by {self.select}.")



def parse_pairs(pairs: list[str], params: list[str]) -> list[tuple[str, str]]:
    out = []
    for text in pairs:
        names = [n.strip() for n in text.split(",")]
        if len(names) != 2 or not all(names):
            raise UsageError(f"--pair {text}: give two hyperparameters, e.g. --pair optimizer,lr")
        for n in names:
            if n not in params:
                raise UsageError(f"--pair {text}: {n!r} is not a searched hyperparameter; "
                                 f"searched: {', '.join(params)}")
        out.append((names[0], names[1]))
    return out



def _provenance(sweep: reader.Sweep) -> dict:
    from tune_app.integrations.provenance import provenance

    spec = sweep.spec or {}
    settings = spec.get("settings", {})
    recorded = {"space": spec.get("space"), "overrides": spec.get("overrides"),
                **{k: settings.get(k) for k in ("seed", "searcher", "scheduler", "num_samples")}}
    sweep_info = {k: v for k, v in recorded.items() if v is not None}
    # What the sweep ran with (recorded when it started) beats what analyzes it now.
    return {**provenance(**sweep_info), **spec.get("provenance", {}), "analyzed_with": provenance()["git_commit"]}



def validation_examples(sweep: reader.Sweep, history: pd.DataFrame) -> int | None:
    """How many examples the validation metric was measured on: what the sweep recorded of its dataset (a
    built-in or image dataset), else what a trainable of the user's reported as ``val_examples``; None when
    neither says."""
    recorded = ((sweep.spec or {}).get("provenance") or {}).get("dataset", {}).get("val")
    if isinstance(recorded, int) and recorded > 0:
        return recorded
    if "val_examples" in history and history["val_examples"].notna().any():
        return int(history["val_examples"].dropna().iloc[-1])
    return None


def load_trials(path, metric=None, mode=None, at_epoch=None):
    """(sweep, history, trials table, at_epoch) of a run directory; UsageError when it has no results."""
    sweep = reader.load(path, metric, mode)
    history = history_frame(sweep.records)
    if history.empty or sweep.metric not in history:
        raise UsageError(f"{sweep.path}: none of its {len(sweep.records)} trials has reported a result yet; "
                         f"nothing to analyze")
    depth = trend_tables.reached(history, sweep.metric)
    deepest = int(depth.max()) if len(depth) else 0
    if at_epoch is not None and not 1 <= at_epoch <= deepest:
        raise UsageError(f"--at-epoch {at_epoch}: no trial reached that epoch (the deepest any trial reached "
                         f"is {deepest})")
    at_epoch = at_epoch or trend_tables.default_at_epoch(history, sweep.metric) or 1
    also = [m for m, _ in sweep.objectives[1:]]
    return sweep, history, trials_frame(sweep.records, sweep.metric, sweep.mode, at_epoch=at_epoch, also=also), \
        at_epoch



def saved_options(path) -> dict:
    """The choices the summary in ``<path>/summary`` was made with, read back from its files (selection rule,
    equal-length epoch and k from topk.json, the pairs in pairs.csv, the grouped curves drawn), so that a new
    analysis can repeat them; empty when there is no summary."""
    summary = Path(path).expanduser() / "summary"
    options = {}
    if (summary / "topk.json").is_file():
        saved = reader.read_json(summary / "topk.json", f"write it again with python -m tune_app.analyze {path}")
        options = {"select": saved.get("selection_rule", "last"), "at_epoch": saved.get("at_epoch"),
                   "top_k": saved.get("k", 5)}
    if (summary / "pairs.csv").is_file():
        pairs = pd.read_csv(summary / "pairs.csv")
        if len(pairs):
            options["pairs"] = list(dict.fromkeys(f"{a},{b}" for a, b in zip(pairs["first"], pairs["second"])))
    drawn = sorted((summary / "plots").glob("curves_by_*.png"))
    if drawn:
        options["curves_by"] = [p.stem.removeprefix("curves_by_") for p in drawn]
    return options



def _other_endings(counts: dict) -> str:
    """Trials ended by their own early stopping, out of memory or by --trial-timeout, said only where there are
    any."""
    said = (("early_stopped", "stopped by early stopping"), ("oom", "out of memory"), ("timeout", "timed out"),
            ("interrupted", "interrupted (resume to finish them)"))
    return "".join(f"{counts[key]} {text}, " for key, text in said if counts.get(key))



NOISE_CAP = 3  # a retrain's default: the configurations within noise of the best, at most this many


def top_configs(path, k: int | None, flag: str) -> tuple[reader.Sweep, dict]:
    """The k best configurations of a tune_app sweep, best first, ranked as its summary ranked them
    (the selection rule and epoch saved in summary/topk.json; the defaults if it was never analyzed); k None:
    those within noise of the best (see analyze.selection.within_noise), at most NOISE_CAP. A sweep of several
    objectives gives its Pareto front instead, the picked configuration first (k None: at most NOISE_CAP; a k
    larger than the front: the k best by the first objective). Returns (sweep, topk
    payload; its ``chosen`` says how k was chosen). Raises UsageError (naming ``flag``, the command's) when there
    are fewer than k eligible trials."""
    if k is not None and k < 1:
        raise UsageError(f"{flag} {k}: must be at least 1")
    options = saved_options(path)
    rule, at_epoch = options.get("select", "last"), options.get("at_epoch")
    sweep, history, trials, at_epoch = load_trials(path, at_epoch=at_epoch)
    if sweep.spec is None or sweep.space is None:
        raise UsageError(f"{sweep.path} is not a tune_app sweep of a space this version knows (no "
                         f"{SPEC_FILE} naming one), so its trainable is unknown")
    chosen = f"{flag} {k}"
    if len(sweep.objectives) > 1:  # several objectives: the Pareto front, the configuration picked from it first
        front = pareto_front(trials, sweep.objectives)
        if len(front):
            picked = pick_from_front(front, history, sweep.objectives, validation_examples(sweep, history))
            order = ranked(front, sweep.metric, sweep.mode, "last")
            order = pd.concat([order[order["trial_id"] == picked["trial_id"]],
                               order[order["trial_id"] != picked["trial_id"]]])
            n = min(NOISE_CAP, len(order)) if k is None else k
            top = top_k_payload(trials, sweep.metric, sweep.mode, rule, n, pool=order)
            top["chosen"] = (f"{flag} {k} of" if k is not None else f"the {len(top['trials'])} of") + \
                f" the Pareto front's {len(front)} (the picked configuration first)"
            if len(top["trials"]) == n:
                return sweep, top
    if k is None:
        pool = ranked(trials, sweep.metric, sweep.mode, rule)
        pool.attrs["at_epoch"] = at_epoch
        noise, how = within_noise(pool, history, sweep.metric, sweep.mode, rule, validation_examples(sweep, history))
        k = max(1, min(NOISE_CAP, len(noise)))
        chosen = (f"the {len(noise)} within noise of the best ({how.get('text', '')})"
                  + (f", the best {k} of them" if len(noise) > k else "") if noise else "the best")
    top = top_k_payload(trials, sweep.metric, sweep.mode, rule, k)
    top["chosen"] = chosen
    if len(top["trials"]) < k:
        counts = status_counts(trials)
        raise UsageError(f"{flag} {k}: {sweep.path.name} has {len(top['trials'])} trials to rank by {rule} "
                         f"({counts['completed']} completed, {counts['stopped']} stopped early, "
                         f"{_other_endings(counts)}{counts['diverged']} diverged, {counts['error']} failed); "
                         f"ask for at most {len(top['trials'])}")
    return sweep, top



def compute(path, *, metric=None, mode=None, at_epoch=None, pairs=(), select="last", top_k=5,
            curves_by=()) -> Analysis:
    """Everything but the files: raises UsageError (one line) before anything is written."""
    if select not in RULES:
        raise UsageError(f"--select {select}: use one of {', '.join(RULES)}")
    if top_k < 1:
        raise UsageError(f"--top-configs {top_k}: must be at least 1")
    sweep, history, trials, at_epoch = load_trials(path, metric, mode, at_epoch)
    metric, mode = sweep.metric, sweep.mode
    pair_names = parse_pairs(list(pairs), sweep.params)
    curves_by = tuple(curves_by) or tuple(getattr(sweep.space.module, "CURVES_BY", ()) if sweep.space else ())
    for name in curves_by:
        if name not in sweep.params:
            raise UsageError(f"--curves-by {name}: not a searched hyperparameter; searched: "
                             f"{', '.join(sweep.params)}")
    from tune_app.cost import estimate
    from tune_app.rundir.layout import PLAN_FILE

    plan_file = sweep.path / PLAN_FILE
    if plan_file.is_file() and sweep.space is not None:  # estimates made before the sweep (--plan's probe)
        trials = estimate.attach(trials, history, json.loads(plan_file.read_text()), sweep.space.trainable)
    values = trend_tables.view_values(trials, history, metric, at_epoch)
    trends = trend_tables.trends(trials, history, sweep.params, metric, mode, at_epoch, sweep.bins)
    pair_tables = {(a, b): trend_tables.pair_table(trials, values["epoch"], a, b, sweep.bins) for a, b in pair_names}
    dists = trend_tables.distributions(trials, sweep.params, sweep.ranges)
    study = trend_tables.build_study(trials, values["epoch"], dists, mode)
    objective_trends, objective_importance, objective_importance_trials = {}, {}, {}
    for other, other_mode in sweep.objectives[1:]:  # several objectives: the same tables for each further one
        if other not in history:
            continue
        objective_trends[other] = trend_tables.trends(trials, history, sweep.params, other, other_mode, at_epoch,
                                                      sweep.bins)
        other_values = trend_tables.view_values(trials, history, other, at_epoch)
        other_study = trend_tables.build_study(trials, other_values["epoch"], dists, other_mode)
        objective_importance[other] = trend_tables.importance(other_study)
        objective_importance_trials[other] = len(other_study.trials)
    prov = _provenance(sweep)
    front = None
    try:
        chosen = select_best(trials, metric, mode, select)
        if len(sweep.objectives) > 1:  # several objectives: the front, and the one configuration PICK_RULE takes
            front = pareto_front(trials, sweep.objectives)
            chosen = pick_from_front(front, history, sweep.objectives, validation_examples(sweep, history))
        best = best_config_payload(chosen, trials, metric, mode, select, prov, history=history,
                                   examples=validation_examples(sweep, history))
        if front is not None:
            best.update(pareto_payload(front, sweep.objectives, chosen["trial_id"]))
            front = pareto_table(front, sweep.objectives, chosen["trial_id"])
    except ValueError:
        best = plain({"config": None, "reason": _no_best_reason(trials, select, at_epoch), "metric": metric,
                       "mode": mode, "selection_rule": select, "at_epoch": at_epoch,
                       "trials": status_counts(trials), **prov})
    runs = runs_frame(sweep.records, metric, mode, at_epoch) if any(map(repeats_of, sweep.records)) else None
    result = Analysis(sweep=sweep, at_epoch=at_epoch, select=select, trials=trials, history=history, trends=trends,
                      runs=runs, pareto=front,
                      pairs=pair_tables, importance=trend_tables.importance(study), importance_trials=len(study.trials),
                      best=best, topk=top_k_payload(trials, metric, mode, select, top_k), study=study,
                      retrain=_retrain_summary(sweep.path), curves_by=curves_by,
                      objective_trends=objective_trends, objective_importance=objective_importance,
                      objective_importance_trials=objective_importance_trials)
    return result



def _retrain_summary(path: Path) -> dict | None:
    found = path / RETRAIN_DIR / "retrain.json"
    try:
        return json.loads(found.read_text()) if found.is_file() else None
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s is unreadable (%s); the report has no retrain section", found, e)
        return None



def _no_best_reason(trials: pd.DataFrame, select: str, at_epoch: int) -> str:
    if select == "at-epoch" and trials["status"].isin(ELIGIBLE).any():
        return f"no finished trial reached epoch {at_epoch}; use --select last or a smaller --at-epoch"
    return NO_ELIGIBLE
