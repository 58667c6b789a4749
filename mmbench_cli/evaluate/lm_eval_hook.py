"""Register ``model="mm"`` with lm-evaluation-harness lazily, without importing lm_eval (or torch) ourselves.

``install()`` (called by ``import mmbench_cli``) adds a tiny import hook: when ``lm_eval.api.registry`` is
imported later, a placeholder ``"mm" -> "mmbench_cli.evaluate.text:MMLM"`` is put into its model registry,
so ``lm_eval.simple_evaluate(model="mm", ...)`` (or ``lm_eval --model mm`` after ``import mmbench_cli``)
imports our adapter only when it is used. Importing lm_eval eagerly would add seconds to ``mm --help``.
lm-eval's own models (``hf``, ``vllm``, ...) are registered at the same moment: lm-eval fills its registry
lazily only while it is empty, so ``mm`` alone would hide them.

``run_cli(argv)`` is ``mm lm-eval``: lm-eval's own command line in a process where ``mm`` is registered.
``model_path(args)`` reads the model dir from ``model_args`` (``path=`` or its alias ``pretrained=``) and
rejoins a dir name that lm-eval split at its commas (grid cells: ``runs/g/resolution=64,tokens=16``).
Standard library only.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from mmbench_cli.errors import MMError
from mmbench_cli.resources import resource_path

REGISTRY_MODULE = "lm_eval.api.registry"
MODEL_NAME = "mm"
TARGET = "mmbench_cli.evaluate.text:MMLM"


def register(registry: ModuleType) -> None:
    """Put the lazy ``mm`` placeholder into an imported ``lm_eval.api.registry`` (idempotent), after lm-eval's own
    model placeholders (``lm_eval.models`` only registers names; it imports no model code)."""
    model_registry = getattr(registry, "model_registry", None)
    if model_registry is None:
        return
    try:
        importlib.import_module("lm_eval.models")
    except ImportError:  # an lm-eval without the lazy model table: its models register when imported
        pass
    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=TARGET)


class _Loader:
    """Wraps the real loader of lm_eval.api.registry; registers ``mm`` right after the module runs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        register(module)


class _Finder:
    """A meta-path finder that only intercepts lm_eval.api.registry (duck-typed: importlib.abc is slow to import)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != REGISTRY_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    """Register now if lm_eval's registry is already imported, else hook its import (once)."""
    if REGISTRY_MODULE in sys.modules:
        register(sys.modules[REGISTRY_MODULE])
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


# ------------------------------------------------------------------------------------- model_args
PATH_KEYS = ("path", "pretrained")


def _unquote(text: str) -> str:
    return text.strip().strip("\"'")


def _piece(key: str, value: Any) -> str:
    """A ``key=value`` piece as the user typed it (lm-eval turned ``true``/``16`` into True/16)."""
    shown = str(value).lower() if isinstance(value, bool) else str(value)
    return f"{key}={shown}"


