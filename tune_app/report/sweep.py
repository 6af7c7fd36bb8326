"""A sweep's report as sections: the overview and cost, the best configuration, trend tables per view, pairwise
tables, importances, the cost estimate against what was measured, the retrain and the plots. Built once from an
``Analysis``; ``tune_app.report.render`` writes them as console text, report.md, trends.md and report.html."""
from __future__ import annotations

import math

import pandas as pd

from tune_app.report.blocks import Figure, Section, Table
from tune_app.report.format import fmt, is_acc, rank
from tune_app.report.retrain import retrain_section
from tune_app.rundir.tables import missing, number

TREND_HEAD = ("value", "completed", "stopped", "diverged", "failed", "n", "mean", "std", "95 % CI", "best",
              "median rank")
IMPORTANCE_HEAD = ("hyperparameter", "fANOVA", "PED-ANOVA")
COST_HEAD = ("trial", "est. s/epoch", "measured s/epoch", "measured / est.", "est. peak MB", "measured peak MB")
HELD = {frozenset({"gpu"}): "wall time x the GPUs each trial held",
        frozenset({"cpu"}): "wall time x the CPUs each trial held; no GPUs",
        frozenset({"gpu", "cpu"}): "wall time x the GPUs each trial held, or its CPUs where it held none"}
NO_IMPORTANCE = "Not enough finished trials with varying hyperparameters to attribute importance."


def _ci(row, metric) -> str:
    if missing(row["ci95_low"]):
        return "n/a"
    return f"{fmt(row['ci95_low'], metric)} to {fmt(row['ci95_high'], metric)}"


def trend_head(trends: pd.DataFrame) -> tuple[str, ...]:
    """TREND_HEAD, with ``seed sd`` after ``std`` for a sweep with --repeats."""
    if "seed_sd" not in trends:
        return TREND_HEAD
    i = TREND_HEAD.index("std") + 1
    return (*TREND_HEAD[:i], "seed sd", *TREND_HEAD[i:])


def trend_rows(group: pd.DataFrame, metric: str) -> list[list[str]]:
    seeds = "seed_sd" in group
    return [[str(r["value"]), str(r["completed"]), str(r["stopped"]), str(r["diverged"]), str(r["failed"]),
             str(r["n"]), fmt(r["mean"], metric), fmt(r["std"], metric),
             *([fmt(r["seed_sd"], metric)] if seeds else []), _ci(r, metric), fmt(r["best"], metric),
             rank(r["median_rank"])] for _, r in group.iterrows()]


def view_caption(view: str, metric: str, planned: int | None = None) -> str:
    unit = " (%)" if is_acc(metric) else ""
    if view.startswith("epoch") and planned is not None:
        return (f"{metric}{unit} at {view}, trials planned for {planned} epochs that reached it, and trials whose "
                f"learning rate does not follow their planned length: a schedule fitted to the planned length "
                f"(cosine, OneCycle) makes {view} of another length a different point of training, so those trials "
                f"are compared at their own end, in the completed view")
    if view.startswith("epoch"):
        return (f"{metric}{unit} at {view}, every trial that reached it: equal training length, "
                f"so early-stopped trials are compared fairly")
    if view == "completed":
        return f"{metric}{unit} at the last epoch, trials that ran their full length"
    return (f"{metric}{unit} as last reported by every finished trial, whatever its length "
            f"(biased by early stopping; shown for comparison)")


def trend_sections(trends: pd.DataFrame, metric: str, views: list[str] | None = None, of: str = "",
                   collapsed: bool = False) -> list[Section]:
    """One section per view (the first shown, the others folded in HTML), one table per hyperparameter; ``of``
    names the objective in the titles (several objectives), ``collapsed`` folds the first too."""
    sections = []
    for view, by_view in trends.groupby("view", sort=False):
        if views is not None and view not in views:
            continue
        tables = [Table(trend_head(trends), trend_rows(group, metric), caption=str(p), title=f"{p} ({view})")
                  for p, group in by_view.groupby("hyperparameter", sort=False)]
        caption = view_caption(view, metric, trends.attrs.get("planned"))
        if "seed_sd" in trends:
            caption += ("; each trial's number is the mean of its runs (--repeats), and seed sd the mean of their "
                        "standard deviations: a difference between values smaller than it is seed noise")
        sections.append(Section(f"Trends{f' of {of}' if of else ''}: {view}", note=f"{caption}.", tables=tables,
                                collapsed=collapsed or bool(sections)))
    return sections or [Section("Trends", paragraphs=["No trends: no searched hyperparameter values."])]


