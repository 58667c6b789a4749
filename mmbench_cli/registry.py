"""One tiny generic registry, shared by encoders, connectors, LMs, tasks, task types, data formats and executors.

Adding a component is one class plus one decorator line::

    @CONNECTORS.register("avgpool")
    class AvgPoolConnector(nn.Module): ...

Registries are filled when the module defining the components is imported; ``ensure_loaded`` names those
modules so that a lookup never misses a component just because its module was not imported yet.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from mmbench_cli.errors import MMError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → object map with helpful errors.

    ``field`` is the config key users set to pick an entry (e.g. ``model.connector``); it is used in errors.
    ``modules`` are imported lazily before the first lookup so that registration happens on demand.
    """

    def __init__(self, kind: str, field: str, modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.field = field
        self._modules = modules
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a name can be registered only once."""

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name`` without a decorator."""
        return self.register(name)(obj)

    def ensure_loaded(self) -> None:
        """Import the modules that fill this registry (once)."""
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)

    def get(self, name: str) -> T:
        """Return the entry called ``name`` or raise MMError listing the allowed names."""
        self.ensure_loaded()
        if name not in self._entries:
            raise MMError(f"unknown {self.field} {name!r}; choose from: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self.ensure_loaded()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self.ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs, sorted by name."""
        return [(name, self._entries[name]) for name in self.names()]


ENCODERS: Registry[Any] = Registry("encoder", "model.encoder", ("mmbench_cli.model.encoders",))
CONNECTORS: Registry[Any] = Registry("connector", "model.connector", ("mmbench_cli.model.connectors",))
FUSIONS: Registry[Any] = Registry("fusion", "model.fusion", ("mmbench_cli.model.fusion",))
LMS: Registry[Any] = Registry("language model", "model.lm", ("mmbench_cli.model.lm",))
DATA_FORMATS: Registry[Any] = Registry("data format", "format", ("mmbench_cli.data.formats",
                                                                  "mmbench_cli.data.benchmarks"))
TASKS: Registry[Any] = Registry("task", "eval.tasks", ("mmbench_cli.evaluate.tasks",))
TASK_TYPES: Registry[Any] = Registry("task type", "task_type", (
    "mmbench_cli.evaluate.task_types.caption", "mmbench_cli.evaluate.task_types.vqa",
    "mmbench_cli.evaluate.task_types.multiple_choice", "mmbench_cli.evaluate.task_types.yes_no"))
EXECUTORS: Registry[Any] = Registry("executor", "--executor", ("mmbench_cli.ablate.executors",))
STRATEGIES: Registry[Any] = Registry("training strategy", "train.strategy", ("mmbench_cli.train.strategies",))
