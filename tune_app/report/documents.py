"""The files and console text a report becomes: report.md, report.html, trends.md, and what the commands print."""
from __future__ import annotations

from tune_app.report import render
from tune_app.report.retrain import retrain_section
from tune_app.report.sweep import console_sections, report_sections, trend_sections


def report_markdown(a) -> str:
    """report.md: the same sections as report.html, with the PNG plots linked."""
    title, opening, sections = report_sections(a)
    return render.markdown(sections, title, opening)


def report_html(a) -> str:
    """report.html: everything inlined (plotly.js, figures), so the file alone is the report."""
    from plotly.offline import get_plotlyjs

    title, opening, sections = report_sections(a)
    return render.html(sections, title, opening, scripts=[get_plotlyjs()])


def trends_markdown(trends, metric: str) -> str:
    """trends.md: every view's trend tables."""
    return render.markdown(trend_sections(trends, metric))


def sweep_console(a) -> str:
    """What a sweep and ``tune_app.analyze`` print."""
    return render.console(console_sections(a))


def retrain_console(summary: dict) -> str:
    """What ``tune_app.retrain`` prints: its section of the report, without the figures."""
    return render.console([retrain_section(summary, title="")])
