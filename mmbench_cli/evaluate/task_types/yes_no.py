"""Yes/no hallucination probes (POPE): ``<image>Question: Is there a {object} in the image? Short answer:``,
the generated answer parsed as POPE's ``evaluate.py`` does (``metrics.pope_answer``) and scored against the label.

The metric is ``pope_accuracy`` (per-sample: the parsed answer equals the label) or ``pope_f1`` (POPE's F1 with
*yes* the positive class); every cell records POPE's accuracy, precision, recall, F1 and yes ratio as extra
metrics. Answer prior: always the label most common in the demo split; chance: answering yes or no at random
(accuracy 50).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mmbench_cli.data import templates
from mmbench_cli.data.types import YesNoSample
from mmbench_cli.evaluate.task_types import Scorer, TaskType
from mmbench_cli.registry import TASK_TYPES

if TYPE_CHECKING:
    from mmbench_cli.data.synthetic import SyntheticWorld
    from mmbench_cli.evaluate.tasks import TaskSpec


class YesNoType(TaskType):
    """POPE-style object-presence questions answered yes or no."""

    name = "yes_no"
    sample_type = YesNoSample
    max_new_tokens = 3
    default_metric = "pope_accuracy"
    synthetic_kinds = ("pope",)
    prior_basis = "always the demo split's most common label"

    def synthetic_samples(self, world: SyntheticWorld, split: str, spec: TaskSpec) -> list[Any]:
        return world.pope(split, str(spec.options.get("negatives", "random")))

    def format_demo(self, sample: Any, spec: TaskSpec) -> str:
        return templates.vqa_demo(sample.question, sample.label)

    def format_query(self, sample: Any, spec: TaskSpec) -> str:
        return templates.vqa_prompt(sample.question)

    def prompt_fields(self, sample: Any, spec: TaskSpec) -> dict[str, str]:
        return {"question": sample.question.strip(), "answer": sample.label}

    def references(self, sample: Any, spec: TaskSpec) -> list[str]:
        return [sample.label]

    def record_fields(self, sample: Any) -> dict[str, Any]:
        fields = {"image_id": sample.image_id, "question": sample.question}
        if sample.meta.get("split"):
            fields["negatives"] = sample.meta["split"]
        return fields

    def has_extra_metrics(self, spec: TaskSpec, queries: Sequence[Any]) -> bool:
        return True

    def extra_metrics(self, spec: TaskSpec, records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
        """POPE's five numbers (percent) over the records."""
        from mmbench_cli.evaluate.metrics import pope_scores

        if not records:
            return {}
        return {"pope": pope_scores([str(r["prediction"]) for r in records],
                                    [str(r["references"][0]) for r in records])}

    def answer_prior(self, spec: TaskSpec, train: Sequence[Any], queries: Sequence[Any],
                     score: Scorer) -> float | None:
        """Always the demo split's most common label (``yes`` on a tie), scored as the task."""
        if not train or not queries:
            return None
        counts = Counter(sample.label for sample in train)
        answer = "yes" if counts["yes"] >= counts["no"] else "no"
        value, _ = score([self.sample_id(q) for q in queries], [answer] * len(queries),
                         [self.references(q, spec) for q in queries])
        return value

    def chance(self, spec: TaskSpec, queries: Sequence[Any]) -> float | None:
        """Answering yes or no with equal odds: accuracy 50; F1 2pr/(p+r) with recall 1/2 and precision the
        share of yes labels."""
        if not queries:
            return None
        if spec.metric != "pope_f1":
            return 50.0
        positive = sum(q.label == "yes" for q in queries) / len(queries)
        return 100.0 * (2 * positive * 0.5 / (positive + 0.5)) if positive else 0.0


TASK_TYPES.add(YesNoType.name, YesNoType())
