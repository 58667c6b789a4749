"""Evaluation tasks as data: each names its family, metric, where its queries and demos come from.

Built-in tasks (registry ``TASKS``):

- synthetic-caption / synthetic-vqa / synthetic-ocr: the embedded synthetic world (queries from ``test``,
  demos from ``train``), no files needed;
- coco, nocaps, textcaps (captioning, CIDEr) and vqav2, okvqa, textvqa, vizwiz (VQA accuracy) read from
  local files described in a task-data YAML (``mm eval --task-data FILE``)::

      vqav2:
        query: {path: v2_mscoco_val2014_annotations.json, questions: v2_OpenEnded_mscoco_val2014_questions.json,
                images: val2014/}
        demos: {path: v2_mscoco_train2014_annotations.json, questions: ..., images: train2014/}

  Each entry is a ``DatasetSpec`` (``format`` defaults to the task's); a whole new task can be declared the
  same way with ``family`` and ``metric`` keys. Text tasks are ``text:<lm-eval task or group>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.errors import MMError
from mmbench_cli.families import FAMILIES, METRICS, PROMPTED_FAMILIES
from mmbench_cli.registry import TASKS

if TYPE_CHECKING:
    from mmbench_cli.config import DataConfig
    from mmbench_cli.data.types import CaptionSample, VQASample


@dataclass(frozen=True)
class TaskSpec:
    """One few-shot multimodal task: what to load, how to prompt, how to score.

    ``source`` is ``"synthetic"`` (with ``synthetic_kind``: caption, vqa or ocr) or ``"files"`` (``query``
    and ``demos`` are DatasetSpec dicts, filled from the task-data YAML).
    """

    name: str
    family: str
    metric: str
    source: str = "files"
    synthetic_kind: str | None = None
    default_format: str | None = None
    query: dict[str, Any] | None = None
    demos: dict[str, Any] | None = None
    max_new_tokens: int | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        """What decides this task's numbers besides the model (used to decide whether a cell is reusable)."""
        return {"family": self.family, "metric": self.metric, "source": self.source,
                "synthetic_kind": self.synthetic_kind, "query": self.query, "demos": self.demos}


def _synthetic(name: str, family: str, metric: str, kind: str, description: str, tokens: int) -> TaskSpec:
    return TaskSpec(name=name, family=family, metric=metric, source="synthetic", synthetic_kind=kind,
                    max_new_tokens=tokens, description=description)


def _files(name: str, family: str, metric: str, fmt: str, description: str, tokens: int) -> TaskSpec:
    return TaskSpec(name=name, family=family, metric=metric, default_format=fmt, max_new_tokens=tokens,
                    description=description)


for _spec in (
    _synthetic("synthetic-caption", "caption", "CIDEr", "caption", "captions of the synthetic world", 20),
    _synthetic("synthetic-vqa", "vqa", "vqa_accuracy", "vqa", "colour/count/position/yes-no questions", 5),
    _synthetic("synthetic-ocr", "vqa", "vqa_accuracy", "ocr", "what word is written (TextVQA-like)", 5),
    _files("coco", "caption", "CIDEr", "coco-karpathy", "COCO captions (Karpathy test split)", 20),
    _files("nocaps", "caption", "CIDEr", "nocaps", "NoCaps (COCO-format annotations)", 20),
    _files("textcaps", "caption", "CIDEr", "textcaps", "TextCaps captions", 20),
    _files("vqav2", "vqa", "vqa_accuracy", "vqav2", "VQAv2 (annotations + questions JSON)", 5),
    _files("okvqa", "vqa", "vqa_accuracy", "okvqa", "OK-VQA (VQAv2 format)", 5),
    _files("textvqa", "vqa", "vqa_accuracy", "textvqa", "TextVQA", 5),
    _files("vizwiz", "vqa", "vizwiz_accuracy", "vizwiz", "VizWiz VQA (unanswerable as VizWiz's eval)", 5),
):
    TASKS.add(_spec.name, _spec)


