"""What ``mm eval`` is asked to do, typed: an ``EvalRequest`` travels from the CLI (or ``mm ablate``, or Python)
to ``evaluate``; unset fields fall back to the run config's ``eval`` section (``EvalConfig``), the way
``mm pretrain`` takes a ``Config``.

``EvalSettings`` is the resolved part that decides a cell's numbers (besides model and task); its fingerprint
tells whether a cell computed earlier can be reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.errors import MMError

if TYPE_CHECKING:
    from mmbench_cli.config import EvalConfig
    from mmbench_cli.evaluate.tasks import TaskSpec

DEMO_SELECTIONS = ("random", "rices")


def _at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise MMError(f"{name} {value!r}: must be an integer >= {low}")


@dataclass
class EvalRequest:
    """One ``mm eval`` call: what to evaluate and the options given (``None``: the run config's value).

    Validated on construction: a bad value is a one-line MMError naming the option.
    """

    target: Path
    tasks: list[str] | None = None
    shots: list[int] | None = None
    seeds: int | None = None
    all_checkpoints: bool = False
    demo_selection: str | None = None
    num_samples: int | None = None
    batch_size: int | None = None
    max_new_tokens: int | None = None
    text_only_zero_shot: bool | None = None
    include_paths: list[Path] = field(default_factory=list)
    task_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    force: bool = False
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.target = Path(self.target)
        if self.tasks is not None and not self.tasks:
            raise MMError("--tasks: needs at least one task")
        for shots in self.shots or []:
            _at_least("--shots", shots, 0)
        _at_least("--seeds", self.seeds, 1)
        _at_least("--num-samples", self.num_samples, 1)
        _at_least("--batch-size", self.batch_size, 1)
        _at_least("--max-new-tokens", self.max_new_tokens, 1)
        if self.demo_selection is not None and self.demo_selection not in DEMO_SELECTIONS:
            raise MMError(f"--demo-selection {self.demo_selection!r}: choose {' or '.join(DEMO_SELECTIONS)}")

    def resolve(self, ecfg: EvalConfig) -> ResolvedEval:
        """Fill every unset option from the run config's ``eval`` section."""
        selection = self.demo_selection if self.demo_selection is not None else ecfg.demo_selection
        if selection not in DEMO_SELECTIONS:
            raise MMError(f"eval.demo_selection {selection!r}: choose {' or '.join(DEMO_SELECTIONS)}")
        settings = EvalSettings(
            num_samples=self.num_samples if self.num_samples is not None else ecfg.num_samples,
            demo_selection=selection,
            max_new_tokens=self.max_new_tokens,
            num_beams=ecfg.num_beams,
            text_only_zero_shot=(ecfg.zero_shot_text_demos if self.text_only_zero_shot is None
                                 else self.text_only_zero_shot),
            batch_size=self.batch_size if self.batch_size is not None else ecfg.batch_size,
        )
        num_seeds = self.seeds if self.seeds is not None else ecfg.seeds
        return ResolvedEval(
            tasks=list(self.tasks if self.tasks is not None else ecfg.tasks),
            shots=sorted(set(self.shots if self.shots is not None else ecfg.shots)),
            seed_ids=[0] if selection == "rices" else list(range(num_seeds)),
            settings=settings,
        )


@dataclass
class EvalSettings:
    """The knobs that decide a cell's numbers (besides model and task); part of the reuse fingerprint."""

    num_samples: int
    demo_selection: str
    max_new_tokens: int | None
    num_beams: int
    text_only_zero_shot: bool
    batch_size: int

    def fingerprint(self, spec: TaskSpec, checkpoint_hash: str) -> str:
        """A short hash of everything that decides a cell's value (batch size excluded: it does not)."""
        data = {"num_samples": self.num_samples, "demo_selection": self.demo_selection,
                "max_new_tokens": self.max_new_tokens or spec.max_new_tokens, "num_beams": self.num_beams,
                "text_only_zero_shot": self.text_only_zero_shot, "task": spec.fingerprint(),
                "checkpoint": checkpoint_hash}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ResolvedEval:
    """A request with every option decided: the tasks, shot counts and demo seeds to run, and the settings."""

    tasks: list[str]
    shots: list[int]
    seed_ids: list[int]
    settings: EvalSettings
