"""Scoring shared by ``mm eval`` and ``mm eval --predictions``: the task type's scorer on the reported scale, and
extra metrics averaged over demo seeds. What differs between tasks lives in the task types."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmbench_cli.evaluate.tasks import TaskSpec


def score_predictions(spec: TaskSpec, ids: Sequence[str], predictions: Sequence[str],
                      references: Sequence[Sequence[str]], vqa_normalize: str = "official") -> tuple[float, list[float]]:
    """(corpus score, per-sample scores) with the task's metric, on its reported scale (families.METRICS).

    ``vqa_normalize`` (``eval.vqa_normalize``) is passed to the scorers that normalise VQA answers.
    """
    return spec.task_type.score(spec, ids, predictions, references, vqa_normalize)


def sample_id(sample: Any) -> str:
    """The id a per-sample record carries: the question id of a question, else the image id."""
    return str(getattr(sample, "question_id", None) or sample.image_id)


def mean_extra_metrics(per_seed: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """The mean over demo seeds of each extra metric (those every seed has)."""
    if not per_seed:
        return {}
    merged: dict[str, dict[str, float]] = {}
    for group in per_seed[0]:
        if all(group in seed for seed in per_seed):
            names = [n for n in per_seed[0][group] if all(n in seed[group] for seed in per_seed)]
            merged[group] = {n: sum(seed[group][n] for seed in per_seed) / len(per_seed) for n in names}
    return merged
