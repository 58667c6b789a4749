"""Findings: tested contrasts between a grid's cells, the verdicts a report leads with.

For every grid of a report, one contrast per axis value against the grid's base value (the value its base
config has), averaged over the other axes' values (MM1's per-axis effect), plus, for a grid of two axes, each
interaction (does the effect of one axis depend on the other?), plus the few-shot gain (most shots against 0
shots on the same queries, over all of the grid's cells: MM1's finding (f)). Each contrast is tested per
*measure*: every
task family of ``mmbench_cli.families`` (captioning, VQA, text) at every shot count (a family with a summary
task, TextCore, at its fewest shots), plus caption grounding (colour precision) where the captioning results
record the synthetic world's vocabulary.

Everything comes from the per-sample files of each cell's last evaluated checkpoint (``stats.linear_contrast``):
queries are paired across cells that answered the same ones, standard errors are clustered by image (the
per-sample row's ``image_id``, else the synthetic world's ``<image>:q<k>`` question ids, else a caption's own
id; text tasks are unclustered), and a cell's training seeds add the grid's pooled between-seed variance. The
p-values of all of a report's contrasts are Holm-adjusted together; the verdict is **effect** (adjusted p <
alpha), **direction, not significant** (only the contrast's own p < alpha) or **no detectable effect**, next to
the minimum detectable effect at 80% power. An axis of ``ablations/axes.yaml`` may carry the MM1 claim it
tests (``claims:``): the rows show it as "MM1 says".
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

from mmbench_cli.config import default_axes_path, read_yaml
from mmbench_cli.errors import MMError
from mmbench_cli.families import FAMILIES, family_of_metric, higher_is_better
from mmbench_cli.report.grounding import query_precisions, run_vocabularies
from mmbench_cli.report.load import SEED_AXIS, Run, Study
from mmbench_cli.report.stats import (
    Contrast,
    SeedScores,
    decimals_for,
    holm,
    linear_contrast,
    pooled_seed_variance,
    verdict,
)

GROUNDING_KIND = "colour"  # shapes are never grounded at toy scale; colours are the grounding signal
SHOTS = "shots"  # the few-shot contrast (most shots against 0) is tested like an axis, over all of a grid's cells
SHOTS_CLAIM = ("Few-shot prompting gains a lot over zero-shot (Table 1: caption and VQA averages 37–41 at 0 shots, "
               "61–66 at 8), given interleaved pre-training data.")


@dataclass(frozen=True)
class Measure:
    """What a contrast row compares: a family average at one shot count (or caption grounding)."""

    key: str
    label: str
    family: str
    shots: str
    tasks: tuple[str, ...]
    unit: str
    grounding: bool = False
    lower_is_better: bool = False


@dataclass
class Finding:
    """One contrast of one grid on one measure, tested."""

    grid: str | None
    contrast: str  # "resolution 64 vs 32"
    kind: str  # "main" or "interaction"
    axis: str
    detail: str  # what the contrast averages over, or the two simple effects of an interaction
    measure: Measure
    base_mean: float
    value_mean: float
    result: Contrast
    pairs: int
    clustered: bool
    claim: str | None = None
    p_adjusted: float = math.nan
    verdict: str = ""
    mde: float = math.nan
    simple_effects: tuple[float, float] | None = None  # interaction: Δ at the other axis's base, Δ at its value
    simple_labels: tuple[str, str] | None = None  # where those two were taken ("tokens=16", "tokens=4")

    @property
    def decimals(self) -> int:
        """Decimals the contrast's interval supports (``stats.decimals_for``)."""
        return decimals_for((self.result.ci_high - self.result.ci_low) / 2)


