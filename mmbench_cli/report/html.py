"""Render the report: a self-contained ``index.html`` (jinja2, autoescaped) and a ``report.md``.

The HTML inlines its CSS and embeds every plot as an SVG data URI, so it opens offline and can be mailed
or attached to a CI run as one file; it has no scripts. Every user string (run names, axis values, task
names, model outputs, configs) is escaped: by jinja2's autoescape in HTML, by ``md_escape`` in markdown.
Both lead with the Findings (``findings.py``): the tested contrasts and their verdicts.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from markupsafe import Markup

from mmbench_cli.report.findings import Finding, Findings, summary_view
from mmbench_cli.report.plots import Figure
from mmbench_cli.report.regress import Comparison
from mmbench_cli.report.stats import DIRECTION, EFFECT, NO_EFFECT
from mmbench_cli.report.tables import METADATA_COLUMNS, Table, fmt, fmt_p, metadata_layout

if TYPE_CHECKING:
    from mmbench_cli.report.build import Section

TEMPLATES = Path(__file__).parent / "templates"


# Percent-encode what a data: URL or a double-quoted HTML attribute cannot hold as is; '"' becomes "'" (after "'"
# itself is encoded), so the SVG's attributes stay quoted. A quarter smaller than base64, which matters: the plots
# are most of a report's bytes.
_URI_ESCAPES = str.maketrans({"%": "%25", "#": "%23", "<": "%3C", ">": "%3E", "&": "%26", "'": "%27", '"': "'",
                              "{": "%7B", "}": "%7D", "\n": " ", "\r": " ", "\t": " "})
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_TEXT_QUOTES = re.compile(r'>[^<]*"[^<]*<')  # a text node with a '"' (a label): kept as &quot;, not turned into "'"
_ATTRIBUTE = re.compile(r'="[^"]*\'[^"]*"')  # an attribute value holding "'" (a CSS font-family list)


def data_uri(figure: Figure) -> Markup:
    """The figure's SVG as a percent-encoded ``data:`` URI (an <img> never runs scripts inside it). The result holds
    no ``"``, ``&``, ``<`` or ``>``, so it is safe inside a double-quoted attribute as is (hence ``Markup``)."""
    svg = _TEXT_QUOTES.sub(lambda m: m.group(0).replace('"', "&quot;"), figure.svg.replace(">\n<", "><"))
    svg = _ATTRIBUTE.sub(lambda m: m.group(0).replace("'", "&apos;"), svg)  # (its '"' become "'" below)
    encoded = svg.translate(_URI_ESCAPES)
    encoded = _NON_ASCII.sub(lambda m: quote(m.group(0)), encoded)
    return Markup("data:image/svg+xml;charset=utf-8," + encoded)


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
    sections = []
    for section in context.get("sections", []):
        items = [_figure_item(f) for f in section.figures]
        # a grid's bar charts stay open (its answer at a glance); its tables and other plots fold, so the page is short
        sections.append({**vars(section), "figures": items, "main_figures": [f for f in items if "-bars-" in f["id"]],
                         "more_figures": [f for f in items if "-bars-" not in f["id"]]})
    shared, varying = metadata_layout(context["metadata"])
    return env.get_template("report.html.j2").render({
        **context, "figures": figures, "sections": sections, "fmt": fmt, "findings_view": findings_view(context["findings"]),
        "summary": summary_view(context["findings"]) if context["findings"] is not None and context["findings"].rows
        else None,
        "findings_note": findings_note(context["findings"]) if context["findings"] is not None else "",
        "metadata_shared": shared, "metadata_columns": [(key, METADATA_COLUMNS[key]) for key in varying],
        "cost_columns": list(COST_COLUMNS.items()), "cost_note": COST_NOTE,
        "encoder_columns": list(ENCODER_COLUMNS.items()), "encoder_note": ENCODER_NOTE,
    })


VERDICT_CLASS = {EFFECT: "effect", DIRECTION: "direction", NO_EFFECT: "none"}


def _signed(value: float, decimals: int) -> str:
    if value != value:
        return "—"
    text = f"{value:+.{decimals}f}"
    return text[1:] if float(text) == 0 else text.replace("-", "−")


