"""Task families and their metrics: the one table that evaluation, ablation summaries and reports read.

A *family* groups tasks that MM1 averages together (captioning, VQA, multiple choice, yes/no, text); a *metric*
names how one task is scored. A prompted family's name is its task type's (``mmbench_cli/evaluate/task_types/``).
Results JSON cells record both names (``{"family": "vqa", "metric": "vqa_accuracy", ...}``), so a report never
needs to know a task to place it.

Adding a family is one ``Family`` row here plus, if it brings a new metric, one scorer function in
``mmbench_cli/evaluate/metrics.py`` named by the metric's ``scorer``, and its task type module
(docs/architecture.md lists the files a new task type touches).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """How one task is scored.

    ``scorer`` names a function in ``mmbench_cli.evaluate.metrics`` with the signature
    ``(ids, predictions, references) -> (corpus value, per-sample values)`` on the reported scale;
    None for metrics computed elsewhere (lm-evaluation-harness for text tasks).
    """

    name: str
    family: str
    scorer: str | None
    higher_is_better: bool = True
    scale: float = 1.0  # the factor from the underlying metric to the reported number (MM1: CIDEr x 100, % acc)
    unit: str = "points"  # what a difference is counted in, in prose ("CIDEr" for CIDEr, percentage points else)


@dataclass(frozen=True)
class Family:
    """A family of tasks averaged together in MM1's tables.

    ``summary_key`` is the per-shot average's key in a results JSON ``summary``; ``summary_task`` (when set)
    is a task whose own value is the summary (lm-eval's ``textcore`` group) instead of a mean over tasks.
    ``prompt`` names the task type (``mmbench_cli/evaluate/task_types/``) whose prompts, answers and scorer the
    family's tasks use; ``None`` for families that are not prompted with images (text tasks run through lm-eval).
    """

    name: str
    label: str
    summary_key: str
    summary_label: str
    metrics: tuple[str, ...]
    prompt: str | None
    max_new_tokens: int | None
    summary_task: str | None = None
    queries_are_images: bool = False  # one query per image (captioning): a query id is an image id


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("CIDEr", "caption", "cider", scale=100.0, unit="CIDEr"),
        Metric("vqa_accuracy", "vqa", "vqa_accuracy", scale=100.0),
        Metric("vizwiz_accuracy", "vqa", "vizwiz_accuracy", scale=100.0),
        Metric("mc_accuracy", "multiple_choice", "option_accuracy", scale=100.0),
        Metric("mc_accuracy_norm", "multiple_choice", "option_accuracy", scale=100.0),
        Metric("circular_accuracy", "multiple_choice", "circular_accuracy", scale=100.0),
        Metric("pope_accuracy", "yes_no", "pope_accuracy", scale=100.0),
        Metric("pope_f1", "yes_no", "pope_f1", scale=100.0),
        Metric("acc", "text", None, scale=100.0),
        Metric("acc_norm", "text", None, scale=100.0),
        Metric("exact_match", "text", None, scale=100.0),
        Metric("word_perplexity", "text", None, higher_is_better=False),
        Metric("perplexity", "text", None, higher_is_better=False),
    )
}

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("caption", "Caption", "caption_avg", "caption avg", ("CIDEr",), prompt="caption", max_new_tokens=20,
               queries_are_images=True),
        Family("vqa", "VQA", "vqa_avg", "VQA avg", ("vqa_accuracy", "vizwiz_accuracy"), prompt="vqa",
               max_new_tokens=5),
        Family("multiple_choice", "Multiple choice", "mc_avg", "MC avg",
               ("mc_accuracy", "mc_accuracy_norm", "circular_accuracy"), prompt="multiple_choice", max_new_tokens=1),
        Family("yes_no", "POPE", "pope_avg", "POPE avg", ("pope_accuracy", "pope_f1"), prompt="yes_no",
               max_new_tokens=3),
        Family("text", "TextCore", "textcore", "TextCore", ("acc", "acc_norm", "exact_match", "word_perplexity",
                                                              "perplexity"),
               prompt=None, max_new_tokens=None, summary_task="text:textcore"),
    )
}

# Families scored by few-shot prompting with images (the others run through lm-evaluation-harness).
PROMPTED_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.prompt is not None)
SUMMARY_KEYS = tuple(family.summary_key for family in FAMILIES.values())
TEXT_PREFIX = "text:"  # text tasks are named ``text:<lm-eval task or group>``
TEXT_FAMILY = "text"  # the family of the text tasks lm-evaluation-harness scores


def family_of_metric(metric: str | None) -> str | None:
    """The family a metric belongs to (None for a metric not in the table)."""
    found = METRICS.get(metric or "")
    return found.family if found else None


def unit_word(metric: str | None) -> str:
    """What a difference in ``metric`` is counted in, in prose (unknown metrics and mixed units: points)."""
    found = METRICS.get(metric or "")
    return found.unit if found else "points"


def queries_are_images(family: str | None) -> bool:
    """Whether a family's queries are images (captioning), so that a query id is an image id."""
    found = FAMILIES.get(family or "")
    return found.queries_are_images if found else False


def higher_is_better(metric: str | None) -> bool:
    """Whether a larger value of ``metric`` is better (unknown metrics: yes)."""
    found = METRICS.get(metric or "")
    return found.higher_is_better if found else True


def guess_family(task: str, metric: str | None) -> str:
    """The family of a result entry that does not record one: from its metric, else from the task's name."""
    known = family_of_metric(metric)
    if known:
        return known
    text = f"{task} {metric or ''}".lower()
    if "caption" in text or "cider" in text or "coco" in text:
        return "caption"
    if "vqa" in text or "ocr" in text:
        return "vqa"
    return "text"
