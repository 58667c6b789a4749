"""MM1-style tables as pandas DataFrames: per-cell averages, per-task scores, per-axis effects, metadata.

Numbers come from each run's last evaluated checkpoint. A cell pools its training seeds (a ``seed`` grid
axis) into a mean with the seeds' spread; every number carries a 95% bootstrap interval from per-sample
scores (see ``stats.py``). What a table *shows* is rounded to what that interval supports
(``stats.decimals_for``; the CSVs keep every digit). Significance has one test, the Findings' seed-aware contrast:
a per-axis effect table bolds the better side of each contrast whose Findings verdict is *effect*; the per-cell
tables bold nothing (they are descriptions). A column with the same value in every row is left out of the display
and named in the table's note.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import pandas as pd

from mmbench_cli.config import read_yaml
from mmbench_cli.families import FAMILIES, Family, higher_is_better
from mmbench_cli.report.load import SEED_AXIS, Run, Study, TaskInfo, is_number, read_samples
from mmbench_cli.report.stats import (
    DEFAULT_RESAMPLES,
    Estimate,
    decimals_for,
    from_scores,
    mean_of,
)
from mmbench_cli.rundir import RunDir, read_json_file, retrieval_near_chance


class RepeatedCheckpoint(TypedDict):
    """A content hash shared by several checkpoints, and where (``points``: (run name, step) pairs)."""

    hash: str
    kind: str
    where: str
    points: list[tuple[str, int]]


@dataclass(frozen=True)
class Column:
    """One metric column: a task (or an MM1 family average) at a number of shots."""

    key: str
    label: str
    family: str
    shots: str | None
    task: str | None = None
    lower_is_better: bool = False


@dataclass
class Table:
    """A rendered table: pandas frames of numbers and of display text, plus which cells are best."""

    id: str
    title: str
    note: str
    values: pd.DataFrame
    text: pd.DataFrame
    ci: pd.DataFrame
    bold: pd.DataFrame
    index_names: list[str] = field(default_factory=list)
    seed_std: pd.DataFrame | None = None  # std over each cell's training seeds (NaN: fewer than two seeds)
    hidden: list[str] = field(default_factory=list)  # columns left out of the display: the same in every row

    @property
    def shown_columns(self) -> list[str]:
        """The columns the HTML and markdown tables show (constant ones are only named in the note)."""
        return [c for c in self.values.columns if c not in self.hidden]

    @property
    def display_note(self) -> str:
        """The note, plus which constant columns were left out and their value."""
        if not self.hidden:
            return self.note
        constant = "; ".join(f"{c} = {self.text.at[self.values.index[0], c]}" for c in self.hidden)
        return f"{self.note} Left out, the same in every row: {constant}."

    def rows(self) -> list[dict[str, Any]]:
        """Rows for templates: index labels, then (text, ci, bold) per shown column."""
        out = []
        for label in self.values.index:
            labels = list(label) if isinstance(label, tuple) else [label]
            cells = [
                {"text": self.text.at[label, c], "ci": self.ci.at[label, c], "bold": bool(self.bold.at[label, c])}
                for c in self.shown_columns
            ]
            out.append({"labels": [str(x) for x in labels], "cells": cells})
        return out


def fmt(value: float | None, decimals: int = 3) -> str:
    """A metric value with ``decimals`` decimals ('—' when missing; 4 significant digits from 1000 up)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = f"{value:.{decimals}f}" if abs(value) < 1000 else f"{value:.4g}"
    return text.lstrip("-") if float(text) == 0 else text  # no "-0"


