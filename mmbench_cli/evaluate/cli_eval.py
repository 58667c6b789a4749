"""The pieces of ``mm eval`` between the CLI and the runner (kept out of cli.py so it stays thin and fast to
import): multi-value option parsing, ``--annotations`` files, and the results table.

``--tasks``, ``--shots`` and ``--include-path`` take several values (``--shots 0 4 8``); click options take
one, so they arrive as extra arguments and are parsed here (``--shots 0,4,8`` and repeats work too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.errors import MMError
from mmbench_cli.families import FAMILIES
from mmbench_cli.rundir import EvalResult, ResultCell, read_json_file

if TYPE_CHECKING:
    from rich.console import Console

    from mmbench_cli.evaluate.request import EvalRequest

MULTI_OPTIONS = ("--tasks", "--shots", "--include-path")
ALIASES = {"-t": "--tasks"}


def parse_extra_args(args: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split ``[target, --tasks a b, --shots 0 4 8, ...]`` into (positional args, {option: values})."""
    positional: list[str] = []
    values: dict[str, list[str]] = {}
    current: str | None = None
    for arg in args:
        if arg.startswith("-") and not _is_number(arg):
            name, _, inline = arg.partition("=")
            name = ALIASES.get(name, name)
            if name not in MULTI_OPTIONS:
                raise MMError(f"{name}: unknown option for mm eval; see `mm eval --help`")
            current = name
            values.setdefault(name, [])
            if inline:
                values[name].extend(v for v in inline.split(",") if v)
            continue
        if current is None:
            positional.append(arg)
        else:
            values[current].extend(v for v in arg.split(",") if v)
    for name, got in values.items():
        if not got:
            raise MMError(f"{name}: needs at least one value")
    return positional, values


