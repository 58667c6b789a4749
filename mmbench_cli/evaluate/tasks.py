"""Evaluation tasks as data: YAML files naming a task type, where queries and demos come from, and the metric.

Built-in tasks ship inside the package (``mmbench_cli/resources/tasks/*.yaml``, read with ``importlib.resources``
so a wheel install has them) and fill the ``TASKS`` registry; ``--include-path DIR`` adds a user's task files
(``add_task_dirs``). A task file::

    name: scienceqa-img            # the name --tasks uses
    task_type: multiple_choice     # caption | vqa | multiple_choice | yes_no (registry TASK_TYPES)
    metric: mc_accuracy            # default: the type's; one of its family's metrics (families.py)
    description: ScienceQA, image questions
    format: scienceqa              # files: the data format (registry DATA_FORMATS) of query/demos
    query: {path: problems.json, images: images/, split: test}    # optional: local files, or in --task-data
    demos: {path: problems.json, images: images/, split: train}
    synthetic: shape_choice        # instead of files: a split kind of the synthetic world
    split: test                    # synthetic: the world split queries come from (demos: demo_split, train)
    max_new_tokens: 5              # generate_until types: the answer's length in tokens
    options: {choices: letter}     # options of the task type (multiple_choice: choices text|letter, ...)
    prompt:                        # optional templates (default: the type's training formats); placeholders
      demo: "{image}Question: {question} Short answer: {answer}{eoc}"   # {image} {eoc} {question} {answer}
      query: "{image}Question: {question} Short answer:"                # {options} {hint} {caption}

A new task of an existing type is one such file and no code. Local paths may also come from a task-data YAML
(``mm eval --task-data FILE``: task name → ``{query: spec, demos: spec}``), which can declare a whole task with
``family`` (its task type) and ``metric`` too. Text tasks are ``text:<lm-eval task or group>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.errors import MMError
from mmbench_cli.families import FAMILIES, METRICS, PROMPTED_FAMILIES
from mmbench_cli.registry import TASK_TYPES, TASKS

if TYPE_CHECKING:
    from mmbench_cli.config import DataConfig
    from mmbench_cli.evaluate.task_types import TaskType

TASK_KEYS = ("name", "task_type", "metric", "description", "format", "query", "demos", "synthetic", "split",
             "demo_split", "max_new_tokens", "options", "prompt")
SYNTHETIC_SPLITS = ("test", "train")  # the default query and demo splits of a synthetic task


@dataclass(frozen=True)
class TaskSpec:
    """One few-shot multimodal task: what to load, how to prompt, how to score.

    ``family`` is the task type's name (``mmbench_cli/evaluate/task_types/``). ``source`` is ``"synthetic"``
    (with ``synthetic_kind``: a split kind of the world) or ``"files"`` (``query`` and ``demos`` are DatasetSpec
    dicts, from the task file or the task-data YAML).
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
    options: dict[str, Any] = field(default_factory=dict)
    splits: tuple[str, str] = SYNTHETIC_SPLITS
    prompt: dict[str, str] = field(default_factory=dict)  # {demo, query} templates (default: the type's formats)
    path: str | None = None  # the task file it was read from

    @property
    def task_type(self) -> TaskType:
        """The task type that prompts, answers and scores this task."""
        return TASK_TYPES.get(self.family)

    def fingerprint(self) -> dict[str, Any]:
        """What decides this task's numbers besides the model (used to decide whether a cell is reusable).

        Options and non-default synthetic splits enter only when set, so the tasks that existed before them keep
        their fingerprints (and their cells stay reusable)."""
        found = {"family": self.family, "metric": self.metric, "source": self.source,
                 "synthetic_kind": self.synthetic_kind, "query": self.query, "demos": self.demos}
        if self.options:
            found["options"] = self.options
        if self.prompt:
            found["prompt"] = self.prompt
        if self.splits != SYNTHETIC_SPLITS:
            found["splits"] = list(self.splits)
        return found


# ------------------------------------------------------------------------------------------ task files
def _where(origin: str, key: str) -> str:
    return f"{origin}: {key}"


