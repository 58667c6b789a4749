"""Matplotlib (Agg) figures as SVG text, drawn to be read at 1280 px in colour-blind-safe colours (Okabe–Ito).

- ``axis_bars``: like MM1's Figures 3-5, one figure per grid axis: a panel per metric family (and caption
  grounding, with its chance level), the axis values on x (mixtures ordered by their shares, as in MM1 Fig. 5),
  bars grouped by shots with seed-aware 95% intervals (the Findings' noise model), and every training seed's
  value as a point over its bar; a dashed line at the answer prior where the results record one
  (``extra["prior"]``), a dotted one at chance (multiple choice); y from 0.
- ``interaction``: for a grid of two axes, like MM1's Fig. 4: the metric vs. one axis, a line per value of the
  other, a panel per family and shot count, seeds as points, seed-aware intervals, prior or chance, y from 0.
- ``dynamics``: like Pythia, one figure per task whose runs evaluated several checkpoints: metric vs. training
  step (linear, a marker per evaluated checkpoint) and, when the cells' FLOPs per step differ, vs. training
  compute; one line per cell (mean over its seeds at each step), band = min..max over the seeds; a line only
  ever joins one cell's checkpoints, in step order; the answer prior or chance as a reference line.
- ``grounding_steps``: caption grounding (colour precision) at every evaluated checkpoint, against chance.
- ``loss_curves``: training loss per data type vs. step (linear step, log loss), one line per cell with a band
  over seeds, colour, marker and dash per cell.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from mmbench_cli.families import FAMILIES
from mmbench_cli.report.findings import measure_of, seed_aware_interval
from mmbench_cli.report.grounding import query_precisions, run_vocabularies
from mmbench_cli.report.load import SEED_AXIS, Run, Study
from mmbench_cli.report.stats import DEFAULT_RESAMPLES, Estimate, from_scores, mean_of
from mmbench_cli.report.tables import (
    Column,
    answer_prior,
    axis_effects,
    chance_level,
    repeated_points,
    run_estimate,
    summary_columns,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as MplFigure

LOSS_KEYS = ("loss", "loss/caption", "loss/interleaved", "loss/text")
# Okabe & Ito's colour-blind-safe palette (yellow last: weak on white); markers tell lines apart beyond 8.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")
COMPUTE_AXIS_RATIO = 1.5  # a compute row is drawn when the cells' FLOPs per step differ by more than this factor
MAX_LINE_POINTS = 40  # loss curves are thinned to this many points per line (evenly spaced), for page size
GROUNDING_KIND = "colour"


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

    plt.rcParams.update({
        "svg.hashsalt": "mmbench", "svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
        "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
        "axes.spines.top": False, "axes.spines.right": False, "path.simplify": True,
        # one short font list (matplotlib repeats it on every text element of an SVG)
        "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    })
    return plt


_GEOMETRY = re.compile(r'\b(d|x|y|x1|x2|y1|y2|width|height|transform|points|cx|cy|r)="([^"]*)"')
_LONG_NUMBER = re.compile(r"(-?\d+\.\d)\d+")
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)


def compact_svg(svg: str) -> str:
    """The same picture in fewer bytes: geometry to 0.1 pt (a fifth of a pixel at 1400 px), no indentation or
    metadata block (a report embeds
    every plot, so this is most of its size). Text content is left alone."""

    def shorten(match: re.Match[str]) -> str:
        value = _LONG_NUMBER.sub(r"\1", " ".join(match.group(2).split()))
        return f'{match.group(1)}="{value}"'

    svg = _METADATA.sub("", svg)
    return re.sub(r">\s*\n\s*<", ">\n<", _GEOMETRY.sub(shorten, svg))


def _to_svg(fig: MplFigure) -> str:
    buffer = io.StringIO()
    # Fixed margins instead of tight layout / bbox "tight": text layout is most of matplotlib's time.
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "mmbench"})
    _pyplot().close(fig)
    return compact_svg(buffer.getvalue())


def _style(index: int) -> dict[str, object]:
    """Colour, marker and line style of the ``index``-th line (colours first, then markers and dashes)."""
    return {"color": PALETTE[index % len(PALETTE)], "marker": MARKERS[(index // len(PALETTE) + index) % len(MARKERS)],
            "linestyle": LINESTYLES[(index // len(PALETTE)) % len(LINESTYLES)]}


def _styles(study: Study) -> dict[str, dict[str, object]]:
    return {group: _style(i) for i, group in enumerate(study.groups())}


def _short(label: str, width: int = 40) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _legend_width(labels: Iterable[str]) -> float:
    """Inches a legend of ``labels`` needs at legend.fontsize (about 0.062 in per character, plus the handle)."""
    return 0.75 + 0.062 * max((len(label) for label in labels), default=0)


def _tick_labels(panel: Axes, labels: list[str]) -> float:
    """Set x tick labels, rotated when long or many; returns the inches they need below the axis."""
    longest = max((len(label) for label in labels), default=0)
    rotate = longest > 8 or (len(labels) > 4 and longest > 4)
    panel.set_xticks(range(len(labels)), labels, rotation=40 if rotate else 0, ha="right" if rotate else "center",
                     rotation_mode="anchor")
    return 0.25 + (0.65 * 0.062 * longest * 1.1 if rotate else 0.1)


def _grounding_estimates(study: Study) -> tuple[str, str, dict[str, Estimate], float] | None:
    """(task, shots, run name -> colour-precision Estimate, mean chance) for the first captioning task whose cells
    record a vocabulary, at its fewest shots and the runs' last checkpoints; None when there is none."""
    for task, info in study.tasks().items():
        shots = info.shots[0]
        if not any(GROUNDING_KIND in run_vocabularies(run, task, shots) for run in study.runs):
            continue
        found: dict[str, Estimate] = {}
        chances: list[float] = []
        for run in study.runs:
            kinds = query_precisions(run, task, shots)
            if GROUNDING_KIND in kinds:
                precision, chance = kinds[GROUNDING_KIND]
                found[run.name] = from_scores(sum(precision.values()) / len(precision), precision)
                chances += list(chance.values())
        if found:
            return task, shots, found, sum(chances) / len(chances)
    return None


