"""Matplotlib (Agg) figures as SVG text: MM1-style bars per axis, Pythia-style training dynamics, losses.

- ``axis_bars``: like MM1's Figures 3-5, one figure per grid axis: a metric family per panel, the axis
  values on x, bars grouped by shots, 95% bootstrap intervals as error bars.
- ``dynamics``: like Pythia, one figure per task: metric vs. training step (log x) and vs. training FLOPs,
  one line per cell (mean over training seeds, band = min..max over seeds), a panel per shot count.
- ``loss_curves``: training loss per data type (caption / interleaved / text) vs. step, same lines/bands.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from mmbench_cli.families import FAMILIES
from mmbench_cli.report.load import Run, Study
from mmbench_cli.report.stats import DEFAULT_RESAMPLES
from mmbench_cli.report.tables import axis_effects, repeated_points, summary_columns, task_estimate

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as MplFigure

LOSS_KEYS = ("loss", "loss/caption", "loss/interleaved", "loss/text")


@dataclass
class Figure:
    """One rendered plot: an anchor id, a title, a caption and its SVG text."""

    id: str
    title: str
    caption: str
    svg: str


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "mmbench", "svg.fonttype": "none", "font.size": 8, "axes.titlesize": 9})
    return plt


def _to_svg(fig: MplFigure) -> str:
    buffer = io.StringIO()
    # Fixed margins instead of tight layout / bbox "tight": text layout is most of matplotlib's time.
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "mmbench"})
    _pyplot().close(fig)
    return buffer.getvalue()


def _colors(study: Study) -> dict[str, tuple[float, ...]]:
    plt = _pyplot()
    cycle = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
    return {group: cycle[i % len(cycle)] for i, group in enumerate(study.groups())}


def _short(label: str, width: int = 40) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def axis_bars(study: Study, resamples: int = DEFAULT_RESAMPLES) -> list[Figure]:
    """MM1 Figures 3-5: per axis, the mean metric per axis value, bars grouped by shots, CI error bars."""
    plt = _pyplot()
    columns = summary_columns(study)
    effects = axis_effects(study, columns)
    figures = []
    for axis, by_value in effects.items():
        families = [family for family in FAMILIES.values() if any(c.family == family.name for c in columns)]
        if not families or not by_value:
            continue
        fig, panels = plt.subplots(
            1, len(families), figsize=(3.4 * len(families), 3.0), squeeze=False,
            gridspec_kw={"left": 0.12 / len(families) + 0.03, "right": 0.98, "bottom": 0.2, "top": 0.9, "wspace": 0.3},
        )
        values = list(by_value)
        for panel, family in zip(panels[0], families, strict=True):
            family_columns = [c for c in columns if c.family == family.name]
            width = 0.8 / len(family_columns)
            for j, column in enumerate(family_columns):
                heights, low, high = [], [], []
                for value in values:
                    estimate = by_value[value][column.key]
                    height = estimate.value if estimate else float("nan")
                    interval = estimate.ci(resamples) if estimate else None
                    heights.append(height)
                    low.append(height - interval[0] if interval else 0.0)
                    high.append(interval[1] - height if interval else 0.0)
                positions = [i + (j - (len(family_columns) - 1) / 2) * width for i in range(len(values))]
                label = f"{column.shots}-shot" if family.summary_task is None else column.label
                panel.bar(positions, heights, width, yerr=[low, high], capsize=2, label=label)
            panel.set_xticks(range(len(values)), [_short(v, 14) for v in values], rotation=30 if len(values) > 4 else 0)
            panel.set_xlabel(_short(axis))
            panel.set_title(family.label + (" avg" if family.summary_task is None else ""))
            panel.legend(fontsize=6)
        figures.append(
            Figure(
                f"bars-{axis}",
                f"Bar chart: effect of {axis}",
                f"Mean metric per {axis} value over the other axes, grouped by shots; error bars: 95% bootstrap CI.",
                _to_svg(fig),
            )
        )
    return figures


def _step_flops(run: Run, step: int) -> float | None:
    """Training FLOPs at a checkpoint: from the results JSON, else checkpoint.json, else the training log."""
    result = run.results.get(step)
    recorded = [result.train_flops if result is not None else None,
                *(c.train_flops for c in run.checkpoints if c.step == step)]
    for flops in recorded:
        if flops is not None:
            return float(flops)
    for record in run.metrics:
        if record.get("step") == step and isinstance(record.get("train_flops"), (int, float)):
            return float(record["train_flops"])
    return None


def _series(points: dict[float, list[float]]) -> tuple[list[float], list[float], list[float], list[float]]:
    xs = sorted(points)
    mean = [sum(points[x]) / len(points[x]) for x in xs]
    return xs, mean, [min(points[x]) for x in xs], [max(points[x]) for x in xs]


def _draw_lines(panel: Axes, lines: dict[str, dict[float, list[float]]], colors: dict[str, tuple[float, ...]]) -> None:
    for group, points in lines.items():
        if not points:
            continue
        xs, mean, low, high = _series(points)
        panel.plot(xs, mean, marker="o", markersize=2.5, linewidth=1.2, color=colors[group], label=_short(group))
        if any(len(points[x]) > 1 for x in xs):
            panel.fill_between(xs, low, high, color=colors[group], alpha=0.2, linewidth=0)


def _log_x(panel: Axes, xs: list[float], max_ticks: int = 8, rotation: int = 0) -> None:
    """Log x axis that still shows step 0 (symlog, linear below the first positive x), ticks at the data."""
    positive = sorted({x for x in xs if x > 0})
    if not positive:
        return
    panel.set_xscale("symlog", linthresh=positive[0])
    if len(positive) > max_ticks:  # evenly spaced in rank, which is roughly log-spaced for Pythia's checkpoints
        positive = sorted({positive[round(i * (len(positive) - 1) / (max_ticks - 1))] for i in range(max_ticks)})
    ticks = ([0.0] if min(xs) <= 0 else []) + positive
    panel.set_xticks(ticks, [f"{x:.3g}" for x in ticks], rotation=rotation)
    panel.minorticks_off()


def dynamics(study: Study) -> list[Figure]:
    """Pythia-style: each task's metric vs. step (log x) and vs. FLOPs, one line per cell, band over seeds."""
    plt = _pyplot()
    colors = _colors(study)
    repeated = repeated_points(study)
    figures = []
    for task, info in study.tasks().items():
        shots_list = info.shots
        if not any(len(r.results) > 1 for r in study.runs if any(task in x.tasks for x in r.results.values())):
            caption_extra = " (one checkpoint per run: evaluate more with `mm eval --all-checkpoints`)"
        else:
            caption_extra = ""
        width = 3.2 * len(shots_list) + 1.6
        fig, panels = plt.subplots(
            2, len(shots_list), figsize=(width, 5.4), squeeze=False,
            gridspec_kw={"left": 0.65 / width, "right": 1 - 1.7 / width, "bottom": 0.12, "top": 0.94,
                         "wspace": 0.35, "hspace": 0.55},
        )
        for j, shots in enumerate(shots_list):
            by_step: dict[str, dict[float, list[float]]] = {}
            by_flops: dict[str, dict[float, list[float]]] = {}
            flagged: list[tuple[float, float | None, float]] = []  # (step, flops, value) of repeated-hash checkpoints
            for group, runs in study.groups().items():
                by_step[group], by_flops[group] = {}, {}
                for run in runs:
                    for step in sorted(run.results):
                        estimate = task_estimate(run, step, task, shots)
                        if estimate is None:
                            continue
                        by_step[group].setdefault(float(step), []).append(estimate.value)
                        flops = _step_flops(run, step)
                        if flops is not None:
                            by_flops[group].setdefault(flops, []).append(estimate.value)
                        if (run.name, step) in repeated:
                            flagged.append((float(step), flops, estimate.value))
            for row, (lines, xlabel) in enumerate(((by_step, "training step"), (by_flops, "training FLOPs"))):
                panel = panels[row][j]
                _draw_lines(panel, lines, colors)
                marks = [(p[row], p[2]) for p in flagged if p[row] is not None]
                if marks:
                    panel.scatter(*zip(*marks, strict=True), marker="x", s=40, color="red", zorder=5,
                                  label="repeated checkpoint hash")
                _log_x(panel, [x for points in lines.values() for x in points], max_ticks=(8, 4)[row], rotation=25 * row)
                panel.set_xlabel(xlabel + " (log)")
                panel.set_ylabel(info.metric or "score")
                panel.set_title(f"{_short(task, 30)}, {shots}-shot")
                panel.grid(alpha=0.3)
        handles, labels = panels[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1 - 1.6 / width, 0.5), fontsize=6)
        figures.append(
            Figure(
                f"dynamics-{task}",
                f"Training dynamics: {task}",
                f"{task} ({info.metric or 'score'}) at each evaluated checkpoint vs. step and vs. training FLOPs; "
                f"one line per cell, shaded band: min..max over training seeds; red ×: a checkpoint whose content hash "
                f"repeats (see Repeated checkpoints).{caption_extra}",
                _to_svg(fig),
            )
        )
    return figures


