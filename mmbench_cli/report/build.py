"""``mm report``: read grids/runs, compute tables, plots and regressions, then write the report files.

Everything is read, validated and rendered in memory first; only then are files written, each one
atomically (plots, then report.md, then the CSVs, then index.html, then the baseline). So bad input never
overwrites an earlier report or baseline.

With several grid dirs the report has one section per grid (``Section``): each grid's own summary, effect,
per-task tables and plots, built by the same table and plot functions on a sub-Study of that grid.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmbench_cli import __version__
from mmbench_cli.errors import MMError
from mmbench_cli.report.regress import (
    FORMAT,
    Comparison,
    baseline_document,
    collect,
    compare,
    provenance_notes,
    read_baseline,
)
from mmbench_cli.report.stats import DEFAULT_RESAMPLES
from mmbench_cli.rundir import atomic_write_text, json_object_at, refuse_overwrite

if TYPE_CHECKING:  # the report modules import pandas/matplotlib: loaded only when a report is made
    import pandas as pd

    from mmbench_cli.report.findings import Findings
    from mmbench_cli.report.load import Study
    from mmbench_cli.report.plots import Figure
    from mmbench_cli.report.tables import Table

MAX_RESAMPLES = 100_000  # bootstrap resamples: beyond this the per-sample arrays outgrow memory, not the CI's precision
REPORT_FILES = ("index.html", "report.md", "summary.csv", "plots")
NOTES_FILE = "README.md"  # a human-written page about the report, allowed in an existing report dir
GRID_SUMMARY = re.compile(r"^summary-.+\.csv$")  # summary-<grid>.csv of a multi-grid report


@dataclass
class Section:
    """One grid's part of a multi-grid report: anchor id, heading, and that grid's tables and plots."""

    id: str
    name: str
    description: str
    source: str
    axes: dict[str, list[str]]
    runs_count: int
    cells_count: int
    tables: list[Table]
    figures: list[Figure]
    csv_name: str | None = None  # summary-<grid>.csv (None for the section of plain run dirs)


@dataclass
class ReportResult:
    """What ``make_report`` wrote and found."""

    out_dir: Path
    files: list[Path]
    comparisons: list[Comparison] | None = None
    provenance: list[str] = field(default_factory=list)  # baseline vs current encoder weights that differ
    baseline_saved: Path | None = None
    summary: pd.DataFrame | None = None
    timings: dict[str, float] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)

    @property
    def regressions(self) -> list[Comparison]:
        """The comparisons that fail the check (empty without a baseline)."""
        return [c for c in self.comparisons or [] if c.failed]


def default_out_dir(paths: list[Path]) -> Path:
    """``reports/<name of the first grid or run dir>``."""
    return Path("reports") / (paths[0].resolve().name if paths else "report")


def _check_out_dir(out: Path, paths: list[Path]) -> None:
    from mmbench_cli.report.load import expand_paths

    if not out.is_dir():
        refuse_overwrite(out, "-o")  # a file, a pipe...: never replaced by a report dir
    for path in [*paths, *expand_paths(paths)]:
        if path.exists() and out.resolve() == path.resolve():
            raise MMError(f"{out}: is an input dir; write the report elsewhere with -o reports/NAME")
    if out.is_dir():
        # A README.md of notes may sit next to an existing report (e.g. reports/mm1-toy/README.md); never touched.
        notes = {NOTES_FILE} if (out / "report.md").is_file() else set()
        foreign = [
            p.name for p in out.iterdir()
            if p.name not in REPORT_FILES and p.name not in notes and not GRID_SUMMARY.match(p.name)
            and not p.name.startswith(".")
        ]
        if foreign:
            raise MMError(f"{out}: exists and holds other files ({foreign[0]}, ...), not an mm report; choose another -o")


def make_report(
    paths: list[Path],
    out: Path | None = None,
    baseline: Path | None = None,
    tolerance: float = 0.02,
    save_baseline: Path | None = None,
    alpha: float = 0.05,
    resamples: int = DEFAULT_RESAMPLES,
    with_plots: bool = True,
) -> ReportResult:
    """Build the report for grid/run dirs ``paths`` into ``out`` (default ``reports/<name>``)."""
    from mmbench_cli.report import findings as findings_module
    from mmbench_cli.report import html, load, plots, tables

    if tolerance < 0:
        raise MMError(f"--tolerance: must be >= 0 (got {tolerance})")
    if not 0 < alpha < 1:
        raise MMError(f"--alpha: must be between 0 and 1 (got {alpha})")
    if not 100 <= resamples <= MAX_RESAMPLES:
        raise MMError(f"--resamples: use 100 to {MAX_RESAMPLES:,} bootstrap resamples (got {resamples})")
    if not math.isfinite(tolerance):
        raise MMError(f"--tolerance: must be a finite number >= 0 (got {tolerance})")
    out = out or default_out_dir(paths)
    _check_out_dir(out, paths)
    if save_baseline is not None:  # only an earlier baseline is replaced, never a config, a results file...
        refuse_overwrite(save_baseline, "--save-baseline", lambda path: (json_object_at(path) or {}).get("format") == FORMAT)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    baseline_metrics, baseline_encoders = read_baseline(baseline) if baseline is not None else (None, {})
    study = load.load_study(paths)
    timings["load_s"] = time.perf_counter() - start

    comparisons = None
    verdict = ""
    provenance: list[str] = []
    if baseline_metrics is not None:
        provenance = provenance_notes(baseline_encoders, study)
        current = collect(study, with_noise=True)
        if not current:
            raise MMError(f"{study.name}: no eval/step_<N>.json results to compare with {baseline}; run mm eval first")
        comparisons = compare(baseline_metrics, current, tolerance, alpha)
        comparisons.sort(key=lambda c: (not c.failed, c.status != "not significant", c.key))
        failed = sum(c.failed for c in comparisons)
        verdict = (
            f"FAIL: {failed} of {len(baseline_metrics)} baseline metrics regressed" if failed
            else f"PASS: none of {len(baseline_metrics)} baseline metrics regressed beyond tolerance"
        )
    document = baseline_document(study) if save_baseline is not None else None

    mark = time.perf_counter()
    has_results = any(run.results for run in study.runs)
    findings = findings_module.study_findings(study, alpha) if has_results else None
    timings["findings_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    main_tables: list[Table] = []
    parts = study.per_grid() if study.multi_grid else []
    sections = [_section(part, resamples, findings) for part in parts]
    summary = None
    if study.multi_grid:
        if has_results:
            summary = tables.summary_table(study, resamples)  # all cells, named <grid>/<cell>: summary.csv
    elif has_results:
        grid = str(study.grids[0].get("label", "")) if study.grids else None
        main_tables = _study_tables(study, resamples, findings_module.effect_marks(findings, grid))
        summary = main_tables[0]
    timings["tables_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    figures: list[Figure] = []
    plot_paths: dict[str, str] = {}
    if with_plots and not study.multi_grid:
        figures = plots.all_figures(study, resamples) if has_results else plots.loss_curves(study)
        plot_paths = {figure.id: f"plots/{_safe_name(figure.id)}.svg" for figure in figures}
    if with_plots:
        for section, part in zip(sections, parts, strict=True):
            stem = section.id.removeprefix("grid-")  # plots/<grid>-bars-<axis>.svg
            drawn = plots.all_figures(part, resamples) if any(r.results for r in part.runs) else plots.loss_curves(part)
            for figure in drawn:
                renamed = plots.Figure(f"{section.id}-{figure.id}", figure.title, figure.caption, figure.svg)
                section.figures.append(renamed)
                plot_paths[renamed.id] = f"plots/{_safe_name(f'{stem}-{figure.id}')}.svg"
    timings["plots_s"] = time.perf_counter() - mark

    csv_files = (["summary.csv"] if summary is not None else []) + [
        section.csv_name for section in sections if section.csv_name and section.tables]
    context = {
        "title": report_title(study),
        "findings": findings,
        "unfinished": tables.unfinished_cells(study),
        "readme": NOTES_FILE if (out / NOTES_FILE).is_file() else "",
        "csv_files": csv_files,
        "version": __version__,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "sources": [str(p) for p in study.sources],
        "axes": study.axes,
        "runs_count": len(study.runs),
        "cells_count": len(study.groups()),
        "main_tables": main_tables,
        "figures": figures,
        "sections": sections,
        "repeated": tables.repeated_checkpoints(study),
        "examples": tables.example_outputs(study),
        "metadata": tables.metadata_rows(study),
        "encoders": tables.encoder_rows(study),
        "cost": tables.cost_rows(study),
        "comparisons": comparisons,
        "failed": any(c.failed for c in comparisons or []),
        "verdict": verdict,
        "baseline_path": str(baseline) if baseline else "",
        "alpha": alpha,
    }
    mark = time.perf_counter()
    page = html.render_html(context)
    markdown = html.render_markdown(context, plot_paths)
    timings["render_s"] = time.perf_counter() - mark

    all_figures = [*figures, *(f for section in sections for f in section.figures)]
    files = [atomic_write_text(out / plot_paths[f.id], f.svg) for f in all_figures]
    files.append(atomic_write_text(out / "report.md", markdown))
    if summary is not None:
        files.append(atomic_write_text(out / "summary.csv", tables.csv_frame(summary).to_csv(index_label="cell")))
    for section in sections:
        if section.csv_name and section.tables:
            frame = tables.csv_frame(section.tables[0])
            files.append(atomic_write_text(out / section.csv_name, frame.to_csv(index_label="cell")))
    files.append(atomic_write_text(out / "index.html", page))
    _remove_stale(out, files, with_plots)
    if save_baseline is not None:
        atomic_write_text(save_baseline, json.dumps(document, indent=1, sort_keys=False) + "\n")
    for path in [*files, *([save_baseline] if save_baseline is not None else [])]:
        path.chmod(0o644)  # temp files are private; a report is meant to be read (and served)
    timings["total_s"] = time.perf_counter() - start
    return ReportResult(out, files, comparisons, provenance, save_baseline,
                        summary.values if summary is not None else None, timings, sections)


def report_title(study: Study) -> str:
    """The report's title: its grids' own names (``grid.json``: ``resolution-tokens``, not the dir they were copied
    to), else the run dirs' names."""
    names = [str(grid.get("name") or grid.get("label")) for grid in study.grids]
    if not names:
        names = [run.name for run in study.runs][:4] + (["…"] if len(study.runs) > 4 else [])
    return "mm report: " + ", ".join(names)