def finding_cells(row: Finding) -> dict[str, Any]:
    """A Findings row as display strings (rounded to what its CI supports); the means are named by arm, in the
    order of the difference."""
    result, decimals = row.result, row.decimals
    if row.simple_effects is not None and row.simple_labels is not None:
        here = [f"{row.simple_labels[1]}: Δ {_signed(row.simple_effects[1], decimals)}",
                f"{row.simple_labels[0]}: Δ {_signed(row.simple_effects[0], decimals)}"]
    else:
        suffix = "-shot" if row.kind == "shots" else ""
        here = [f"{row.arms[0]}{suffix}: {fmt(row.value_mean, decimals)}",
                f"{row.arms[1]}{suffix}: {fmt(row.base_mean, decimals)}"]
    seeds = f"{result.seeds} (seed noise unmeasured)" if result.se_seeds is None else str(result.seeds)
    queries = f"{result.n} ({result.clusters} img)" if row.clustered else f"{result.n} (unclustered)"
    if not result.paired:
        queries += ", not all shared"
    mde = f"MDE {abs(row.mde):.{decimals}f}" if row.mde == row.mde else ""
    return {
        "measure": row.measure.label, "here": here, "verdict": row.verdict, "mde_text": mde,
        "effect": _signed(result.diff, decimals),
        "ci": f"[{fmt(result.ci_low, decimals)}, {fmt(result.ci_high, decimals)}]".replace("-", "−"),
        "p": fmt_p(row.p_adjusted), "p_raw": fmt_p(result.p_value), "seeds": seeds, "queries": queries,
        "verdict_class": VERDICT_CLASS.get(row.verdict, "none"),
        "mde": f"{abs(row.mde):.{decimals}f}" if row.mde == row.mde else "—", "flags": list(row.flags),
    }


def findings_view(findings: Findings | None) -> list[dict[str, Any]]:
    """Per grid: its contrasts in order, each with its claim, detail and rows (one per measure)."""
    if findings is None:
        return []
    view = []
    for grid, rows in findings.by_grid().items():
        contrasts: dict[str, dict[str, Any]] = {}
        claimed: set[str] = set()  # an axis's claim is written out at its first contrast, then referred to
        for row in rows:
            if row.contrast not in contrasts:
                claim = row.claim or "—"
                if row.claim and row.axis in claimed:
                    claim = f"(as for {row.axis} above)"
                claimed.add(row.axis)
                contrasts[row.contrast] = {"contrast": row.contrast, "detail": row.detail, "claim": claim,
                                           "kind": row.kind, "rows": []}
            contrasts[row.contrast]["rows"].append(finding_cells(row))
        view.append({"grid": grid or "", "id": f"findings-{_anchor(grid or 'study')}", "contrasts": list(contrasts.values())})
    return view


def _anchor(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:120]


def findings_note(findings: Findings) -> str:
    """What the Findings table shows and how it was tested (one paragraph, the same in HTML and markdown)."""
    counts = findings.counts()
    total = len(findings.rows)
    unmeasured = [row for row in findings.rows if row.result.se_seeds is None]
    seeds = ""
    if unmeasured and len(unmeasured) == total:
        seeds = (" With one seed per cell the training-seed noise is not measured and the interval covers the queries "
                 "only.")
    elif unmeasured:
        seeds = (f" {len(unmeasured)} of the {total} rows compare cells with one seed each: their training-seed noise "
                 "is not measured and their interval covers the queries only (column seeds).")
    return (
        f"{total} contrasts: {counts.get(EFFECT, 0)} effect, {counts.get(DIRECTION, 0)} direction, not significant, "
        f"{counts.get(NO_EFFECT, 0)} no detectable effect. Each contrast is named in the order of its difference "
        "(\"tokens 16 − 4\": the 16-token cells minus the 4-token ones; on a numeric axis the larger value first, "
        "else the value against the grid's base value), averaged over the grid's other axes; for a two-axis grid each "
        "interaction (the difference of differences), and the few-shot gain (most shots − 0 on the same queries, over "
        "all cells); per measure, at each cell's last evaluated checkpoint, from the per-sample files: queries paired "
        "across cells that answered the same ones, standard errors clustered by image, each cell's training seeds "
        "pooled, with the grid's between-seed variance added (each cell's estimate truncated at 0, then pooled; "
        "Welch–Satterthwaite t, capped at the seed variance's df). "
        f"p: Holm-adjusted over all {total} contrasts of this report; verdict: effect (adjusted p < {findings.alpha}), "
        f"direction, not significant (only the unadjusted p < {findings.alpha}), else no detectable effect; MDE: "
        f"the effect this contrast would detect with 80% power at alpha {findings.alpha} (unadjusted). Flags: "
        "encoder near chance (a cell started from a pre-trained encoder whose own held-out retrieval is near chance, "
        "as its table lists), not converged (a cell's value still rose by more than its 95% CI half-width "
        "between its last two evaluated checkpoints: the largest such rise and that cell's CI are given), at the "
        "answer prior (every cell of the measure within its CI of the prior)."
        + seeds
    )