@dataclass
class Findings:
    """Every finding of a report, Holm-adjusted together; ``skipped`` says what could not be tested and why."""

    rows: list[Finding] = field(default_factory=list)
    alpha: float = 0.05
    skipped: list[str] = field(default_factory=list)

    def by_grid(self) -> dict[str | None, list[Finding]]:
        """Findings per grid label, in report order."""
        grouped: dict[str | None, list[Finding]] = {}
        for row in self.rows:
            grouped.setdefault(row.grid, []).append(row)
        return grouped

    def counts(self) -> dict[str, int]:
        """How many rows got each verdict."""
        found: dict[str, int] = {}
        for row in self.rows:
            found[row.verdict] = found.get(row.verdict, 0) + 1
        return found


def axis_claims(path: Path | None = None) -> dict[str, str]:
    """Axis name -> the MM1 claim it tests (``claims:`` of ``ablations/axes.yaml``); {} when there is no such file."""
    path = path or default_axes_path()
    if not path.is_file():
        return {}
    try:
        data = read_yaml(path)
    except MMError:
        return {}
    claims = {}
    for name, spec in (data or {}).items():
        text = spec.get("claims") if isinstance(spec, dict) else None
        if isinstance(text, str) and text.strip():
            claims[str(name)] = " ".join(text.split())
    return claims


def _seed_scores(run: Run, measure: Measure) -> SeedScores | None:
    step = run.final_step
    if step is None or run.failed:
        return None
    scores: dict[str, dict[Hashable, float]] = {}
    for task in measure.tasks:
        if measure.grounding:
            found = query_precisions(run, task, measure.shots).get(GROUNDING_KIND)
            per_query = found[0] if found else None
        else:
            per_query = run.sample_scores(step, task, measure.shots)
        if not per_query:
            return None
        scores[task] = dict(per_query)
    return scores


def measures(study: Study) -> list[Measure]:
    """The measures a grid's contrasts are tested on: each family's tasks with per-sample files in every evaluated
    cell, per shot count (a summary-task family at its fewest shots), then caption grounding (colour precision)."""
    runs = [run for run in study.runs if run.final_step is not None and not run.failed]
    if not runs:
        return []
    tasks = study.tasks()
    found: list[Measure] = []
    for family in FAMILIES.values():
        members = {task: info for task, info in tasks.items() if info.family == family.name and task != family.summary_task}
        shot_counts = sorted({s for info in members.values() for s in info.shots}, key=int)
        if family.summary_task is not None:
            shot_counts = shot_counts[:1]
        for shots in shot_counts:
            usable = tuple(task for task, info in members.items() if shots in info.shots
                           and all(run.sample_scores(run.final_step, task, shots) for run in runs))  # type: ignore[arg-type]
            if not usable:
                continue
            metrics = {tasks[t].metric for t in usable}
            unit = metrics.pop() if len(metrics) == 1 else "score"
            label = family.summary_label if family.summary_task is not None else f"{family.label} {shots}-shot"
            lower = not any(higher_is_better(tasks[t].metric) for t in usable) if family_of_metric(unit) else False
            found.append(Measure(f"{family.name}@{shots}", f"{label} ({unit})", family.name, shots, usable, unit,
                                 lower_is_better=lower))
    grounded = [(task, info) for task, info in tasks.items()
                if all(GROUNDING_KIND in run_vocabularies(run, task, info.shots[0]) for run in runs)]
    for task, info in grounded:
        shots = info.shots[0]
        which = f"{task}, " if len(grounded) > 1 else ""
        found.append(Measure(f"grounding@{task}@{shots}", f"Colour grounding {shots}-shot ({which}%)",
                             info.family, shots, (task,), "precision %", grounding=True))
    return found


def _clusters(runs: list[Run], measure: Measure) -> tuple[dict[tuple[str, Hashable], Hashable], bool]:
    """(part, query) -> image for a measure's queries over ``runs``, and whether any query has one."""
    found: dict[tuple[str, Hashable], Hashable] = {}
    for run in runs:
        if run.final_step is None:
            continue
        for task in measure.tasks:
            for query, label in run.sample_clusters(run.final_step, task, measure.shots).items():
                if label is not None:
                    found[(task, query)] = label
    return found, bool(found)