def fmt_p(p: float | None) -> str:
    """A p-value with two significant digits ('<0.001' below that, '—' when missing)."""
    if p is None or math.isnan(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def task_estimate(run: Run, step: int, task: str, shots: str) -> Estimate | None:
    """One task's score at a checkpoint, with its per-sample scores (and images) for intervals and tests (made once
    per run: tables, findings and plots share it)."""
    cell = run.entry(step, task, shots)
    if cell is None:
        return None
    return run.memo(("task", step, task, shots), lambda: from_scores(
        cell.value, run.sample_scores(step, task, shots), run.sample_clusters(step, task, shots)))


def family_estimate(run: Run, step: int, family: str, shots: str, tasks: dict[str, TaskInfo]) -> Estimate | None:
    """MM1's average over a family's tasks (captioning avg, VQA avg, TextCore) at one shot count.

    The value is the results JSON's ``summary`` number when present (else the mean over tasks); the
    interval comes from the tasks' per-sample scores. Made once per run (``tasks`` must hold every task of the run).
    """
    return run.memo(("family", step, family, shots), lambda: _family_estimate(run, step, family, shots, tasks))


def _family_estimate(run: Run, step: int, family: str, shots: str, tasks: dict[str, TaskInfo]) -> Estimate | None:
    members = [m for t, info in tasks.items() if info.family == family and (m := task_estimate(run, step, t, shots))]
    # A group entry without samples (lm-eval's text:textcore) aggregates the others: leave it out when they have scores.
    scored = [m for m in members if m.parts]
    estimate = mean_of(scored or members)
    result, known = run.results.get(step), FAMILIES.get(family)
    summary = result.summary.get(shots, {}).get(known.summary_key) if result is not None and known else None
    if is_number(summary):
        if estimate is None:
            return Estimate(value=float(summary), seed_values=[float(summary)])
        estimate.value, estimate.seed_values = float(summary), [float(summary)]
    return estimate


def family_lower_is_better(family: Family) -> bool:
    """Whether a lower average is better for ``family`` (all its metrics are lower-is-better, like perplexity)."""
    return not any(higher_is_better(metric) for metric in family.metrics)


def summary_task_shots(study: Study, family: Family) -> str | None:
    """A family with a summary task (TextCore) is one column, at the fewest shots any of its tasks was run with
    or its summary recorded (0 in MM1)."""
    shots = {s for info in study.tasks().values() if info.family == family.name for s in info.shots}
    for run in study.runs:
        for result in run.results.values():
            shots |= {k for k, v in result.summary.items() if v.get(family.summary_key) is not None}
    return min(shots, key=int) if shots else None


def summary_columns(study: Study) -> list[Column]:
    """The MM1 table's columns, family by family (``mmbench_cli.families``): a family averaged over its tasks
    (captioning, VQA) gets one column per shot count, a family with a summary task (TextCore) one column."""
    tasks = study.tasks()
    columns = []
    for family in FAMILIES.values():
        lower = family_lower_is_better(family)
        if family.summary_task is not None:
            shots = summary_task_shots(study, family)
            if shots is not None:
                columns.append(Column(family.summary_key, family.summary_label, family.name, shots, lower_is_better=lower))
            continue
        counts = sorted({s for info in tasks.values() if info.family == family.name for s in info.shots}, key=int)
        for k in counts:
            columns.append(Column(f"{family.name}@{k}", f"{family.label} {k}-shot", family.name, k, lower_is_better=lower))
    return columns


def task_columns(study: Study) -> list[Column]:
    """One column per (task, shots), labelled with the task's metric."""
    columns = []
    for task, info in study.tasks().items():
        for k in info.shots:
            metric = f" ({info.metric})" if info.metric else ""
            columns.append(Column(f"{task}@{k}", f"{task} {k}-shot{metric}", info.family, k, task=task,
                                  lower_is_better=not higher_is_better(info.metric)))
    return columns


def run_estimate(run: Run, column: Column, tasks: dict[str, TaskInfo], step: int | None = None) -> Estimate | None:
    """A column's metric for one run at ``step`` (default: its last evaluated checkpoint)."""
    step = run.final_step if step is None else step
    if step is None or column.shots is None:
        return None
    if column.task is not None:
        return task_estimate(run, step, column.task, column.shots)
    return family_estimate(run, step, column.family, column.shots, tasks)


def cell_estimates(study: Study, columns: list[Column]) -> dict[str, dict[str, Estimate | None]]:
    """cell -> column key -> Estimate, pooling each cell's training seeds (once per study and columns)."""
    return study.memo(("cells", tuple(columns)), lambda: _cell_estimates(study, columns))


def _cell_estimates(study: Study, columns: list[Column]) -> dict[str, dict[str, Estimate | None]]:
    tasks = study.tasks()
    cells: dict[str, dict[str, Estimate | None]] = {}
    for group, runs in study.groups().items():
        cells[group] = {}
        for column in columns:
            per_seed = [e for e in (run_estimate(r, column, tasks) for r in runs) if e is not None]
            cells[group][column.key] = mean_of(per_seed, pool_seeds=True)
    return cells


def final_loss(run: Run) -> float | None:
    """The last logged training loss."""
    for record in reversed(run.metrics):
        if isinstance(record.get("loss"), (int, float)):
            return float(record["loss"])
    return None


def make_table(
    table_id: str,
    title: str,
    note: str,
    index: list[str],
    columns: list[Column],
    lookup: Callable[[str, Column], Estimate | None],
    index_names: list[str],
    resamples: int,
    bold_cells: set[tuple[str, str]] | None = None,
) -> Table:
    """A report table: one row per ``index`` entry, one column per ``columns``, each cell the ``lookup`` estimate
    (value ±seed std, 95% bootstrap CI, rounded to what the CI supports; constant columns hidden from the display).
    ``bold_cells``: (row, column key) pairs to show in bold, from the Findings (``findings.effect_marks``)."""
    labels = [c.label for c in columns]
    values = pd.DataFrame(index=pd.Index(index), columns=labels, dtype=float)
    text = pd.DataFrame(index=pd.Index(index), columns=labels, dtype=object)
    ci = pd.DataFrame(index=pd.Index(index), columns=labels, dtype=object)
    seed_std = pd.DataFrame(index=pd.Index(index), columns=labels, dtype=float)
    for row in index:
        for column in columns:
            estimate = lookup(row, column)
            values.at[row, column.label] = estimate.value if estimate else float("nan")
            interval = estimate.ci(resamples) if estimate else None
            decimals = _decimals(estimate, interval)
            shown = fmt(estimate.value, decimals) if estimate else "—"
            if estimate and estimate.seed_std is not None:
                spread = estimate.seed_std  # at least its first significant digit: "±0.4", not "±0"
                shown += f" ±{fmt(spread, max(decimals, decimals_for(spread)) if spread > 0 else 0)}"
                seed_std.at[row, column.label] = estimate.seed_std
            text.at[row, column.label] = shown
            ci.at[row, column.label] = f"[{fmt(interval[0], decimals)}, {fmt(interval[1], decimals)}]" if interval else ""
    bold = pd.DataFrame(False, index=values.index, columns=values.columns)
    for column in columns:
        for row in index:
            if (row, column.key) in (bold_cells or set()):
                bold.at[row, column.label] = True
    hidden = [c.label for c in columns if len(index) > 1 and text[c.label].nunique() == 1 and values[c.label].notna().all()
              and values[c.label].nunique() == 1]
    return Table(table_id, title, note, values, text, ci, bold, index_names, seed_std, hidden)


def _decimals(estimate: Estimate | None, interval: tuple[float, float] | None) -> int:
    """Decimals to show: from the CI's half-width (an exact value, whose CI has no width, with the decimals it has, up
    to 3), else from the seeds' standard error, else the decimals the value has (up to 3)."""
    if interval is not None and interval[1] - interval[0] <= 1e-12 and estimate is not None:
        return len(f"{estimate.value:.3f}".rstrip("0").partition(".")[2])
    if interval is not None:
        return decimals_for((interval[1] - interval[0]) / 2)
    if estimate is not None and estimate.seed_std is not None:
        return decimals_for(1.96 * estimate.seed_std / math.sqrt(len(estimate.seed_values)))
    if estimate is not None:  # nothing says how precise it is: the decimals it has, up to 3
        return len(f"{estimate.value:.3f}".rstrip("0").partition(".")[2])
    return 3


def csv_frame(table: Table) -> pd.DataFrame:
    """The table's numbers for a CSV file; where some cell pools several training seeds, each column
    ``<label>`` is followed by ``<label> seed_std`` (the std over the cell's seeds, empty with one seed)."""
    if table.seed_std is None or not table.seed_std.notna().any().any():
        return table.values.copy()
    frame = pd.DataFrame(index=table.values.index)
    for label in table.values.columns:
        frame[label] = table.values[label]
        frame[f"{label} seed_std"] = table.seed_std[label]
    return frame


def summary_table(study: Study, resamples: int = DEFAULT_RESAMPLES) -> Table:
    """MM1's table: per cell, captioning avg and VQA avg at each shot count, TextCore, final loss."""
    columns = summary_columns(study)
    cells = cell_estimates(study, columns)
    groups = study.groups()
    loss_column = Column("loss", "final loss", "loss", None, lower_is_better=True)

    def lookup(group: str, column: Column) -> Estimate | None:
        if column.key == "loss":
            losses = [x for x in (final_loss(r) for r in groups[group]) if x is not None]
            return mean_of([Estimate(value=x) for x in losses], pool_seeds=True)
        return cells[group][column.key]

    seeds = seed_note(study)
    note = "Last evaluated checkpoint of each cell; [95% bootstrap CI over queries]" + seeds + "; " + BOLD_NOTE
    return make_table("summary", "MM1-style summary", note, list(groups), [*columns, loss_column], lookup, ["cell"], resamples)


def recorded_level(study: Study, tasks: list[str], shots: str, key: str) -> float | None:
    """The mean of a level every results cell of ``tasks`` at ``shots`` records in its extras (``prior``, ``chance``)
    over the runs' last checkpoints, when every task records one (another eval version may not: then None)."""
    levels: dict[str, list[float]] = {}
    for run in study.runs:
        step = run.final_step
        for task in tasks:
            cell = run.entry(step, task, shots) if step is not None else None
            level = cell.extra.get(key) if cell is not None else None
            if is_number(level) and math.isfinite(level):
                levels.setdefault(task, []).append(float(level))
    if not tasks or any(task not in levels for task in tasks):
        return None
    return sum(sum(v) / len(v) for v in levels.values()) / len(levels)


def answer_prior(study: Study, tasks: list[str], shots: str) -> float | None:
    """The mean answer prior (``extra["prior"]``) of ``tasks`` at ``shots`` (``recorded_level``)."""
    return recorded_level(study, tasks, shots, "prior")


VQA_PRIOR = "every query answered with its question type's most common training answer"


def _prior_basis(study: Study, task: str, shots: str) -> str:
    """How a task's prior was made, as its cells say (``extra["prior_by"]``; VQA's cells predate the field)."""
    for run in study.runs:
        cell = run.entry(run.final_step, task, shots) if run.final_step is not None else None
        if cell is not None and isinstance(cell.extra.get("prior_by"), str):
            return cell.extra["prior_by"]
    return VQA_PRIOR


def chance_level(study: Study, tasks: list[str], shots: str) -> float | None:
    """The mean chance level of ``tasks`` on the reported scale (a uniform random answer's expected score): the
    results cells' ``extra["chance"]`` where recorded (``recorded_level``), else, for an lm-eval task scored by
    log-likelihood over several choices, 100 / choices per query, and 0 for one scored by a single greedy
    continuation (cloze); None when some task has neither."""
    levels = []
    for task in tasks:
        level = study.memo(("chance", task, shots), lambda task=task: _task_chance(study, task, shots))
        if level is None:
            return None
        levels.append(level)
    return sum(levels) / len(levels) if levels else None


def _task_chance(study: Study, task: str, shots: str) -> float | None:
    recorded = recorded_level(study, [task], shots, "chance")
    if recorded is not None:
        return recorded
    for run in study.runs:
        step = run.final_step
        cell = run.entry(step, task, shots) if step is not None else None
        if cell is None:
            continue
        records = read_samples(run, step, task, shots, 50)  # type: ignore[arg-type]
        if not records:  # a group entry (lm-eval's text:textcore) is the mean of its family's other tasks
            family = FAMILIES.get(cell.family or "")
            members = [t for t, info in study.tasks().items() if family is not None and task == family.summary_task
                       and info.family == family.name and t != task and shots in info.shots]
            return chance_level(study, members, shots) if members else None
        choices = [len(r["prediction"]) for r in records if isinstance(r.get("prediction"), list)
                   and r["prediction"] and all(isinstance(p, list) for p in r["prediction"])]
        if choices and len(choices) == len(records):
            return sum(0.0 if k == 1 else 100.0 / k for k in choices) / len(choices)
        return None
    return None


def prior_note(study: Study) -> str:
    """The note's "answer prior" and "chance" clauses: each task's prior (the score of answering without the image,
    as its task type defines it) and chance level, where the results record them ("" otherwise)."""
    priors: dict[str, list[str]] = {}
    chances = []
    for task, info in study.tasks().items():
        prior = answer_prior(study, [task], info.shots[0]) if info.shots else None
        if prior is not None:
            priors.setdefault(_prior_basis(study, task, info.shots[0]), []).append(f"{task} {prior:.1f}")
        chance = chance_level(study, [task], info.shots[0]) if info.shots else None
        if chance is not None:
            chances.append(f"{task} {chance:.1f}")
    note = "".join(f"; answer prior ({basis}, same metric): " + ", ".join(values) for basis, values in priors.items())
    return note + ("; chance (a uniform random answer): " + ", ".join(chances) if chances else "")


def task_table(study: Study, resamples: int = DEFAULT_RESAMPLES) -> Table:
    """Every task at every shot count, per cell."""
    columns = task_columns(study)
    cells = cell_estimates(study, columns)
    note = ("Per task and shots; [95% bootstrap CI over queries]" + seed_note(study) + prior_note(study) + "; "
            + BOLD_NOTE)
    return make_table(
        "tasks", "Per-task scores", note, list(cells), columns, lambda g, c: cells[g][c.key], ["cell"], resamples
    )


BOLD_NOTE = ("nothing is bold: which differences are real is tested once, in Findings (seed-aware, "
             "Holm-adjusted), and marked in the per-axis effect tables.")


def seed_note(study: Study) -> str:
    """The note's "±: std over training seeds" clause, when some cell pools several seeds ("" otherwise)."""
    if any(len(runs) > 1 for runs in study.groups().values()):
        return "; ±: std over training seeds"
    return ""


def axis_effects(study: Study, columns: list[Column]) -> dict[str, dict[str, dict[str, Estimate | None]]]:
    """axis -> axis value -> column key -> mean over the cells with that value (MM1's per-axis effect; once per study
    and columns, so the effect tables and bar charts share their intervals)."""
    return study.memo(("effects", tuple(columns)), lambda: _axis_effects(study, columns))


def _axis_effects(study: Study, columns: list[Column]) -> dict[str, dict[str, dict[str, Estimate | None]]]:
    cells = cell_estimates(study, columns)
    groups = study.groups()
    effects: dict[str, dict[str, dict[str, Estimate | None]]] = {}
    for axis, values in study.axes.items():
        if axis == SEED_AXIS:
            continue
        effects[axis] = {}
        for value in values:
            members = [g for g, runs in groups.items() if runs[0].axes.get(axis) == value]
            effects[axis][value] = {
                c.key: mean_of([e for e in (cells[g][c.key] for g in members) if e is not None]) for c in columns
            }
    return effects


EFFECT_BOLD_NOTE = ("bold: the better side of a contrast against the base value that Findings calls an effect "
                    "(seed-aware, Holm-adjusted; the same test as there, so nothing else is bold).")


def effect_tables(study: Study, resamples: int = DEFAULT_RESAMPLES,
                  marks: set[tuple[str, str, str, str]] | None = None) -> list[Table]:
    """One table per grid axis: the mean of each MM1 column over the cells sharing each axis value; ``marks`` (axis,
    value, family, shots) from ``findings.effect_marks`` say which cells are the better side of an effect."""
    columns = summary_columns(study)
    effects = axis_effects(study, columns)
    tables = []
    for axis, by_value in effects.items():
        bold = {(value, column.key) for value in by_value for column in columns
                if (axis, value, column.family, column.shots or "") in (marks or set())}
        tables.append(
            make_table(
                f"effect-{axis}",
                f"Effect of {axis}",
                f"Mean over the cells with each {axis} value; [95% bootstrap CI over queries]; {EFFECT_BOLD_NOTE}",
                list(by_value),
                columns,
                lambda v, c, by_value=by_value: by_value[v][c.key],
                [axis],
                resamples,
                bold,
            )
        )
    return tables


def repeated_checkpoints(study: Study) -> list[RepeatedCheckpoint]:
    """Checkpoints whose content hash repeats: within a run (training did not move the weights) or
    across runs after step 0 (two cells trained to the same weights)."""
    seen: dict[str, list[tuple[str, int]]] = {}
    for run in study.runs:
        hashes = {c.step: c.content_hash for c in run.checkpoints}
        for step, result in run.results.items():
            hashes.setdefault(step, result.checkpoint_hash)
        for step, digest in sorted(hashes.items()):
            if digest:
                seen.setdefault(str(digest), []).append((run.name, int(step)))
    flagged: list[RepeatedCheckpoint] = []
    for digest, where in seen.items():
        runs = {name for name, _ in where}
        within = len(runs) < len(where)
        across = len(runs) > 1 and any(step > 0 for _, step in where)
        if within or across:
            kind = "same run" if within and len(runs) == 1 else "across runs" if not within else "same run + across runs"
            places = ", ".join(f"{name} @ step {step}" for name, step in where)
            flagged.append(RepeatedCheckpoint(hash=digest, kind=kind, where=places, points=where))
    return flagged


def repeated_points(study: Study) -> set[tuple[str, int]]:
    """(run name, step) of every checkpoint flagged by ``repeated_checkpoints``."""
    return {point for row in repeated_checkpoints(study) for point in row["points"]}


def metadata_rows(study: Study) -> list[dict[str, str]]:
    """Reproducibility facts per run: seed, commit, versions, wall time, size, command, full config."""
    rows = []
    for run in study.runs:
        meta = run.meta
        versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
        wall = meta.get("wall_time_s")
        if wall is None and run.metrics:
            wall = run.metrics[-1].get("elapsed_s")
        command = meta.get("command")
        rows.append(
            {
                "run": run.name,
                "path": str(run.path),
                "status": (run.status or "—") + (f" (ablate: {run.state})" if run.state and run.state != run.status else ""),
                "seed": "—" if run.seed is None else str(run.seed),
                "eval_seeds": _eval_seeds(run),
                "commit": str(meta.get("git_commit") or "—"),
                "versions": ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "—",
                "wall_time": f"{float(wall):.1f} s" if isinstance(wall, (int, float)) else "—",
                "num_params": _count(meta.get("num_params")),
                "flops_per_step": _count(meta.get("flops_per_step")),
                "host": str(meta.get("host") or "—"),
                "created": str(meta.get("created") or "—"),
                "command": _portable_command(command),
                "steps": _steps(run),
                "config": run.config_text or json.dumps(run.config, indent=2),
            }
        )
    return rows


def _portable_command(command: object) -> str:
    """The recorded command, with a path into the package shown from ``mmbench_cli/`` on (the checkout it ran from,
    say a temporary clone, is machine-local and says nothing about the run)."""
    words = [str(word) for word in command] if isinstance(command, list) else str(command or "—").split(" ")
    return " ".join(word[word.index("mmbench_cli/"):] if word.startswith("/") and "mmbench_cli/" in word else word
                    for word in words)


METADATA_COLUMNS = {  # field -> heading, in table order
    "status": "status", "seed": "seed", "eval_seeds": "demo seeds", "commit": "commit", "wall_time": "wall time",
    "num_params": "params", "flops_per_step": "FLOPs/step", "steps": "evaluated steps", "versions": "versions",
    "host": "host",
}


def metadata_layout(rows: list[dict[str, str]]) -> tuple[dict[str, str], list[str]]:
    """(heading -> value of the facts every run shares, the fields that vary: the table's columns), so the run
    metadata table shows each shared fact once."""
    shared: dict[str, str] = {}
    varying: list[str] = []
    for key, heading in METADATA_COLUMNS.items():
        values = {row[key] for row in rows}
        if len(rows) > 1 and len(values) == 1:
            shared[heading] = values.pop()
        else:
            varying.append(key)
    return shared, varying


def unfinished_cells(study: Study) -> list[dict[str, str]]:
    """Grid cells mm ablate did not record as done (failed, running, never finished), with the error it recorded,
    the last training step logged and the last evaluated step."""
    rows = []
    for run in study.runs:
        if run.grid is None or run.state in (None, "done") and run.results:
            continue
        last = run.metrics[-1].get("step") if run.metrics else None
        rows.append({"cell": run.name, "state": run.state or "no ablate.json", "error": run.error or "—",
                     "trained": str(last) if last is not None else "—",
                     "evaluated": str(run.final_step) if run.final_step is not None else "—"})
    return rows


def _busy_seconds(spans: list[tuple[float, float]]) -> tuple[float, int]:
    """The length of the union of time spans (a grid resumed later does not count the pause) and the most spans
    that overlap at any moment (cells that ran at once)."""
    busy, end, most = 0.0, None, 0
    for start, stop in sorted(spans):
        if end is None or start > end:
            busy += stop - start
            end = stop
        elif stop > end:
            busy += stop - end
            end = stop
    events = sorted([(start, 1) for start, _ in spans] + [(stop, -1) for _, stop in spans])
    running = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return busy, most


def _total_minutes(records: list[dict[str, Any]], key: str) -> str:
    """``key`` (seconds) summed over ``records``, in minutes to one decimal."""
    return f"{sum(float(r.get(key) or 0) for r in records) / 60:.1f}"


def cost_rows(study: Study) -> list[dict[str, str]]:
    """What each grid cost, from its cells' ``ablate.json``: cells done, cell time summed (training, which counts
    any encoder pre-training the cell waited for, and evaluation), the wall time the grid was running (the union
    of its cells' spans) and the most cells that ran at once, with the torch threads per cell and the hosts."""
    rows = []
    grids: dict[str, list[Run]] = {}
    for run in study.runs:
        if run.grid is not None:
            grids.setdefault(run.grid, []).append(run)
    for grid, runs in grids.items():
        records = [run.cell_record for run in runs]
        timed = [r for r in records if is_number(r.get("wall_s")) and is_number(r.get("started"))
                 and is_number(r.get("finished"))]
        if not timed:
            continue
        busy, most = _busy_seconds([(float(r["started"]), float(r["finished"])) for r in timed])
        threads = sorted({str((run.config.get("train") or {}).get("cpu_threads", "—")) for run in runs
                          if isinstance(run.config.get("train"), dict)})
        hosts = sorted({str(run.meta["host"]) for run in runs if run.meta.get("host")})
        rows.append({"grid": grid, "cells": f"{sum(r.get('state') == 'done' for r in records)} / {len(runs)}",
                     "train": _total_minutes(timed, "train_s"), "eval": _total_minutes(timed, "eval_s"),
                     "cell_time": _total_minutes(timed, "wall_s"),
                     "wall": f"{busy / 60:.1f}", "at_once": str(most), "threads": ", ".join(threads) or "—",
                     "hosts": ", ".join(hosts) or "—"})
    return rows


ENCODER_COPIES = "encoders"  # <study dir>/encoders/<name>/: the copies a committed study keeps of its encoders


def _encoder_files(run: Run, name: str, recorded: Path) -> Path | None:
    """Where the encoder's ``encoder_eval.json`` is: a copy in ``encoders/<name>/`` next to the grid dirs (or
    next to a plain run dir) first, so a committed study reads the same files on every machine; else the cache
    dir the run recorded."""
    above = run.path.parent.parent if run.grid is not None else run.path.parent
    for folder in (above / ENCODER_COPIES / name, recorded):
        if RunDir(folder).encoder_eval_path.is_file():
            return folder
    return None


def encoder_quality(scores: dict[str, Any]) -> str:
    """An encoder's own held-out quality in words: CLIP image→text retrieval top-1 against chance, the
    bag-of-words R-precision, or the MAE reconstruction loss."""
    if is_number(scores.get("val_retrieval_top1")):
        chance = scores.get("val_retrieval_chance")
        chance_text = f"chance {100 * float(chance):.1f}%, " if is_number(chance) else ""
        flag = " — near chance: the encoder did not learn" if retrieval_near_chance(scores) else ""
        return (f"image→text retrieval top-1 {100 * float(scores['val_retrieval_top1']):.1f}% "
                f"({chance_text}{_count(scores.get('val_pairs'))} held-out pairs){flag}")
    if is_number(scores.get("val_bow_r_precision")):
        prior = scores.get("val_bow_r_precision_prior")
        prior_text = f"word-frequency prior {100 * float(prior):.1f}%, " if is_number(prior) else ""
        return (f"caption-word R-precision {100 * float(scores['val_bow_r_precision']):.1f}% "
                f"({prior_text}{_count(scores.get('val_images'))} held-out images)")
    if is_number(scores.get("val_mae_loss")):
        return (f"masked-patch reconstruction loss {float(scores['val_mae_loss']):.4f} "
                f"({_count(scores.get('val_images'))} held-out images)")
    return "—"


def near_chance_encoders(study: Study) -> dict[str, str]:
    """Run name -> the cache name of the pre-trained encoder it started from, for runs whose encoder's own held-out
    quality is near chance (``rundir.retrieval_near_chance``: it did not learn); made once per study."""
    return study.memo("near-chance-encoders", lambda: _near_chance_encoders(study))


def _near_chance_encoders(study: Study) -> dict[str, str]:
    found: dict[str, str] = {}
    verdicts: dict[str, bool] = {}
    for run in study.runs:
        source = run.pretrained_encoder
        if source is None:
            continue
        name = Path(source["dir"]).name
        if name not in verdicts:
            folder = _encoder_files(run, name, Path(source["dir"]))
            scores = read_json_file(RunDir(folder).encoder_eval_path, "encoder_eval.json") if folder else {}
            verdicts[name] = isinstance(scores, dict) and retrieval_near_chance(scores)
        if verdicts[name]:
            found[run.name] = name
    return found


def encoder_rows(study: Study) -> list[dict[str, str]]:
    """The pre-trained encoders the runs started from (``mm pretrain --stage encoder``, cached by content), one
    row each: objective, resolution, pre-training steps, its own held-out quality (``encoder_eval.json``) and
    which grids' runs used it. Empty when no run started from a pre-trained encoder."""
    used: dict[str, list[Run]] = {}
    recorded: dict[str, Path] = {}
    for run in study.runs:
        source = run.pretrained_encoder
        if source is not None:
            name = Path(source["dir"]).name
            used.setdefault(name, []).append(run)
            recorded.setdefault(name, Path(source["dir"]))
    rows = []
    for name, runs in sorted(used.items()):
        folder = next((f for f in (_encoder_files(run, name, recorded[name]) for run in runs) if f is not None), None)
        encoder_dir = RunDir(folder) if folder else None  # an encoder's cache dir is a run dir of its own
        scores = read_json_file(encoder_dir.encoder_eval_path, "encoder_eval.json") if encoder_dir else {}
        meta = encoder_dir.read_meta() if encoder_dir else {}
        config = read_yaml(encoder_dir.config_path) if encoder_dir and encoder_dir.config_path.is_file() else {}
        model, train = config.get("model"), config.get("train")
        model, train = model if isinstance(model, dict) else {}, train if isinstance(train, dict) else {}
        grids = sorted({run.grid or "runs" for run in runs})
        rows.append({
            "encoder": name, "architecture": str(model.get("encoder", "—")),
            "objective": str(meta.get("objective") or train.get("encoder_objective") or "—"),
            "resolution": f"{model['image_size']} px" if is_number(model.get("image_size")) else "—",
            "steps": _count(train.get("steps")),
            "quality": encoder_quality(scores if isinstance(scores, dict) else {}) if folder else
            "encoder_eval.json not found (neither in encoders/ next to the grids nor in the recorded cache dir)",
            "used_by": f"{len(runs)} run(s): {', '.join(grids)}",
        })
    return rows


def _steps(run: Run) -> str:
    steps = sorted(run.results)
    if len(steps) > 6:
        return f"{len(steps)} checkpoints, {steps[0]}–{steps[-1]}"
    return ", ".join(str(s) for s in steps) or "—"


def _eval_seeds(run: Run) -> str:
    step = run.final_step
    if step is None:
        return "—"
    counts = {len(cell.seeds) for by_shots in run.results[step].tasks.values() for cell in by_shots.values()}
    return ", ".join(str(c) for c in sorted(counts)) or "—"


def _count(value: object) -> str:
    if isinstance(value, dict):
        value = value.get("total", sum(v for v in value.values() if isinstance(v, (int, float))))
    if not isinstance(value, (int, float)):
        return "—"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:g}"