def pair_matrix(pair: pd.DataFrame, metric: str) -> tuple[list[str], list[list[str]]]:
    """A pairwise table as a matrix: rows the first hyperparameter's values, columns the second's, cells
    'mean (n)'."""
    columns = list(dict.fromkeys(pair["b"].map(str)))
    rows = []
    for a, group in pair.groupby(pair["a"].map(str), sort=False):
        cell = {str(r["b"]): f"{fmt(r['mean'], metric)} ({r['n']})" for _, r in group.iterrows()}
        rows.append([a, *(cell.get(c, "") for c in columns)])
    return columns, rows


def pairs_section(pairs: dict, metric: str, view: str) -> Section:
    tables = []
    for (a, b), pair in pairs.items():
        columns, rows = pair_matrix(pair, metric)
        tables.append(Table([f"{a} \\ {b}", *columns], rows, caption=f"{a} x {b}: mean {metric} (trials), {view}",
                            title=f"{a} x {b} ({view}; mean {metric}{' %' if is_acc(metric) else ''} (trials))"))
    return Section("Pairwise tables", tables=tables)


def importance_section(a, title: str = "Importance", metric: str | None = None) -> Section:
    """The importances (of the first objective, or of ``metric``, a further one); the table's caption says over
    what (unless the title does)."""
    table = a.importance if metric is None else a.objective_importance[metric]
    rows = [[r["hyperparameter"], f"{r['fanova']:.3f}", f"{r['ped_anova']:.3f}"] for _, r in table.iterrows()]
    n = a.importance_trials if metric is None else a.objective_importance_trials[metric]
    caption = "" if not title.startswith("Importance") or "(" in title else \
        f"over {n} trials, {metric or a.metric} at {a.view}"
    return Section(title, tables=[Table(IMPORTANCE_HEAD, rows, caption=caption)] if rows else [], empty=NO_IMPORTANCE)


def headline(best: dict, metric: str) -> str:
    if best.get("config") is None:
        return f"No best trial: {best.get('reason', 'nothing selected')}"
    runs = best.get("runs") or []
    each = (f" (the mean of {len(runs)} runs: "
            + ", ".join(f"seed {r['seed']} {fmt(r['value'], metric)}" for r in runs) + ")") if runs else ""
    return (f"Best trial {best['trial_name']} ({best['trial_id']}), selected by {best['selection_rule']}: "
            f"{metric} {fmt(best['value'], metric)}{' %' if is_acc(metric) else ''}{each}; "
            f"last epoch {fmt(best['last_value'], metric)}, best epoch {fmt(best['best_epoch_value'], metric)} "
            f"(epoch {best['best_epoch']}), at epoch {best['at_epoch']} {fmt(best['at_epoch_value'], metric)}")


def noise_line(best: dict, metric: str) -> str | None:
    """How many trials the validation set cannot tell apart from the best, and by what rule."""
    noise, how = best.get("within_noise"), best.get("noise_rule") or {}
    if not noise:
        return None
    others = len(noise) - 1
    tied = len((best.get("tie_break") or {}).get("tied") or []) - 1
    ties = f"; {tied} exactly tied, decided by {best['tie_break']['rule']}" if tied > 0 else ""
    who = "no other trial" if not others else f"{others} other trial{'s' if others > 1 else ''}"
    return (f"Within noise of the best {fmt(best['value'], metric)}{' %' if is_acc(metric) else ''}: {who} "
            f"({how.get('text', '')}){ties}.")