def _mean(cells: list[list[SeedScores]]) -> float:
    from mmbench_cli.report.stats import seed_value

    values = [sum(seed_value(seed) for seed in seeds) / len(seeds) for seeds in cells if seeds]
    return sum(values) / len(values) if values else math.nan


def grid_findings(study: Study, claims: dict[str, str], level: float = 0.95) -> tuple[list[Finding], list[str]]:
    """The contrasts of one grid (a single-grid Study): per axis value against the base value, averaged over the
    other axes; for a grid of two axes, each interaction. Returns (findings, notes on what was left out)."""
    grid = study.grids[0] if study.grids else None
    if grid is None:
        return [], []
    label = str(grid.get("label", ""))
    axes = {name: values for name, values in study.axes.items() if name != SEED_AXIS and len(values) > 1}
    if not axes:
        return [], []
    notes = []
    failed = [run.name for run in study.runs if run.failed]
    if failed:
        notes.append(f"{label}: {len(failed)} failed cell(s) left out of its contrasts ({', '.join(failed)})")
    bases = {axis: grid.get("base_values", {}).get(axis, values[0]) for axis, values in axes.items()}
    bases = {axis: base if base in axes[axis] else axes[axis][0] for axis, base in bases.items()}
    groups = study.groups()
    cell_axes = {group: {a: runs[0].axes.get(a) for a in axes} for group, runs in groups.items()}
    rows: list[Finding] = []
    for measure in measures(study):
        seeds: dict[str, list[SeedScores]] = {}
        for group, runs in groups.items():
            found = [s for s in (_seed_scores(run, measure) for run in runs) if s is not None]
            if found:
                seeds[group] = found
        clusters, clustered = _clusters(study.runs, measure)
        pool = list(seeds.values())
        pooled = pooled_seed_variance(pool)

        def cell(values: dict[str, str], seeds: dict[str, list[SeedScores]] = seeds) -> list[SeedScores] | None:
            for group, known in cell_axes.items():
                if known == values and group in seeds:
                    return seeds[group]
            return None

        for axis, values in axes.items():
            others = [a for a in axes if a != axis]
            for value in values:
                if value == bases[axis]:
                    continue
                pairs = []
                for combo in product(*(axes[a] for a in others)):
                    rest = dict(zip(others, combo, strict=True))
                    high, low = cell({**rest, axis: value}), cell({**rest, axis: bases[axis]})
                    if high and low:
                        pairs.append((low, high))
                if not pairs:
                    continue
                weight = 1.0 / len(pairs)
                terms = [term for low, high in pairs for term in ((-weight, low), (weight, high))]
                result = linear_contrast(terms, clusters if clustered else None, level, seed_pool=pool,
                                         pooled_variance=pooled)
                detail = (f"averaged over {', '.join(others)} ({len(pairs)} pair(s) of cells)" if others
                          else "")
                rows.append(Finding(label, f"{axis} {value} vs {bases[axis]}", "main", axis, detail, measure,
                                    _mean([low for low, _ in pairs]), _mean([high for _, high in pairs]), result,
                                    len(pairs), clustered, claims.get(axis)))
        if len(axes) == 2:
            first, second = axes
            for a, b in product(axes[first], axes[second]):
                if a == bases[first] or b == bases[second]:
                    continue
                corners = {(x, y): cell({first: x, second: y}) for x in (a, bases[first]) for y in (b, bases[second])}
                if any(c is None for c in corners.values()):
                    continue
                terms = [(1.0, corners[(a, b)]), (-1.0, corners[(bases[first], b)]),
                         (-1.0, corners[(a, bases[second])]), (1.0, corners[(bases[first], bases[second])])]
                result = linear_contrast(terms, clusters if clustered else None, level,  # type: ignore[arg-type]
                                         seed_pool=pool, pooled_variance=pooled)
                at_value = _mean([corners[(a, b)]]) - _mean([corners[(bases[first], b)]])  # type: ignore[list-item]
                at_base = _mean([corners[(a, bases[second])]]) - _mean([corners[(bases[first], bases[second])]])  # type: ignore[list-item]
                detail = (f"does {first} {a} vs {bases[first]} change with {second}? "
                          f"Δ at {second}={b} minus Δ at {second}={bases[second]}")
                rows.append(Finding(label, f"{first} {a} vs {bases[first]} × {second} {b} vs {bases[second]}",
                                    "interaction", f"{first}×{second}", detail, measure, at_base, at_value, result, 1,
                                    clustered, None, simple_effects=(at_base, at_value),
                                    simple_labels=(f"{second}={bases[second]}", f"{second}={b}")))
    rows += _shot_findings(study, label, groups, claims)
    return rows, notes