def _bar_panels(study: Study, columns: list[Column]) -> list[tuple[str, list[Column]]]:
    return [(family.label + (" avg" if family.summary_task is None else ""),
             [c for c in columns if c.family == family.name]) for family in FAMILIES.values()
            if any(c.family == family.name for c in columns)]


def axis_bars(study: Study, resamples: int = DEFAULT_RESAMPLES) -> list[Figure]:
    """MM1 Figures 3-5: per axis, the mean metric per axis value (bars grouped by shots, 95% CI error bars) with
    every training seed's value as a point, a panel per family, and caption grounding against chance."""
    plt = _pyplot()
    columns = summary_columns(study)
    effects = axis_effects(study, columns)
    tasks = study.tasks()
    panels_spec = _bar_panels(study, columns)
    grounding = _grounding_estimates(study)
    shot_colours = {shots: PALETTE[i % len(PALETTE)] for i, shots in enumerate(
        sorted({c.shots for c in columns if c.shots is not None}, key=int))}
    figures = []
    for axis, by_value in effects.items():
        if not panels_spec or not by_value:
            continue
        values = list(by_value)
        panel_count = len(panels_spec) + (grounding is not None)
        width = min(12.5, 3.5 * panel_count + 0.6)
        longest = max(len(v) for v in values)
        bottom = 0.55 + (0.062 * min(longest, 24) * 0.7 if longest > 8 or len(values) > 4 else 0.0)
        fig, panels = plt.subplots(1, panel_count, figsize=(width, 3.4 + bottom), squeeze=False,
                                   gridspec_kw={"left": 0.55 / width, "right": 1 - 0.15 / width,
                                                "bottom": bottom / (3.4 + bottom), "top": 1 - 0.75 / (3.4 + bottom),
                                                "wspace": 0.32})
        members = {value: [r for r in study.runs if r.axes.get(axis) == value and r.final_step is not None]
                   for value in values}
        handles: dict[str, object] = {}
        groups = study.groups()
        cells_of = {value: [runs for runs in groups.values() if runs[0].axes.get(axis) == value] for value in values}
        for panel, (title, family_columns) in zip(panels[0], panels_spec, strict=False):
            width_each = 0.8 / len(family_columns)
            tops = [0.0]
            for j, column in enumerate(family_columns):
                offset = (j - (len(family_columns) - 1) / 2) * width_each
                measure = measure_of(study, column.family, column.shots or "0")
                heights, low, high = [], [], []
                for value in values:
                    estimate = by_value[value][column.key]
                    height = estimate.value if estimate else float("nan")
                    interval = seed_aware_interval(study, measure, cells_of[value]) if measure and estimate else None
                    heights.append(height)
                    low.append(interval[0] - interval[1] if interval else 0.0)
                    high.append(interval[2] - interval[0] if interval else 0.0)
                colour = shot_colours.get(column.shots or "", PALETTE[0])
                positions = [i + offset for i in range(len(values))]
                bars = panel.bar(positions, heights, width_each * 0.92, yerr=[low, high], capsize=2, color=colour,
                                 alpha=0.75, error_kw={"elinewidth": 1.0, "ecolor": "#333333"})
                handles.setdefault(f"{column.shots}-shot", bars)
                tops += [h + e for h, e in zip(heights, high, strict=True) if h == h]
                for i, value in enumerate(values):
                    points = [e.value for r in members[value] if (e := run_estimate(r, column, tasks)) is not None]
                    if points:
                        tops += points
                        spread = [positions[i] + width_each * 0.5 * (k / max(len(points) - 1, 1) - 0.5)
                                  for k in range(len(points))] if len(points) > 1 else [positions[i]]
                        dots = panel.scatter(spread, points, s=14, facecolor="white", edgecolor="black",
                                             linewidth=0.8, zorder=4, clip_on=False)
                        handles.setdefault("one training seed (a cell's run)", dots)
            family = next(f for f in FAMILIES.values() if f.name == family_columns[0].family)
            family_tasks = [t for t, info in tasks.items() if info.family == family.name and t != family.summary_task]
            for level, name, style in _reference_lines(study, family_tasks, family_columns[0].shots or "0"):
                handles.setdefault(name, panel.axhline(level, color="#555555", linestyle=style, linewidth=1.1))
                tops.append(level)
            panel.set_ylim(0, max(tops) * 1.08 if max(tops) > 0 else 1)
            panel.set_title(title)
            panel.set_ylabel(_family_unit(family.name, tasks))
            _tick_labels(panel, [_short(v, 24) for v in values])
            panel.set_xlabel(_short(axis))
            panel.grid(axis="y", alpha=0.3)
        if grounding is not None:
            panel = panels[0][-1]
            _, _, by_run, chance = grounding
            names = {value: [r.name for r in members[value] if r.name in by_run] for value in values}
            measure = measure_of(study, tasks[grounding[0]].family, grounding[1], grounding=True)
            heights, low, high = [], [], []
            for value in values:
                estimate = mean_of([by_run[n] for n in names[value]]) if names[value] else None
                interval = seed_aware_interval(study, measure, cells_of[value]) if measure and estimate else None
                heights.append(estimate.value if estimate else float("nan"))
                low.append(interval[0] - interval[1] if interval else 0.0)
                high.append(interval[2] - interval[0] if interval else 0.0)
            panel.bar(range(len(values)), heights, 0.6, yerr=[low, high], capsize=2, alpha=0.75,
                      color=shot_colours.get(grounding[1], PALETTE[0]), error_kw={"elinewidth": 1.0, "ecolor": "#333333"})
            for i, value in enumerate(values):
                points = [by_run[n].value for n in names[value]]
                spread = [i + 0.3 * (k / max(len(points) - 1, 1) - 0.5) for k in range(len(points))] if len(points) > 1 else [i]
                if points:
                    panel.scatter(spread, points, s=14, facecolor="white", edgecolor="black", linewidth=0.8, zorder=4,
                                  clip_on=False)
            handles["chance (colours named at random)"] = panel.axhline(chance, color="#555555", linestyle=":",
                                                                        linewidth=1.2)
            panel.set_title("Caption grounding, 0-shot" if grounding[1] == "0" else f"Caption grounding, {grounding[1]}-shot")
            panel.set_ylabel("colour precision (%)")
            panel.set_ylim(0, 105)  # seeds at 100% stay inside the axes
            _tick_labels(panel, [_short(v, 24) for v in values])
            panel.set_xlabel(_short(axis))
            panel.grid(axis="y", alpha=0.3)
        ordered = sorted(handles, key=lambda name: (not name.endswith("-shot"), name))
        fig.legend([handles[name] for name in ordered], ordered, loc="upper center", ncol=min(len(handles), 6),
                   frameon=False, bbox_to_anchor=(0.5, 1.0))
        order_note = " Mixtures are ordered by their shares (caption, interleaved, text), as in MM1 Fig. 5." if (
            any(axis in grid.get("value_order", {}) for grid in study.grids)) else ""
        figures.append(Figure(
            f"bars-{axis}", f"Bar chart: effect of {axis}",
            f"Mean metric per {axis} value over the other axes, bars grouped by shots; error bars: 95% CI with the "
            "Findings' noise model (queries clustered by image plus the grid's between-seed variance); points: each "
            "training seed of each cell with that value; dashed: the answer prior, dotted: chance, where a family has "
            "one; y from 0." + (" Grounding panel: share of the colours the 0-shot captions name that are in the "
                                "image; dotted: chance." if grounding is not None else "") + order_note,
            _to_svg(fig)))
    return figures


