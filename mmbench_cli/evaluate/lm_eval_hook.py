"""Register ``model="mm"`` with lm-evaluation-harness lazily, without importing lm_eval (or torch) ourselves.

``install()`` (called by ``import mmbench_cli``) adds a tiny import hook: when ``lm_eval.api.registry`` is
imported later, a placeholder ``"mm" -> "mmbench_cli.evaluate.text:MMLM"`` is put into its model registry,
so ``lm_eval.simple_evaluate(model="mm", ...)`` (or ``lm_eval --model mm`` after ``import mmbench_cli``)
imports our adapter only when it is used. Importing lm_eval eagerly would add seconds to ``mm --help``.
Standard library only.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

REGISTRY_MODULE = "lm_eval.api.registry"
MODEL_NAME = "mm"
TARGET = "mmbench_cli.evaluate.text:MMLM"


def register(registry: ModuleType) -> None:
    """Put the lazy ``mm`` placeholder into an imported ``lm_eval.api.registry`` (idempotent)."""
    model_registry = getattr(registry, "model_registry", None)
    if model_registry is not None and MODEL_NAME not in model_registry:
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
