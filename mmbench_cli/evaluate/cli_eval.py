"""The body of ``mm eval`` (kept out of cli.py so the CLI module stays thin and fast to import).

``--tasks``, ``--shots`` and ``--include-path`` take several values (``--shots 0 4 8``); click options take
one, so they arrive as extra arguments and are parsed here (``--shots 0,4,8`` and repeats work too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmbench_cli.errors import MMError

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


def run_eval_command(args: list[str], options: dict[str, Any], console: Any) -> None:
    """Run ``mm eval`` from parsed CLI arguments and print a results table per checkpoint."""
    from mmbench_cli.evaluate.tasks import read_task_data

    positional, multi = parse_extra_args(args)
    task_data = read_task_data(options.get("task_data"))
    annotations = _annotation_spec(options)
    if options.get("predictions"):
        _score_predictions(positional, options, task_data, annotations, console)
        return
    if len(positional) != 1:
        raise MMError("mm eval: pass exactly one RUN_OR_CHECKPOINT (a run dir, checkpoints/step_<N>/ or a "
                      "`mm build -o` dir), or --predictions FILE --task NAME to score another system's outputs")
    tasks = multi.get("--tasks")
    if annotations:
        if not tasks or len(tasks) != 1:
            raise MMError("--annotations: name the one task they belong to with --tasks NAME")
        task_data = {**task_data, tasks[0]: {**task_data.get(tasks[0], {}), "query": annotations}}
    from mmbench_cli.evaluate.runner import evaluate

    paths = evaluate(
        positional[0], tasks=tasks, shots=parse_shots(multi.get("--shots")), seeds=options.get("seeds"),
        all_checkpoints=options.get("all_checkpoints", False), demo_selection=options.get("demo_selection"),
        num_samples=options.get("num_samples"), batch_size=options.get("batch_size"),
        max_new_tokens=options.get("max_new_tokens"), text_only_zero_shot=options.get("text_only_zero_shot"),
        include_paths=multi.get("--include-path", []), task_data=task_data, force=options.get("force", False),
        device=options.get("device", "auto"), console=console,
    )
    for path in paths:
        print_results(json.loads(path.read_text()), path, console)


def _annotation_spec(options: dict[str, Any]) -> dict[str, Any] | None:
    if not options.get("annotations"):
        for key in ("questions", "images"):
            if options.get(key):
                raise MMError(f"--{key}: only meaningful with --annotations FILE")
        return None
    spec = {"path": str(options["annotations"])}
    if options.get("questions"):
        spec["questions"] = str(options["questions"])
    if options.get("images"):
        spec["images"] = str(options["images"])
    if options.get("format"):
        spec["format"] = options["format"]
    return spec


def _score_predictions(positional: list[str], options: dict[str, Any], task_data: dict[str, Any],
                       annotations: dict[str, Any] | None, console: Any) -> None:
    from mmbench_cli.evaluate.runner import score_file

    if positional:
        raise MMError("--predictions: scores a file on its own; drop the RUN_OR_CHECKPOINT argument")
    task = options.get("task")
    if not task:
        raise MMError("--predictions: name the task whose metric and references to use with --task NAME")
    result = score_file(options["predictions"], task, task_data, annotations, out=options.get("out"))
    console.print(f"{result['task']}: {result['metric']} = {result['value']:.2f} (n={result['n']})")


def _fmt(cell: dict[str, Any]) -> str:
    value = cell.get("value")
    if value is None:
        return "-"
    text = f"{value:.2f}"
    if len(cell.get("seeds", [])) > 1:
        text += f" ± {cell.get('std', 0.0):.2f}"
    return text


def print_results(results: dict[str, Any], path: Path, console: Any) -> None:
    """A rich table: one row per task, one column per shot count, plus MM1's summary rows."""
    from rich.table import Table

    shots = sorted({int(k) for cells in results["tasks"].values() for k in cells})
    table = Table(title=f"{results['run']} step {results['step']}", title_justify="left")
    table.add_column("task")
    table.add_column("metric")
    for k in shots:
        table.add_column(f"{k}-shot", justify="right")
    for name, cells in results["tasks"].items():
        metric = next(iter(cells.values())).get("metric", "")
        table.add_row(name, metric, *[_fmt(cells[str(k)]) if str(k) in cells else "" for k in shots])
    summary = results.get("summary", {})
    for key, label in (("caption_avg", "caption avg"), ("vqa_avg", "VQA avg"), ("textcore", "TextCore")):
        row = [summary.get(str(k), {}).get(key) for k in shots]
        if any(v is not None for v in row):
            table.add_row(f"[bold]{label}[/]", "", *[f"{v:.2f}" if v is not None else "" for v in row])
    console.print(table)
    console.print(f"results: {path}")
