"""Analyze a sweep: ``python -m tune_app.analyze runs/<name>``.

Reads the run directory (a tune_app sweep, one copied from a cluster, or a plain Ray Tune
experiment) and writes into ``<run dir>/summary/``: trials and history tables, trend tables at
equal training length, pairwise tables, fANOVA and PED-ANOVA importances, plots (PNG and HTML),
``report.html`` and ``report.md``, ``best_config.json``/``.yaml`` and ``topk.json``. Every file is
written to a temporary name and renamed, so a failure leaves the previous files whole.
A sweep runs this itself when it ends.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from tune_app import (
    analysis,
    ray_output,  # noqa: F401  (before Ray or W&B is imported)
    report,
    rundir,
)
from tune_app.atomic import atomic_write
from tune_app.errors import OneLineParser, Renamed, UsageError, one_line
from tune_app.results import Sweep
from tune_app.runlock import check_idle, check_writable
from tune_app.summary import (
    ELIGIBLE,
    NO_ELIGIBLE,
    RULES,
    _plain,
    _status_counts,
    best_config_payload,
    history_frame,
    select_best,
    top_k_payload,
    trials_frame,
)

log = logging.getLogger("tune_app")


def build_parser(prog: str = "python -m tune_app.analyze") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a sweep's run directory, e.g. runs/<name>, or its s3:// / gs:// URI")
    p.add_argument("--metric", help="metric to analyze (default: the sweep's; val_acc for a plain Ray experiment)")
    p.add_argument("--mode", choices=("max", "min"), help="whether the metric is maximised or minimised")
    p.add_argument("--at-epoch", type=int, metavar="K",
                   help="compare trials at epoch K (default: the deepest epoch a third of the trials reached)")
    p.add_argument("--pair", action="append", default=[], metavar="A,B",
                   help="also tabulate two hyperparameters against each other (repeatable)")
    p.add_argument("--curves-by", action="append", default=[], metavar="NAME",
                   help="learning curves grouped by this hyperparameter's values (repeatable; default: the space's "
                        "CURVES_BY, e.g. loss for study 3)")
    p.add_argument("--select", choices=RULES, default="last",
                   help="how the best trial is chosen: its last epoch (default), its best epoch, or at --at-epoch")
    p.add_argument("--top-configs", "--top-k", dest="top_k", type=int, default=5, action=Renamed, metavar="K",
                   help="how many of the best configurations topk.json lists (default 5)")
    p.add_argument("--wandb-mode", choices=("online", "offline", "disabled"),
                   help="log a summary run to the sweep's W&B group (default: as the sweep did; "
                        "disabled for a plain Ray experiment)")
    p.add_argument("--wandb-project", help="default: the sweep's project")
    p.add_argument("--wandb-entity")
    return p


@dataclass
class Analysis:
    sweep: rundir.Sweep
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
    plots: list = field(default_factory=list)
    paths: dict = field(default_factory=dict)
    study: object = None  # the in-memory Optuna study importance and the Optuna plots run over
    retrain: dict | None = None  # <run dir>/retrain/retrain.json, when tune_app.retrain has run
    curves_by: tuple[str, ...] = ()  # hyperparameters whose values get learning curves side by side

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
        c = _status_counts(self.trials)
        spec = self.sweep.spec or {}
        s = spec.get("settings", {})
        how = (f"space {spec.get('space')}, {s.get('searcher')} + {s.get('scheduler')}; " if spec
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


def _provenance(sweep: rundir.Sweep) -> dict:
    from tune_app.provenance import provenance

    spec = sweep.spec or {}
    s = spec.get("settings", {})
    sweep_info = {k: v for k, v in {"space": spec.get("space"), "overrides": spec.get("overrides"),
                                    "seed": s.get("seed"), "searcher": s.get("searcher"),
                                    "scheduler": s.get("scheduler"), "num_samples": s.get("num_samples")}.items()
                  if v is not None}
    # What the sweep ran with (recorded when it started) beats what analyzes it now.
    return {**provenance(**sweep_info), **spec.get("provenance", {}), "analyzed_with": provenance()["git_commit"]}


def load_trials(path, metric=None, mode=None, at_epoch=None):
    """(sweep, history, trials table, at_epoch) of a run directory; UsageError when it has no results."""
    sweep = rundir.load(path, metric, mode)
    history = history_frame(sweep.records)
    if history.empty or sweep.metric not in history:
        raise UsageError(f"{sweep.path}: none of its {len(sweep.records)} trials has reported a result yet; "
                         f"nothing to analyze")
    depth = analysis.reached(history, sweep.metric)
    deepest = int(depth.max()) if len(depth) else 0
    if at_epoch is not None and not 1 <= at_epoch <= deepest:
        raise UsageError(f"--at-epoch {at_epoch}: no trial reached that epoch (the deepest any trial reached "
                         f"is {deepest})")
    at_epoch = at_epoch or analysis.default_at_epoch(history, sweep.metric) or 1
    return sweep, history, trials_frame(sweep.records, sweep.metric, sweep.mode, at_epoch=at_epoch), at_epoch


def saved_options(path) -> dict:
    """The choices the summary in ``<path>/summary`` was made with, read back from its files (selection rule,
    equal-length epoch and k from topk.json, the pairs in pairs.csv, the grouped curves drawn), so that a new
    analysis can repeat them; empty when there is no summary."""
    summary = Path(path).expanduser() / "summary"
    options = {}
    if (summary / "topk.json").is_file():
        saved = rundir.read_json(summary / "topk.json", f"write it again with python -m tune_app.analyze {path}")
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


def top_configs(path, k: int, flag: str) -> tuple[rundir.Sweep, dict]:
    """The k best configurations of a tune_app sweep, best first, ranked as its summary ranked them
    (the selection rule and epoch saved in summary/topk.json; the defaults if it was never analyzed).
    Returns (sweep, topk payload). Raises UsageError (naming ``flag``, the command's) when there are fewer
    than k eligible trials."""
    if k < 1:
        raise UsageError(f"{flag} {k}: must be at least 1")
    options = saved_options(path)
    rule, at_epoch = options.get("select", "last"), options.get("at_epoch")
    sweep, _, trials, at_epoch = load_trials(path, at_epoch=at_epoch)
    if sweep.spec is None or sweep.space is None:
        raise UsageError(f"{sweep.path} is not a tune_app sweep of a space this version knows (no "
                         f"{rundir.SPEC_FILE} naming one), so its trainable is unknown")
    top = top_k_payload(trials, sweep.metric, sweep.mode, rule, k)
    if len(top["trials"]) < k:
        counts = _status_counts(trials)
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
    from tune_app import plan

    plan_file = sweep.path / plan.PLAN_FILE
    if plan_file.is_file() and sweep.space is not None:  # estimates made before the sweep (--plan's probe)
        trials = plan.attach(trials, history, json.loads(plan_file.read_text()), sweep.space.trainable)
    values = analysis.view_values(trials, history, metric, at_epoch)
    trends = analysis.trends(trials, history, sweep.params, metric, mode, at_epoch, sweep.bins)
    pair_tables = {(a, b): analysis.pair_table(trials, values["epoch"], a, b, sweep.bins) for a, b in pair_names}
    study = analysis.build_study(trials, values["epoch"],
                                 analysis.distributions(trials, sweep.params, sweep.ranges), mode)
    prov = _provenance(sweep)
    try:
        best = best_config_payload(select_best(trials, metric, mode, select), trials, metric, mode, select, prov)
    except ValueError:
        best = _plain({"config": None, "reason": _no_best_reason(trials, select, at_epoch), "metric": metric,
                       "mode": mode, "selection_rule": select, "at_epoch": at_epoch,
                       "trials": _status_counts(trials), **prov})
    result = Analysis(sweep=sweep, at_epoch=at_epoch, select=select, trials=trials, history=history, trends=trends,
                      pairs=pair_tables, importance=analysis.importance(study), importance_trials=len(study.trials),
                      best=best, topk=top_k_payload(trials, metric, mode, select, top_k), study=study,
                      retrain=_retrain_summary(sweep.path), curves_by=curves_by)
    return result


def _retrain_summary(path: Path) -> dict | None:
    found = path / rundir.RETRAIN_DIR / "retrain.json"
    try:
        return json.loads(found.read_text()) if found.is_file() else None
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s is unreadable (%s); the report has no retrain section", found, e)
        return None


def _no_best_reason(trials: pd.DataFrame, select: str, at_epoch: int) -> str:
    if select == "at-epoch" and trials["status"].isin(ELIGIBLE).any():
        return f"no finished trial reached epoch {at_epoch}; use --select last or a smaller --at-epoch"
    return NO_ELIGIBLE


def write(a: Analysis, plots: bool = True) -> dict:
    """Write every summary file (each to a temporary name, then renamed)."""
    out = a.sweep.path / "summary"
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        from tune_app.plots import write_plots

        best_id = a.best.get("trial_id") if a.best.get("config") is not None else None
        a.plots = write_plots(out / "plots", a.trials, a.history, a.metric, a.sweep.mode,
                              study=a.study if len(a.study.trials) >= 2 else None, importance=a.importance,
                              best_trial_id=best_id, curves_by=a.curves_by)
    text = lambda s: lambda p: p.write_text(s, encoding="utf-8")  # noqa: E731
    pairs_csv = pd.concat([t.assign(first=x, second=y) for (x, y), t in a.pairs.items()], ignore_index=True) \
        if a.pairs else pd.DataFrame(columns=["first", "second", "a", "b", "n", "mean", "std"])
    writers = {
        "trials.parquet": lambda p: a.trials.to_parquet(p, index=False),
        "history.parquet": lambda p: a.history.to_parquet(p, index=False),
        "trends.csv": lambda p: a.trends.to_csv(p, index=False),
        "trends.md": text(report.trends_markdown(a.trends, a.metric)),
        "pairs.csv": lambda p: pairs_csv.to_csv(p, index=False),
        "importance.csv": lambda p: a.importance.to_csv(p, index=False),
        "best_config.json": text(json.dumps(a.best, indent=2, allow_nan=False) + "\n"),
        "best_config.yaml": text(yaml.safe_dump(a.best, sort_keys=False, allow_unicode=True)),
        "topk.json": text(json.dumps(a.topk, indent=2, allow_nan=False) + "\n"),
        "report.md": text(report.report_markdown(a)),
        "report.html": text(report.report_html(a)),
    }
    a.paths = {name: atomic_write(out / name, w) for name, w in writers.items()}
    return a.paths


def console(a: Analysis) -> str:
    """What a sweep and ``tune_app.analyze`` print: best configuration, trends, importance."""
    parts = [report.headline(a.best, a.metric)]
    parts += [f"  {k}: {v}" for k, v in report.best_rows(a.best)]
    # The completed-trials view is printed too when it differs (it does whenever early stopping cut trials).
    by_view = {v: t.drop(columns="view").reset_index(drop=True) for v, t in a.trends.groupby("view", sort=False)}
    same = a.view in by_view and "completed" in by_view and by_view[a.view].equals(by_view["completed"])
    views = [a.view] if same else [a.view, "completed"]
    parts += ["", report.trends_markdown(a.trends, a.metric, views=views).rstrip()]
    if a.pairs:
        parts += ["", report.pairs_markdown(a.pairs, a.metric, a.view).rstrip()]
    if len(a.importance):
        parts += ["", f"## Importance ({a.importance_trials} trials, {a.metric} at {a.view})", "",
                  report.markdown_table(report.IMPORTANCE_HEAD, report.importance_rows(a.importance))]
    if "est_epoch_s" in a.trials:
        parts += ["", report.cost_line(a.trials)]
    parts += ["", f"Summary: {a.sweep.path / 'summary'} ({len(a.trials)} trials); report: "
                  f"{a.sweep.path / 'summary' / 'report.html'}"]
    return "\n".join(parts)


def log_wandb(a: Analysis, mode: str | None, project: str | None, entity: str | None) -> str | None:
    """A summary run in the sweep's W&B group: trend tables and importance as W&B Tables, the plots
    as images. A W&B failure is a warning; the analysis on disk is complete without it."""
    from tune_app.wandb_setup import resolve_mode, start_run

    settings = (a.sweep.spec or {}).get("settings", {})
    if mode is None and a.sweep.spec is None:
        return None  # a plain Ray experiment: only when asked
    mode = resolve_mode(mode or settings.get("wandb_mode"))
    if mode == "disabled":
        return None
    try:
        import wandb

        run = start_run(mode, project=project or settings.get("wandb_project"),
                        entity=entity or settings.get("wandb_entity"), group=a.name, name=f"{a.name}-summary",
                        job_type="analysis", dir=str(a.sweep.path),
                        config={"best": a.best.get("config"), "metric": a.metric, "at_epoch": a.at_epoch,
                                "selection_rule": a.select})
        try:
            logged = {f"trends/{view}": wandb.Table(dataframe=_wandb_frame(t.drop(columns="view")))
                      for view, t in a.trends.groupby("view", sort=False)}
            logged["importance"] = wandb.Table(dataframe=_wandb_frame(a.importance))
            logged.update({f"plots/{p.name}": wandb.Image(str(p.png), caption=p.title) for p in a.plots})
            run.log(logged)
            if a.best.get("config") is not None:
                run.summary.update({"best_trial": a.best["trial_name"], f"best_{a.metric}": a.best["value"]})
        finally:
            run.finish()
        return run.id
    except Exception as e:  # noqa: BLE001 - W&B must never cost the analysis
        log.warning("W&B summary run failed (%s: %s); the report on disk is complete", type(e).__name__, e)
        print(f"tune_app: warning: W&B summary run failed ({type(e).__name__}: {e}); the report on disk is complete",
              file=sys.stderr)
        return None


def _wandb_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """W&B Tables want one type per column: values (numbers and bin labels mixed) become text."""
    return frame.assign(**{c: frame[c].map(str) for c in frame.columns if frame[c].dtype == object})


def run(path, *, metric=None, mode=None, at_epoch=None, pairs=(), select="last", top_k=5, curves_by=(),
        wandb_mode=None, wandb_project=None, wandb_entity=None, quiet=False) -> Analysis:
    a = compute(path, metric=metric, mode=mode, at_epoch=at_epoch, pairs=pairs, select=select, top_k=top_k,
                curves_by=curves_by)
    check_writable(a.sweep.path, "analyze", "its summary/")
    write(a)
    log_wandb(a, wandb_mode, wandb_project, wandb_entity)
    if not quiet:
        print(console(a), flush=True)
    if a.best.get("config") is None:
        failed = sum(a.best["trials"].get(k, 0) for k in ("error", "oom", "timeout"))
        raise UsageError(f"{a.sweep.path}: {a.best['reason']} ({failed} failed, "
                         f"{a.best['trials']['diverged']} diverged; the error column of summary/trials.parquet "
                         f"says why)")
    return a


def main(argv: list[str] | None = None, prog: str = "python -m tune_app.analyze") -> int:
    args = build_parser(prog).parse_args(argv)
    return one_line(_analyze, args)


def _analyze(args) -> int:
    from tune_app import storage

    path = storage.materialize(args.run_dir, "analyze")  # an s3:// or gs:// run comes down first
    check_idle(path, "analyze")
    run(path, metric=args.metric, mode=args.mode, at_epoch=args.at_epoch, pairs=args.pair,
        select=args.select, top_k=args.top_k, curves_by=args.curves_by, wandb_mode=args.wandb_mode,
        wandb_project=args.wandb_project, wandb_entity=args.wandb_entity)
    if storage.is_uri(args.run_dir) and storage.check_scheme(args.run_dir, "analyze") != "file":
        storage.upload(path, args.run_dir, ("summary",))
        print(f"tune_app: summary written to {args.run_dir.rstrip('/')}/summary", flush=True)
    return 0


def call(run_dir, **options) -> Sweep:
    """Analyze a run directory again (``metric``, ``mode``, ``at_epoch``, ``select``, ``top_k``, ``pairs``,
    ``curves_by``, ``wandb_mode`` as the command line's flags); returns its results."""
    known = ("metric", "mode", "at_epoch", "pairs", "select", "top_k", "curves_by", "wandb_mode", "wandb_project",
             "wandb_entity", "quiet")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; known: {', '.join(known)}")
    path = Path(run_dir).expanduser().resolve()
    check_idle(path, "analyze")
    run(path, **options)
    return Sweep(path)


if __name__ == "__main__":
    sys.exit(main())
else:  # tune_app.analyze(run_dir) from Python is call(run_dir)
    from tune_app.command import callable_command

    callable_command(sys.modules[__name__])