def _reference_lines(study: Study, tasks: list[str], shots: str) -> list[tuple[float, str, str]]:
    """(level, legend name, line style) of each reference a family has at ``shots``: its answer prior where the
    results record one (dashed), its chance level where known (dotted: recorded, or 1 / choices for lm-eval's
    multiple choice)."""
    if not tasks:
        return []
    found = []
    prior = answer_prior(study, tasks, shots)
    if prior is not None:
        found.append((prior, "answer prior", "--"))
    chance = chance_level(study, tasks, shots)
    if chance is not None:
        found.append((chance, "chance", ":"))
    return found


def _family_unit(family: str, tasks: dict[str, object]) -> str:
    metrics = sorted({info.metric for info in tasks.values() if getattr(info, "family", None) == family and info.metric})  # type: ignore[attr-defined]
    return metrics[0] if len(metrics) == 1 else "score"


def interaction(study: Study, resamples: int = DEFAULT_RESAMPLES) -> list[Figure]:
    """MM1 Fig. 4 style, for a grid of two axes: each family × shots measure vs. the first axis, one line per value
    of the second, 95% CI error bars and each training seed as a point."""
    axes = [a for a, values in study.axes.items() if a != SEED_AXIS and len(values) > 1]
    if len(axes) != 2:
        return []
    plt = _pyplot()
    first, second = axes
    columns = summary_columns(study)
    if not columns:
        return []
    tasks = study.tasks()
    groups = study.groups()
    cols = min(4, len(columns))
    rows = math.ceil(len(columns) / cols)
    legend_w = _legend_width([f"{second}={v}" for v in study.axes[second]] + ["one training seed", "answer prior"])
    width = min(13.0, 3.0 * cols + legend_w + 0.6)
    height = 2.9 * rows + 0.5
    fig, panels = plt.subplots(rows, cols, figsize=(width, height), squeeze=False,
                               gridspec_kw={"left": 0.6 / width, "right": 1 - legend_w / width, "bottom": 0.75 / height,
                                            "top": 1 - 0.4 / height, "wspace": 0.35, "hspace": 0.65})
    xs = study.axes[first]
    seen: dict[str, object] = {}
    has_seeds = False
    for index, column in enumerate(columns):
        panel = panels[index // cols][index % cols]
        measure = measure_of(study, column.family, column.shots or "0")
        tops = [0.0]
        for k, value in enumerate(study.axes[second]):
            style = _style(k)
            shift = (k - (len(study.axes[second]) - 1) / 2) * 0.06
            means, low, high, dots_x, dots_y = [], [], [], [], []
            for i, x in enumerate(xs):
                runs = next((r for g, r in groups.items() if r[0].axes.get(first) == x and r[0].axes.get(second) == value),
                            [])
                per_seed = [e for e in (run_estimate(r, column, tasks) for r in runs) if e is not None]
                estimate = mean_of(per_seed, pool_seeds=True)
                interval = seed_aware_interval(study, measure, [runs]) if measure and estimate and runs else None
                means.append(estimate.value if estimate else float("nan"))
                low.append(interval[0] - interval[1] if interval else 0.0)
                high.append(interval[2] - interval[0] if interval else 0.0)
                dots_x += [i + shift] * len(per_seed)
                dots_y += [e.value for e in per_seed]
            tops += [m + h for m, h in zip(means, high, strict=True) if m == m] + dots_y
            line = panel.errorbar([i + shift for i in range(len(xs))], means, yerr=[low, high], color=style["color"],
                                  marker=style["marker"], linestyle=style["linestyle"], markersize=4, capsize=2,
                                  linewidth=1.3)
            seen.setdefault(f"{second}={value}", line)
            if len(dots_y) > len(xs):  # several seeds: show them
                panel.scatter(dots_x, dots_y, s=10, facecolor="none", edgecolor=style["color"], linewidth=0.8, zorder=4,
                              clip_on=False)
                has_seeds = True
        family = FAMILIES.get(column.family)
        family_tasks = [t for t, info in tasks.items() if info.family == column.family
                        and (family is None or t != family.summary_task)]
        for level, name, line_style in _reference_lines(study, family_tasks, column.shots or "0"):
            seen.setdefault(name, panel.axhline(level, color="#555555", linestyle=line_style, linewidth=1.1))
            tops.append(level)
        panel.set_ylim(0, max(tops) * 1.08 if max(tops) > 0 else 1)  # from 0: a cell at its prior reads as one
        panel.set_ylabel(_family_unit(column.family, tasks))
        panel.set_xticks(range(len(xs)), [_short(x, 12) for x in xs])
        panel.set_xlim(-0.5, len(xs) - 0.5)
        panel.set_xlabel(_short(first))
        panel.set_title(column.label)
        panel.grid(alpha=0.3)
    for index in range(len(columns), rows * cols):
        panels[index // cols][index % cols].set_visible(False)
    if has_seeds:
        from matplotlib.lines import Line2D

        seen["one training seed"] = Line2D([], [], marker="o", linestyle="none", markerfacecolor="none",
                                           markeredgecolor="#333333", markersize=4)
    fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1 - (legend_w - 0.1) / width, 0.5),
               frameon=False)
    return [Figure(
        "interaction", f"Interaction: {first} × {second}",
        f"Each measure vs. {first}, one line per {second} value (MM1 Fig. 4 style): parallel lines mean the two axes "
        "add up, crossing lines an interaction (tested in Findings). Error bars: 95% CI with the Findings' noise model "
        "(queries clustered by image plus the grid's between-seed variance); hollow points: the cell's training seeds; "
        "dashed: the answer prior, dotted: chance, where a family has one; y from 0.", _to_svg(fig))]


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