def _study_tables(study: Study, resamples: int, marks: set[tuple[str, str, str, str]] | None = None) -> list[Table]:
    """The tables of a single-study report or of one grid's section: summary (first: it is the CSV), one effect
    table per axis, per-task scores, VQA accuracy by answer type (when per-sample files split it) and caption
    grounding (synthetic captioning with per-sample files)."""
    from mmbench_cli.report import answer_types, grounding, tables

    found = [tables.summary_table(study, resamples), *tables.effect_tables(study, resamples, marks),
             tables.task_table(study, resamples)]
    optional = [answer_types.answer_type_table(study, resamples), grounding.grounding_table(study, resamples)]
    return found + [table for table in optional if table is not None]


def _section(part: Study, resamples: int, findings: Findings | None = None) -> Section:
    """The section of one grid (or of the plain run dirs) of a multi-grid study; figures are added later."""
    grid = part.grids[0] if part.grids else None
    if grid is not None:
        name = str(grid["label"])
        section_id = f"grid-{_safe_name(name)}"
        description = grid.get("description")
        description = description.strip() if isinstance(description, str) else ""
        source = str(grid["path"])
    else:
        name, section_id, description = "other runs", "other-runs", "Run dirs given besides the grids."
        source = ", ".join(str(run.path) for run in part.runs)
    from mmbench_cli.report.findings import effect_marks

    marks = effect_marks(findings, name if grid is not None else None)
    found = _study_tables(part, resamples, marks) if any(run.results for run in part.runs) else []
    for table in found:
        table.id = f"{section_id}-{table.id}"
    return Section(
        id=section_id, name=name, description=description, source=source, axes=part.axes, runs_count=len(part.runs),
        cells_count=len(part.groups()), tables=found, figures=[],
        csv_name=f"summary-{section_id.removeprefix('grid-')}.csv" if grid is not None else None,
    )


def _remove_stale(out: Path, written: list[Path], with_plots: bool) -> None:
    """Delete summary-<grid>.csv files, and (when plots were drawn) plots/*.svg, of an earlier report in ``out``
    that this one did not write, so the dir holds exactly this report (--no-plots leaves plots/ alone)."""
    keep = {path.resolve() for path in written}
    stale = [p for p in out.iterdir() if GRID_SUMMARY.match(p.name)]
    if with_plots and (out / "plots").is_dir():
        stale += list((out / "plots").glob("*.svg"))
    for path in stale:
        if path.is_file() and path.resolve() not in keep:
            path.unlink()


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:120]