def model_path(args: Mapping[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    """(model dir, the key it came from, the remaining args) from lm-eval ``model_args``.

    lm-eval splits ``model_args`` strings at every comma, so ``path=runs/g/resolution=64,tokens=16`` arrives as
    ``path=runs/g/resolution=64`` plus ``tokens=16``: the pieces that follow the path are joined back while that
    names an existing dir (the longest such wins). Quotes around the path are removed.
    """
    rest = dict(args)
    key = next((k for k in PATH_KEYS if rest.get(k) not in (None, "")), None)
    if key is None:
        return None, None, {k: v for k, v in rest.items() if k not in PATH_KEYS}
    raw = str(rest.pop(key))
    for other in PATH_KEYS:
        rest.pop(other, None)
    best, used = _unquote(raw), 0
    keys = list(args)
    following = keys[keys.index(key) + 1:]
    candidate = raw
    for count, name in enumerate(following, start=1):
        if name in PATH_KEYS:
            break
        candidate += "," + _piece(name, args[name])
        if Path(_unquote(candidate)).exists():
            best, used = _unquote(candidate), count
    for name in following[:used]:
        rest.pop(name, None)
    return best, key, rest


def load_model_from_args(path: str | None, args: Mapping[str, Any], ignored: Sequence[str], takes: str,
                         device: str = "cpu", on_run_dir: Callable[[str, Path], None] | None = None) -> Any:
    """Our MLLM from an evaluation harness's ``model_args``: ``path`` (a run dir: its last checkpoint, a checkpoint
    dir or a ``mm build -o`` dir) plus the other ``args``; keys in ``ignored`` (the harness's own) are dropped and any
    other key is an MMError naming ``takes`` (what the model accepts). A CUDA device without CUDA falls back to CPU,
    as the harnesses' hf models do. ``on_run_dir(path, checkpoint)`` is called when ``path`` is a run dir."""
    path, _, unknown = model_path({"path": path, **args})
    unknown = {k: v for k, v in unknown.items() if k not in ignored}
    if path is None:
        raise MMError("model_args: pass path=<run dir, checkpoint dir or mm build -o dir> (or pretrained=)")
    if unknown:
        shown = ",".join(f"{k}={v}" for k, v in unknown.items())
        raise MMError(f"model_args: unknown argument(s) {shown} for model mm (path={path}); a path containing "
                      f"commas that does not exist as split may be quoted: path=\"runs/g/a=1,b=2\"; model mm takes {takes}")
    import torch

    from mmbench_cli.evaluate.target import resolve_target
    from mmbench_cli.model import load_model

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
    checkpoint = resolve_target(path).checkpoints[-1].path
    if on_run_dir is not None and Path(path).resolve() != checkpoint.resolve():
        on_run_dir(path, checkpoint)
    return load_model(checkpoint, device=device)


# ------------------------------------------------------------------------------------------ mm lm-eval
SUBCOMMANDS = ("run", "ls", "validate")


def lm_eval_argv(argv: Sequence[str]) -> list[str]:
    """lm-eval arguments with our defaults filled in: ``--model mm`` and ``--include_path evals/`` for a run that
    names neither (``ls``/``validate`` and explicit choices are passed through untouched)."""
    args = list(argv)
    if not args or args[0] in ("ls", "validate") or any(a in ("-h", "--help") for a in args):
        return args
    names = {a.split("=", 1)[0] for a in args}
    extra = []
    if "--model" not in names:
        extra += ["--model", MODEL_NAME]
    if "--include_path" not in names:
        extra += ["--include_path", str(resource_path("evals"))]
    if args[0] == "run":
        return ["run", *extra, *args[1:]]
    return [*extra, *args]


def _option(args: Sequence[str], *names: str) -> str | None:
    """The value of the last ``--name VALUE`` / ``--name=VALUE`` among ``args`` (None if absent)."""
    found = None
    for index, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name in names:
            found = value if equals else (args[index + 1] if index + 1 < len(args) else "")
    return found


def check_output_path(args: Sequence[str]) -> None:
    """MMError if ``--output_path`` (lm-eval's and lmms-eval's) names an existing file: both write into a dir (beside
    a FILE.json, a new FILE_<date>.json) and, given a file, log a warning and save nothing."""
    from mmbench_cli.rundir import refuse_overwrite

    output = _option(list(args), "--output_path", "-o")
    if output:
        refuse_overwrite(Path(output), "--output_path", Path.is_dir)


def check_args(argv: Sequence[str]) -> None:
    """Refuse (MMError, before lm-eval starts) what lm-eval would only warn about or fail on with a traceback:
    an ``--output_path`` that is an existing file (lm-eval logs a warning and saves nothing), a run without
    ``--tasks``, and a ``--batch_size`` that is not a positive integer or ``auto``."""
    from mmbench_cli.errors import MMError

    args = list(argv)
    if not args or args[0] in ("ls", "validate") or any(a in ("-h", "--help") for a in args):
        return
    check_output_path(args)
    if not _option(args, "--tasks", "-t"):
        raise MMError("--tasks: name at least one task (`mm lm-eval ls tasks` lists them)")
    batch = _option(args, "--batch_size", "-b")
    if batch is not None and not (batch.isdigit() and int(batch) > 0) and batch.partition(":")[0] != "auto":
        raise MMError(f"--batch_size {batch}: must be a positive integer, auto or auto:N")


def run_cli(argv: Sequence[str]) -> int:
    """Run lm-eval's own command line (``lm_eval.__main__.cli_evaluate``) on ``argv`` with ``mm`` registered;
    returns its exit code. MMErrors raised by our model (a bad path...) propagate to the caller, as do lm-eval's
    ValueErrors about its arguments (an unknown task or model), as one-line MMErrors."""
    from mmbench_cli.errors import MMError

    check_args(argv)
    install()
    registry = importlib.import_module(REGISTRY_MODULE)  # registers mm and lm-eval's own models through the hook
    model = _option(list(argv), "--model")
    if model and argv and argv[0] not in ("ls", "validate") and model not in registry.model_registry:
        raise MMError(f"--model {model}: no such lm-eval model; known: {', '.join(sorted(registry.model_registry))}")
    from lm_eval.__main__ import cli_evaluate

    return call_with_argv(cli_evaluate, ["lm-eval", *lm_eval_argv(argv)])


def call_with_argv(main: Callable[[], Any], argv: Sequence[str]) -> int:
    """Run a command line's ``main()`` with ``sys.argv`` set to ``argv`` (restored after); returns its exit code
    (its SystemExit's, else 0)."""
    saved = sys.argv
    sys.argv = list(argv)
    try:
        main()
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except ValueError as error:  # lm-eval's word for a bad argument: an unknown task or model, no tasks found
        raise MMError(f"lm-eval: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    finally:
        sys.argv = saved
    return 0