def read_task_data(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Read a task-data YAML (task name → {query: spec, demos: spec, family?, metric?}); {} for None."""
    if path is None:
        return {}
    from mmbench_cli.config import read_yaml

    data = read_yaml(path)
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise MMError(f"{path}: {name}: expected a mapping with query/demos dataset specs")
        unknown = sorted(set(entry) - {"query", "demos", "family", "metric", "max_new_tokens", "format"})
        if unknown:
            raise MMError(f"{path}: {name}.{unknown[0]}: unknown key; allowed: query, demos, family, metric, "
                          "max_new_tokens, format")
    return data


def resolve_task(name: str, task_data: dict[str, dict[str, Any]] | None = None) -> TaskSpec:
    """The TaskSpec for ``name``, with local file specs from ``task_data`` merged in.

    A name not in the registry may be declared entirely in ``task_data`` (family + metric + query).
    """
    task_data = task_data or {}
    entry = task_data.get(name)
    if name in TASKS:
        spec: TaskSpec = TASKS.get(name)
    elif entry is not None:
        metric = entry.get("metric")
        scored = [m for m, info in METRICS.items() if info.scorer is not None]
        if metric not in scored:
            raise MMError(f"task-data {name}.metric: {metric!r} unknown; choose from: {', '.join(scored)}")
        family = entry.get("family", METRICS[metric].family)
        if family not in PROMPTED_FAMILIES:
            raise MMError(f"task-data {name}.family: {family!r} unknown; choose from: {', '.join(PROMPTED_FAMILIES)}")
        spec = TaskSpec(name=name, family=family, metric=metric, max_new_tokens=FAMILIES[family].max_new_tokens)
    else:
        raise MMError(f"unknown task {name!r}; choose from: {', '.join(TASKS.names())}, text:<lm-eval task>, "
                      "or declare it in --task-data")
    if entry is None:
        return spec
    if spec.source == "synthetic":
        raise MMError(f"task-data {name}: synthetic tasks take no files; use another task name")
    fmt = entry.get("format", spec.default_format)
    query = _dataset_spec(name, "query", entry.get("query"), fmt, spec.family)
    demos = _dataset_spec(name, "demos", entry.get("demos"), fmt, spec.family) if entry.get("demos") else None
    return replace(spec, query=query, demos=demos,
                   max_new_tokens=int(entry.get("max_new_tokens", spec.max_new_tokens or 16)))


def _dataset_spec(task: str, role: str, raw: Any, fmt: str | None, family: str) -> dict[str, Any]:
    from pydantic import ValidationError

    from mmbench_cli.config import DatasetSpec

    if not isinstance(raw, dict):
        raise MMError(f"task-data {task}.{role}: expected a mapping like {{path: ..., images: ...}}")
    data = {"format": fmt, **raw}
    for key in ("path", "questions", "images"):
        if isinstance(data.get(key), str):
            data[key] = str(Path(data[key]).expanduser())
    if data["format"] == "coco-karpathy" and role == "query":
        data.setdefault("split", "test")  # Karpathy's test split; demos default to train (+restval)
    data.setdefault("kind", family)
    try:
        return DatasetSpec.model_validate(data).model_dump(mode="json")
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MMError(f"task-data {task}.{role}.{where}: {first['msg']}") from None


def result_metadata(spec: TaskSpec, world_version: int = 1) -> dict[str, Any]:
    """What a task's results cells carry besides the numbers, for readers that cannot load the task.

    Synthetic captioning records the world's colour and shape words (``vocabulary``; world version 4 draws three
    of the five shapes), so a report can check whether captions name what is in the image without importing the
    data package.
    """
    if spec.source == "synthetic" and spec.synthetic_kind == "caption":
        from mmbench_cli.data.synthetic import COLORS, SHAPES, V4_SHAPES

        return {"vocabulary": {"colour": list(COLORS), "shape": list(V4_SHAPES if world_version >= 4 else SHAPES)}}
    return {}


def load_samples(spec: TaskSpec, role: str, data_cfg: DataConfig, verify: str = "header") -> list[CaptionSample | VQASample]:
    """Samples for ``role`` ("query" or "demos") of a task: CaptionSample or VQASample objects.

    ``verify`` is how hard image files are checked (``none`` when only the annotations are needed, as to score
    another system's predictions).
    """
    if spec.source == "synthetic":
        from mmbench_cli.data.synthetic import world_from_config

        world = world_from_config(data_cfg)
        split = "test" if role == "query" else "train"
        if spec.synthetic_kind == "caption":
            return world.captions(split)
        return world.vqa(split, spec.synthetic_kind or "vqa")
    dataset = spec.query if role == "query" else spec.demos
    if dataset is None:
        if role == "query":
            raise MMError(f"task {spec.name}: no local files given; describe them in --task-data FILE "
                          f"({spec.name}: {{query: {{path: ..., images: ...}}, demos: {{...}}}}) or use --annotations")
        raise MMError(f"task {spec.name}: few-shot needs demos from a train split; add `demos:` to its "
                      "--task-data entry (or evaluate with --shots 0)")
    return load_dataset(dataset, spec, verify)


def load_dataset(dataset: dict[str, Any], spec: TaskSpec, verify: str = "header") -> list[CaptionSample | VQASample]:
    """Load a DatasetSpec dict through the data formats registry and check the samples fit the task."""
    from mmbench_cli.config import DatasetSpec
    from mmbench_cli.data.formats import load_dataset_spec
    from mmbench_cli.data.types import CaptionSample, VQASample

    samples = load_dataset_spec(DatasetSpec.model_validate(dataset), False, verify)
    wanted = CaptionSample if spec.family == "caption" else VQASample
    good = [s for s in samples if isinstance(s, wanted)]
    if not good:
        raise MMError(f"{dataset['path']}: no {spec.family} samples for task {spec.name} "
                      f"(format {dataset.get('format')}); check the file and format")
    return good

