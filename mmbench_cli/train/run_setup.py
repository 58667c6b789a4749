"""Run-directory handling for ``mm pretrain``: same-config checks, --force/--resume, resume point, metadata.

Rank 0 alone calls these (under the run's ``RunLock``). A run dir holding another config is refused unless
``--force`` (start over) or ``--resume`` with only "resumable" differences (more steps, other logging or
checkpoint cadence, another device).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmbench_cli.config import Config, config_hash, config_to_dict, config_to_yaml, load_saved_config
from mmbench_cli.errors import MMError
from mmbench_cli.rundir import RunDir, run_metadata, what_is_at
from mmbench_cli.train.checkpoints import resume_point

# Config keys that may change when a run is continued with --resume (they do not change what was trained).
RESUMABLE_KEYS = frozenset(
    {
        "train.steps",
        "train.checkpoint_every",
        "train.log_spaced_checkpoints",
        "train.log_every",
        "train.trackers",
        "train.device",
        "data.num_workers",
        "data.cache_dir",
        "eval",
    }
)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in {"data.data_mix"}:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_differences(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    a, b = _flatten(config_to_dict(old)), _flatten(config_to_dict(new))
    return sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key))


def _resumable(key: str) -> bool:
    return key in RESUMABLE_KEYS or key.split(".", 1)[0] in RESUMABLE_KEYS


def note(message: str) -> None:
    """Print one ``note:`` line on stderr (a repair or fallback the user should know about)."""
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]note:[/] {message}", highlight=False, soft_wrap=True)


def check_out_dir(run_dir: Path) -> None:
    """MMError unless ``run_dir`` is a directory or does not exist yet (checked before anything is written)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise MMError(f"--out {run_dir}: is a file, not a run directory; choose another --out")
    parent = next((p for p in run_dir.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise MMError(f"--out {run_dir}: {parent} is a file, not a directory; choose another --out")
    found = what_is_at(run_dir)  # not a run: --force never writes into one
    if found in ("a run's checkpoint", "a saved model", "a report", "a grid directory"):
        raise MMError(f"--out {run_dir}: holds {found}; a run never goes there, even with --force: choose another --out")


def check_run_dir(cfg: Config, run_dir: Path, resume: bool, force: bool) -> None:
    """Refuse (MMError, touching nothing) a run dir that holds another config, unless --force or a --resume that
    changes only resumable keys, and a non-empty dir that is no run dir unless --force. Read-only: ``pretrain`` calls
    it before building the model (a quick refusal) and ``prepare_run_dir`` again under the lock."""
    run = RunDir(run_dir)
    config_file = run.config_path
    if config_file.exists():
        if force:
            return
        try:
            old = load_saved_config(config_file)
        except MMError as error:
            raise MMError(f"{error.message} (the run dir's saved config); use --force to start over") from None
        if config_hash(old) != config_hash(cfg):
            differences = config_differences(old, cfg)
            shown = ", ".join(differences[:4]) + (", ..." if len(differences) > 4 else "")
            if not resume:
                raise MMError(
                    f"{run_dir}: holds a run of a different config (differs in {shown}); "
                    "pass --resume to continue it, --force to start over, or choose another --out"
                )
            fixed = [key for key in differences if not _resumable(key)]
            if fixed:
                raise MMError(
                    f"{run_dir}: --resume cannot change {', '.join(fixed[:4])} of an existing run "
                    "(only steps, logging/checkpoint cadence and device); use --force to start over or another --out"
                )
    elif run_dir.is_dir() and not force:
        others = sorted(path.name for path in run_dir.iterdir() if not path.name.startswith(".lock"))
        if others:
            raise MMError(
                f"{run_dir}: exists and is not a run directory (no config.yaml; holds {', '.join(others[:3])}); "
                "choose another --out, or pass --force to write the run into it"
            )


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool, force: bool) -> int | None:
    """Check the run dir against ``cfg``; return the checkpoint step to resume from, or None to start fresh.

    Call with the run's lock held. First repairs what a killed writer left (``RunDir.recover``). Raises MMError
    (touching nothing) when the dir holds another config and neither --force nor a compatible --resume was given.
    With --force an existing run is set aside (``RunDir.set_aside``), not deleted: the caller drops it once the new
    run has its first checkpoint and restores it if the new run fails before. A newest checkpoint with a damaged
    trainer state is skipped (with a note) for the previous good one.
    """
    run = RunDir(run_dir)
    for message in run.recover():
        note(message)
    if run.config_path.exists() and force:
        run.set_aside()
        return None
    check_run_dir(cfg, run_dir, resume, force)
    checkpoint, notes = resume_point(run.checkpoints(), cfg.train.steps)
    if notes and checkpoint is None:
        raise MMError(f"{notes[0]}, and no earlier checkpoint can be resumed; use --force to start over")
    for message in notes:
        note(f"{message}; resuming from {checkpoint.path.name}")
    return checkpoint.step if checkpoint else None


def fail_run(run_dir: Path, started: bool) -> None:
    """After a failure under the lock: restore a run set aside by --force (the new run never got a checkpoint),
    else mark the run ``failed`` if it had started or was left ``running``/``pending`` (never left running)."""
    run = RunDir(run_dir)
    if run.restore_set_aside():
        note(f"{run_dir}: the new run failed before its first checkpoint; the previous run is back, unchanged")
    elif started or run.read_status() in ("running", "pending"):
        run.write_status("failed")


def write_run_files(cfg: Config, run_dir: Path, extra_meta: dict[str, Any]) -> None:
    """Write ``config.yaml`` and ``meta.json`` (keeping the first creation time and listing resumes)."""
    run = RunDir(run_dir)
    run.write_config(config_to_yaml(cfg))
    meta = run_metadata(cfg.seed, extra_meta)
    meta["config_hash"] = config_hash(cfg)
    try:
        old = run.read_meta()
    except MMError:
        old = {}
    if old.get("created") and extra_meta.get("resumed_from") is not None:
        meta["first_created"] = old.get("first_created", old["created"])
    run.write_meta(meta)


def check_data_inputs(cfg: Config) -> None:
    """Fail fast (before the run dir is touched) on local dataset paths that do not exist."""
    if cfg.data.source != "local":
        return
    if not cfg.data.datasets:
        raise MMError("data.datasets: data.source is local but no datasets are listed; add one or use source: synthetic")
    for index, spec in enumerate(cfg.data.datasets):
        for field in ("path", "images", "questions"):
            value = getattr(spec, field)
            if value is not None and not Path(value).expanduser().exists():
                raise MMError(f"data.datasets[{index}].{field}: {value}: no such file or directory; fix the path")


def init_source(spec: str) -> Path:
    """The checkpoint dir that ``train.init_from`` names: ``RUN_DIR`` (its newest checkpoint) or ``RUN_DIR:STEP``;
    MMError (one line) when there is no such run or checkpoint."""
    path, _, step = spec.rpartition(":")
    if not (path and step.isdigit()):
        path, step = spec, ""
    run = RunDir(Path(path).expanduser())
    steps = run.checkpoint_steps() if run.path.is_dir() else []
    if not steps:
        raise MMError(f"train.init_from: {path}: no run directory with checkpoints; train that stage first or fix "
                      "the path")
    if step and int(step) not in steps:
        raise MMError(f"train.init_from: {path} has no checkpoint at step {step} (it has {', '.join(map(str, steps))})")
    return run.checkpoint_dir(int(step) if step else steps[-1])
