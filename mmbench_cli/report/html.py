"""Render the report: a self-contained ``index.html`` (jinja2, autoescaped) and a ``report.md``.

The HTML inlines its CSS and embeds every plot as an SVG data URI, so it opens offline and can be mailed
or attached to a CI run as one file; it has no scripts. Every user string (run names, axis values, task
names, model outputs, configs) is escaped: by jinja2's autoescape in HTML, by ``md_escape`` in markdown.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.report.plots import Figure
from mmbench_cli.report.regress import Comparison
from mmbench_cli.report.tables import Table, fmt

if TYPE_CHECKING:
    from mmbench_cli.report.build import Section

TEMPLATES = Path(__file__).parent / "templates"


def data_uri(figure: Figure) -> str:
    """The figure's SVG as a base64 ``data:`` URI (an <img> never runs scripts inside it)."""
    return "data:image/svg+xml;base64," + base64.b64encode(figure.svg.encode("utf-8")).decode("ascii")


def render_html(context: dict[str, Any]) -> str:
    """Fill ``templates/report.html.j2`` with autoescaping on."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    figures = [_figure_item(f) for f in context["figures"]]
    sections = [
        {**vars(section), "figures": [_figure_item(f) for f in section.figures]} for section in context.get("sections", [])
    ]
    return env.get_template("report.html.j2").render({**context, "figures": figures, "sections": sections, "fmt": fmt})


def _figure_item(figure: Figure) -> dict[str, str]:
    return {"id": figure.id, "title": figure.title, "caption": figure.caption, "data_uri": data_uri(figure)}


def md_escape(text: object) -> str:
    """Escape a user string for a markdown table cell: HTML specials, pipes, emphasis and newlines."""
    escaped = html.escape(str(text), quote=False)
    escaped = re.sub(r"([\\`*_\[\]|#])", r"\\\1", escaped)
    return " ".join(escaped.split())


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table; cells must already be escaped (see ``md_escape``)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _table_md(table: Table, level: int = 2) -> str:
    headers = [md_escape(name) for name in table.index_names] + [md_escape(c) for c in table.values.columns]
    rows = []
    for row in table.rows():
        cells = [md_escape(label) for label in row["labels"]]
        for cell in row["cells"]:
            text = md_escape(cell["text"])
            if cell["bold"] and text != "—":
                text = f"**{text}**"
            cells.append(f"{text} {md_escape(cell['ci'])}".strip())
        rows.append(cells)
    heading = "#" * level
    return f"{heading} {md_escape(table.title)}\n\n{md_escape(table.note)}\n\n{markdown_table(headers, rows)}\n"


def _figure_md(figure: Figure, path: str, level: int = 2) -> str:
    heading = "#" * level
    return f"{heading} {md_escape(figure.title)}\n\n![{md_escape(figure.title)}]({path})\n\n{md_escape(figure.caption)}\n"


def _axes_md(axes: dict[str, list[str]]) -> str:
    return "; ".join(f"{md_escape(a)} ({md_escape(', '.join(v))})" for a, v in axes.items()) or "none"


def _section_md(section: Section, plot_paths: dict[str, str]) -> list[str]:
    """One grid's part of a multi-grid report: an anchored heading, its description, tables and plots."""
    parts = [f'<a id="{html.escape(section.id)}"></a>\n\n## Grid: {md_escape(section.name)}\n']
    if section.description:
        parts.append(f"{md_escape(section.description)}\n")
    parts.append(f"{section.runs_count} run(s) in {section.cells_count} cell(s) from `{section.source.replace('`', '')}`; "
                 f"axes: {_axes_md(section.axes)}.\n")
    if section.csv_name and section.tables:
        parts.append(f"Numbers of the summary table: [{section.csv_name}]({section.csv_name}).\n")
    parts += [_table_md(table, level=3) for table in section.tables]
    parts += [_figure_md(figure, plot_paths[figure.id], level=3) for figure in section.figures]
    return parts


def _comparisons_md(comparisons: list[Comparison], verdict: str) -> str:
    headers = ["metric", "measure", "baseline", "current", "Δ", "tolerance", "p (paired)", "status"]
    rows = [
        [md_escape(c.key), md_escape(c.metric), fmt(c.baseline), fmt(c.current), fmt(c.delta), fmt(c.tolerance),
         fmt(c.p_value), f"**{c.status}**" if c.failed else c.status]
        for c in comparisons
    ]
    return f"## Regression check\n\n{md_escape(verdict)}\n\n{markdown_table(headers, rows)}\n"


def render_markdown(context: dict[str, Any], plot_paths: dict[str, str]) -> str:
    """The markdown twin of the HTML report; plots are linked as SVG files beside it."""
    parts = [f"# {md_escape(context['title'])}\n"]
    sources = ", ".join(f"`{s}`" for s in context["sources"])
    axes = _axes_md(context["axes"])
    parts.append(
        f"{context['runs_count']} run(s) in {context['cells_count']} cell(s) from {sources}; axes: {axes}; "
        f"generated {context['generated']} by mmbench {context['version']}.\n"
    )
    if context["comparisons"] is not None:
        parts.append(_comparisons_md(context["comparisons"], context["verdict"]))
    parts += [_table_md(table) for table in context["main_tables"]]
    parts += [_figure_md(figure, plot_paths[figure.id]) for figure in context["figures"]]
    for section in context.get("sections", []):
        parts += _section_md(section, plot_paths)
    parts.append("## Repeated checkpoints\n")
    if context["repeated"]:
        rows = [[f"`{md_escape(r['hash'])}`", md_escape(r["kind"]), md_escape(r["where"])] for r in context["repeated"]]
        parts.append(markdown_table(["content hash", "kind", "where"], rows) + "\n")
    else:
        parts.append("No checkpoint content hash repeats.\n")
    if context["examples"]:
        rows = [[md_escape(e[k]) for k in ("cell", "task", "shots", "id", "prediction", "references", "score")]
                for e in context["examples"]]
        parts.append("## Example outputs\n\n" + markdown_table(
            ["cell", "task", "shots", "id", "prediction", "references", "score"], rows) + "\n")
    keys = ["run", "status", "seed", "eval_seeds", "commit", "wall_time", "num_params", "flops_per_step", "steps", "versions"]
    rows = [[md_escape(row[k]) for k in keys] for row in context["metadata"]]
    parts.append("## Run metadata\n\n" + markdown_table(
        ["run", "status", "seed", "demo seeds", "commit", "wall time", "params", "FLOPs/step", "evaluated steps", "versions"],
        rows) + "\n\nFull configs and commands are in index.html.\n")
    return "\n".join(parts)