def example_outputs(study: Study, per_task: int = 2, max_cells: int = 8) -> list[dict[str, str]]:
    """A few model outputs per cell and task (final checkpoint, fewest shots), for eyeballing; a text task's
    log-likelihood predictions are described (which choice the model picked, the answer), not dumped."""
    examples = []
    tasks = study.tasks()
    for group, runs in list(study.groups().items())[:max_cells]:
        run = runs[0]
        step = run.final_step
        if step is None:
            continue
        for task, info in tasks.items():
            shots = info.shots[0]
            for record in read_samples(run, step, task, shots, per_task):
                prediction, references = describe_prediction(record)
                examples.append(
                    {
                        "cell": group,
                        "task": task,
                        "shots": shots,
                        "id": str(record.get("id", "")),
                        "prompt": _clip(str(record.get("prompt") or record.get("question") or ""), 200),
                        "prediction": _clip(prediction),
                        "references": _clip(references),
                        "score": fmt(record["score"], 1) if isinstance(record.get("score"), (int, float)) else "—",
                    }
                )
    return examples


def _loglikelihoods(prediction: object) -> list[tuple[float, bool]] | None:
    """lm-eval's per-choice ``[log-likelihood, is-greedy]`` pairs, or None when the prediction is not that."""
    if not isinstance(prediction, list) or not prediction:
        return None
    pairs = []
    for item in prediction:
        if isinstance(item, list) and item and isinstance(item[0], list):  # [[ll, greedy]] nested once more
            item = item[0]
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (int, float))):
            return None
        pairs.append((float(item[0]), bool(item[1])))
    return pairs