def parse_task(data: Any, origin: str) -> TaskSpec:
    """A TaskSpec from one task file's mapping (MMError naming the file and key on anything wrong)."""
    if not isinstance(data, dict):
        raise MMError(f"{origin}: expected a mapping with name, task_type, ...")
    unknown = sorted(set(data) - set(TASK_KEYS))
    if unknown:
        raise MMError(f"{_where(origin, unknown[0])}: unknown key; allowed: {', '.join(TASK_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or name.startswith("text:"):
        raise MMError(f"{_where(origin, 'name')}: needs a task name (not text:..., which names lm-eval tasks)")
    kind = data.get("task_type")
    if kind not in TASK_TYPES:
        raise MMError(f"{_where(origin, 'task_type')}: {kind!r} unknown; choose from: {', '.join(TASK_TYPES.names())}")
    type_ = TASK_TYPES.get(kind)
    metric = data.get("metric", type_.default_metric)
    allowed = [m for m in FAMILIES[kind].metrics if METRICS[m].scorer is not None]
    if metric not in allowed:
        raise MMError(f"{_where(origin, 'metric')}: {metric!r} is not a {kind} metric; choose from: {', '.join(allowed)}")
    synthetic = data.get("synthetic")
    if synthetic is not None and synthetic not in type_.synthetic_kinds:
        raise MMError(f"{_where(origin, 'synthetic')}: {synthetic!r} is not a synthetic {kind} split; choose from: "
                      f"{', '.join(type_.synthetic_kinds) or 'none'}")
    if synthetic is None and not isinstance(data.get("format"), str):
        raise MMError(f"{origin}: give `format:` (a data format for local files) or `synthetic:` (a world split)")
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise MMError(f"{_where(origin, 'options')}: expected a mapping")
    prompt = _prompt_templates(data.get("prompt"), origin)
    tokens = data.get("max_new_tokens", type_.max_new_tokens)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise MMError(f"{_where(origin, 'max_new_tokens')}: {tokens!r} must be an integer >= 1")
    splits = (str(data.get("split", SYNTHETIC_SPLITS[0])), str(data.get("demo_split", SYNTHETIC_SPLITS[1])))
    spec = TaskSpec(name=name, family=kind, metric=metric, source="synthetic" if synthetic else "files",
                    synthetic_kind=synthetic, default_format=data.get("format"), max_new_tokens=tokens,
                    description=str(data.get("description", "")), options=dict(options), splits=splits,
                    prompt=prompt, path=origin)
    if synthetic is None and (data.get("query") or data.get("demos")):
        spec = with_files(spec, {key: data[key] for key in ("query", "demos") if data.get(key)})
    return spec


def _prompt_templates(raw: Any, origin: str) -> dict[str, str]:
    """A task file's ``prompt: {demo: ..., query: ...}`` templates, their placeholders checked."""
    from string import Formatter

    from mmbench_cli.evaluate.task_types import PROMPT_FIELDS

    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw or set(raw) - {"demo", "query"} or not all(
            isinstance(v, str) for v in raw.values()):
        raise MMError(f"{_where(origin, 'prompt')}: expected {{demo: TEMPLATE, query: TEMPLATE}} strings")
    for role, template in raw.items():
        try:
            names = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
        except ValueError as error:
            raise MMError(f"{_where(origin, 'prompt.' + role)}: {error}") from None
        unknown = sorted(names - set(PROMPT_FIELDS))
        if unknown:
            raise MMError(f"{_where(origin, 'prompt.' + role)}: unknown placeholder {{{unknown[0]}}}; use "
                          + ", ".join(f"{{{n}}}" for n in PROMPT_FIELDS))
    return dict(raw)


def _read_task_file(path: Path, origin: str) -> Any:
    import yaml

    from mmbench_cli.config import load_yaml_text

    try:
        return load_yaml_text(path.read_text(encoding="utf-8"), origin)
    except yaml.YAMLError as error:
        raise MMError(f"{origin}: not valid YAML ({str(error).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise MMError(f"{origin}: not UTF-8 text") from None


def builtin_task_files() -> list[Path]:
    """The task YAMLs shipped in the package (``mmbench_cli/resources/tasks/``, ``resources.resource_path``), by name."""
    from mmbench_cli.resources import resource_path

    return sorted(p for p in resource_path("tasks").iterdir() if p.suffix in (".yaml", ".yml"))


def _register(spec: TaskSpec) -> None:
    if spec.name in TASKS and TASKS.get(spec.name) != spec:
        earlier = TASKS.get(spec.name).path or "a built-in task"
        raise MMError(f"{spec.path}: task {spec.name!r} is already defined by {earlier}; give it another name")
    TASKS.add(spec.name, spec)


def add_task_dirs(paths: list[Path] | list[str] | tuple[Path, ...]) -> list[str]:
    """Register the multimodal task files under each ``--include-path`` directory (or file); returns their names.

    A YAML there without a ``task_type`` key is not ours (lm-eval's text tasks share the option) and is skipped.
    """
    import yaml

    names = []
    for root in map(Path, paths):
        if not root.exists():
            raise MMError(f"--include-path {root}: no such directory or file")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml")
                                                     and p.is_file())  # a pipe named x.yaml would block the read
        for path in files:
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
                continue  # lm-eval's YAMLs may use its own tags (!function); a task file of ours must parse
            if isinstance(data, dict) and "task_type" in data:
                spec = parse_task(data, str(path))
                _register(spec)
                names.append(spec.name)
    return names


def task_table() -> list[TaskSpec]:
    """Every registered multimodal task, by name (``mm eval --list-tasks``)."""
    return [spec for _, spec in TASKS.items()]


for _file in builtin_task_files():
    _register(parse_task(_read_task_file(_file, f"mmbench_cli/resources/tasks/{_file.name}"),
                         f"mmbench_cli/resources/tasks/{_file.name}"))


# ------------------------------------------------------------------------------------- local file specs
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
                      "a task file in --include-path DIR, or declare it in --task-data")
    if entry is None:
        return spec
    if spec.source == "synthetic":
        raise MMError(f"task-data {name}: synthetic tasks take no files; use another task name")
    spec = with_files(replace(spec, default_format=entry.get("format", spec.default_format)),
                      {key: entry[key] for key in ("query", "demos") if entry.get(key)}, "task-data")
    return replace(spec, max_new_tokens=int(entry.get("max_new_tokens", spec.max_new_tokens or 16)))


