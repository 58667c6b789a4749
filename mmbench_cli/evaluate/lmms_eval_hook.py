"""``--model mm`` for lmms-eval (the ``mmbench[lmms]`` extra), and ``mm lmms-eval``: its command line with our fixes.

lmms-eval 0.7 resolves ``--model NAME`` through its model registry, which reads the ``lmms_eval.models`` entry-point
group; ``pyproject.toml`` points ``mm`` at ``manifest`` below, so after ``pip install mmbench[lmms]``
``python -m lmms_eval --model mm --model_args path=RUN ...`` loads ``lmms_model.MMLMMs`` (imported only then).

``run_cli(argv)`` is ``mm lmms-eval``: lmms-eval's own command line, with the traps of running it bare handled:

- lmms-eval catches a failing evaluation (a broken task, a missing dataset, our model refusing its arguments), logs
  it and exits 0; here every failure is remembered and the command exits 1 (2 for a user error: an ``MMError``);
- a task under ``--include_path`` with the name of a built-in task is silently replaced by the built-in one; here
  that is refused, naming both files;
- ``--use_cache`` keys its responses on the ``model_args`` string, so ``path=runs/toy`` would serve a later
  checkpoint the answers of an earlier one; here the path is rewritten to the checkpoint dir it resolves to
  (``runs/toy/checkpoints/step_N``);
- lmms-eval's few-shot demos are text only (no demo images): ``--num_fewshot`` > 0 is refused, pointing to
  ``mm eval --shots`` (interleaved image demos).

Standard library only at import time; lmms-eval and torch are imported when a command runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmbench_cli.errors import MMError
from mmbench_cli.evaluate.lm_eval_hook import call_with_argv, check_output_path

MODEL_NAME = "mm"
CLASS_PATH = "mmbench_cli.evaluate.lmms_model.MMLMMs"
# lmms-eval's subcommands that run no evaluation: passed through to its dispatcher untouched
SUBCOMMANDS = ("tasks", "models", "ui", "serve", "power", "version", "tui", "mcp")


def manifest() -> Any:
    """The ``lmms_eval.models`` entry point: ``mm`` → our lmms class (a plain one: prompts are text + images)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)


# ------------------------------------------------------------------------------------------ arguments
def _option(args: Sequence[str], name: str) -> tuple[int, str | None]:
    """(index of the option's value, value) of ``--name value`` or ``--name=value``; (-1, None) if absent."""
    for index, arg in enumerate(args):
        if arg == name:
            return index + 1, args[index + 1] if index + 1 < len(args) else None
        if arg.startswith(name + "="):
            return index, arg.split("=", 1)[1]
    return -1, None


def _set_option(args: list[str], name: str, value: str) -> None:
    index, _ = _option(args, name)
    if index >= 0 and index < len(args) and args[index].startswith(name + "="):
        args[index] = f"{name}={value}"
    elif index >= 0:
        args[index] = value
    else:
        args += [name, value]


def pin_checkpoint(model_args: str) -> str:
    """``model_args`` with its path replaced by the absolute checkpoint dir it resolves to (the last checkpoint of a
    run dir), so lmms-eval's response cache, keyed on this string, tells checkpoints apart."""
    from mmbench_cli.evaluate.lm_eval_hook import model_path
    from mmbench_cli.evaluate.target import resolve_target

    pieces = parse_model_args(model_args)
    path, key, rest = model_path(pieces)
    if path is None:
        return model_args
    checkpoint = resolve_target(path).checkpoints[-1].path.resolve()
    if "," in str(checkpoint):
        checkpoint_text = f'"{checkpoint}"'
    else:
        checkpoint_text = str(checkpoint)
    return ",".join([f"{key}={checkpoint_text}", *(f"{k}={v}" for k, v in rest.items())])


def parse_model_args(model_args: str) -> dict[str, str]:
    """``key=value,...`` split as lmms-eval splits it (at every comma; values kept as text)."""
    pieces: dict[str, str] = {}
    for piece in model_args.split(","):
        if not piece.strip():
            continue
        if "=" not in piece:
            raise MMError(f"--model_args {model_args!r}: {piece!r} is not key=value")
        key, value = piece.split("=", 1)
        pieces[key.strip()] = value.strip()
    return pieces


def lmms_eval_argv(argv: Sequence[str]) -> list[str]:
    """lmms-eval evaluation arguments with our defaults and checks: ``--model mm`` unless another model (or a
    ``--config`` file) is named; for ``mm``, the model path pinned to its checkpoint and ``--num_fewshot`` > 0 refused."""
    args = list(argv)
    if args and args[0] == "eval":
        args = args[1:]
    _, model = _option(args, "--model")
    if model is None and _option(args, "--config")[1] is not None:
        return args  # an lmms-eval --config file names its own model; an explicit --model would override it
    if model is None:
        args = ["--model", MODEL_NAME, *args]
        model = MODEL_NAME
    if model != MODEL_NAME:
        return args
    _, shots = _option(args, "--num_fewshot")
    if shots not in (None, "0"):
        raise MMError(f"--num_fewshot {shots}: lmms-eval's few-shot demos are text only (their images are dropped); "
                      f"run interleaved {shots}-shot with `mm eval RUN --shots {shots}` (lmms-eval: 0 shots)")
    _, model_args = _option(args, "--model_args")
    if model_args:
        _set_option(args, "--model_args", pin_checkpoint(model_args))
    return args


