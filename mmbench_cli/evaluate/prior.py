"""Answer-prior baselines for VQA-family tasks: what a model scores without looking at the image.

For each question type, the most common answer in the task's training split; every query is answered with
its type's answer and scored with the task's own metric. A VQA number is only informative above this line
(VQAv2's own "prior (per q-type)" baseline, Antol et al. / Goyal et al.).

The question type is the one a dataset records (VQAv2's ``question_type``, kept in ``meta``), else the
question's first two words ("how many", "what color", "is there"), which is where VQAv2's types split too.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

from mmbench_cli.data.templates import majority_answer
from mmbench_cli.data.types import VQASample

PRIOR_BY = "question type (dataset's question_type, else the question's first two words)"


def question_type(sample: VQASample) -> str:
    """The question type of a VQA sample (see the module docstring)."""
    recorded = sample.meta.get("question_type") if isinstance(sample.meta, dict) else None
    if isinstance(recorded, str) and recorded.strip():
        return recorded.strip().lower()
    return " ".join(re.findall(r"[a-z0-9']+", sample.question.lower())[:2])


def prior_answers(train: Sequence[VQASample]) -> tuple[dict[str, str], str]:
    """(question type → most common majority answer, the most common answer overall) of a training split."""
    by_type: dict[str, Counter[str]] = {}
    overall: Counter[str] = Counter()
    for sample in train:
        answer = majority_answer(sample.answers)
        by_type.setdefault(question_type(sample), Counter())[answer] += 1
        overall[answer] += 1
    # ties broken by the answer text, so the prior does not depend on the order of the split
    def top(counts: Counter[str]) -> str:
        return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]

    return {kind: top(counts) for kind, counts in by_type.items()}, (top(overall) if overall else "")


def answer_prior(train: Sequence[VQASample], queries: Sequence[VQASample],
                 score: Callable[[list[str], list[str], list[list[str]]], tuple[float, list[float]]]) -> float | None:
    """The score (same scale as the task's) of answering each query with its type's prior answer; None when
    there is no training split to take priors from."""
    if not train or not queries:
        return None
    by_type, overall = prior_answers(train)
    predictions = [by_type.get(question_type(query), overall) for query in queries]
    value, _ = score([str(q.question_id) for q in queries], predictions, [list(q.answers) for q in queries])
    return value