def _shot_findings(study: Study, label: str, groups: dict[str, list[Run]], claims: dict[str, str]) -> list[Finding]:
    """Most shots against 0 shots per family (same queries: paired), averaged over every cell of the grid; each seed
    contributes its own per-query difference, so the seed noise is that of the few-shot gain."""
    found = []
    by_family: dict[str, list[Measure]] = {}
    for measure in measures(study):
        by_family.setdefault(measure.key.split("@")[0] if not measure.grounding else measure.key, []).append(measure)
    for family_measures in by_family.values():
        zero = next((m for m in family_measures if m.shots == "0"), None)
        most = max(family_measures, key=lambda m: int(m.shots))
        if zero is None or most is zero or set(zero.tasks) != set(most.tasks):
            continue
        cells: list[list[SeedScores]] = []
        base_cells: list[list[SeedScores]] = []
        top_cells: list[list[SeedScores]] = []
        for runs in groups.values():
            diffs, lows, highs = [], [], []
            for run in runs:
                low, high = _seed_scores(run, zero), _seed_scores(run, most)
                if low is None or high is None:
                    continue
                diffs.append({task: {q: high[task][q] - low[task][q] for q in high[task] if q in low[task]}
                              for task in high})
                lows.append(low)
                highs.append(high)
            if diffs:
                cells.append(diffs)
                base_cells.append(lows)
                top_cells.append(highs)
        if not cells:
            continue
        clusters, clustered = _clusters(study.runs, most)
        weight = 1.0 / len(cells)
        result = linear_contrast([(weight, diffs) for diffs in cells], clusters if clustered else None, seed_pool=cells)
        measure = Measure(f"{most.key}-vs-0", most.label.replace(f"{most.shots}-shot", f"{most.shots}- vs 0-shot"),
                          most.family, most.shots, most.tasks, most.unit, most.grounding)
        found.append(Finding(label, f"{SHOTS} {most.shots} vs 0", "shots", SHOTS,
                             f"the same queries at {most.shots} and 0 shots, averaged over all {len(cells)} cell(s)",
                             measure, _mean(base_cells), _mean(top_cells), result, len(cells), clustered,
                             claims.get(SHOTS, SHOTS_CLAIM)))
    return found


def study_findings(study: Study, alpha: float = 0.05, claims: dict[str, str] | None = None) -> Findings:
    """Every grid's findings, Holm-adjusted over the whole report, with verdicts and minimum detectable effects."""
    claims = axis_claims() if claims is None else claims
    parts = study.per_grid() if study.multi_grid else ([study] if study.grids else [])
    findings = Findings(alpha=alpha)
    for part in parts:
        rows, notes = grid_findings(part, claims)
        findings.rows += rows
        findings.skipped += notes
    adjusted = holm([row.result.p_value for row in findings.rows])
    for row, p_adjusted in zip(findings.rows, adjusted, strict=True):
        row.p_adjusted = p_adjusted
        row.verdict = verdict(p_adjusted, row.result.p_value, alpha)
        row.mde = row.result.mde(alpha)
    return findings