def best_section(best: dict, metric: str, title: str = "Best configuration") -> Section:
    items = [] if best.get("config") is None else [(k, str(v)) for k, v in sorted(best["config"].items())]
    noise = noise_line(best, metric)
    tables = []
    if title and len(best.get("within_noise") or []) > 1:  # the report lists them; the console only counts them
        tables.append(Table(("trial", "trial id", metric), [[e["trial_name"], e["trial_id"], fmt(e["value"], metric)]
                                                            for e in best["within_noise"]],
                            caption="within noise of the best", right_from=2))
    return Section(title, paragraphs=[headline(best, metric)], items=items, tables=tables,
                   bullets=[noise] if noise else [])


def pareto_section(best: dict, pareto: pd.DataFrame | None, console: bool = False) -> Section | None:
    """A multi-objective sweep's front: how many trials, which one was picked and by what rule; the report adds
    the table."""
    if pareto is None or not best.get("objectives"):
        return None
    names = ", ".join(f"{o['metric']} ({o['mode']})" for o in best["objectives"])
    metrics = [o["metric"] for o in best["objectives"]]
    picked = pareto[pareto["picked"]]
    line = f"Pareto front on {names}: {len(pareto)} of {best['trials']['total']} trials"
    if len(picked):
        values = ", ".join(f"{m} {fmt(picked[m].iloc[0], m)}" for m in metrics)
        line += f"; picked {best['trial_name']} ({best['trial_id']}): {values} ({best['pick_rule']})"
    tables = [] if console else [Table(("trial", "trial id", *metrics, "picked"),
                                       [[r["name"], r["trial_id"], *(fmt(r[m], m) for m in metrics),
                                         "yes" if r["picked"] else ""] for _, r in pareto.iterrows()],
                                       caption="the Pareto front, best on the first objective first", right_from=2)]
    return Section("" if console else "Pareto front", paragraphs=[line + "."], tables=tables)


def cost_rows(trials: pd.DataFrame) -> list[list[str]]:
    """Estimated (before the sweep) against measured time per epoch and peak memory, per trial."""
    rows = []
    for _, r in trials.iterrows():
        ratio = r["epoch_s"] / r["est_epoch_s"] if r["est_epoch_s"] > 0 else math.nan
        rows.append([r["name"], f"{r['est_epoch_s']:.2f}", f"{r['epoch_s']:.2f}", f"{ratio:.2f}",
                     f"{r['est_peak_mem_mb']:.0f}", f"{r['final_peak_mem_mb']:.0f}"])
    return rows


def cost_line(trials: pd.DataFrame) -> str:
    ratio = (trials["epoch_s"] / trials["est_epoch_s"]).dropna()
    mem = (trials["final_peak_mem_mb"] / trials["est_peak_mem_mb"]).dropna()
    if ratio.empty:
        return "Cost estimates: no trial matched the plan."
    return (f"Cost estimates vs measured ({len(ratio)} trials): time per epoch measured/estimated median "
            f"{ratio.median():.2f} (range {ratio.min():.2f} to {ratio.max():.2f}); peak memory median "
            f"{mem.median():.2f}.")


def ledger_line(trials: pd.DataFrame) -> str | None:
    """The sweep's total cost from the trials' ledgers (rundir.tables.ledger): device-hours and CPU-hours; None
    when no trial has either figure (a plain Ray Tune experiment)."""
    if "device_s" not in trials or "cpu_s" not in trials:
        return None
    device, cpu = trials["device_s"].dropna(), trials["cpu_s"].dropna()
    if device.empty and cpu.empty:
        return None
    of = lambda known: "" if len(known) == len(trials) else f"; {len(known)} of the {len(trials)} trials said"  # noqa: E731
    held = HELD.get(frozenset(trials["device_kind"].dropna()), "wall time x the devices each trial held")
    device_text = (f"{device.sum() / 3600:.3g} device-hours ({held}{of(device)})" if len(device)
                   else "device-hours unknown (no trial says what it held)")
    cpu_text = (f"{cpu.sum() / 3600:.3g} CPU-hours (process CPU time{of(cpu)})" if len(cpu)
                else "CPU-hours unknown (no trial reported cpu_s)")
    return f"Cost ledger over {len(trials)} trials: {device_text} and {cpu_text}."