@dataclass
class _Series:
    """One cell's curve: per step (in order), the x of each seed and the y of each seed."""

    steps: list[float]
    xs: list[list[float]]
    ys: list[list[float]]

    def mean_line(self) -> tuple[list[float], list[float], list[float], list[float]]:
        """x (mean over seeds), mean y, min y and max y at each step."""
        x = [sum(v) / len(v) for v in self.xs]
        return x, [sum(v) / len(v) for v in self.ys], [min(v) for v in self.ys], [max(v) for v in self.ys]


def _series(points: dict[float, list[tuple[float, float]]]) -> _Series:
    """From step -> [(x, y) per seed] to a series in step order (so a line never joins seeds' endpoints)."""
    steps = sorted(points)
    return _Series(steps, [[x for x, _ in points[s]] for s in steps], [[y for _, y in points[s]] for s in steps])


def _draw_lines(panel: Axes, lines: dict[str, _Series], styles: dict[str, dict[str, object]], dodge: float = 0.0) -> None:
    """One line per cell through its evaluated checkpoints (a marker at each: nothing is drawn between them but the
    straight segment), band = min..max over seeds; with ``dodge`` the cells' points shift sideways by that much per
    cell, so cells that coincide stay visible."""
    drawn = [group for group, series in lines.items() if series.steps]
    for index, group in enumerate(drawn):
        series = lines[group]
        x, mean, low, high = series.mean_line()
        x = [v + dodge * (index - (len(drawn) - 1) / 2) for v in x]
        style = styles[group]
        single = len(x) == 1
        panel.plot(x, mean, marker=style["marker"], markersize=4 if not single else 5, markerfacecolor="white",
                   markeredgewidth=1.1, linestyle="none" if single else style["linestyle"], linewidth=1.3,
                   color=style["color"], label=_short(group), alpha=0.95)
        if any(len(v) > 1 for v in series.ys):
            if single:
                panel.errorbar(x, mean, yerr=[[mean[0] - low[0]], [high[0] - mean[0]]], color=style["color"], capsize=3)
            else:
                panel.fill_between(x, low, high, color=style["color"], alpha=0.12, linewidth=0)


