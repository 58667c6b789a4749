"""``mm report``: read grids/runs, compute tables, plots and regressions, then write the report files.

Everything is read, validated and rendered in memory first; only then are files written, each one
atomically (plots, then report.md, then index.html, then the baseline). So bad input never overwrites
an earlier report or baseline.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmbench_cli import __version__
from mmbench_cli.errors import MMError
from mmbench_cli.report.regress import Comparison, baseline_document, collect, compare, read_baseline
from mmbench_cli.report.stats import DEFAULT_RESAMPLES
from mmbench_cli.runs import atomic_write_text

REPORT_FILES = ("index.html", "report.md", "summary.csv", "plots")


@dataclass
class ReportResult:
    """What ``make_report`` wrote and found."""

    out_dir: Path
    files: list[Path]
    comparisons: list[Comparison] | None = None
    baseline_saved: Path | None = None
    summary: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def regressions(self) -> list[Comparison]:
        """The comparisons that fail the check (empty without a baseline)."""
        return [c for c in self.comparisons or [] if c.failed]


def default_out_dir(paths: list[Path]) -> Path:
    """``reports/<name of the first grid or run dir>``."""
    return Path("reports") / (paths[0].resolve().name if paths else "report")


def _check_out_dir(out: Path, paths: list[Path]) -> None:
    if out.exists() and not out.is_dir():
        raise MMError(f"{out}: exists and is not a directory; choose another -o")
    for path in paths:
        if path.exists() and out.resolve() == path.resolve():
            raise MMError(f"{out}: is an input dir; write the report elsewhere with -o reports/NAME")
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if p.name not in REPORT_FILES and not p.name.startswith(".")]
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
    from mmbench_cli.report import html, load, plots, tables

    if tolerance < 0:
        raise MMError(f"--tolerance: must be >= 0 (got {tolerance})")
    if not 0 < alpha < 1:
        raise MMError(f"--alpha: must be between 0 and 1 (got {alpha})")
    if resamples < 100:
        raise MMError(f"--resamples: use at least 100 bootstrap resamples (got {resamples})")
    out = out or default_out_dir(paths)
    _check_out_dir(out, paths)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    baseline_metrics = read_baseline(baseline) if baseline is not None else None
    study = load.load_study(paths)
    timings["load_s"] = time.perf_counter() - start

    comparisons = None
    verdict = ""
    if baseline_metrics is not None:
        current = collect(study)
        if not current:
            raise MMError(f"{study.name}: no eval/step_<N>.json results to compare with {baseline}; run mm eval first")
        comparisons = compare(baseline_metrics, current, tolerance, alpha, resamples)
        comparisons.sort(key=lambda c: (not c.failed, c.status != "not significant", c.key))
        failed = sum(c.failed for c in comparisons)
        verdict = (
            f"FAIL: {failed} of {len(baseline_metrics)} baseline metrics regressed" if failed
            else f"PASS: none of {len(baseline_metrics)} baseline metrics regressed beyond tolerance"
        )
    document = baseline_document(study) if save_baseline is not None else None

    mark = time.perf_counter()
    has_results = any(run.results for run in study.runs)
    main_tables = []
    if has_results:
        main_tables = [tables.summary_table(study, resamples), *tables.effect_tables(study, resamples),
                       tables.task_table(study, resamples)]
    timings["tables_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    figures = []
    if with_plots:
        figures = plots.all_figures(study, resamples) if has_results else plots.loss_curves(study)
    timings["plots_s"] = time.perf_counter() - mark

    context = {
        "title": f"mm report: {study.name}",
        "version": __version__,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "sources": [str(p) for p in study.sources],
        "axes": study.axes,
        "runs_count": len(study.runs),
        "cells_count": len(study.groups()),
        "main_tables": main_tables,
        "figures": figures,
        "repeated": tables.repeated_checkpoints(study),
        "examples": tables.example_outputs(study),
        "metadata": tables.metadata_rows(study),
        "comparisons": comparisons,
        "failed": any(c.failed for c in comparisons or []),
        "verdict": verdict,
        "baseline_path": str(baseline) if baseline else "",
        "alpha": alpha,
    }
    mark = time.perf_counter()
    plot_paths = {figure.id: f"plots/{_safe_name(figure.id)}.svg" for figure in figures}
    page = html.render_html(context)
    markdown = html.render_markdown(context, plot_paths)
    timings["render_s"] = time.perf_counter() - mark

    files = [atomic_write_text(out / plot_paths[f.id], f.svg) for f in figures]
    files.append(atomic_write_text(out / "report.md", markdown))
    if main_tables:
        summary = main_tables[0].values.copy()
        files.append(atomic_write_text(out / "summary.csv", summary.to_csv(index_label="cell")))
    files.append(atomic_write_text(out / "index.html", page))
    if save_baseline is not None:
        atomic_write_text(save_baseline, json.dumps(document, indent=1, sort_keys=False) + "\n")
    for path in [*files, *([save_baseline] if save_baseline is not None else [])]:
        path.chmod(0o644)  # temp files are private; a report is meant to be read (and served)
    timings["total_s"] = time.perf_counter() - start
    return ReportResult(out, files, comparisons, save_baseline, main_tables[0].values if main_tables else None, timings)


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:120]

