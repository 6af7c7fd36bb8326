"""The retrain's part of a report, from retrain.json: each retrained configuration's search, validation and test
numbers, whether the retrain reproduced the sweep, whether the ranking held, the model kept, its robustness to
corrupted images and its confusion matrix."""
from __future__ import annotations

from tune_app.report.blocks import Figure, Section, Table
from tune_app.report.format import fmt, plus_minus, points
from tune_app.rundir.layout import RETRAIN_DIR

RETRAIN_HEAD = ("rank", "configuration", "seeds", "epochs", "search", "retrain validation", "test acc",
                "search - test")
RETRAIN_FIGURES = (("confusion_matrix.png", "Confusion matrix of the kept model on the test set"),
                   ("samples.png", "One test image per class: true -> predicted"))


def retrain_rows(summary: dict) -> list[list[str]]:
    """One row per retrained configuration: the search's number, the retrain's validation and test numbers."""
    metric = summary["metric"]
    return [[str(c["rank"]), c["trial_name"], ",".join(map(str, c["seeds"])), str(c["epochs"]),
             fmt(c["search"]["value"], metric, unit=True), plus_minus(c["retrain_val"], metric),
             plus_minus(c["test_acc"], "acc"), points(c["gap_search_minus_test"], metric)] for c in summary["configs"]]


def reproduction_notes(summary: dict) -> list[str]:
    """Whether each configuration's retrain with the trial's own seed gave the sweep's number again."""
    metric, lines = summary["metric"], []
    for c in summary["configs"]:
        rep = c["reproduction"]
        if rep is not None:
            differs = f"differs by {rep['difference']:+.3g}" if "difference" in rep else "different"
            lines.append(f"Reproduction: {c['trial_name']} seed {rep['seed']} at epoch {rep['epoch']}: sweep "
                         f"{fmt(rep['sweep'], metric, unit=True)}, retrain {fmt(rep['retrain'], metric, unit=True)} "
                         f"({'identical' if rep['identical'] else differs}).")
    return lines


def retrain_notes(summary: dict) -> list[str]:
    """Reproduction, ranking, the model kept and the most confused classes, a sentence each."""
    lines = reproduction_notes(summary)
    r = summary["ranking"]
    if r["holds"] is not None:
        lines.append(f"Ranking of the top {r['k']} on the test set: {' > '.join(map(str, r['test_order']))} "
                     f"({'the search order holds' if r['holds'] else 'the search order does not hold'}; "
                     f"Kendall tau {r['kendall_tau']:.2f}).")
    m = summary["model"]
    lines.append(f"Model kept: rank {m['rank']} {m['trial_name']} seed {m['seed']} (chosen by {m['chosen_by']}), "
                 f"test acc {fmt(m['test_acc'], 'acc', unit=True)}.")
    rob = summary.get("robustness")
    if rob:
        worst = min(rob["per_corruption"].items(), key=lambda kv: kv[1])
        lines.append(f"Robustness of the kept model: clean test {fmt(rob['clean_test_acc'], 'acc', unit=True)}, "
                     f"corrupted {fmt(rob['ood_acc'], 'acc', unit=True)} (mean over {len(rob['sets'])} sets; worst "
                     f"{worst[0]} {fmt(worst[1], 'acc', unit=True)}); "
                     f"{'CIFAR-C files' if rob['source'] else 'generated from the test set'}.")
    if summary["most_confused"]:
        pairs = ", ".join(f"{p['true']} -> {p['predicted']} ({p['count']})" for p in summary["most_confused"][:5])
        lines.append(f"Most confused (true -> predicted): {pairs}.")
    return lines


def robustness_table(summary: dict) -> Table | None:
    """The kept model's accuracy per corruption (rows) and severity (columns), with the clean test accuracy as
    severity 0; None when the retrain scored no corruptions."""
    rob = summary.get("robustness")
    if not rob:
        return None
    severities = sorted({r["severity"] for r in rob["sets"]})
    acc = {(r["corruption"], r["severity"]): r["acc"] for r in rob["sets"]}
    pct = lambda value: fmt(value, "acc", unit=True)  # noqa: E731
    head = ("corruption", "mean", "clean", *[f"severity {s}" for s in severities])
    rows = [[name, pct(mean), pct(rob["clean_test_acc"]),
             *[pct(acc[(name, s)]) if (name, s) in acc else "" for s in severities]]
            for name, mean in rob["per_corruption"].items()]
    return Table(head, rows)


def retrain_overview(summary: dict) -> str:
    d = summary["dataset"]
    return (f"Retrain of {summary['sweep']} ({summary['trainable']}): train on {summary['train_on']} "
            f"({d['train']} images), metric {summary['metric']}; test set {d['test']} images never seen by the search.")


def own_rows(summary: dict) -> tuple[tuple, list[list[str]]]:
    """The retrain of a user's own trainable: its validation metric and each test metric its ``evaluate`` returned,
    mean ± std over the seeds."""
    metric = summary["metric"]
    tests = list(dict.fromkeys(k for c in summary["configs"] for k in c["test"]))
    head = ("rank", "configuration", "seeds", "search", "retrain validation", *tests)
    rows = [[str(c["rank"]), c["trial_name"], ",".join(map(str, c["seeds"])),
             fmt(c["search"].get("value"), metric, unit=True), plus_minus(c["retrain_val"], metric),
             *[plus_minus(c["test"][k], k) if k in c["test"] else "n/a" for k in tests]] for c in summary["configs"]]
    return head, rows


def own_notes(summary: dict) -> list[str]:
    metric, lines = summary["metric"], reproduction_notes(summary)
    kept = summary["kept"]
    lines.append(f"Kept: rank {kept['rank']} ({kept['trial_id']}), the best mean validation {metric}.")
    if not summary["test_metrics"]:
        lines.append("No test metrics: the trainable has no evaluate(state, data).")
    return lines


def retrain_section(summary: dict, run_dir=None, title: str = "Retrain on the test set") -> Section:
    """The retrain's section; ``run_dir``: where its figures are (none without it). A retrain of a user's own
    trainable (no dataset, figures or robustness of tune_app's) has its own table."""
    if "dataset" not in summary:
        head, rows = own_rows(summary)
        return Section(title, paragraphs=[f"Retrain of {summary['sweep']} ({summary['trainable']}), metric "
                                          f"{summary['metric']} ({summary['mode']})."],
                       tables=[Table(head, rows, right_from=2)], bullets=own_notes(summary))
    robustness = robustness_table(summary)
    children = [Section("Accuracy on corrupted test images", level=3, tables=[robustness])] if robustness else []
    figures = [] if run_dir is None else [
        Figure(caption, run_dir / RETRAIN_DIR / name, link=f"../{RETRAIN_DIR}/{name}")
        for name, caption in RETRAIN_FIGURES]
    return Section(title, paragraphs=[retrain_overview(summary)],
                   tables=[Table(RETRAIN_HEAD, retrain_rows(summary), right_from=2)], bullets=retrain_notes(summary),
                   children=children, figures=figures)