def _linear_x(panel: Axes, unit: str = "") -> None:
    """A linear x axis with a few round ticks (engineering notation with ``unit``: "7.8 TFLOP"), so labels never
    run together and no stretch between evaluations is drawn as if it were measured."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    panel.xaxis.set_major_locator(MaxNLocator(nbins=4 if unit else 6, integer=not unit, min_n_ticks=3))
    if unit:
        panel.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _engineering(v, unit)))
    panel.minorticks_off()


def _engineering(value: float, unit: str = "") -> str:
    if value == 0:
        return "0"
    for prefix, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".strip()


def _flops_per_step_differ(study: Study) -> bool:
    """Whether the cells' training FLOPs per step differ by more than half again (then compute is a second x axis
    worth drawing; else it is nearly the step axis rescaled and would repeat it)."""
    rates = []
    for run in study.runs:
        step = run.final_step
        flops = _step_flops(run, step) if step else None
        if flops:
            rates.append(flops / step)  # type: ignore[operator]
    return bool(rates) and max(rates) > COMPUTE_AXIS_RATIO * min(rates)


def dynamics(study: Study) -> list[Figure]:
    """Pythia-style, for tasks evaluated at several checkpoints: metric vs. training step (linear, a marker per
    evaluated checkpoint), one line per cell (mean over its seeds, band min..max over seeds), the answer prior or
    chance as a reference line; a second row vs. training compute only when the cells' FLOPs per step differ."""
    plt = _pyplot()
    styles = _styles(study)
    repeated = repeated_points(study)
    with_compute = _flops_per_step_differ(study)
    figures = []
    legend_w = _legend_width([*(_short(g) for g in study.groups()), "repeated checkpoint hash"])
    for task, info in study.tasks().items():
        if not any(len([s for s in r.results if task in r.results[s].tasks]) > 1 for r in study.runs):
            continue  # one evaluated checkpoint per run: nothing to show over training
        shots_list = info.shots
        rows = 2 if with_compute else 1
        columns = len(shots_list)
        width = min(13.0, 4.0 * columns + legend_w + 0.8)
        height = 3.2 * rows + 0.6
        fig, panels = plt.subplots(
            rows, columns, figsize=(width, height), squeeze=False,
            gridspec_kw={"left": 0.7 / width, "right": 1 - legend_w / width, "bottom": 0.65 / height,
                         "top": 1 - 0.35 / height, "wspace": 0.3, "hspace": 0.6},
        )
        references: list[tuple[float, str, str]] = []
        for j, shots in enumerate(shots_list):
            by_step: dict[str, dict[float, list[tuple[float, float]]]] = {}
            by_flops: dict[str, dict[float, list[tuple[float, float]]]] = {}
            flagged: list[tuple[float, float | None, float]] = []  # (step, flops, value) of repeated-hash checkpoints
            for group, runs in study.groups().items():
                by_step[group], by_flops[group] = {}, {}
                for run in runs:
                    for step in sorted(run.results):
                        cell = run.entry(step, task, shots)  # the value only: no intervals drawn per checkpoint
                        if cell is None:
                            continue
                        by_step[group].setdefault(float(step), []).append((float(step), cell.value))
                        flops = _step_flops(run, step)
                        if flops is not None:
                            by_flops[group].setdefault(float(step), []).append((flops, cell.value))
                        if (run.name, step) in repeated:
                            flagged.append((float(step), flops, cell.value))
            references = _reference_lines(study, [task], shots)
            plotted = ((by_step, "training step", ""), (by_flops, "training compute", "FLOP"))[:rows]
            for row, (lines, xlabel, unit) in enumerate(plotted):
                panel = panels[row][j]
                xs = [x for points in lines.values() for seeds in points.values() for x, _ in seeds]
                span = (max(xs) - min(xs)) if xs else 0.0
                _draw_lines(panel, {g: _series(p) for g, p in lines.items()}, styles, dodge=0.006 * span)
                marks = [(p[row], p[2]) for p in flagged if p[row] is not None]
                if marks:
                    panel.scatter(*zip(*marks, strict=True), marker="x", s=40, color="#D55E00", zorder=5,
                                  label="repeated checkpoint hash")
                for level, name, line_style in references:
                    panel.axhline(level, color="#555555", linestyle=line_style, linewidth=1.1, label=name)
                _linear_x(panel, unit)
                panel.set_xlabel(xlabel)
                panel.set_ylabel(info.metric or "score")
                panel.set_title(f"{_short(task, 30)}, {shots}-shot")
                panel.grid(alpha=0.3)
        handles, labels = panels[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1 - (legend_w - 0.1) / width, 0.5),
                       frameon=False)
        compute = (f"; second row: vs. training compute (the cells' FLOPs per step differ by more than "
                   f"{COMPUTE_AXIS_RATIO:g}×)" if with_compute else
                   f"; the cells' FLOPs per step are within {COMPUTE_AXIS_RATIO:g}× of each other, so a compute axis "
                   "would nearly repeat the step axis (not drawn)")
        said = {"--": "; dashed: the answer prior", ":": "; dotted: chance"}
        figures.append(Figure(
            f"dynamics-{task}", f"Training dynamics: {task}",
            f"{task} ({info.metric or 'score'}) at each evaluated checkpoint (a marker each) vs. training step, linear; "
            "one line per cell through its checkpoints in step order (mean over its training seeds; cells shifted "
            "sideways a little so coinciding lines stay visible), shaded: min..max over the seeds; × a checkpoint "
            "whose content hash repeats (see Repeated checkpoints)" + compute
            + "".join(said[style] for _, _, style in references) + ".", _to_svg(fig)))
    return figures


