"""Two sweeps side by side as report sections: each sweep's best trial and how many trials are within noise of it,
then per view one table per hyperparameter (per value: each sweep's n / mean / 95 % CI and the difference of means
B - A with its 95 % CI), and which differences the trials can tell from zero. Built from a comparison
(``tune_app.analyze.compare.Comparison``) and rendered by ``tune_app.report.render`` as console text, compare.md and
compare.html."""
from __future__ import annotations

import math

import pandas as pd

from tune_app.report import render
from tune_app.report.blocks import Section, Table
from tune_app.report.format import fmt, is_acc
from tune_app.report.sweep import headline

COMPARE_HEAD = ("value", "A n", "A mean", "A 95 % CI", "B n", "B mean", "B 95 % CI", "B - A", "95 % CI of B - A")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def difference(value, metric: str) -> str:
    """B - A: in percentage points for an accuracy (as the means are shown in percent)."""
    if _missing(value):
        return "n/a"
    return f"{100 * value:+.2f}" if is_acc(metric) else f"{value:+.4g}"


def interval(low, high, metric: str, signed: bool = False) -> str:
    if _missing(low) or _missing(high):
        return "n/a"
    show = (lambda v: difference(v, metric)) if signed else (lambda v: fmt(v, metric))  # noqa: E731
    return f"{show(low)} to {show(high)}"


def compare_rows(group: pd.DataFrame, metric: str) -> list[list[str]]:
    rows = []
    for _, r in group.iterrows():
        sides = []
        for s in "ab":
            if r[f"n_{s}"] == 0:
                sides += ["0", "-", "-"]
            else:
                sides += [str(r[f"n_{s}"]), fmt(r[f"mean_{s}"], metric),
                          interval(r[f"ci95_low_{s}"], r[f"ci95_high_{s}"], metric)]
        rows.append([str(r["value"]), *sides, difference(r["diff"], metric),
                     interval(r["diff_ci95_low"], r["diff_ci95_high"], metric, signed=True)])
    return rows


def view_note(view: str, metric: str) -> str:
    unit = " (%)" if is_acc(metric) else ""
    if view.startswith("epoch"):
        what = f"{metric}{unit} at {view}, the trials of each sweep that reached it: equal training length"
    elif view == "completed":
        what = f"{metric}{unit} at the last epoch, the trials of each sweep that ran their full length"
    else:
        what = (f"{metric}{unit} as last reported by every finished trial, whatever its length (biased by early "
                f"stopping; shown for comparison)")
    points = " in percentage points" if is_acc(metric) else ""
    return (f"{what}. B - A is the difference of the means{points}; its 95 % CI is Welch's (n/a with fewer than two "
            f"trials on a side).")


def clear_differences(group: pd.DataFrame, metric: str) -> list[str]:
    """The values whose difference's 95 % CI excludes zero, largest first; one line saying so when none does."""
    clear = group[(group["diff_ci95_low"] > 0) | (group["diff_ci95_high"] < 0)]
    clear = clear.reindex(clear["diff"].abs().sort_values(ascending=False).index)
    if clear.empty:
        return ["No difference's 95 % CI excludes zero: at this epoch the two sweeps' trials cannot tell any value "
                "apart."]
    return [f"{r['hyperparameter']} = {r['value']}: B - A {difference(r['diff'], metric)} "
            f"({interval(r['diff_ci95_low'], r['diff_ci95_high'], metric, signed=True)})" for _, r in clear.iterrows()]


def trend_sections(table: pd.DataFrame, metric: str, views: list[str] | None = None) -> list[Section]:
    """One section per view (the first shown, the others folded in HTML), one table per hyperparameter."""
    sections = []
    for view, by_view in table.groupby("view", sort=False):
        if views is not None and view not in views:
            continue
        tables = [Table(COMPARE_HEAD, compare_rows(group, metric), caption=str(p), title=f"{p} ({view})")
                  for p, group in by_view.groupby("hyperparameter", sort=False)]
        sections.append(Section(f"Trends: {view}", note=view_note(view, metric), tables=tables,
                                bullets=clear_differences(by_view, metric), collapsed=bool(sections)))
    return sections or [Section("Trends", paragraphs=["No trends: neither sweep has searched hyperparameter values."])]


def noise_count(best: dict) -> str:
    noise = best.get("within_noise")
    if best.get("config") is None:
        return "Within noise: no best trial."
    if not noise:
        return "Within noise of the best: not known (the analysis names none)."
    text = (best.get("noise_rule") or {}).get("text")
    others = len(noise) - 1
    who = "the best alone" if not others else f"the best and {others} other{'s' if others > 1 else ''}"
    return (f"Within noise of the best: {len(noise)} trial{'s' if len(noise) > 1 else ''} ({who}"
            f"{'; ' + text if text else ''}).")


def best_sections(c, console: bool = False) -> list[Section]:
    """Each sweep's best line and its within-noise count (the report adds its configuration), then how far
    apart the two bests are."""
    sections = []
    for side, label, x in (("A", c.labels[0], c.a), ("B", c.labels[1], c.b)):
        items = [] if console or x.best.get("config") is None else [(k, str(v)) for k, v in
                                                                    sorted(x.best["config"].items())]
        sections.append(Section("" if console else f"Best of {side}: {label}", level=3,
                                paragraphs=[f"{side} ({label}): {headline(x.best, c.metric)}" if console
                                            else headline(x.best, c.metric)],
                                bullets=[noise_count(x.best)], items=items))
    a, b = c.a.best, c.b.best
    if a.get("config") is not None and b.get("config") is not None:
        better = (b["value"] > a["value"]) == (c.mode == "max")
        word = "equal" if b["value"] == a["value"] else ("B's is better" if better else "A's is better")
        sections.append(Section("", paragraphs=[f"Best B - best A: {difference(b['value'] - a['value'], c.metric)}"
                                                f"{' points' if is_acc(c.metric) else ''} ({word}; each selected by "
                                                f"{c.select})."]))
    return sections if console else [Section("Best configurations", children=sections)]


def opening(c) -> list[str]:
    return [f"A: {c.labels[0]} ({c.a.sweep.path}); B: {c.labels[1]} ({c.b.sweep.path}).",
            f"{c.space[0].upper()}{c.space[1:]}; metric {c.metric} ({c.mode}); trends compared at {c.epoch_note}; "
            f"best selected by {c.select}. {len(c.a.trials)} trials in A, {len(c.b.trials)} in B."]


def compare_sections(c) -> tuple[str, list[str], list[Section]]:
    """compare.md's and compare.html's (title, opening paragraphs, sections)."""
    title = f"Sweep comparison: {c.labels[0]} vs {c.labels[1]}"
    return title, opening(c), [*best_sections(c), *trend_sections(c.table, c.metric)]


def compare_markdown(title: str, opening_lines: list[str], sections: list[Section]) -> str:
    return render.markdown(sections, title, opening_lines)


def compare_html(title: str, opening_lines: list[str], sections: list[Section]) -> str:
    """One self-contained page (no figures, no scripts)."""
    return render.html(sections, title, opening_lines)


def compare_console(c) -> str:
    """What ``python -m tune_app.analyze RUN_A RUN_B`` prints: both bests, the trends at the equal-length epoch,
    and where the files are."""
    files = ", ".join(c.paths) if c.paths else "nothing written"
    return render.console([Section("", paragraphs=opening(c)), *best_sections(c, console=True),
                           *trend_sections(c.table, c.metric, views=[f"epoch {c.at_epoch}"]),
                           Section("", paragraphs=[f"Comparison: {c.out} ({files})"])])
