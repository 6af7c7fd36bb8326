"""Sections (``tune_app.report.blocks``) as text: the console's and Markdown's (one renderer; the console lists a
configuration as ``key: value`` lines) and one self-contained HTML page (Jinja2; styles, tables, plotly.js and every
figure inlined, so it opens from disk with no server and no network)."""
from __future__ import annotations

import base64

import jinja2

from tune_app.report.blocks import Section, Table

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("tune_app.report", "templates"),
                          autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True,
                          undefined=jinja2.StrictUndefined)


def markdown_table(table: Table) -> str:
    cells = lambda row: "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"  # noqa: E731
    align = ["---" if i < table.right_from else "---:" for i in range(len(table.head))]
    return "\n".join([cells(table.head), "| " + " | ".join(align) + " |", *map(cells, table.rows)])


def _markdown(section: Section, console: bool) -> list[str]:
    out = [f"{'#' * section.level} {section.title}", ""] if section.title else []
    out += [line for text in section.paragraphs for line in (text, "")]
    if section.note:
        out += [section.note, ""]
    if section.items:
        if console and out:
            out.pop()  # the configuration right under the line that names it
        out += ([f"  {k}: {v}" for k, v in section.items] if console
                else [markdown_table(Table(("key", "value"), [list(i) for i in section.items], right_from=2))])
        out.append("")
    for table in section.tables:
        if table.title:
            out += [f"{'#' * (section.level + 1)} {table.title}", ""]
        elif table.caption:
            out += [f"_{table.caption}_", ""]
        out += [markdown_table(table), ""]
    if section.empty and not section.tables:
        out += [f"_{section.empty}_", ""]
    if section.bullets:
        out += [*[f"- {b}" for b in section.bullets], ""]
    for child in section.children:
        out += _markdown(child, console)
    for figure in section.figures:
        out += [f"{'#' * (section.level + 1)} {figure.title}", "", f"![{figure.title}]({figure.link})", ""]
    return out


def markdown(sections: list[Section], title: str = "", opening: list[str] = ()) -> str:
    """report.md, trends.md: a document of sections."""
    lines = [f"# {title}", ""] if title else []
    lines += [line for text in opening for line in (text, "")]
    for section in sections:
        lines += _markdown(section, console=False)
    return "\n".join(lines).rstrip() + "\n"


def console(sections: list[Section]) -> str:
    """What a command prints: the Markdown, with a configuration as indented ``key: value`` lines."""
    return "\n".join(line for s in sections for line in _markdown(s, console=True)).rstrip()


def _inline(figure) -> str:
    """A PNG as a data URI, so the page needs no other file; empty when the figure was never drawn."""
    if figure.html or not figure.png.is_file():
        return ""
    return "data:image/png;base64," + base64.b64encode(figure.png.read_bytes()).decode()


def html(sections: list[Section], title: str, opening: list[str] = (), scripts: list[str] = ()) -> str:
    """report.html: every section, and ``scripts`` (plotly.js) inlined."""
    return _ENV.get_template("report.html.j2").render(title=title, opening=opening, sections=sections,
                                                      scripts=scripts, inline=_inline)
