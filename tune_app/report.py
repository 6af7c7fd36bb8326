"""A sweep's analysis as text: Markdown tables (console, trends.md, report.md) and one
self-contained HTML report (styles, tables, plotly.js and every figure inlined: it opens from
disk with no server and no network)."""
from __future__ import annotations

import html
import math

import pandas as pd

from tune_app.rundir.layout import RETRAIN_DIR
from tune_app.rundir.tables import missing, number

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1f2328;padding:0 1rem}
h1{font-size:1.6rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem}th{background:#f6f8fa}td.n{text-align:right}
caption{text-align:left;font-weight:600;padding:.3rem 0}.note{color:#59636e;font-size:.9rem}
.plot{margin:1rem 0 2rem}details{margin:.5rem 0}
"""


def is_acc(metric: str) -> bool:
    return metric.endswith("acc")


def fmt(value, metric: str, unit: bool = False) -> str:
    """A metric value for people: accuracies in percent (``unit``: with the sign), other metrics to 4 significant
    digits."""
    if missing(value) or (isinstance(value, float) and math.isinf(value)):
        return "n/a"
    return (f"{100 * value:.2f} %" if unit else f"{100 * value:.2f}") if is_acc(metric) else f"{value:.4g}"


def _rank(value) -> str:
    return "n/a" if missing(value) else f"{value:g}"


def _ci(row, metric) -> str:
    if missing(row["ci95_low"]):
        return "n/a"
    return f"{fmt(row['ci95_low'], metric)} to {fmt(row['ci95_high'], metric)}"


TREND_HEAD = ("value", "completed", "stopped", "diverged", "failed", "n", "mean", "std", "95 % CI", "best",
              "median rank")


def trend_rows(group: pd.DataFrame, metric: str) -> list[list[str]]:
    return [[str(r["value"]), str(r["completed"]), str(r["stopped"]), str(r["diverged"]), str(r["failed"]),
             str(r["n"]), fmt(r["mean"], metric), fmt(r["std"], metric), _ci(r, metric), fmt(r["best"], metric),
             _rank(r["median_rank"])] for _, r in group.iterrows()]


def view_caption(view: str, metric: str) -> str:
    unit = " (%)" if is_acc(metric) else ""
    if view.startswith("epoch"):
        return (f"{metric}{unit} at {view}, every trial that reached it: equal training length, "
                f"so early-stopped trials are compared fairly")
    if view == "completed":
        return f"{metric}{unit} at the last epoch, trials that ran their full length"
    return (f"{metric}{unit} as last reported by every finished trial, whatever its length "
            f"(biased by early stopping; shown for comparison)")


def markdown_table(head, rows, right_from: int = 1) -> str:
    cells = lambda row: "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"  # noqa: E731
    align = ["---" if i < right_from else "---:" for i in range(len(head))]
    return "\n".join([cells(head), "| " + " | ".join(align) + " |", *map(cells, rows)])


def trends_markdown(trends: pd.DataFrame, metric: str, views: list[str] | None = None) -> str:
    """One section per view, one table per hyperparameter."""
    if trends.empty:
        return "_No trends: no searched hyperparameter values._\n"
    blocks = []
    for view, by_view in trends.groupby("view", sort=False):
        if views is not None and view not in views:
            continue
        blocks.append(f"## Trends: {view}\n\n{view_caption(view, metric)}.")
        for p, group in by_view.groupby("hyperparameter", sort=False):
            blocks.append(f"### {p} ({view})\n\n" + markdown_table(TREND_HEAD, trend_rows(group, metric)))
    return "\n\n".join(blocks) + "\n"


def pair_matrix(pair: pd.DataFrame, metric: str) -> tuple[list[str], list[list[str]]]:
    """A pairwise table as a matrix: rows the first hyperparameter's values, columns the second's,
    cells 'mean (n)'."""
    columns = list(dict.fromkeys(pair["b"].map(str)))
    rows = []
    for a, group in pair.groupby(pair["a"].map(str), sort=False):
        cell = {str(r["b"]): f"{fmt(r['mean'], metric)} ({r['n']})" for _, r in group.iterrows()}
        rows.append([a, *(cell.get(c, "") for c in columns)])
    return columns, rows


def pairs_markdown(pairs: dict, metric: str, view: str) -> str:
    blocks = []
    for (a, b), pair in pairs.items():
        columns, rows = pair_matrix(pair, metric)
        blocks.append(f"### {a} x {b} ({view}; mean {metric}{' %' if is_acc(metric) else ''} (trials))\n\n"
                      + markdown_table([f"{a} \\ {b}", *columns], rows))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def importance_rows(imp: pd.DataFrame) -> list[list[str]]:
    return [[r["hyperparameter"], f"{r['fanova']:.3f}", f"{r['ped_anova']:.3f}"] for _, r in imp.iterrows()]


IMPORTANCE_HEAD = ("hyperparameter", "fANOVA", "PED-ANOVA")


def best_rows(best: dict) -> list[list[str]]:
    if best.get("config") is None:
        return []
    return [[k, str(v)] for k, v in sorted(best["config"].items())]


def headline(best: dict, metric: str) -> str:
    if best.get("config") is None:
        return f"No best trial: {best.get('reason', 'nothing selected')}"
    return (f"Best trial {best['trial_name']} ({best['trial_id']}), selected by {best['selection_rule']}: "
            f"{metric} {fmt(best['value'], metric)}{' %' if is_acc(metric) else ''}; "
            f"last epoch {fmt(best['last_value'], metric)}, best epoch {fmt(best['best_epoch_value'], metric)} "
            f"(epoch {best['best_epoch']}), at epoch {best['at_epoch']} {fmt(best['at_epoch_value'], metric)}")


COST_HEAD = ("trial", "est. s/epoch", "measured s/epoch", "measured / est.", "est. peak MB", "measured peak MB")


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


HELD = {frozenset({"gpu"}): "wall time x the GPUs each trial held",
        frozenset({"cpu"}): "wall time x the CPUs each trial held; no GPUs",
        frozenset({"gpu", "cpu"}): "wall time x the GPUs each trial held, or its CPUs where it held none"}


def ledger_line(trials: pd.DataFrame) -> str | None:
    """The sweep's total cost from the trials' ledgers (summary.ledger): device-hours and CPU-hours; None when no
    trial has either figure (a plain Ray Tune experiment)."""
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


def cost_summary(a) -> list[str]:
    """The report's cost lines: the ledger's totals, and what --budget-hours did."""
    return [line for line in (ledger_line(a.trials), budget_line(a.sweep.path)) if line]


RETRAIN_FIGURES = (("confusion_matrix.png", "Confusion matrix of the kept model on the test set"),
                   ("samples.png", "One test image per class: true -> predicted"))


# ---------------------------------------------------------------- the retrain section (from retrain.json)

RETRAIN_HEAD = ("rank", "configuration", "seeds", "epochs", "search", "retrain validation", "test acc",
              "search - test")


def retrain_rows(summary: dict) -> list[list[str]]:
    """One row per retrained configuration: the search's number, the retrain's validation and test numbers."""
    metric = summary["metric"]
    return [[str(c["rank"]), c["trial_name"], ",".join(map(str, c["seeds"])), str(c["epochs"]),
             fmt(c["search"]["value"], metric, unit=True), _pm(c["retrain_val"], metric),
             _pm(c["test_acc"], "acc"), _points(c["gap_search_minus_test"], metric)] for c in summary["configs"]]


def retrain_notes(summary: dict) -> list[str]:
    """Reproduction, ranking, the model kept and the most confused classes, a sentence each."""
    metric, lines = summary["metric"], []
    for c in summary["configs"]:
        rep = c["reproduction"]
        if rep is not None:
            verdict = "identical" if rep["identical"] else f"differs by {rep['difference']:+.3g}"
            lines.append(f"Reproduction: {c['trial_name']} seed {rep['seed']} at epoch {rep['epoch']}: sweep "
                         f"{fmt(rep['sweep'], metric, unit=True)}, retrain {fmt(rep['retrain'], metric, unit=True)} "
                         f"({verdict}).")
    r = summary["ranking"]
    if r["holds"] is not None:
        lines.append(f"Ranking of the top {r['k']} on the test set: {' > '.join(map(str, r['test_order']))} "
                     f"({'the search order holds' if r['holds'] else 'the search order does not hold'}; "
                     f"Kendall tau {r['kendall_tau']:.2f}).")
    m = summary["model"]
    lines.append(f"Model kept: rank {m['rank']} {m['trial_name']} seed {m['seed']} (chosen by {m['chosen_by']}), "
                 f"test acc {100 * m['test_acc']:.2f} %.")
    rob = summary.get("robustness")
    if rob:
        worst = min(rob["per_corruption"].items(), key=lambda kv: kv[1])
        lines.append(f"Robustness of the kept model: clean test {100 * rob['clean_test_acc']:.2f} %, corrupted "
                     f"{100 * rob['ood_acc']:.2f} % (mean over {len(rob['sets'])} sets; worst {worst[0]} "
                     f"{100 * worst[1]:.2f} %); {'CIFAR-C files' if rob['source'] else 'generated from the test set'}.")
    if summary["most_confused"]:
        pairs = ", ".join(f"{p['true']} -> {p['predicted']} ({p['count']})" for p in summary["most_confused"][:5])
        lines.append(f"Most confused (true -> predicted): {pairs}.")
    return lines


def robustness_table(summary: dict) -> tuple[tuple, list[list[str]]] | None:
    """The kept model's accuracy per corruption (rows) and severity (columns), with the clean test accuracy
    as severity 0; None when the retrain scored no corruptions."""
    rob = summary.get("robustness")
    if not rob:
        return None
    severities = sorted({r["severity"] for r in rob["sets"]})
    acc = {(r["corruption"], r["severity"]): r["acc"] for r in rob["sets"]}
    head = ("corruption", "mean", "clean", *[f"severity {s}" for s in severities])
    rows = [[name, f"{100 * mean:.2f} %", f"{100 * rob['clean_test_acc']:.2f} %",
             *[f"{100 * acc[(name, s)]:.2f} %" if (name, s) in acc else "" for s in severities]]
            for name, mean in rob["per_corruption"].items()]
    return head, rows


def retrain_overview(summary: dict) -> str:
    d = summary["dataset"]
    return (f"Retrain of {summary['sweep']} ({summary['trainable']}): train on {summary['train_on']} "
            f"({d['train']} images), metric {summary['metric']}; test set {d['test']} images never seen by the search.")


def retrain_console(summary: dict) -> str:
    return "\n".join([retrain_overview(summary), "",
                      markdown_table(RETRAIN_HEAD, retrain_rows(summary), right_from=2), "", *retrain_notes(summary)])


def _pm(stats: dict, metric: str) -> str:
    if stats["mean"] is None:
        return "n/a"
    text = fmt(stats["mean"], metric, unit=True)
    if stats["std"] is not None:
        text += f" ± {100 * stats['std']:.2f}" if metric.endswith("acc") else f" ± {stats['std']:.3g}"
    return text


def _points(value, metric: str) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:+.2f} points" if metric.endswith("acc") else f"{value:+.4g}"


def retrain_markdown(summary: dict) -> str:
    parts = ["## Retrain on the test set", "", retrain_overview(summary), "",
             markdown_table(RETRAIN_HEAD, retrain_rows(summary), right_from=2), "",
             *[f"- {line}" for line in retrain_notes(summary)], ""]
    robustness = robustness_table(summary)
    if robustness:
        parts += ["### Accuracy on corrupted test images", "", markdown_table(*robustness, right_from=1), ""]
    parts += [f"![{title}](../{RETRAIN_DIR}/{name})\n" for name, title in RETRAIN_FIGURES]
    return "\n".join(parts)


def retrain_html(summary: dict, run_dir) -> str:
    """The retrain section; its figures are inlined as data URIs so the report stays one self-contained file."""
    import base64

    e = html.escape
    figures = []
    for name, title in RETRAIN_FIGURES:
        png = run_dir / RETRAIN_DIR / name
        if png.is_file():
            data = base64.b64encode(png.read_bytes()).decode()
            figures.append(f"<div class=plot><h3>{e(title)}</h3><img alt='{e(title)}' style='max-width:100%' "
                           f"src='data:image/png;base64,{data}'></div>")
    return (f"<h2>Retrain on the test set</h2><p>{e(retrain_overview(summary))}</p>"
            + html_table(RETRAIN_HEAD, retrain_rows(summary), right_from=2)
            + "<ul>" + "".join(f"<li>{e(line)}</li>" for line in retrain_notes(summary)) + "</ul>"
            + (f"<h3>Accuracy on corrupted test images</h3>{html_table(*robustness, right_from=1)}"
               if (robustness := robustness_table(summary)) else "")
            + "".join(figures))


def report_markdown(a) -> str:
    """report.md: the same tables as report.html, with the PNG plots."""
    parts = [f"# Sweep report: {a.name}", "", a.overview, ""]
    parts += [line for text in cost_summary(a) for line in (text, "")]
    parts += ["## Best configuration", "", headline(a.best, a.metric), ""]
    if best_rows(a.best):
        parts += [markdown_table(("key", "value"), best_rows(a.best), right_from=2), ""]
    parts += [trends_markdown(a.trends, a.metric), ""]
    if a.pairs:
        parts += ["## Pairwise tables", "", pairs_markdown(a.pairs, a.metric, a.view), ""]
    parts += ["## Importance", ""]
    parts += [markdown_table(IMPORTANCE_HEAD, importance_rows(a.importance)) if len(a.importance)
              else "_Not enough finished trials with varying hyperparameters to attribute importance._", ""]
    if "est_epoch_s" in a.trials:
        parts += ["## Cost: estimated before the sweep vs measured", "", cost_line(a.trials), "",
                  markdown_table(COST_HEAD, cost_rows(a.trials)), ""]
    if a.retrain is not None:
        parts += [retrain_markdown(a.retrain), ""]
    parts += ["## Plots", ""]
    parts += [f"### {p.title}\n\n![{p.title}](plots/{p.png.name})\n" for p in a.plots]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- HTML

def html_table(head, rows, caption: str = "", right_from: int = 1) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i >= right_from else ""}>{html.escape(str(c))}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _trends_html(trends: pd.DataFrame, metric: str) -> str:
    out = []
    for i, (view, by_view) in enumerate(trends.groupby("view", sort=False)):
        tables = "".join(html_table(TREND_HEAD, trend_rows(g, metric), caption=p)
                         for p, g in by_view.groupby("hyperparameter", sort=False))
        body = f"<p class=note>{html.escape(view_caption(view, metric))}.</p>{tables}"
        out.append(f"<h3>{html.escape(view)}</h3>{body}" if i == 0 else
                   f"<details><summary><b>{html.escape(view)}</b></summary>{body}</details>")
    return "".join(out) or "<p>No searched hyperparameter values.</p>"


def report_html(a) -> str:
    """report.html: everything inlined, so the file alone is the report."""
    from plotly.offline import get_plotlyjs

    e = html.escape
    sections = [f"<h1>Sweep report: {e(a.name)}</h1><p>{e(a.overview)}</p>",
                *[f"<p>{e(text)}</p>" for text in cost_summary(a)],
                f"<h2>Best configuration</h2><p>{e(headline(a.best, a.metric))}</p>"]
    if best_rows(a.best):
        sections.append(html_table(("key", "value"), best_rows(a.best), right_from=2))
    sections.append(f"<h2>Trends</h2>{_trends_html(a.trends, a.metric)}")
    if a.pairs:
        blocks = []
        for (pa, pb), pair in a.pairs.items():
            columns, rows = pair_matrix(pair, a.metric)
            blocks.append(html_table([f"{pa} \\ {pb}", *columns], rows,
                                     caption=f"{pa} x {pb}: mean {a.metric} (trials), {a.view}"))
        sections.append("<h2>Pairwise tables</h2>" + "".join(blocks))
    sections.append("<h2>Importance</h2>" + (
        html_table(IMPORTANCE_HEAD, importance_rows(a.importance), caption=f"over {a.importance_trials} trials, "
                   f"{a.metric} at {a.view}") if len(a.importance)
        else "<p>Not enough finished trials with varying hyperparameters to attribute importance.</p>"))
    if "est_epoch_s" in a.trials:
        sections.append(f"<h2>Cost: estimated before the sweep vs measured</h2><p>{e(cost_line(a.trials))}</p>"
                        + html_table(COST_HEAD, cost_rows(a.trials)))
    if a.retrain is not None:
        sections.append(retrain_html(a.retrain, a.sweep.path))
    config = {"displaylogo": False, "responsive": True}
    plots = "".join(f"<div class=plot><h3>{e(p.title)}</h3>"
                    f"{p.figure.to_html(full_html=False, include_plotlyjs=False, config=config)}</div>"
                    for p in a.plots)
    sections.append(f"<h2>Plots</h2>{plots}")
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{e(a.name)}: tune_app report</title>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{STYLE}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>{''.join(sections)}</body></html>\n")
