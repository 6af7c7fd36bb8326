"""What an analysis writes and prints: the summary folder's files, the console summary and the W&B summary run."""
from __future__ import annotations

import json
import logging
import re
import sys

import pandas as pd
import yaml

from tune_app.analyze.build import Analysis
from tune_app.report import documents
from tune_app.rundir.atomic import atomic_write

log = logging.getLogger("tune_app")


def write(a: Analysis, plots: bool = True) -> dict:
    """Write every summary file (each to a temporary name, then renamed)."""
    out = a.sweep.path / "summary"
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        from tune_app.plots import write_plots

        best_id = a.best.get("trial_id") if a.best.get("config") is not None else None
        a.plots = write_plots(out / "plots", a.trials, a.history, a.metric, a.sweep.mode,
                              study=a.study if len(a.study.trials) >= 2 else None, importance=a.importance,
                              best_trial_id=best_id, curves_by=a.curves_by, select=a.select, pareto=a.pareto,
                              objectives=a.sweep.objectives)
    text = lambda s: lambda p: p.write_text(s, encoding="utf-8")  # noqa: E731
    pairs_csv = pd.concat([t.assign(first=x, second=y) for (x, y), t in a.pairs.items()], ignore_index=True) \
        if a.pairs else pd.DataFrame(columns=["first", "second", "a", "b", "n", "mean", "std"])
    writers = {
        "trials.parquet": lambda p: (a.trials if a.runs is None else a.runs).to_parquet(p, index=False),
        "history.parquet": lambda p: a.history.to_parquet(p, index=False),
        "trends.csv": lambda p: a.trends.to_csv(p, index=False),
        "trends.md": text(documents.trends_markdown(a.trends, a.metric)),
        "pairs.csv": lambda p: pairs_csv.to_csv(p, index=False),
        "importance.csv": lambda p: a.importance.to_csv(p, index=False),
        "best_config.json": text(json.dumps(a.best, indent=2, allow_nan=False) + "\n"),
        "best_config.yaml": text(yaml.safe_dump(a.best, sort_keys=False, allow_unicode=True)),
        "topk.json": text(json.dumps(a.topk, indent=2, allow_nan=False) + "\n"),
        "report.md": text(documents.report_markdown(a)),
        "report.html": text(documents.report_html(a)),
    }
    if a.pareto is not None:
        writers["pareto.csv"] = lambda p: a.pareto.to_csv(p, index=False)
    for metric, table in a.objective_trends.items():  # several objectives: each further one's tables
        writers[f"trends_{file_part(metric)}.csv"] = lambda p, t=table: t.to_csv(p, index=False)
        writers[f"importance_{file_part(metric)}.csv"] = \
            lambda p, t=a.objective_importance[metric]: t.to_csv(p, index=False)
    a.paths = {name: atomic_write(out / name, w) for name, w in writers.items()}
    return a.paths



def file_part(metric: str) -> str:
    """A metric's name as part of a file name: trends_params.csv."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", metric)


def console_summary(a: Analysis) -> str:
    """What a sweep and ``tune_app.analyze`` print: best configuration, trends, importance."""
    return documents.sweep_console(a)


def log_wandb(a: Analysis, mode: str | None, project: str | None, entity: str | None) -> str | None:
    """A summary run in the sweep's W&B group: trend tables and importance as W&B Tables (each objective's, and the
    Pareto front, when there are several), the plots as images. A W&B failure is a warning; the analysis on disk
    is complete without it."""
    from tune_app.integrations.wandb_runs import resolve_mode, start_run

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
            for metric, table in a.objective_trends.items():  # several objectives: each further one's tables
                logged.update({f"trends_{file_part(metric)}/{view}": wandb.Table(
                    dataframe=_wandb_frame(t.drop(columns="view"))) for view, t in table.groupby("view", sort=False)})
                logged[f"importance_{file_part(metric)}"] = wandb.Table(
                    dataframe=_wandb_frame(a.objective_importance[metric]))
            if a.pareto is not None:
                logged["pareto"] = wandb.Table(dataframe=_wandb_frame(a.pareto))
            logged.update({f"plots/{p.name}": wandb.Image(str(p.png), caption=p.title) for p in a.plots})
            run.log(logged)
            if a.best.get("config") is not None:
                noise = a.best.get("within_noise") or []
                run.summary.update({"best_trial": a.best["trial_name"], "best_trial_id": a.best["trial_id"],
                                    f"best_{a.metric}": a.best["value"], "within_noise": len(noise),
                                    "noise_rule": (a.best.get("noise_rule") or {}).get("text", ""),
                                    "tie_break": a.best["tie_break"]["rule"]})
                run.log({"within_noise": wandb.Table(columns=["trial_id", "trial_name", a.metric],
                                                     data=[[e["trial_id"], e["trial_name"], e["value"]]
                                                           for e in noise])})
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