def _is_number(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def parse_shots(values: list[str] | None) -> list[int] | None:
    """``["0", "4", "8"]`` → ``[0, 4, 8]`` (MMError on anything else)."""
    if values is None:
        return None
    shots = []
    for value in values:
        if not _is_number(value) or int(value) < 0:
            raise MMError(f"--shots {value!r}: shot counts are integers >= 0, e.g. --shots 0 4 8")
        shots.append(int(value))
    return shots


@dataclass
class AnnotationFiles:
    """``--annotations FILE [--questions FILE] [--images DIR] [--format NAME]``: a task's query set from files."""

    annotations: Path | None = None
    questions: Path | None = None
    images: Path | None = None
    data_format: str | None = None

    def spec(self) -> dict[str, str] | None:
        """The task-data ``query`` entry these options describe (None without ``--annotations``)."""
        if self.annotations is None:
            for name in ("questions", "images"):
                if getattr(self, name) is not None:
                    raise MMError(f"--{name}: only meaningful with --annotations FILE")
            return None
        spec = {"path": str(self.annotations)}
        if self.questions is not None:
            spec["questions"] = str(self.questions)
        if self.images is not None:
            spec["images"] = str(self.images)
        if self.data_format:
            spec["format"] = self.data_format
        return spec


def with_annotations(task_data: dict[str, dict[str, Any]], tasks: list[str] | None,
                     files: AnnotationFiles) -> dict[str, dict[str, Any]]:
    """``task_data`` with ``--annotations`` as the query set of the one task named by ``--tasks``."""
    spec = files.spec()
    if spec is None:
        return task_data
    if not tasks or len(tasks) != 1:
        raise MMError("--annotations: name the one task they belong to with --tasks NAME")
    return {**task_data, tasks[0]: {**task_data.get(tasks[0], {}), "query": spec}}


def single_target(positional: list[str]) -> Path:
    """The one RUN_OR_CHECKPOINT argument of ``mm eval``."""
    if len(positional) != 1:
        raise MMError("mm eval: pass exactly one RUN_OR_CHECKPOINT (a run dir, checkpoints/step_<N>/ or a "
                      "`mm build -o` dir), or --predictions FILE --task NAME to score another system's outputs")
    return Path(positional[0])


def run_eval(request: EvalRequest, console: Console, as_json: bool = False) -> None:
    """Evaluate and print a results table per checkpoint; with ``as_json``, one JSON document on stdout
    (``{"results": [{"path": ..., "result": <results file>}, ...]}``) and everything else on stderr."""
    from mmbench_cli.evaluate.runner import evaluate

    if as_json:
        import json

        from rich.console import Console as RichConsole

        paths = evaluate(request, console=RichConsole(stderr=True))
        documents = [{"path": str(path), "result": read_json_file(path, "results file")} for path in paths]
        print(json.dumps({"results": documents}, indent=2))
        return
    for path in evaluate(request, console=console):
        print_results(EvalResult.from_json(read_json_file(path, "results file"), path), path, console)


def score_predictions_command(predictions: Path, task: str | None, task_data: dict[str, dict[str, Any]],
                              files: AnnotationFiles, out: Path | None, positional: list[str],
                              console: Console, allow_subset: bool = False, vqa_normalize: str | None = None) -> None:
    """``mm eval --predictions FILE --task NAME``: score another system's outputs and print the value."""
    from mmbench_cli.evaluate.predictions import score_file, summary_path
    from mmbench_cli.evaluate.request import VQA_NORMALIZE

    if positional:
        raise MMError("--predictions: scores a file on its own; drop the RUN_OR_CHECKPOINT argument")
    if not task:
        raise MMError("--predictions: name the task whose metric and references to use with --task NAME")
    if vqa_normalize is not None and vqa_normalize not in VQA_NORMALIZE:
        raise MMError(f"--vqa-normalize {vqa_normalize!r}: choose {' or '.join(VQA_NORMALIZE)}")
    result = score_file(predictions, task, task_data, files.spec(), out=out, allow_subset=allow_subset,
                        vqa_normalize=vqa_normalize or "official")
    how = f", {result['vqa_normalize']} normalisation" if "vqa_normalize" in result else ""
    console.print(f"{result['task']}: {result['metric']} = {result['value']:.2f} (n={result['n']}{how})",
                  highlight=False)
    if result["subset"]:
        console.print(f"subset: scored {result['n']} of the {result['total']} annotated items (--allow-subset); "
                      "not comparable with full-set numbers", highlight=False)
    for line in extra_metric_lines(result):
        console.print(line, highlight=False)
    if out is not None:
        console.print(f"per-sample scores: {out}\nsummary: {summary_path(Path(out))}", highlight=False, soft_wrap=True)


def list_tasks(include_paths: list[Path], console: Console, as_json: bool = False) -> None:
    """``mm eval --list-tasks``: every multimodal task with its type, metric, data and where it is defined."""
    from mmbench_cli.evaluate.tasks import add_task_dirs, task_table

    add_task_dirs(include_paths)
    rows = [{"task": spec.name, "type": spec.family, "metric": spec.metric,
             "data": f"synthetic:{spec.synthetic_kind}" if spec.source == "synthetic" else str(spec.default_format),
             "description": spec.description, "file": spec.path or ""} for spec in task_table()]
    if as_json:
        import json

        print(json.dumps({"tasks": rows}, indent=2))
        return
    from rich.table import Table

    table = Table(title="multimodal tasks (text tasks: text:<lm-eval task or group>)", title_justify="left")
    for column in ("task", "type", "metric", "data", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["task"], row["type"], row["metric"], row["data"], row["description"])
    console.print(table)


def extra_metric_lines(extra: dict[str, Any]) -> list[str]:
    """One line per extra metric group of a results cell or summary (VizWiz answerability, NoCaps domains)."""
    lines = []
    if isinstance(extra.get("answerability"), dict):
        scores = extra["answerability"]
        lines.append(f"answerability: average precision {scores.get('average_precision', 0):.2f}, "
                     f"F1 {scores.get('f1', 0):.2f}")
    if isinstance(extra.get("cider_by_domain"), dict):
        lines.append("CIDEr by domain: " + ", ".join(f"{name} {value:.2f}"
                                                     for name, value in extra["cider_by_domain"].items()))
    for group, scores in extra.items():  # the other task types' groups (multiple_choice, pope): name value, ...
        if group not in ("answerability", "cider_by_domain") and isinstance(scores, dict) and scores and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in scores.values()):
            lines.append(f"{group}: " + ", ".join(f"{name} {value:.2f}" for name, value in scores.items()))
    return lines


def _fmt(cell: ResultCell) -> str:
    text = f"{cell.value:.2f}"
    if len(cell.seeds) > 1:
        text += f" ± {cell.std:.2f}"
    return text


def print_results(results: EvalResult, path: Path, console: Console) -> None:
    """A rich table: one row per task, one column per shot count, plus MM1's summary rows."""
    from rich.table import Table

    shots = sorted({int(k) for cells in results.tasks.values() for k in cells})
    table = Table(title=f"{results.run} step {results.step}", title_justify="left")
    table.add_column("task")
    table.add_column("metric")
    for k in shots:
        table.add_column(f"{k}-shot", justify="right")
    for name, cells in results.tasks.items():
        metric = next(iter(cells.values())).metric
        table.add_row(name, metric, *[_fmt(cells[str(k)]) if str(k) in cells else "" for k in shots])
    for family in FAMILIES.values():
        row = [results.summary.get(str(k), {}).get(family.summary_key) for k in shots]
        label = family.summary_label
        if any(v is not None for v in row):
            table.add_row(f"[bold]{label}[/]", "", *[f"{v:.2f}" if v is not None else "" for v in row])
    console.print(table)
    for name, cells in results.tasks.items():
        for k, cell in cells.items():
            for line in extra_metric_lines(cell.extra):
                console.print(f"{name} {k}-shot {line}", highlight=False)
    console.print(f"results: {path}")
