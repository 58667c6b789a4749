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
from mmbench_cli.families import FAMILIES, family_of_metric, higher_is_better, unit_word
from mmbench_cli.report.grounding import query_precisions, run_vocabularies
from mmbench_cli.report.load import SEED_AXIS, Run, Study
from mmbench_cli.report.stats import (
    DIRECTION,
    EFFECT,
    NO_EFFECT,
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
    contrast: str  # "resolution 64 − 32": the arms in the order of the difference
    kind: str  # "main", "interaction" or "shots"
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
    arms: tuple[str, str] = ("", "")  # (first, second) of the difference first − second, as the reader names them
    flags: list[str] = field(default_factory=list)  # what qualifies the row: encoder near chance, not converged, prior

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
    at_prior: dict[str | None, list[str]] = field(default_factory=dict)  # grid -> measures with every cell at its prior

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


def ordered_arms(axis: str, value: str, base: str) -> tuple[str, str]:
    """(first, second) of a contrast of ``value`` against ``base``, read as first − second: the larger number first on a
    numeric axis ("resolution 64 − 32", "tokens 16 − 4"), else the value against the base ("connector attnpool −
    c-abstractor"), so the sign reads the way the axis is named."""
    numbers = [_number(value), _number(base)]
    if numbers[0] is not None and numbers[1] is not None and numbers[0] < numbers[1]:
        return base, value
    return value, base


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass
class _CellChecks:
    """Per cell of one measure: its value and CI half-width at the last checkpoint, and its rise over the checkpoint
    before (None where fewer than two checkpoints were evaluated)."""

    value: float
    half: float
    rise: float | None


def _measure_value(run: Run, measure: Measure, step: int) -> float | None:
    """A run's value of ``measure`` at ``step`` from its results JSON (grounding: from its per-sample captions)."""
    values = []
    for task in measure.tasks:
        if measure.grounding:
            found = query_precisions(run, task, measure.shots, step).get(GROUNDING_KIND)
            value = sum(found[0].values()) / len(found[0]) if found and found[0] else None
        else:
            cell = run.entry(step, task, measure.shots)
            value = cell.value if cell is not None else None
        if value is None:
            return None
        values.append(value)
    return sum(values) / len(values) if values else None


def _cell_checks(runs: list[Run], seeds: list[SeedScores], measure: Measure,
                 clusters: dict[tuple[str, Hashable], Hashable] | None,
                 pooled: tuple[float, int] | None) -> _CellChecks:
    """A cell's final value with its CI (queries and the grid's seed noise) and how much it still improved over its
    last two evaluated checkpoints (mean over seeds; positive = better)."""
    result = linear_contrast([(1.0, seeds)], clusters, pooled_variance=pooled)
    rises = []
    for run in runs:
        steps = [step for step in sorted(run.results) if _measure_value(run, measure, step) is not None]
        if len(steps) < 2 or run.final_step not in steps[-1:]:
            continue
        last, before = _measure_value(run, measure, steps[-1]), _measure_value(run, measure, steps[-2])
        if last is not None and before is not None:
            rises.append((before - last) if measure.lower_is_better else (last - before))
    rise = sum(rises) / len(rises) if rises else None
    return _CellChecks(result.diff, (result.ci_high - result.ci_low) / 2, rise)


def _flags(measure: Measure, groups: list[str], checks: dict[str, _CellChecks], encoders: dict[str, list[str]],
           at_prior: bool) -> list[str]:
    """The flags of a row that involves the cells ``groups``."""
    flags = []
    weak = [group for group in groups if encoders.get(group)]
    if weak:
        flags.append(f"encoder near chance in {len(weak)} of {len(groups)} cells")
    rising = [(group, checks[group]) for group in groups if group in checks and checks[group].rise is not None
              and checks[group].rise > checks[group].half]  # type: ignore[operator]
    if rising:
        top = max(rising, key=lambda item: item[1].rise or 0.0)[1]
        digits = decimals_for(top.half)
        flags.append(f"not converged in {len(rising)} of {len(groups)} cells (last checkpoint up to "
                     f"+{top.rise:.{digits}f}, CI ±{top.half:.{digits}f})")
    if at_prior:
        flags.append("at the answer prior (not measured at this budget)")
    return flags


def grid_findings(study: Study, claims: dict[str, str], level: float = 0.95
                  ) -> tuple[list[Finding], list[str], list[str]]:
    """The contrasts of one grid (a single-grid Study): per axis value against the base value, averaged over the
    other axes; for a grid of two axes, each interaction. Returns (findings, notes on what was left out, the measures
    whose every cell sits within its CI of the answer prior)."""
    from mmbench_cli.report.tables import answer_prior, near_chance_encoders

    grid = study.grids[0] if study.grids else None
    if grid is None:
        return [], [], []
    label = str(grid.get("label", ""))
    axes = {name: values for name, values in study.axes.items() if name != SEED_AXIS and len(values) > 1}
    if not axes:
        return [], [], []
    notes = []
    failed = [run.name for run in study.runs if run.failed]
    if failed:
        notes.append(f"{label}: {len(failed)} failed cell(s) left out of its contrasts ({', '.join(failed)})")
    bases = {axis: grid.get("base_values", {}).get(axis, values[0]) for axis, values in axes.items()}
    bases = {axis: base if base in axes[axis] else axes[axis][0] for axis, base in bases.items()}
    groups = study.groups()
    cell_axes = {group: {a: runs[0].axes.get(a) for a in axes} for group, runs in groups.items()}
    weak = near_chance_encoders(study)
    encoders = {group: sorted({weak[run.name] for run in runs if run.name in weak}) for group, runs in groups.items()}
    rows: list[Finding] = []
    at_prior_measures: list[str] = []
    for measure in measures(study):
        seeds: dict[str, list[SeedScores]] = {}
        for group, runs in groups.items():
            found = [s for s in (_seed_scores(run, measure) for run in runs) if s is not None]
            if found:
                seeds[group] = found
        clusters, clustered = _clusters(study.runs, measure)
        pool = list(seeds.values())
        pooled = pooled_seed_variance(pool)
        checks = {group: _cell_checks(groups[group], cell_seeds, measure, clusters if clustered else None, pooled)
                  for group, cell_seeds in seeds.items()}
        prior = None if measure.grounding else answer_prior(study, list(measure.tasks), measure.shots)
        at_prior = prior is not None and bool(checks) and all(
            abs(check.value - prior) <= check.half for check in checks.values())
        if at_prior:
            at_prior_measures.append(measure.label)

        def cell(values: dict[str, str], seeds: dict[str, list[SeedScores]] = seeds) -> str | None:
            for group, known in cell_axes.items():
                if known == values and group in seeds:
                    return group
            return None

        def add(contrast: str, kind: str, axis: str, detail: str, terms: list[tuple[float, str]], first_mean: float,
                second_mean: float, pairs: int, arms: tuple[str, str], claim: str | None,
                simple: tuple[tuple[float, float], tuple[str, str]] | None = None,
                measure: Measure = measure, seeds: dict[str, list[SeedScores]] = seeds,
                clusters: dict[tuple[str, Hashable], Hashable] = clusters, clustered: bool = clustered,
                pool: list[list[SeedScores]] = pool, pooled: tuple[float, int] | None = pooled,
                checks: dict[str, _CellChecks] = checks, at_prior: bool = at_prior) -> None:
            result = linear_contrast([(coef, seeds[group]) for coef, group in terms], clusters if clustered else None,
                                     level, seed_pool=pool, pooled_variance=pooled)
            involved = list(dict.fromkeys(group for _, group in terms))
            rows.append(Finding(label, contrast, kind, axis, detail, measure, second_mean, first_mean, result, pairs,
                                clustered, claim, simple_effects=simple[0] if simple else None,
                                simple_labels=simple[1] if simple else None, arms=arms,
                                flags=_flags(measure, involved, checks, encoders, at_prior)))

        for axis, values in axes.items():
            others = [a for a in axes if a != axis]
            for value in values:
                if value == bases[axis]:
                    continue
                first, second = ordered_arms(axis, value, bases[axis])
                pairs = []
                for combo in product(*(axes[a] for a in others)):
                    rest = dict(zip(others, combo, strict=True))
                    high, low = cell({**rest, axis: first}), cell({**rest, axis: second})
                    if high and low:
                        pairs.append((low, high))
                if not pairs:
                    continue
                weight = 1.0 / len(pairs)
                terms = [term for low, high in pairs for term in ((-weight, low), (weight, high))]
                detail = (f"averaged over {', '.join(others)} ({len(pairs)} pair(s) of cells)" if others
                          else "")
                add(f"{axis} {first} − {second}", "main", axis, detail, terms,
                    _mean([seeds[high] for _, high in pairs]), _mean([seeds[low] for low, _ in pairs]), len(pairs),
                    (first, second), claims.get(axis))
        if len(axes) == 2:
            one, two = axes
            for a, b in product(axes[one], axes[two]):
                if a == bases[one] or b == bases[two]:
                    continue
                a1, a2 = ordered_arms(one, a, bases[one])
                b1, b2 = ordered_arms(two, b, bases[two])
                corners = {(x, y): cell({one: x, two: y}) for x in (a1, a2) for y in (b1, b2)}
                if any(c is None for c in corners.values()):
                    continue
                terms = [(1.0, corners[(a1, b1)]), (-1.0, corners[(a2, b1)]), (-1.0, corners[(a1, b2)]),
                         (1.0, corners[(a2, b2)])]
                at_first = _mean([seeds[corners[(a1, b1)]]]) - _mean([seeds[corners[(a2, b1)]]])  # type: ignore[index]
                at_second = _mean([seeds[corners[(a1, b2)]]]) - _mean([seeds[corners[(a2, b2)]]])  # type: ignore[index]
                detail = (f"does {one} {a1} − {a2} change with {two}? "
                          f"Δ at {two}={b1} minus Δ at {two}={b2}")
                add(f"({one} {a1} − {a2}) × ({two} {b1} − {b2})", "interaction", f"{one}×{two}", detail,
                    terms, at_first, at_second, 1, (f"{two}={b1}", f"{two}={b2}"), None,  # type: ignore[arg-type]
                    simple=((at_second, at_first), (f"{two}={b2}", f"{two}={b1}")))
    rows += _shot_findings(study, label, groups, claims, encoders, at_prior_measures)
    return rows, notes, at_prior_measures


def _shot_findings(study: Study, label: str, groups: dict[str, list[Run]], claims: dict[str, str],
                   encoders: dict[str, list[str]], at_prior: list[str]) -> list[Finding]:
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
        found.append(Finding(label, f"{SHOTS} {most.shots} − 0", "shots", SHOTS,
                             f"the same queries at {most.shots} and 0 shots, averaged over all {len(cells)} cell(s)",
                             measure, _mean(base_cells), _mean(top_cells), result, len(cells), clustered,
                             claims.get(SHOTS, SHOTS_CLAIM), arms=(most.shots, "0"),
                             flags=_flags(measure, list(groups), {}, encoders,
                                          zero.label in at_prior and most.label in at_prior)))
    return found


def study_findings(study: Study, alpha: float = 0.05, claims: dict[str, str] | None = None) -> Findings:
    """Every grid's findings, Holm-adjusted over the whole report, with verdicts and minimum detectable effects."""
    claims = axis_claims() if claims is None else claims
    parts = study.per_grid() if study.multi_grid else ([study] if study.grids else [])
    findings = Findings(alpha=alpha)
    for part in parts:
        rows, notes, at_prior = grid_findings(part, claims)
        findings.rows += rows
        findings.skipped += notes
        if at_prior:
            findings.at_prior[str(part.grids[0].get("label", "")) if part.grids else None] = at_prior
    adjusted = holm([row.result.p_value for row in findings.rows])
    for row, p_adjusted in zip(findings.rows, adjusted, strict=True):
        row.p_adjusted = p_adjusted
        row.verdict = verdict(p_adjusted, row.result.p_value, alpha)
        row.mde = row.result.mde(alpha)
    return findings


def _number_text(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text.lstrip("-") if float(text) == 0 else text.replace("-", "−")


def _unit(measure: Measure) -> str:
    if measure.grounding:
        return "points of colour precision"
    return unit_word(measure.unit)


def _where(measure: Measure) -> str:
    """The measure as a sentence ends: "on Caption 0-shot"."""
    return "on " + measure.label.split(" (")[0]


def summary_sentence(row: Finding) -> str:
    """One Findings row as a plain sentence in the reader's orientation: the better arm first, the difference positive
    (its CI flipped with it), the verdict, the seeds and queries behind it, and the row's flags."""
    result, decimals = row.result, row.decimals
    better_first = (result.diff >= 0) != row.measure.lower_is_better
    sign = 1.0 if result.diff >= 0 else -1.0  # the interval flips with the difference, so the number stays positive
    low, high = sorted((sign * result.ci_low, sign * result.ci_high))
    interval = f"[{_number_text(low, decimals)}, {_number_text(high, decimals)}]"
    amount = f"{_number_text(abs(result.diff), decimals)} {_unit(row.measure)} {interval}"
    winner, loser = row.arms if better_first else row.arms[::-1]
    if row.kind == "interaction":
        axis_text = row.contrast.split(" × ")[0].strip("()")
        text = (f"the {axis_text} difference is {'larger' if result.diff >= 0 else 'smaller'} at {row.arms[0]} than at "
                f"{row.arms[1]} by {amount} {_where(row.measure)}")
    elif row.kind == "shots":
        text = f"{winner}-shot prompts beat {loser}-shot by {amount} {_where(row.measure)}"
    else:
        text = f"{row.axis} {winner} beats {loser} by {amount} {_where(row.measure)}"
    seeds = f"{result.seeds} seed{'s' if result.seeds != 1 else ''}"
    facts = f"{row.verdict}, {seeds} × {result.n} queries"
    flags = f" [{'; '.join(row.flags)}]" if row.flags else ""
    return f"{text} — {facts}{flags}."


def summary_view(findings: Findings) -> dict[str, object]:
    """The Summary a report opens with: what is not measured at this budget (said once), then per grid one sentence
    per effect or direction (reader's orientation, flags attached) and one line for the rest with their MDEs."""
    top: list[str] = []
    if findings.at_prior:
        where = "; ".join(f"{grid + ': ' if grid else ''}{', '.join(label.split(' (')[0] for label in labels)}"
                          for grid, labels in findings.at_prior.items())
        top.append(f"Not measured at this budget — {where}: every cell is within its CI of the answer prior, so these "
                   "measures' contrasts compare noise; they are left out of the sentences below (their Findings rows "
                   "carry the flag).")
    grids = []
    for grid, rows in findings.by_grid().items():
        skipped = set(findings.at_prior.get(grid, []))
        told = [row for row in rows if row.verdict in (EFFECT, DIRECTION) and row.measure.label not in skipped
                and not (row.kind == "shots" and any("answer prior" in flag for flag in row.flags))]
        told.sort(key=lambda row: (row.verdict != EFFECT, -abs(row.result.diff / row.result.se) if row.result.se else 0))
        quiet = [row for row in rows if row.verdict == NO_EFFECT and row.measure.label not in skipped]
        by_measure: dict[str, list[float]] = {}
        for row in quiet:
            by_measure.setdefault(row.measure.label.split(" (")[0], []).append(row.mde)
        mdes = "; ".join(f"{label} MDE {_number_text(min(v), _mde_decimals(v))}–{_number_text(max(v), _mde_decimals(v))}"
                         if len(v) > 1 and round(min(v), _mde_decimals(v)) != round(max(v), _mde_decimals(v))
                         else f"{label} MDE {_number_text(v[0], _mde_decimals(v))}" for label, v in by_measure.items())
        which = f"the other {len(quiet)} rows" if told else f"all {len(quiet)} rows"
        none_line = f"No detectable effect in {which} ({mdes})." if quiet else ""
        grids.append({"grid": grid or "", "id": f"findings-{_anchor_text(grid or 'study')}",
                      "sentences": [summary_sentence(row) for row in told], "none": none_line})
    return {"top": top, "grids": grids}


def _mde_decimals(values: list[float]) -> int:
    return 1 if max(values) < 10 else 0


def _anchor_text(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:120]


def effect_marks(findings: Findings | None, grid: str | None) -> set[tuple[str, str, str, str]]:
    """(axis, value, family, shots) of the better side of every main contrast of ``grid`` that Findings calls an
    effect: what a per-axis effect table may bold (one test everywhere)."""
    marks: set[tuple[str, str, str, str]] = set()
    for row in findings.rows if findings is not None else []:
        if row.grid != grid or row.kind != "main" or row.verdict != EFFECT or row.measure.grounding:
            continue
        better_first = (row.result.diff >= 0) != row.measure.lower_is_better
        marks.add((row.axis, row.arms[0] if better_first else row.arms[1], row.measure.family, row.measure.shots))
    return marks


def measure_of(study: Study, family: str, shots: str, grounding: bool = False) -> Measure | None:
    """The Findings measure of ``family`` at ``shots`` (or the caption-grounding measure) of a one-grid study."""
    for measure in study.memo("measures", lambda: measures(study)):
        if (measure.grounding and grounding) or (not grounding and not measure.grounding
                                                 and measure.key == f"{family}@{shots}"):
            return measure
    return None


def seed_aware_interval(study: Study, measure: Measure, cells: list[list[Run]], level: float = 0.95
                        ) -> tuple[float, float, float] | None:
    """(value, low, high) of the plain mean over ``cells`` (each a cell's seed runs) of ``measure``, with the
    Findings' noise model: queries clustered by image, plus the study's pooled between-seed variance (so a plot's
    error bar is as wide as the seeds' spread says). None when no cell has per-sample scores."""
    def noise() -> tuple[dict[tuple[str, Hashable], Hashable] | None, tuple[float, int] | None]:
        pool = [[s for s in (_seed_scores(run, measure) for run in runs) if s is not None]
                for runs in study.groups().values()]
        clusters, clustered = _clusters(study.runs, measure)
        return (clusters if clustered else None), pooled_seed_variance([cell for cell in pool if cell])

    clusters, pooled = study.memo(("noise", measure.key), noise)
    seeds = [found for runs in cells if (found := [s for s in (_seed_scores(run, measure) for run in runs)
                                                   if s is not None])]
    if not seeds:
        return None
    result = linear_contrast([(1.0 / len(seeds), cell) for cell in seeds], clusters, level, pooled_variance=pooled)
    return result.diff, result.ci_low, result.ci_high