def loss_curves(study: Study) -> list[Figure]:
    """Training loss per data type vs. step (log x): one line per cell, band over training seeds."""
    keys = [k for k in LOSS_KEYS if any(k in record for run in study.runs for record in run.metrics)]
    if not keys:
        return []
    plt = _pyplot()
    colors = _colors(study)
    width = 3.0 * len(keys) + 1.6
    fig, panels = plt.subplots(
        1, len(keys), figsize=(width, 3.0), squeeze=False,
        gridspec_kw={"left": 0.6 / width, "right": 1 - 1.7 / width, "bottom": 0.17, "top": 0.9, "wspace": 0.3},
    )
    for panel, key in zip(panels[0], keys, strict=True):
        lines: dict[str, dict[float, list[float]]] = {}
        for group, runs in study.groups().items():
            lines[group] = {}
            for run in runs:
                for record in run.metrics:
                    if isinstance(record.get(key), (int, float)):
                        lines[group].setdefault(float(record["step"]), []).append(float(record[key]))
        _draw_lines(panel, lines, colors)
        _log_x(panel, [x for points in lines.values() for x in points])
        panel.set_xlabel("training step (log)")
        panel.set_title("total loss" if key == "loss" else key.replace("loss/", "") + " loss")
        panel.grid(alpha=0.3)
    handles, labels = panels[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1 - 1.6 / width, 0.5), fontsize=6)
    caption = "Training loss from metrics.jsonl, total and per data type; band: min..max over training seeds."
    return [Figure("loss", "Training loss per data type", caption, _to_svg(fig))]


def all_figures(study: Study, resamples: int = DEFAULT_RESAMPLES) -> list[Figure]:
    """Every plot of the report, in reading order."""
    return [*axis_bars(study, resamples), *dynamics(study), *loss_curves(study)]