def _figure_item(figure: Figure) -> dict[str, object]:
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
    headers = [md_escape(name) for name in table.index_names] + [md_escape(c) for c in table.shown_columns]
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
    return f"{heading} {md_escape(table.title)}\n\n{md_escape(table.display_note)}\n\n{markdown_table(headers, rows)}\n"


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
        parts.append(f"Numbers of the summary table: [{section.csv_name}]({section.csv_name}). "
                     f"Tested contrasts: [Findings](#{_anchor('findings-' + section.name)}).\n")
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


def _findings_md(findings: Findings | None) -> str:
    """The Findings section in markdown: one table per grid, the claim on each contrast's first row."""
    if findings is None or not findings.rows:
        return "## Findings\n\nNo grid axes to contrast (plain run dirs, or one value per axis).\n"
    parts = ['<a id="findings"></a>\n\n## Findings\n', md_escape(findings_note(findings)) + "\n"]
    headers = ["contrast", "measure", "means", "effect [95% CI]", "p (Holm)", "seeds", "queries", "verdict", "flags",
               "MM1 says"]
    for grid in findings_view(findings):
        rows = []
        for contrast in grid["contrasts"]:
            for index, cells in enumerate(contrast["rows"]):
                first = index == 0
                verdict = f"**{cells['verdict']}**" if cells["verdict_class"] == "effect" else cells["verdict"]
                if cells["verdict_class"] == "none":
                    verdict += f" ({cells['mde_text']})"
                rows.append([md_escape(contrast["contrast"]) if first else "", md_escape(cells["measure"]),
                             md_escape("; ".join(cells["here"])), f"{cells['effect']} {cells['ci']}", cells["p"],
                             md_escape(cells["seeds"]), md_escape(cells["queries"]), verdict,
                             md_escape("; ".join(cells["flags"])), md_escape(contrast["claim"]) if first else ""])
        if grid["grid"]:
            parts.append(f'<a id="{html.escape(grid["id"])}"></a>\n\n### Findings: {md_escape(grid["grid"])}\n')
        parts.append(markdown_table(headers, rows) + "\n")
    for note in findings.skipped:
        parts.append(f"Note: {md_escape(note)}.\n")
    return "\n".join(parts)


def summary_md(findings: Findings | None) -> str:
    """The Summary a report opens with (``findings.summary_view``), in markdown."""
    parts = ["## Summary\n"]
    if findings is None or not findings.rows:
        parts.append("No grid axes to contrast (plain run dirs, or one value per axis): the tables below have the "
                     "numbers.\n")
        return "\n".join(parts)
    view = summary_view(findings)
    counts = findings.counts()
    parts.append(f"{len(findings.rows)} tested contrasts: {counts.get(EFFECT, 0)} effect, {counts.get(DIRECTION, 0)} "
                 f"direction, not significant, {counts.get(NO_EFFECT, 0)} no detectable effect "
                 "([Findings](#findings) has every row and how it was tested).\n")
    parts += [f"**{md_escape(line)}**\n" for line in view["top"]]  # type: ignore[attr-defined]
    for grid in view["grids"]:  # type: ignore[attr-defined]
        title = f"[{md_escape(grid['grid'])}](#{grid['id']})" if grid["grid"] else "Findings"
        lines = [f"- {md_escape(sentence)}" for sentence in grid["sentences"]]
        if grid["none"]:
            lines.append(f"- {md_escape(grid['none'])}")
        parts.append(f"**{title}**\n\n" + "\n".join(lines or ["- nothing tested"]) + "\n")
    return "\n".join(parts)


