"""Open-ended VQA: ``<image>Question: {q} Short answer: {a}<|endofchunk|>`` prompts, short generated answers
scored with the task's VQA metric (VQAv2's accuracy, or VizWiz's).

Answer prior: each question type's most common training answer (``evaluate/prior.py``). Extra metric: VizWiz's
answerability (average precision and F1), when every query has an ``answerable`` label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mmbench_cli.data import templates
from mmbench_cli.data.types import VQASample
from mmbench_cli.evaluate.task_types import Scorer, TaskType
from mmbench_cli.registry import TASK_TYPES

if TYPE_CHECKING:
    from mmbench_cli.data.synthetic import SyntheticWorld
    from mmbench_cli.evaluate.tasks import TaskSpec

NORMALIZED_METRIC = "vqa_accuracy"  # the metric whose answers eval.vqa_normalize changes
ANSWERABILITY_METRIC = "vizwiz_accuracy"  # the metric whose tasks label answerability (VizWiz)


class VQAType(TaskType):
    """Few-shot open-ended VQA, as open_flamingo's VQAv2 / OK-VQA / TextVQA / VizWiz evaluation."""

    name = "vqa"
    sample_type = VQASample
    dataset_kind = "vqa"
    max_new_tokens = 5
    default_metric = "vqa_accuracy"
    synthetic_kinds = ("vqa", "ocr")

    def synthetic_samples(self, world: SyntheticWorld, split: str, spec: TaskSpec) -> list[Any]:
        return world.vqa(split, spec.synthetic_kind or "vqa")

    def format_demo(self, sample: Any, spec: TaskSpec) -> str:
        return templates.vqa_demo(sample.question, templates.majority_answer(sample.answers))

    def format_query(self, sample: Any, spec: TaskSpec) -> str:
        return templates.vqa_prompt(sample.question)

    def prompt_fields(self, sample: Any, spec: TaskSpec) -> dict[str, str]:
        return {"question": sample.question.strip(), "answer": templates.majority_answer(sample.answers).strip()}

    def references(self, sample: Any, spec: TaskSpec) -> list[str]:
        return list(sample.answers)

    def record_fields(self, sample: Any) -> dict[str, Any]:
        fields = {key: sample.meta[key] for key in ("answerable",) if sample.meta.get(key) is not None}
        return {**fields, "question": sample.question}

    def normalization(self, spec: TaskSpec, vqa_normalize: str) -> str | None:
        from mmbench_cli.families import METRICS

        metric = METRICS.get(spec.metric)
        return vqa_normalize if metric is not None and metric.scorer == NORMALIZED_METRIC else None

    def has_extra_metrics(self, spec: TaskSpec, queries: Sequence[Any]) -> bool:
        return spec.metric == ANSWERABILITY_METRIC

    def extra_metrics(self, spec: TaskSpec, records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
        """VizWiz's answerability (x100), from each record's ``predicted_answerable`` (else 0 if it answered
        "unanswerable"), when every record has an ``answerable`` label."""
        from mmbench_cli.evaluate import metrics

        if not records or spec.metric != ANSWERABILITY_METRIC or any(r.get("answerable") is None for r in records):
            return {}
        predicted = [float(r["predicted_answerable"]) if r.get("predicted_answerable") is not None
                     else metrics.predicted_answerable(str(r["prediction"])) for r in records]
        scores = metrics.vizwiz_answerability([int(r["answerable"]) for r in records], predicted)
        return {"answerability": {name: 100.0 * value for name, value in scores.items()}} if scores else {}

    def answer_prior(self, spec: TaskSpec, train: Sequence[Any], queries: Sequence[Any],
                     score: Scorer) -> float | None:
        from mmbench_cli.evaluate.prior import answer_prior

        return answer_prior(list(train), list(queries), score)


TASK_TYPES.add(VQAType.name, VQAType())
