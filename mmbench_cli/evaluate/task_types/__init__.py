"""Task types: what a kind of task asks of the model and how its answers are scored (registry ``TASK_TYPES``).

A task (a YAML file, ``mmbench_cli/resources/tasks/``) names its type; the type owns everything that differs
between kinds of tasks, so the runner is one generic loop over (checkpoint, task, shots, seed) cells:

- its sample type (``mmbench_cli.data.types``) and the synthetic world's samples for it;
- its 0-shot and k-shot prompt formats (interleaved images) and the answer post-processing;
- its output type, as lm-evaluation-harness: ``generate_until`` (generate, then clean and score the text) or
  ``multiple_choice`` (the log-likelihood of each choice given the prompt; the most likely one is the answer);
- its references, scorer and extra metrics, its answer prior and its chance level;
- what a results cell carries for the report (``result_metadata``: priors, chance, vocabularies).

Adding a task type is one module here (a ``TaskType`` subclass registered with ``@TASK_TYPES.register``), its
name in ``registry.TASK_TYPES``'s module list, and a ``Family`` row in ``families.py`` (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mmbench_cli.errors import MMError
from mmbench_cli.registry import TASK_TYPES

if TYPE_CHECKING:
    from mmbench_cli.data.synthetic import SyntheticWorld
    from mmbench_cli.data.types import ImageRef
    from mmbench_cli.evaluate.tasks import TaskSpec

GENERATE = "generate_until"
# the placeholders a task file's prompt templates may use: {image} (the sample's image markers), {eoc} (end of a
# demo), and the sample's own fields
PROMPT_FIELDS = ("image", "eoc", "question", "answer", "options", "hint", "caption")
MULTIPLE_CHOICE = "multiple_choice"
Scorer = Callable[[list[str], list[str], list[list[str]]], tuple[float, list[float]]]


class TaskType:
    """The behaviour of one kind of task. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = ""
    sample_type: ClassVar[type] = object
    output_type: ClassVar[str] = GENERATE
    dataset_kind: ClassVar[str | None] = None  # the DatasetSpec ``kind`` its file loaders are asked for
    max_new_tokens: ClassVar[int] = 16
    default_metric: ClassVar[str] = ""
    synthetic_kinds: ClassVar[tuple[str, ...]] = ()  # the synthetic world's splits of this type
    prior_basis: ClassVar[str | None] = None  # how the answer prior is made, in the report's words (cells: prior_by)

    # ---- data
    def synthetic_samples(self, world: SyntheticWorld, split: str, spec: TaskSpec) -> list[Any]:
        """The synthetic world's samples of ``split`` for a task of this type."""
        raise MMError(f"task {spec.name}: task type {self.name} has no synthetic split")

    def expand_queries(self, queries: Sequence[Any], spec: TaskSpec) -> list[Any]:
        """The queries a cell asks, from the task's query set (e.g. CircularEval's rotations of each question)."""
        return list(queries)

    def accepts(self, sample: Any) -> bool:
        """Whether a loaded sample belongs to a task of this type."""
        return isinstance(sample, self.sample_type)

    # ---- prompts
    def format_demo(self, sample: Any, spec: TaskSpec) -> str:
        """A solved example as it appears before the query (with its ``<image>`` markers)."""
        raise NotImplementedError

    def format_query(self, sample: Any, spec: TaskSpec) -> str:
        """The query prompt, the answer left open."""
        raise NotImplementedError

    def images(self, sample: Any) -> list[ImageRef]:
        """The images of a sample in the order its ``<image>`` markers appear."""
        return [sample.image]

    def prompt_fields(self, sample: Any, spec: TaskSpec) -> dict[str, str]:
        """What a task file's prompt template may name besides ``{image}`` and ``{eoc}`` (``PROMPT_FIELDS``)."""
        return {"question": str(getattr(sample, "question", "")), "answer": ""}

    def _templated(self, role: str, sample: Any, spec: TaskSpec) -> str:
        """The task file's ``prompt.<role>`` template filled for ``sample``, else the type's own format."""
        template = spec.prompt.get(role)
        if template is None:
            return self.format_demo(sample, spec) if role == "demo" else self.format_query(sample, spec)
        from mmbench_cli.data.templates import EOC_TOKEN, IMAGE_TOKEN

        fields = {"image": IMAGE_TOKEN * len(self.images(sample)), "eoc": EOC_TOKEN, "hint": "", "options": "",
                  "caption": "", **self.prompt_fields(sample, spec)}
        if IMAGE_TOKEN in fields["question"] + fields["options"]:
            fields["image"] = ""  # the images already have their places (MMMU's slots)
        return template.format(**fields)

    def build_prompt(self, demos: Sequence[Any], query: Any, spec: TaskSpec,
                     text_only_demos: bool = False) -> tuple[str, list[ImageRef]]:
        """(interleaved prompt text, its images) for ``demos`` then ``query`` (``fewshot.build_prompt``), in the
        type's formats or the task file's ``prompt: {demo, query}`` templates."""
        from mmbench_cli.evaluate.fewshot import build_prompt

        return build_prompt(demos, query, text_only_demos, lambda s: self._templated("demo", s, spec),
                            lambda s: self._templated("query", s, spec), self.images)

    # ---- answers
    def postprocess(self, text: str, spec: TaskSpec) -> str:
        """A generation cleaned into the answer that is scored."""
        from mmbench_cli.evaluate.fewshot import clean_short_answer

        return clean_short_answer(text)

    def read_answer(self, sample: Any, text: str, spec: TaskSpec) -> str:
        """Another system's answer (``mm eval --predictions``) as this type scores it (default: as given)."""
        return text

    def choices(self, sample: Any, spec: TaskSpec) -> list[str]:
        """The continuations whose log-likelihoods are compared (``multiple_choice`` output only)."""
        raise MMError(f"task {spec.name}: task type {self.name} generates its answers")

    def choose(self, sample: Any, spec: TaskSpec, loglikelihoods: list[float]) -> tuple[str, dict[str, Any]]:
        """(the answer picked from the choices' log-likelihoods, what its per-sample record adds)."""
        raise MMError(f"task {spec.name}: task type {self.name} generates its answers")

    def references(self, sample: Any, spec: TaskSpec) -> list[str]:
        """What a prediction is scored against."""
        raise NotImplementedError

    def sample_id(self, sample: Any) -> str:
        """The id a per-sample record carries (the question id, else the image id)."""
        return str(getattr(sample, "question_id", None) or sample.image_id)

    def record_fields(self, sample: Any) -> dict[str, Any]:
        """What a per-sample record carries besides id/prediction/references/score (for extra metrics, reports)."""
        question = getattr(sample, "question", None)
        return {"question": question} if question is not None else {}

    # ---- scores
    def score(self, spec: TaskSpec, ids: Sequence[str], predictions: Sequence[str],
              references: Sequence[Sequence[str]], vqa_normalize: str = "official") -> tuple[float, list[float]]:
        """(corpus score, per-sample scores) with the task's metric, on its reported scale (``families.METRICS``)."""
        from mmbench_cli.evaluate.metrics import NORMALIZING_SCORERS, SCORERS
        from mmbench_cli.families import METRICS

        if not predictions:
            raise MMError(f"task {spec.name}: no predictions to score")
        metric = METRICS[spec.metric]
        if metric.scorer is None:
            raise MMError(f"task {spec.name}: metric {spec.metric} is not computed from generated answers")
        options = {"normalize": vqa_normalize} if metric.scorer in NORMALIZING_SCORERS else {}
        corpus, per_sample = SCORERS[metric.scorer](list(ids), list(predictions), [list(r) for r in references],
                                                    **options)
        return metric.scale * corpus, [metric.scale * value for value in per_sample]

    def normalization(self, spec: TaskSpec, vqa_normalize: str) -> str | None:
        """The VQA answer normalisation the task's scores depend on (None when they do not)."""
        return None

    def has_extra_metrics(self, spec: TaskSpec, queries: Sequence[Any]) -> bool:
        """Whether ``extra_metrics`` has anything to compute for these queries."""
        return False

    def extra_metrics(self, spec: TaskSpec, records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
        """Metrics besides the task's own, from its per-sample records, on the reported scale."""
        return {}

    def answer_prior(self, spec: TaskSpec, train: Sequence[Any], queries: Sequence[Any],
                     score: Scorer) -> float | None:
        """The score of answering without looking at the image, from the demo split (None: no prior)."""
        return None

    def chance(self, spec: TaskSpec, queries: Sequence[Any]) -> float | None:
        """The expected score of a uniform random answer (None where it is not defined)."""
        return None

    def result_metadata(self, spec: TaskSpec, world_version: int = 1) -> dict[str, Any]:
        """What a task's results cells carry besides the numbers, for readers that cannot load the task."""
        return {}


def task_type(name: str) -> TaskType:
    """The registered task type called ``name`` (MMError listing the known ones)."""
    return TASK_TYPES.get(name)


def task_type_names() -> list[str]:
    """The registered task types' names."""
    return TASK_TYPES.names()