def with_files(spec: TaskSpec, files: dict[str, Any], where: str | None = None) -> TaskSpec:
    """``spec`` with its ``query`` and/or ``demos`` DatasetSpecs (a demos spec alone keeps the query's)."""
    origin = where or spec.path or "task"
    query = _dataset_spec(spec, "query", files["query"], origin) if "query" in files else spec.query
    demos = _dataset_spec(spec, "demos", files["demos"], origin) if "demos" in files else spec.demos
    return replace(spec, query=query, demos=demos)


def _dataset_spec(spec: TaskSpec, role: str, raw: Any, origin: str) -> dict[str, Any]:
    from pydantic import ValidationError

    from mmbench_cli.config import DatasetSpec

    task = spec.name
    if not isinstance(raw, dict):
        raise MMError(f"{origin} {task}.{role}: expected a mapping like {{path: ..., images: ...}}")
    data = {"format": spec.default_format, **raw}
    for key in ("path", "questions", "images"):
        if isinstance(data.get(key), str):
            data[key] = str(Path(data[key]).expanduser())
    if data["format"] == "coco-karpathy" and role == "query":
        data.setdefault("split", "test")  # Karpathy's test split; demos default to train (+restval)
    if spec.task_type.dataset_kind is not None:
        data.setdefault("kind", spec.task_type.dataset_kind)
    try:
        return DatasetSpec.model_validate(data).model_dump(mode="json")
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MMError(f"{origin} {task}.{role}.{where}: {first['msg']}") from None


# ------------------------------------------------------------------------------------------------ samples
def result_metadata(spec: TaskSpec, world_version: int = 1) -> dict[str, Any]:
    """What a task's results cells carry besides the numbers, for readers that cannot load the task (the task
    type's ``result_metadata``: e.g. synthetic captioning's colour and shape words)."""
    return spec.task_type.result_metadata(spec, world_version)


def load_samples(spec: TaskSpec, role: str, data_cfg: DataConfig, verify: str = "header") -> list[Any]:
    """Samples for ``role`` ("query" or "demos") of a task, of its task type's sample type.

    ``verify`` is how hard image files are checked (``none`` when only the annotations are needed, as to score
    another system's predictions).
    """
    if spec.source == "synthetic":
        from mmbench_cli.data.synthetic import world_from_config

        split = spec.splits[0] if role == "query" else spec.splits[1]
        return spec.task_type.synthetic_samples(world_from_config(data_cfg), split, spec)
    dataset = spec.query if role == "query" else spec.demos
    if dataset is None:
        if role == "query":
            raise MMError(f"task {spec.name}: no local files given; describe them in --task-data FILE "
                          f"({spec.name}: {{query: {{path: ..., images: ...}}, demos: {{...}}}}) or use --annotations")
        raise MMError(f"task {spec.name}: few-shot needs demos from a train split; add `demos:` to its "
                      "--task-data entry (or evaluate with --shots 0)")
    return load_dataset(dataset, spec, verify)


def load_dataset(dataset: dict[str, Any], spec: TaskSpec, verify: str = "header") -> list[Any]:
    """Load a DatasetSpec dict through the data formats registry and check the samples fit the task."""
    from mmbench_cli.config import DatasetSpec
    from mmbench_cli.data.formats import load_dataset_spec

    samples = load_dataset_spec(DatasetSpec.model_validate(dataset), False, verify)
    good = [s for s in samples if spec.task_type.accepts(s)]
    if not good:
        raise MMError(f"{dataset['path']}: no {spec.family} samples for task {spec.name} "
                      f"(format {dataset.get('format')}); check the file and format")
    return good