def grounding_steps(study: Study) -> list[Figure]:
    """Caption grounding (colour precision) at every evaluated checkpoint, one line per cell, band over seeds,
    chance dotted; only when some run evaluated several checkpoints of a captioning task with a vocabulary."""
    for task, info in study.tasks().items():
        shots = info.shots[0]
        runs = [r for r in study.runs if len(r.results) > 1 and any(
            GROUNDING_KIND in run_vocabularies(r, task, shots, step) for step in r.results)]
        if not runs:
            continue
        plt = _pyplot()
        styles = _styles(study)
        legend_w = _legend_width([*(_short(g) for g in study.groups()), "chance (colours named at random)"])
        width = min(11.0, 5.5 + legend_w)
        fig, panels = plt.subplots(1, 1, figsize=(width, 3.6), squeeze=False,
                                   gridspec_kw={"left": 0.75 / width, "right": 1 - legend_w / width, "bottom": 0.16,
                                                "top": 0.9})
        panel = panels[0][0]
        lines: dict[str, dict[float, list[tuple[float, float]]]] = {}
        chances: list[float] = []
        for group, members in study.groups().items():
            lines[group] = {}
            for run in members:
                for step in sorted(run.results):
                    found = query_precisions(run, task, shots, step).get(GROUNDING_KIND)
                    if found:
                        precision, chance = found
                        lines[group].setdefault(float(step), []).append((float(step),
                                                                         sum(precision.values()) / len(precision)))
                        chances += list(chance.values())
        steps = [x for points in lines.values() for x in points]
        _draw_lines(panel, {g: _series(p) for g, p in lines.items()}, styles,
                    dodge=0.006 * (max(steps) - min(steps)) if steps else 0.0)
        if chances:
            panel.axhline(sum(chances) / len(chances), color="#555555", linestyle=":", linewidth=1.2,
                          label="chance (colours named at random)")
        _linear_x(panel)
        panel.set_ylim(0, 105)
        panel.set_xlabel("training step")
        panel.set_ylabel("colour precision (%)")
        panel.set_title(f"Caption grounding over training: {_short(task, 30)}, {shots}-shot")
        panel.grid(alpha=0.3)
        handles, labels = panel.get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1 - (legend_w - 0.1) / width, 0.5), frameon=False)
        return [Figure(
            "grounding-steps", "Caption grounding over training",
            f"Share of the colours {task}'s {shots}-shot captions name that are in the image, at every evaluated "
            "checkpoint (a marker each, linear steps); one line per cell (mean over its seeds), shaded: min..max over "
            "seeds; dotted: chance. Cells evaluated at one checkpoint only show as a single point.", _to_svg(fig))]
    return []


