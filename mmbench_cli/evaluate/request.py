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
VQA_NORMALIZE = ("official", "always")


def _at_least(name: str, value: int | None, low: int, high: int) -> None:
    """MMError unless ``value`` is None or an integer from ``low`` to ``high`` (config.py's limits)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise MMError(f"{name} {value!r}: must be an integer >= {low}")
    if value is not None and value > high:
        raise MMError(f"{name} {value!r}: must be at most {high:,} (a limit of mmbench: docs/architecture.md)")


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
    vqa_normalize: str | None = None
    rices_encoder: str | None = None
    include_paths: list[Path] = field(default_factory=list)
    task_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    force: bool = False
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.target = Path(self.target)
        if self.tasks is not None and not self.tasks:
            raise MMError("--tasks: needs at least one task")
        from mmbench_cli.config import MAX_BATCH, MAX_DEMO_SEEDS, MAX_EVAL_SAMPLES, MAX_SHOTS, MAX_TOKENS

        for shots in self.shots or []:
            _at_least("--shots", shots, 0, MAX_SHOTS)
        _at_least("--seeds", self.seeds, 1, MAX_DEMO_SEEDS)
        _at_least("--num-samples", self.num_samples, 1, MAX_EVAL_SAMPLES)
        _at_least("--batch-size", self.batch_size, 1, MAX_BATCH)
        _at_least("--max-new-tokens", self.max_new_tokens, 1, MAX_TOKENS)
        if self.demo_selection is not None and self.demo_selection not in DEMO_SELECTIONS:
            raise MMError(f"--demo-selection {self.demo_selection!r}: choose {' or '.join(DEMO_SELECTIONS)}")
        if self.vqa_normalize is not None and self.vqa_normalize not in VQA_NORMALIZE:
            raise MMError(f"--vqa-normalize {self.vqa_normalize!r}: choose {' or '.join(VQA_NORMALIZE)}")

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
            vqa_normalize=self.vqa_normalize if self.vqa_normalize is not None else ecfg.vqa_normalize,
            rices_encoder=self.rices_encoder if self.rices_encoder is not None else ecfg.rices_encoder,
        )
        if settings.rices_encoder and selection != "rices":
            settings.rices_encoder = None  # only RICES looks at it: it must not change other cells' fingerprints
        if settings.rices_encoder:
            settings.rices_digest = _weights_digest(settings.rices_encoder)  # a bad path fails before any work
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
    vqa_normalize: str = "official"
    rices_encoder: str | None = None
    rices_digest: str | None = None  # sha256 of the RICES encoder's weights (set by ``EvalRequest.resolve``)

    def vqa_normalize_for(self, spec: TaskSpec) -> str | None:
        """The VQA normalisation a task's metric uses (None for metrics it does not apply to)."""
        return spec.task_type.normalization(spec, self.vqa_normalize)

    def fingerprint(self, spec: TaskSpec, checkpoint_hash: str) -> str:
        """A short hash of everything that decides a cell's value (batch size excluded: it does not).

        The VQA normalisation enters only for tasks scored with VQA accuracy, and the RICES encoder (by the
        bytes of its weights) only when it is used, so other cells keep the fingerprints they had before
        these settings existed.
        """
        data = {"num_samples": self.num_samples, "demo_selection": self.demo_selection,
                "max_new_tokens": self.max_new_tokens or spec.max_new_tokens, "num_beams": self.num_beams,
                "text_only_zero_shot": self.text_only_zero_shot, "task": spec.fingerprint(),
                "checkpoint": checkpoint_hash}
        if self.vqa_normalize_for(spec) is not None:
            data["vqa_normalize"] = self.vqa_normalize
        if self.rices_encoder:
            data["rices_encoder"] = self.rices_digest or _weights_digest(self.rices_encoder)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _weights_digest(spec: str) -> str:
    """sha256 of the ``*.safetensors`` files of an ``hf:<dir>`` encoder (its identity, wherever it lives)."""
    from mmbench_cli.config import is_local_path

    directory = Path(spec.removeprefix("hf:")).expanduser() if is_local_path(spec) else None
    files = sorted(directory.glob("*.safetensors")) if directory is not None and directory.is_dir() else []
    if not files:
        raise MMError(f"eval.rices_encoder: {spec} is not a directory with .safetensors weights; pass hf:<dir of a "
                      "CLIP/SigLIP checkpoint saved by save_pretrained>")
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


@dataclass
class ResolvedEval:
    """A request with every option decided: the tasks, shot counts and demo seeds to run, and the settings."""

    tasks: list[str]
    shots: list[int]
    seed_ids: list[int]
    settings: EvalSettings
