"""What ``mm eval`` is pointed at: a run dir (its last or every checkpoint), one checkpoint, or a ``mm build -o``
model dir, resolved to the run dir results go to and the checkpoints to evaluate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmbench_cli.errors import MMError
from mmbench_cli.rundir import Checkpoint, RunDir, model_dir_checkpoint

if TYPE_CHECKING:
    from mmbench_cli.config import Config


@dataclass
class Target:
    """What ``mm eval`` was pointed at: the run dir results go to and the checkpoints to evaluate."""

    run: RunDir
    checkpoints: list[Checkpoint]
    config: Config
    name: str
    notes: list[str] = field(default_factory=list)  # what the user should know about the choice made


def resolve_target(path: str | Path, all_checkpoints: bool = False) -> Target:
    """A run dir (last or all checkpoints), a ``checkpoints/step_<N>/`` dir, or a ``mm build -o`` model dir."""
    from mmbench_cli.config import Config, load_saved_config
    from mmbench_cli.rundir import CHECKPOINTS_DIR, MODEL_FILE

    path = Path(path)
    if not path.exists():
        raise MMError(f"{path}: no such run dir or checkpoint; pass a run dir (runs/<name>), a "
                      "checkpoints/step_<N>/ dir, or a model saved by `mm build -o`")
    notes = []
    if (path / MODEL_FILE).is_file():
        run = RunDir(path.parent.parent if path.parent.name == CHECKPOINTS_DIR else path)
        checkpoints = [model_dir_checkpoint(path)]
    else:
        run = RunDir(path)
        checkpoints = run.checkpoints()
        if not checkpoints:
            raise MMError(f"{path}: no checkpoints found (expected checkpoints/step_<N>/ with model.safetensors); "
                          "train with `mm pretrain` or pass a model dir saved by `mm build -o`")
        skipped = [step for step in run.incomplete_checkpoint_steps() if step > checkpoints[-1].step]
        if skipped:
            notes.append(f"{run.checkpoints_dir}: step_{skipped[-1]} has no checkpoint.json (incomplete or damaged) "
                         f"and is skipped; the last complete checkpoint is step {checkpoints[-1].step}")
        if not all_checkpoints:
            checkpoints = checkpoints[-1:]
    config_path = run.config_path
    config = load_saved_config(config_path) if config_path.is_file() else Config()
    return Target(run=run, checkpoints=checkpoints, config=config, name=run.path.resolve().name, notes=notes)