# ------------------------------------------------------------------------------------- shadowed tasks
def _tag_ignoring_loader() -> type:
    """A yaml.SafeLoader that reads ``!function`` and other tags as None (only the names are needed here)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    return Loader


def _named_configs(directory: Path, among: set[str] | None = None) -> dict[str, Path]:
    """Task and group names defined by the YAML files under ``directory`` (as lmms-eval indexes them); with
    ``among``, only files whose text mentions one of those names are parsed (lmms-eval ships thousands)."""
    import yaml

    loader = _tag_ignoring_loader()
    names: dict[str, Path] = {}
    for path in sorted(directory.rglob("*.yaml")):
        try:
            text = path.read_text(encoding="utf-8")
            if among is not None and not any(name in text for name in among):
                continue
            config = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # lmms-eval skips what it cannot read too; a task asked for then fails the run
        if not isinstance(config, dict):
            continue
        for key in ("task", "group"):
            if isinstance(config.get(key), str):
                names.setdefault(config[key], path)
    return names


def shadowed_tasks(include_path: str | Path, builtin_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, user file, built-in file) for each task or group under ``include_path`` that a built-in one of the same
    name would replace (lmms-eval indexes its own tasks first, and the first definition of a name wins)."""
    users = _named_configs(Path(include_path))
    if not users:
        return []
    builtins = _named_configs(Path(builtin_dir), among=set(users))
    return [(name, path, builtins[name]) for name, path in sorted(users.items()) if name in builtins]


def check_include_path(args: Sequence[str]) -> None:
    """Refuse an ``--include_path`` that is not a directory, or whose tasks a built-in task would shadow."""
    _, include_path = _option(args, "--include_path")
    if include_path is None:
        return
    directory = Path(include_path)
    if not directory.is_dir():
        raise MMError(f"--include_path {include_path}: not a directory of lmms-eval task YAMLs")
    spec = importlib.util.find_spec("lmms_eval")  # located, not imported (that takes seconds)
    builtin_dir = Path(list(spec.submodule_search_locations)[0]) / "tasks" if spec and spec.submodule_search_locations else None
    clashes = shadowed_tasks(directory, builtin_dir) if builtin_dir is not None else []
    if clashes:
        name, mine, theirs = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise MMError(f"--include_path: task {name!r} in {mine} has the name of lmms-eval's built-in task in "
                      f"{theirs}, which lmms-eval would run instead{more}; rename it (task: my_{name})")


# ------------------------------------------------------------------------------------------ mm lmms-eval
class _Failures:
    """Records what lmms-eval's ``cli_evaluate`` would only log: the exception of each failed evaluation."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.errors: list[BaseException] = []
        self.few_shot: list[str] = []

    def __call__(self, args: Any) -> Any:
        try:
            results, samples = self.inner(args)
        except Exception as error:  # noqa: BLE001 - lmms-eval's own loop catches everything too; we keep it
            if getattr(args, "verbosity", "") == "DEBUG":
                raise
            self.errors.append(error)
            return None, None
        if results is not None and args.model == MODEL_NAME:
            self.few_shot += [task for task, shots in (results.get("n-shot") or {}).items() if shots]
        return results, samples


def run_cli(argv: Sequence[str]) -> int:
    """Run lmms-eval's command line on ``argv`` (``--model mm`` by default); returns the exit code: 1 when any
    evaluation failed (lmms-eval itself would exit 0). ``MMError``s (bad path, shadowed task) propagate."""
    if importlib.util.find_spec("lmms_eval") is None:
        raise MMError("lmms-eval is not installed: pip install 'mmbench[lmms]'")
    args = list(argv)
    if args and args[0] in SUBCOMMANDS:
        return _dispatch(args)
    if any(a in ("-h", "--help") for a in args):
        return _dispatch(["eval", "--help"])
    args = lmms_eval_argv(args)
    check_include_path(args)
    check_output_path(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # we run offline: tasks read local files or the HF cache
    main = importlib.import_module("lmms_eval.__main__")
    failures = _Failures(main.cli_evaluate_single)
    main.cli_evaluate_single = failures
    try:
        code = call_with_argv(main.cli_evaluate, ["lmms-eval", *args])
    finally:
        main.cli_evaluate_single = failures.inner
    if code:
        return code
    user_errors = [e for e in failures.errors if isinstance(e, MMError)]
    if user_errors:
        raise user_errors[0]
    for error in failures.errors:
        print(f"mm lmms-eval: evaluation failed: {_describe(error)} (rerun with --verbosity DEBUG for the traceback)",
              file=sys.stderr)
    if failures.few_shot:
        print(f"mm lmms-eval: warning: {', '.join(failures.few_shot)} ran with few-shot demos from its YAML, which "
              "lmms-eval gives as text only; use `mm eval --shots` for interleaved image demos", file=sys.stderr)
    return 1 if failures.errors else 0


def _describe(error: BaseException) -> str:
    """``Type: first line`` of an exception, looking through tenacity's RetryError (lmms-eval retries task loading)."""
    last = getattr(error, "last_attempt", None)
    inner = last.exception() if last is not None and hasattr(last, "exception") else None
    error = inner or error
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _dispatch(args: list[str]) -> int:
    """lmms-eval's dispatcher (subcommands, help) on ``args``; returns its exit code."""
    from lmms_eval.cli.dispatch import main

    return call_with_argv(main, ["lmms-eval", *args])
