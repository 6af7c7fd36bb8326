"""What a report is made of, as data: sections holding paragraphs, tables, bullet lists and figures. The sweep's
and the retrain's sections are built once (``tune_app.report.sweep``, ``tune_app.report.retrain``) and rendered to
the console, Markdown and HTML (``tune_app.report.render``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    head: tuple | list
    rows: list[list[str]]
    caption: str = ""  # HTML: the table's caption; Markdown: a heading above it (``title`` when that is set)
    right_from: int = 1  # columns from this one on hold numbers, right-aligned
    title: str = ""  # Markdown's heading, where it says more than the caption (the trend view, say)


@dataclass
class Figure:
    title: str
    png: Path  # Markdown links it (relative to the summary folder); HTML inlines it unless ``html`` is set
    link: str = ""  # Markdown's link to the PNG, relative to the report
    html: str = ""  # an interactive figure (plotly) for HTML


@dataclass
class Section:
    title: str  # empty: no heading (the console's first lines)
    level: int = 2
    paragraphs: list[str] = field(default_factory=list)
    items: list[tuple[str, str]] = field(default_factory=list)  # key: value pairs (a configuration)
    note: str = ""  # a caption-like sentence under the title
    tables: list[Table] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    empty: str = ""  # said instead of the tables when there are none
    children: list[Section] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    collapsed: bool = False  # HTML shows it folded (<details>)
