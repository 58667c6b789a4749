"""Run-directory handling for ``mm pretrain``: same-config checks, --force/--resume, resume point, metadata.

Rank 0 alone calls these (under the run's ``RunLock``). A run dir holding another config is refused unless
``--force`` (start over) or ``--resume`` with only "resumable" differences (more steps, other logging or
checkpoint cadence, another device).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mmbench_cli.config import Config, config_hash, config_to_dict, config_to_yaml, load_config
from mmbench_cli.errors import MMError
from mmbench_cli.rundir import atomic_write_json, atomic_write_text, read_jsonl, run_metadata
from mmbench_cli.train.checkpoints import CHECKPOINTS_DIR, TRAINER_STATE_FILE, list_checkpoints

RUN_FILES = ("config.yaml", "meta.json", "metrics.jsonl", "status")
RUN_DIRS = (CHECKPOINTS_DIR, "eval")
# Config keys that may change when a run is continued with --resume (they do not change what was trained).
RESUMABLE_KEYS = frozenset(
    {
        "train.steps",
        "train.checkpoint_every",
        "train.log_spaced_checkpoints",
        "train.log_every",
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


def wipe_run(run_dir: Path) -> None:
    """Delete the files a previous run wrote (and only those) so that the dir can be reused with --force."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool, force: bool) -> int | None:
    """Check the run dir against ``cfg``; return the checkpoint step to resume from, or None to start fresh.

    Call with the run's lock held. Raises MMError (touching nothing) when the dir holds another config and
    neither --force nor a compatible --resume was given.
    """
    config_file = run_dir / "config.yaml"
    if config_file.exists():
        if force:
            wipe_run(run_dir)
            return None
        try:
            old = load_config(config_file)
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
    elif run_dir.exists() and not force:
        others = sorted(path.name for path in run_dir.iterdir() if path.name != ".lock")
        if others:
            raise MMError(
                f"{run_dir}: exists and is not a run directory (no config.yaml; holds {', '.join(others[:3])}); "
                "choose another --out, or pass --force to write the run into it"
            )
    steps = [step for step, path in list_checkpoints(run_dir) if step <= cfg.train.steps]
    steps = [step for step in steps if (run_dir / CHECKPOINTS_DIR / f"step_{step}" / TRAINER_STATE_FILE).exists()]
    return steps[-1] if steps else None


def truncate_metrics(run_dir: Path, last_step: int | None) -> None:
    """Keep only metric lines up to ``last_step`` (all gone if None) so that a resumed curve has no duplicates."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    kept = [] if last_step is None else [row for row in read_jsonl(path) if row.get("step", 0) <= last_step]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))


def write_run_files(cfg: Config, run_dir: Path, extra_meta: dict[str, Any]) -> None:
    """Write ``config.yaml`` and ``meta.json`` (keeping the first creation time and listing resumes)."""
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    meta = run_metadata(cfg.seed, extra_meta)
    meta["config_hash"] = config_hash(cfg)
    old_path = run_dir / "meta.json"
    if old_path.exists():
        try:
            old = json.loads(old_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("created") and extra_meta.get("resumed_from") is not None:
            meta["first_created"] = old.get("first_created", old["created"])
    atomic_write_json(old_path, meta)


def update_meta(run_dir: Path, updates: dict[str, Any]) -> None:
    """Merge ``updates`` into ``meta.json``."""
    path = run_dir / "meta.json"
    meta = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    meta.update(updates)
    atomic_write_json(path, meta)


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