def _thin(points: dict[float, list[float]], limit: int = MAX_LINE_POINTS) -> dict[float, list[float]]:
    """At most ``limit`` steps, spaced evenly in step (the axis is linear), always keeping the first and last."""
    steps = sorted(points)
    if len(steps) <= limit:
        return points
    positions = [float(s) for s in steps]
    targets = [positions[0] + (positions[-1] - positions[0]) * i / (limit - 1) for i in range(limit)]
    keep, cursor = set(), 0
    for target in targets:
        while cursor < len(steps) - 1 and abs(positions[cursor + 1] - target) <= abs(positions[cursor] - target):
            cursor += 1
        keep.add(steps[cursor])
    keep |= {steps[0], steps[-1]}
    return {s: points[s] for s in steps if s in keep}


def loss_curves(study: Study) -> list[Figure]:
    """Training loss per data type vs. step (linear step, log loss): one line per cell (mean over seeds), band over seeds."""
    keys = [k for k in LOSS_KEYS if any(k in record for run in study.runs for record in run.metrics)]
    if not keys:
        return []
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    styles = _styles(study)
    legend_w = _legend_width(_short(g) for g in study.groups())
    cols = min(len(keys), 2)
    rows = math.ceil(len(keys) / cols)
    width = min(13.0, 4.6 * cols + legend_w + 0.5)
    height = 3.1 * rows + 0.3
    fig, panels = plt.subplots(rows, cols, figsize=(width, height), squeeze=False,
                               gridspec_kw={"left": 0.65 / width, "right": 1 - legend_w / width,
                                            "bottom": 0.6 / height, "top": 1 - 0.35 / height, "wspace": 0.25,
                                            "hspace": 0.55})
    for index, key in enumerate(keys):
        panel = panels[index // cols][index % cols]
        lines: dict[str, _Series] = {}
        for group, runs in study.groups().items():
            points: dict[float, list[float]] = {}
            for run in runs:
                for record in run.metrics:
                    value, step = record.get(key), record.get("step")
                    if isinstance(value, (int, float)) and value > 0 and isinstance(step, (int, float)) and step > 0:
                        points.setdefault(float(step), []).append(float(value))
            thinned = _thin(points)
            lines[group] = _Series(sorted(thinned), [[s] * len(thinned[s]) for s in sorted(thinned)],
                                   [thinned[s] for s in sorted(thinned)])
        drawn = [group for group, series in lines.items() if series.steps]
        for index, group in enumerate(drawn):
            x, mean, low, high = lines[group].mean_line()
            style = styles[group]
            # markers spaced along each line, each cell's at a different phase, so overlapping lines stay apart
            every = max(1, len(x) // 6)
            panel.plot(x, mean, linewidth=1.1, color=style["color"], linestyle=style["linestyle"], label=_short(group),
                       marker=style["marker"], markersize=4, markerfacecolor="white", markeredgewidth=1.0,
                       markevery=(index * every // max(len(drawn), 1) % every, every))
            if any(len(v) > 1 for v in lines[group].ys):
                panel.fill_between(x, low, high, color=style["color"], alpha=0.12, linewidth=0)
        panel.set_yscale("log")
        _linear_x(panel)
        panel.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        panel.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        panel.yaxis.set_minor_formatter(NullFormatter())
        panel.set_xlabel("training step")
        panel.set_ylabel("loss (log)")
        panel.set_title("total loss" if key == "loss" else key.replace("loss/", "") + " loss")
        panel.grid(alpha=0.3, which="major")
    for index in range(len(keys), rows * cols):
        panels[index // cols][index % cols].set_visible(False)
    handles, labels = panels[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1 - (legend_w - 0.1) / width, 0.5), frameon=False)
    caption = ("Training loss from metrics.jsonl, total and per data type, against the training step (linear; loss "
               "on a log axis); one line per cell (mean over its training seeds; colour, marker and dash tell cells "
               "apart), shaded: min..max over seeds.")
    return [Figure("loss", "Training loss per data type", caption, _to_svg(fig))]


def all_figures(study: Study, resamples: int = DEFAULT_RESAMPLES) -> list[Figure]:
    """Every plot of the report, in reading order."""
    return [*axis_bars(study, resamples), *interaction(study, resamples), *grounding_steps(study), *dynamics(study),
            *loss_curves(study)]