def budget_line(run_dir) -> str | None:
    """What --budget-hours did (its budget.json in the run directory), or None without one."""
    from tune_app.cost.budget import read_budget

    budget = read_budget(run_dir)
    if budget is None:
        return None
    hours = lambda key: f"{(number(budget.get(key)) or 0.0) / 3600:.3g}"  # noqa: E731
    if budget.get("stopped_at"):
        return (f"Stopped by --budget-hours {budget.get('hours'):g}: {hours('spent_s_at_stop')} device-hours were "
                f"spent at {budget['stopped_at']}; no new trial started after that ({budget.get('trials_started')} "
                f"started, {budget.get('running_at_stop')} running then finished, {budget.get('not_started')} "
                f"queued never started); {hours('spent_s')} device-hours spent in all.")
    return (f"--budget-hours {budget.get('hours'):g}: {hours('spent_s')} device-hours spent; the budget was not "
            f"reached ({budget.get('trials_started')} trials started).")


def cost_section(trials: pd.DataFrame) -> Section:
    return Section("Cost: estimated before the sweep vs measured", paragraphs=[cost_line(trials)],
                   tables=[Table(COST_HEAD, cost_rows(trials))])


def plots_section(plots) -> Section:
    config = {"displaylogo": False, "responsive": True}
    return Section("Plots", figures=[Figure(p.title, p.png, link=f"plots/{p.png.name}",
                                            html=p.figure.to_html(full_html=False, include_plotlyjs=False,
                                                                  config=config)) for p in plots])


def report_sections(a) -> tuple[str, list[str], list[Section]]:
    """report.md's and report.html's (title, opening paragraphs, sections)."""
    opening = [a.overview, *[line for line in (ledger_line(a.trials), budget_line(a.sweep.path)) if line]]
    front = pareto_section(a.best, a.pareto)
    sections = [best_section(a.best, a.metric), *([front] if front else []), *trend_sections(a.trends, a.metric)]
    if a.pairs:
        sections.append(pairs_section(a.pairs, a.metric, a.view))
    sections.append(importance_section(a))
    for metric, trends in a.objective_trends.items():  # several objectives: the further ones' tables, folded
        sections += trend_sections(trends, metric, of=metric, collapsed=True)
        sections.append(importance_section(a, title=f"Importance for {metric}", metric=metric))
    if "est_epoch_s" in a.trials:
        sections.append(cost_section(a.trials))
    if a.retrain is not None:
        sections.append(retrain_section(a.retrain, a.sweep.path))
    sections.append(plots_section(a.plots))
    return f"Sweep report: {a.name}", opening, sections


def console_sections(a) -> list[Section]:
    """What a sweep and ``tune_app.analyze`` print: the best configuration, the trends at the equal-length epoch
    (and over completed trials where that differs: whenever early stopping cut trials), pairs, importance."""
    by_view = {v: t.drop(columns="view").reset_index(drop=True) for v, t in a.trends.groupby("view", sort=False)}
    same = a.view in by_view and "completed" in by_view and by_view[a.view].equals(by_view["completed"])
    front = pareto_section(a.best, a.pareto, console=True)
    sections = [best_section(a.best, a.metric, title=""), *([front] if front else []),
                *trend_sections(a.trends, a.metric, views=[a.view] if same else [a.view, "completed"])]
    if a.pairs:
        sections.append(pairs_section(a.pairs, a.metric, a.view))
    if len(a.importance):
        sections.append(importance_section(a, title=f"Importance ({a.importance_trials} trials, {a.metric} at "
                                                    f"{a.view})"))
    for metric, trends in a.objective_trends.items():  # several objectives: the further ones at the same epoch
        sections += trend_sections(trends, metric, views=[a.view], of=metric)
        if len(a.objective_importance[metric]):
            sections.append(importance_section(a, title=f"Importance for {metric} "
                                                        f"({a.objective_importance_trials[metric]} trials, "
                                                        f"at {a.view})", metric=metric))
    if "est_epoch_s" in a.trials:
        sections.append(Section("", paragraphs=[cost_line(a.trials)]))
    summary = a.sweep.path / "summary"
    sections.append(Section("", paragraphs=[f"Summary: {summary} ({len(a.trials)} trials); report: "
                                            f"{summary / 'report.html'}"]))
    return sections
