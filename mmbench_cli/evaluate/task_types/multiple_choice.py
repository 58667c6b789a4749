"""Multiple choice (ScienceQA-IMG, MMBench, SEED-Bench, MMMU, the synthetic world's shape questions), scored as
lm-evaluation-harness's ``multiple_choice`` output type: the log-likelihood of each option given the prompt.

Prompt: the images (or MMMU's ``<image N>`` slots where the question places them), the hint, the question, the
lettered options, then ``Short answer:``; a demo ends with its right option. The continuations compared are the
option texts (``choices: text``, the default: what a model trained on short answers says) or the letters
(``choices: letter``; always for a question whose options hold images). The metric is ``mc_accuracy`` (lm-eval's
``acc``), ``mc_accuracy_norm`` (``acc_norm``: log-likelihood per character) or ``circular_accuracy`` (MMBench's
CircularEval over the rotations the layout made); every cell also records acc and acc_norm (and the circular
accuracy when there are rotations) as extra metrics.

Answer prior: always answering the option position most often right in the demo split, scored the same way;
chance: one over the number of options.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mmbench_cli.data import templates
from mmbench_cli.data.types import MultipleChoiceSample
from mmbench_cli.errors import MMError
from mmbench_cli.evaluate.task_types import MULTIPLE_CHOICE, Scorer, TaskType
from mmbench_cli.registry import TASK_TYPES

if TYPE_CHECKING:
    from mmbench_cli.data.synthetic import SyntheticWorld
    from mmbench_cli.data.types import ImageRef
    from mmbench_cli.evaluate.tasks import TaskSpec

LETTERS = "ABCDEFGHIJ"
CHOICE_STYLES = ("text", "letter")
CIRCULAR_METRIC = "circular_accuracy"  # MMBench's CircularEval: every rotation of a question must be right
NORMALIZED_METRIC = "mc_accuracy_norm"  # the metric that picks the option by log-likelihood per character
ROTATION = re.compile(r"#r\d+$")  # a CircularEval rotation's suffix on its question id


def rotation_id(question_id: str, rotation: int) -> str:
    """The record id of one CircularEval rotation (the question id itself for the original order)."""
    return f"{question_id}#r{rotation}" if rotation else str(question_id)


def question_of(record_id: str) -> str:
    """The question a record id belongs to (its rotation suffix dropped)."""
    return ROTATION.sub("", record_id)


class MultipleChoiceType(TaskType):
    """Multiple choice by the log-likelihood of each option (lm-eval's ``multiple_choice``)."""

    name = "multiple_choice"
    sample_type = MultipleChoiceSample
    output_type = MULTIPLE_CHOICE
    max_new_tokens = 1
    default_metric = "mc_accuracy"
    synthetic_kinds = ("shape_choice",)
    prior_basis = "always the option position most often right in the demo split"

    def synthetic_samples(self, world: SyntheticWorld, split: str, spec: TaskSpec) -> list[Any]:
        return world.multiple_choice(split)

    def expand_queries(self, queries: Sequence[Any], spec: TaskSpec) -> list[Any]:
        """With CircularEval (``metric: circular_accuracy`` or ``options: {circular: true}``), every question
        followed by its rotations: options shifted by 1..k-1 places (ABCD, BCDA, CDAB, DABC), the answer with them."""
        if not (spec.metric == CIRCULAR_METRIC or spec.options.get("circular")):
            return list(queries)
        expanded = []
        for sample in queries:
            count = len(sample.options)
            expanded += [replace(sample, options=sample.options[shift:] + sample.options[:shift],
                                 answer=(sample.answer - shift) % count, rotation=shift, meta=dict(sample.meta))
                         for shift in range(count)]
        return expanded

    # ---- prompts
    def _body(self, sample: MultipleChoiceSample) -> str:
        prefix = "" if templates.IMAGE_TOKEN in self._text(sample) else templates.IMAGE_TOKEN * len(sample.images)
        hint = f"Hint: {sample.hint.strip()} " if sample.hint.strip() else ""
        options = " ".join(f"{LETTERS[i]}. {option.strip()}" for i, option in enumerate(sample.options))
        return f"{prefix}{hint}Question: {sample.question.strip()} Options: {options} Short answer:"

    @staticmethod
    def _text(sample: MultipleChoiceSample) -> str:
        return sample.question + " ".join(sample.options)

    def prompt_fields(self, sample: Any, spec: TaskSpec) -> dict[str, str]:
        """The question, hint, lettered options and (for demos) the right option's continuation, stripped."""
        options = " ".join(f"{LETTERS[i]}. {option.strip()}" for i, option in enumerate(sample.options))
        return {"question": sample.question.strip(), "hint": sample.hint.strip(), "options": options,
                "answer": self.choices(sample, spec)[sample.answer].strip()}

    def format_demo(self, sample: Any, spec: TaskSpec) -> str:
        return self._body(sample) + self.choices(sample, spec)[sample.answer] + templates.EOC_TOKEN

    def format_query(self, sample: Any, spec: TaskSpec) -> str:
        return self._body(sample)

    def images(self, sample: Any) -> list[ImageRef]:
        return list(sample.images)

    # ---- answers
    def choices(self, sample: Any, spec: TaskSpec) -> list[str]:
        """`` <option text>`` per option, or `` <letter>`` (``choices: letter``, or options holding images)."""
        style = spec.options.get("choices", "text")
        if style == "letter" or any(templates.IMAGE_TOKEN in option for option in sample.options):
            return [f" {LETTERS[i]}" for i in range(len(sample.options))]
        return [f" {option.strip()}" for option in sample.options]

    def read_answer(self, sample: Any, text: str, spec: TaskSpec) -> str:
        """A letter ("B", "B.", "(B)") or an option's text, as the option's continuation; anything else as given."""
        choices = [choice.strip() for choice in self.choices(sample, spec)]
        letter = re.fullmatch(r"\(?([A-J])[.)]?", text.strip())
        if letter and LETTERS.index(letter.group(1)) < len(choices):
            return choices[LETTERS.index(letter.group(1))]
        by_text = {option.strip().lower(): choices[i] for i, option in enumerate(sample.options)}
        return by_text.get(text.strip().lower(), text)

    def choose(self, sample: Any, spec: TaskSpec, loglikelihoods: list[float]) -> tuple[str, dict[str, Any]]:
        from mmbench_cli.evaluate.metrics import chosen_options

        choices = self.choices(sample, spec)
        picked, picked_norm = chosen_options(loglikelihoods, choices)
        chosen = picked_norm if spec.metric == NORMALIZED_METRIC else picked
        return choices[chosen].strip(), {"options": list(sample.options), "choices": choices,
                                         "loglikelihoods": loglikelihoods, "chosen": chosen, "gold": sample.answer}

    def references(self, sample: Any, spec: TaskSpec) -> list[str]:
        """The right option's continuation (what ``choose`` returns when it picks it)."""
        if not 0 <= sample.answer < len(sample.options):
            raise MMError(f"task {spec.name}: question {sample.question_id} has answer {sample.answer} but "
                          f"{len(sample.options)} options")
        return [self.choices(sample, spec)[sample.answer].strip()]

    def sample_id(self, sample: Any) -> str:
        return rotation_id(sample.question_id, sample.rotation)

    def record_fields(self, sample: Any) -> dict[str, Any]:
        return {"image_id": sample.image_id, "question": sample.question}

    # ---- scores
    def has_extra_metrics(self, spec: TaskSpec, queries: Sequence[Any]) -> bool:
        return True

    def extra_metrics(self, spec: TaskSpec, records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
        """lm-eval's acc and acc_norm (and CircularEval's accuracy when the records hold rotations), in percent."""
        from mmbench_cli.evaluate.metrics import circular_accuracy, multiple_choice_scores

        scored = [r for r in records if isinstance(r.get("loglikelihoods"), list) and "gold" in r]
        if not scored or len(scored) != len(records):
            return {}
        scores = multiple_choice_scores([r["loglikelihoods"] for r in scored], [int(r["gold"]) for r in scored],
                                        [r["choices"] for r in scored])
        ids = [str(r["id"]) for r in scored]
        if any(ROTATION.search(i) for i in ids):
            scores["circular"] = circular_accuracy([question_of(i) for i in ids],
                                                   [int(r["chosen"]) == int(r["gold"]) for r in scored])
        return {"multiple_choice": scores}

    def answer_prior(self, spec: TaskSpec, train: Sequence[Any], queries: Sequence[Any],
                     score: Scorer) -> float | None:
        """Always the option position most often right in the demo split (the first on ties), scored as the task."""
        if not train or not queries:
            return None
        counts = Counter(sample.answer for sample in train)
        position = min(counts, key=lambda index: (-counts[index], index))
        predictions = [self.choices(q, spec)[position].strip() if position < len(q.options) else "" for q in queries]
        value, _ = score([self.sample_id(q) for q in queries], predictions,
                         [self.references(q, spec) for q in queries])
        return value

    def chance(self, spec: TaskSpec, queries: Sequence[Any]) -> float | None:
        """100 / k averaged over the queries (k: a query's number of options)."""
        return 100.0 * sum(1 / len(q.options) for q in queries) / len(queries) if queries else None


MULTIPLE_CHOICE_TYPE = MultipleChoiceType()
TASK_TYPES.add(MultipleChoiceType.name, MULTIPLE_CHOICE_TYPE)