def _unfinished_md(rows: list[dict[str, str]]) -> str:
    table = markdown_table(["cell", "state", "error", "last trained step", "last evaluated step"],
                           [[md_escape(r[k]) for k in ("cell", "state", "error", "trained", "evaluated")] for r in rows])
    return ("## Cells that did not finish\n\nmm ablate did not record these cells as done (their ablate.json); they "
            "are left out of the Findings.\n\n" + table + "\n")


COST_COLUMNS = {"grid": "grid", "cells": "cells done", "train": "training (cell-min)", "eval": "eval (cell-min)",
                "cell_time": "cell time (min)", "wall": "wall time (min)", "at_once": "cells at once (max)",
                "threads": "torch threads per cell", "hosts": "host"}
COST_NOTE = ("From each cell's ablate.json. Cell time is summed over cells (training counts any encoder "
             "pre-training a cell waited for); wall time is how long the grid was running (the union of its cells' "
             "spans, so pauses between resumed runs do not count).")


ENCODER_COLUMNS = {"encoder": "encoder (cache name)", "architecture": "architecture", "objective": "objective",
                   "resolution": "resolution", "steps": "pre-training steps", "quality": "its own held-out quality",
                   "used_by": "used by"}
ENCODER_NOTE = ("Encoders pre-trained with mm pretrain --stage encoder (cached by content) that runs started from, "
                "with their own quality on held-out images before any MLLM training: CLIP image→text retrieval "
                "(top-1 among the held-out pairs) or MAE reconstruction loss. The two objectives' numbers are not "
                "comparable with each other.")


def _encoders_md(rows: list[dict[str, str]]) -> str:
    table = markdown_table(list(ENCODER_COLUMNS.values()), [[md_escape(r[k]) for k in ENCODER_COLUMNS] for r in rows])
    return f"## Pre-trained encoders\n\n{ENCODER_NOTE}\n\n{table}\n"


def _cost_md(rows: list[dict[str, str]]) -> str:
    table = markdown_table(list(COST_COLUMNS.values()), [[md_escape(r[k]) for k in COST_COLUMNS] for r in rows])
    return f"## What it cost\n\n{COST_NOTE}\n\n{table}\n"


def render_markdown(context: dict[str, Any], plot_paths: dict[str, str]) -> str:
    """The markdown twin of the HTML report; plots are linked as SVG files beside it."""
    parts = [f"# {md_escape(context['title'])}\n", summary_md(context.get("findings"))]
    sources = ", ".join(f"`{s}`" for s in context["sources"])
    axes = _axes_md(context["axes"])
    parts.append(
        f"{context['runs_count']} run(s) in {context['cells_count']} cell(s) from {sources}; axes: {axes}; "
        f"generated {context['generated']} by mmbench {context['version']}.\n"
    )
    links = [f"[{md_escape(name)}]({name})" for name in context.get("csv_files", [])]
    if context.get("readme"):
        parts.append(f"Notes on this report: [{md_escape(context['readme'])}]({context['readme']}).\n")
    if links:
        parts.append("Numbers as CSV: " + ", ".join(links) + ".\n")
    parts.append(_findings_md(context.get("findings")))
    if context.get("unfinished"):
        parts.append(_unfinished_md(context["unfinished"]))
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
        rows = [[md_escape(e[k]) for k in ("cell", "task", "shots", "id", "prompt", "prediction", "references", "score")]
                for e in context["examples"]]
        parts.append("## Example outputs\n\n" + markdown_table(
            ["cell", "task", "shots", "id", "question / prompt", "prediction", "reference", "score"], rows) + "\n")
    if context.get("encoders"):
        parts.append(_encoders_md(context["encoders"]))
    if context.get("cost"):
        parts.append(_cost_md(context["cost"]))
    shared, varying = metadata_layout(context["metadata"])
    rows = [[md_escape(row[k]) for k in ["run", *varying]] for row in context["metadata"]]
    common = "; ".join(f"{md_escape(k)}: {md_escape(v)}" for k, v in shared.items())
    parts.append("## Run metadata\n\n" + (f"Every run: {common}.\n\n" if common else "") + markdown_table(
        ["run", *(METADATA_COLUMNS[k] for k in varying)], rows) + "\n\nFull configs and commands are in index.html.\n")
    return "\n".join(parts)
