"""VQA accuracy by answer type (yes/no, number, other), as the official VQAv2 evaluation reports it.

Computed from the per-sample files of each run's last evaluated checkpoint
(``eval/samples/step_<N>/<task>.<k>shot.seed<S>.jsonl``), so nothing is re-run. A query's answer type is the
row's ``answer_type`` when it has one, else VQAv2's rule applied to its most common reference answer:
``yes/no`` for yes or no, ``number`` for a number (digits, optionally with commas or a decimal point, or a
number word zero..twenty), else ``other``. The number for a type is the mean score of that type's queries
(demo seeds averaged per query id, training seeds of a cell pooled as in the other tables), with a 95%
bootstrap interval over those queries.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from mmbench_cli.report.load import Run, Study
from mmbench_cli.report.stats import DEFAULT_RESAMPLES, Estimate, from_scores, mean_of
from mmbench_cli.report.tables import BOLD_NOTE, Column, Table, make_table, seed_note

FAMILY = "vqa"  # answer types are VQAv2's notion: the table covers the VQA family's tasks (mmbench_cli.families)
TYPE_ORDER = ("yes/no", "number", "other")
NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split()
)
_NUMBER = re.compile(r"^[+-]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)$")
_YES_NO_SPELLINGS = {"yes/no", "yes_no", "yes-no", "yesno", "yes no"}


def _normalize(answer: object) -> str:
    return " ".join(str(answer).lower().split()).rstrip(".").strip()


def infer_answer_type(references: object) -> str:
    """VQAv2's answer type of a question from its reference answers (the most common one decides;
    a tie goes to the answer listed first)."""
    answers = [_normalize(r) for r in references] if isinstance(references, list) else []
    answers = [a for a in answers if a]
    if not answers:
        return "other"
    majority = Counter(answers).most_common(1)[0][0]
    if majority in ("yes", "no"):
        return "yes/no"
    if _NUMBER.match(majority) or majority in NUMBER_WORDS:
        return "number"
    return "other"


def answer_type(record: dict[str, Any]) -> str:
    """A per-sample row's answer type: its ``answer_type`` field if set, else inferred from ``references``."""
    given = record.get("answer_type")
    if isinstance(given, str) and given.strip():
        name = " ".join(given.lower().split())
        return "yes/no" if name in _YES_NO_SPELLINGS else name
    return infer_answer_type(record.get("references"))


def query_types(run: Run, step: int, task: str, shots: str) -> dict[str, str]:
    """Query id -> answer type (ids keyed as ``Run.sample_scores`` keys them; the first row of an id decides)."""
    types: dict[str, str] = {}
    for _, records in run.sample_records(step, task, shots):
        for number, record in enumerate(records, start=1):
            types.setdefault(str(record.get("id", number)), answer_type(record))
    return types


def type_estimates(run: Run, task: str, shots: str) -> dict[str, Estimate]:
    """Answer type -> the mean score of its queries at the run's last evaluated checkpoint ({} without samples)."""
    step = run.final_step
    if step is None:
        return {}
    scores = run.sample_scores(step, task, shots)
    if not scores:
        return {}
    types = query_types(run, step, task, shots)
    split: dict[str, dict[str, float]] = {}
    for query, score in scores.items():
        split.setdefault(types.get(query, "other"), {})[query] = score
    clusters = run.sample_clusters(step, task, shots)
    return {kind: from_scores(sum(part.values()) / len(part), part, clusters) for kind, part in split.items()}


def _type_key(kind: str) -> tuple[int, str]:
    return (TYPE_ORDER.index(kind), kind) if kind in TYPE_ORDER else (len(TYPE_ORDER), kind)


def _count_label(counts: list[int]) -> str:
    low, high = min(counts), max(counts)
    return f"n={low}" if low == high else f"n={low}–{high}"


def answer_type_table(study: Study, resamples: int = DEFAULT_RESAMPLES) -> Table | None:
    """Per cell, each VQA-family task's accuracy per answer type at its fewest and most shots.

    None when no VQA task has per-sample files, or when every VQA task's queries are all of one answer type
    (the table would only repeat the per-task scores).
    """
    groups = study.groups()
    per_run: dict[tuple[str, str], dict[str, dict[str, Estimate]]] = {}  # (task, shots) -> run name -> type -> est
    split_tasks = set()
    for task, info in study.tasks().items():
        if info.family != FAMILY:
            continue
        for shots in dict.fromkeys([info.shots[0], info.shots[-1]]):
            found = {run.name: est for run in study.runs if (est := type_estimates(run, task, shots))}
            if found:
                per_run[(task, shots)] = found
                if len({kind for by_type in found.values() for kind in by_type}) > 1:
                    split_tasks.add(task)
    if not split_tasks:
        return None

    columns: list[Column] = []
    lookups: dict[str, tuple[str, str, str]] = {}
    for (task, shots), found in per_run.items():
        for kind in sorted({k for by_type in found.values() for k in by_type}, key=_type_key):
            counts = [by_type[kind].n for by_type in found.values() if kind in by_type]
            column = Column(f"{task}@{shots}@{kind}", f"{task} {shots}-shot {kind} ({_count_label(counts)})", FAMILY,
                            shots, task=task)
            columns.append(column)
            lookups[column.key] = (task, shots, kind)

    def lookup(group: str, column: Column) -> Estimate | None:
        task, shots, kind = lookups[column.key]
        found = per_run[(task, shots)]
        per_seed = [found[run.name][kind] for run in groups[group] if kind in found.get(run.name, {})]
        return mean_of(per_seed, pool_seeds=True)

    note = (
        "Mean score of each VQA task's queries per answer type (the row's answer_type, else VQAv2's rule on the most "
        "common reference answer: yes/no, number, other) at each cell's last evaluated checkpoint, at the task's fewest "
        "and most shots; n: queries of that type; [95% bootstrap CI over queries]" + seed_note(study)
        + "; " + BOLD_NOTE
    )
    return make_table("answer-types", "VQA accuracy by answer type", note, list(groups), columns, lookup, ["cell"],
                       resamples)