def describe_prediction(record: dict[str, Any]) -> tuple[str, str]:
    """(what the model answered, the reference) of a per-sample row, readable: a multiple-choice text task shows the
    choice the model ranks first and the gold choice (with their text when the row records ``choices``), a
    log-likelihood task whether the target is the model's greedy continuation."""
    references = record.get("references")
    refs = [str(r) for r in references] if isinstance(references, list) else ([str(references)] if references else [])
    choices = record.get("choices") if isinstance(record.get("choices"), list) else None
    options, chosen, gold = record.get("options"), record.get("chosen"), record.get("gold")
    if isinstance(options, list) and isinstance(chosen, int) and isinstance(gold, int):  # a multimodal choice task
        def option(index: int) -> str:
            return f"{chr(65 + index)}. {options[index]}" if 0 <= index < len(options) else str(index)

        listed = " | ".join(option(i) for i in range(len(options)))
        return f"chose {option(chosen)} (options: {listed})", f"answer: {option(gold)}"
    pairs = _loglikelihoods(record.get("prediction"))
    if pairs is None:
        distinct = list(dict.fromkeys(refs))  # VQA's ten annotators mostly agree: each answer once
        shown = distinct[:3] + (["…"] if len(distinct) > 3 else [])
        return str(record.get("prediction", "")), " | ".join(shown)
    if len(pairs) == 1:
        target = refs[0] if refs else "the target"
        greedy = "the model's greedy continuation" if pairs[0][1] else "not the model's greedy continuation"
        return f"{target!r} is {greedy} (log-likelihood {pairs[0][0]:.2f})", f"target {target!r}"

    def choice(index: int) -> str:
        text = f" {str(choices[index])!r}" if choices and 0 <= index < len(choices) else ""
        return f"choice {index + 1} of {len(pairs)}{text}"

    picked = max(range(len(pairs)), key=lambda i: pairs[i][0])
    gold = int(refs[0]) if refs and refs[0].strip().lstrip("-").isdigit() else None
    answer = choice(gold) if gold is not None else " | ".join(refs)
    return f"ranks {choice(picked)} first (log-likelihood {pairs[picked][0]:.2f})", f"answer: {answer}"


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
