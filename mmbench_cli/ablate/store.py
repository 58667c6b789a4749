"""The grid's files: ``grid.json`` (the plan), one run dir per cell, each cell's ``ablate.json`` state, and the
``summary.csv`` / ``summary.parquet`` tables (plus ``summary_seeds.*`` aggregated over the seed axis).

A cell is *done* only when its ``ablate.json`` says so, which the cell runner writes (atomically) after
training and evaluation both finished; anything else is resumed or re-run. Nothing here touches a done cell.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from pathlib import Path
from typing import Any

from mmbench_cli.ablate.grid import SEED_AXIS, GridPlan
from mmbench_cli.errors import MMError
from mmbench_cli.rundir import atomic_write_bytes, atomic_write_json, atomic_write_text, read_jsonl

GRID_FILE = "grid.json"
CELL_FILE = "ablate.json"
CELL_STATES = ("pending", "partial", "running", "done", "failed")
SUMMARY_AVERAGES = ("caption_avg", "vqa_avg", "textcore")
_EVAL_NAME = re.compile(r"^step_(\d+)\.json$")
_CKPT_NAME = re.compile(r"^step_(\d+)$")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


class GridStore:
    """The directory of one grid: ``grid.json`` plus ``<cell-id>/`` run dirs."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def cell_dir(self, cell_id: str) -> Path:
        """The run dir of a cell."""
        return self.dir / cell_id

    def check_compatible(self, plan: GridPlan) -> None:
        """Refuse (MMError) a grid dir made by another base config, or a dir that is not a grid at all."""
        if not self.dir.exists():
            return
        if not self.dir.is_dir():
            raise MMError(f"{self.dir}: exists and is not a directory; choose another --out")
        saved = read_json(self.dir / GRID_FILE)
        if saved is None:
            if (self.dir / GRID_FILE).exists():
                raise MMError(f"{self.dir / GRID_FILE}: unreadable; delete the grid dir or choose another --out")
            if any(not entry.name.startswith(".") for entry in self.dir.iterdir()):
                raise MMError(f"{self.dir}: not empty and not a grid dir (no {GRID_FILE}); choose another --out")
            return
        if saved.get("base_config_hash") != plan.base_hash:
            raise MMError(
                f"{self.dir}: this grid dir was made with a different base config "
                f"(hash {saved.get('base_config_hash')} != {plan.base_hash}); use the same config, "
                "or choose another --out"
            )
        for cell in plan.cells:
            state = read_json(self.cell_dir(cell.id) / CELL_FILE)
            if state and state.get("config_hash") not in (None, cell.to_json()["config_hash"]):
                raise MMError(
                    f"{self.cell_dir(cell.id)}: this cell was run with a different config (axis presets changed?); "
                    "delete that cell dir or choose another --out"
                )

    def write_plan(self, plan: GridPlan) -> None:
        """Save the plan as ``grid.json`` (cells of earlier plans with the same base are kept as extra rows)."""
        data = plan.to_json()
        saved = read_json(self.dir / GRID_FILE) or {}
        planned = {cell["id"] for cell in data["cells"]}
        data["extra_cells"] = sorted(
            {cell["id"] for cell in saved.get("cells", []) if cell["id"] not in planned}
            | {cid for cid in saved.get("extra_cells", []) if cid not in planned}
        )
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(self.dir / GRID_FILE, data)

    def read_plan(self) -> dict[str, Any]:
        """The saved ``grid.json`` (MMError if this is not a grid dir)."""
        data = read_json(self.dir / GRID_FILE)
        if data is None:
            raise MMError(f"{self.dir}: not a grid dir (no readable {GRID_FILE}); run mm ablate first")
        return data

    def cell_record(self, cell_id: str) -> dict[str, Any]:
        """The cell's ``ablate.json`` (empty if it never started)."""
        return read_json(self.cell_dir(cell_id) / CELL_FILE) or {}

    def write_cell_record(self, cell_id: str, record: dict[str, Any]) -> None:
        """Atomically write the cell's ``ablate.json``."""
        atomic_write_json(self.cell_dir(cell_id) / CELL_FILE, record)

    def cell_state(self, cell_id: str) -> str:
        """pending (nothing yet), partial (has checkpoints, resumable), running, done or failed."""
        record = self.cell_record(cell_id)
        state = record.get("state")
        if state == "done" and final_eval(self.cell_dir(cell_id)) is not None:
            return "done"
        if state == "failed":
            return "failed"
        if state == "running":
            return "running"
        return "partial" if checkpoint_steps(self.cell_dir(cell_id)) else "pending"

    def progress(self, cell_id: str) -> dict[str, Any]:
        """Latest training progress of a cell from its ``metrics.jsonl`` (step, loss), for the live table."""
        path = self.cell_dir(cell_id) / "metrics.jsonl"
        if not path.exists():
            return {}
        try:
            with path.open("rb") as handle:
                handle.seek(max(0, path.stat().st_size - 4096))
                lines = handle.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return {}
        for line in reversed(lines):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
        return {}

    def write_summary(self, plan: GridPlan) -> dict[str, Path]:
        """Write ``summary.{csv,parquet}`` (one row per cell) and ``summary_seeds.{csv,parquet}`` (over seeds)."""
        import pandas as pd

        rows = [self.cell_row(plan, cell) for cell in plan.cells]
        table = pd.DataFrame(rows)
        seeds = aggregate_over_seeds(table, [axis.name for axis in plan.axes if axis.name != SEED_AXIS])
        paths = {}
        for stem, frame in (("summary", table), ("summary_seeds", seeds)):
            paths[f"{stem}.csv"] = atomic_write_text(self.dir / f"{stem}.csv", frame.to_csv(index=False))
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            paths[f"{stem}.parquet"] = atomic_write_bytes(self.dir / f"{stem}.parquet", buffer.getvalue())
        return paths

    def cell_row(self, plan: GridPlan, cell: Any) -> dict[str, Any]:
        """One summary row: axis values, state, final loss and every metric per shots of the final checkpoint."""
        row: dict[str, Any] = {"cell": cell.id, "group": cell.group}
        for name, label in cell.labels.items():
            value = cell.values[name]
            row[name] = value if isinstance(value, (int, float, str, bool)) else label
        run_dir = self.cell_dir(cell.id)
        record = self.cell_record(cell.id)
        row["state"] = self.cell_state(cell.id)
        metrics = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
        losses = [m for m in metrics if m.get("loss") is not None]
        row["final_loss"] = losses[-1]["loss"] if losses else math.nan
        evaluation = final_eval(run_dir)
        row["step"] = evaluation["step"] if evaluation else (losses[-1]["step"] if losses else math.nan)
        row["train_flops"] = (evaluation or {}).get("train_flops") or (losses[-1].get("train_flops") if losses else None)
        row["train_s"] = record.get("train_s", math.nan)
        row["eval_s"] = record.get("eval_s", math.nan)
        if evaluation:
            row.update(flatten_eval(evaluation))
        return row


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints (``checkpoints/step_<N>/``) in a run dir, sorted."""
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _CKPT_NAME.match(p.name)) and p.is_dir())


def final_eval(run_dir: Path) -> dict[str, Any] | None:
    """The results JSON of the final checkpoint (the highest ``eval/step_<N>.json``), or None."""
    directory = run_dir / "eval"
    if not directory.is_dir():
        return None
    steps = sorted(int(m.group(1)) for p in directory.iterdir() if (m := _EVAL_NAME.match(p.name)))
    last_ckpt = checkpoint_steps(run_dir)
    if not steps or (last_ckpt and steps[-1] < last_ckpt[-1]):
        return None
    return read_json(directory / f"step_{steps[-1]}.json")


def flatten_eval(evaluation: dict[str, Any]) -> dict[str, float]:
    """``{"<task>/<k>shot": value, ..., "caption_avg/<k>shot": ...}`` from a results JSON."""
    row: dict[str, float] = {}
    for task, by_shots in sorted((evaluation.get("tasks") or {}).items()):
        for shots, result in sorted(by_shots.items(), key=lambda item: int(item[0])):
            row[f"{task}/{shots}shot"] = result.get("value", math.nan)
    for shots, averages in sorted((evaluation.get("summary") or {}).items(), key=lambda item: int(item[0])):
        for name in SUMMARY_AVERAGES:
            if averages.get(name) is not None:
                row[f"{name}/{shots}shot"] = averages[name]
    return row


def aggregate_over_seeds(table: Any, axis_names: list[str]) -> Any:
    """Mean and std over the seed axis of every numeric column, one row per group of the other axes."""
    import pandas as pd

    if table.empty:
        return table
    numeric = [c for c in table.columns if c not in ("cell", "group", "state", SEED_AXIS, *axis_names)
               and pd.api.types.is_numeric_dtype(table[c])]
    rows = []
    for group, frame in table.groupby("group", sort=False):
        done = frame[frame["state"] == "done"]
        row: dict[str, Any] = {"group": group}
        for name in axis_names:
            row[name] = frame[name].iloc[0]
        row["num_seeds"] = len(done)
        row["seeds"] = ",".join(str(s) for s in done[SEED_AXIS]) if SEED_AXIS in done else ""
        for column in numeric:
            values = done[column].astype(float)
            row[column] = values.mean() if len(values) else math.nan
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)
