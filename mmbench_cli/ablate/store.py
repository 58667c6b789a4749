"""The grid's files: ``grid.json`` (the plan), one run dir per cell, each cell's ``ablate.json`` state, and the
``summary.csv`` / ``summary.parquet`` tables (plus ``summary_seeds.*`` aggregated over the seed axis).

A cell is *done* only when its ``ablate.json`` says so, which the cell runner writes (atomically) after
training and evaluation both finished; anything else is resumed or re-run. Nothing here touches a done cell.

The grid's own files (``grid.json``, ``ablate.json``, ``summary.*``) are laid out here; a cell's run dir is read
only through ``mmbench_cli.rundir.RunDir``, and the summary's per-family averages are the families' summary keys
(``mmbench_cli.families``).
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.ablate.grid import SEED_AXIS, Cell, GridPlan
from mmbench_cli.errors import MMError
from mmbench_cli.families import SUMMARY_KEYS
from mmbench_cli.rundir import (
    GRID_FILE,
    EvalResult,
    RunDir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json_file,
)

if TYPE_CHECKING:
    import pandas as pd

CELL_FILE = "ablate.json"
CELL_STATES = ("pending", "partial", "running", "done", "failed")


def read_json(path: Path) -> dict[str, Any] | None:
    """A grid file's JSON object (``grid.json``, ``ablate.json``), or None if it is missing, unreadable or not an
    object."""
    try:
        data = read_json_file(path)
    except MMError:
        return None
    return data if isinstance(data, dict) else None


class GridStore:
    """The directory of one grid: ``grid.json`` plus ``<cell-id>/`` run dirs."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def cell_dir(self, cell_id: str) -> Path:
        """The run dir of a cell."""
        return self.dir / cell_id

    def cell_run(self, cell_id: str) -> RunDir:
        """The run dir of a cell, to read its files."""
        return RunDir(self.cell_dir(cell_id))

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
        if state == "done" and self.cell_run(cell_id).final_results() is not None:
            return "done"
        if state == "failed":
            return "failed"
        if state == "running":
            return "running"
        return "partial" if self.cell_run(cell_id).checkpoint_steps() else "pending"

    def progress(self, cell_id: str) -> dict[str, Any]:
        """Latest training progress of a cell from its ``metrics.jsonl`` (step, loss), for the live table."""
        return self.cell_run(cell_id).last_metrics()

    def write_summary(self, plan: GridPlan) -> dict[str, Path]:
        """Write ``summary.{csv,parquet}`` (one row per cell, failed ones with their ``error``) and
        ``summary_seeds.{csv,parquet}`` (over the seeds of done cells)."""
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

    def cell_row(self, plan: GridPlan, cell: Cell) -> dict[str, Any]:
        """One summary row: axis values, state, ``error`` (a failed cell's message, else empty), final loss and every
        metric per shots of the final checkpoint. A failed cell keeps its row (metrics NaN where it has none)."""
        row: dict[str, Any] = {"cell": cell.id, "group": cell.group}
        for name, label in cell.labels.items():
            value = cell.values[name]
            row[name] = value if isinstance(value, (int, float, str, bool)) else label
        run_dir = self.cell_run(cell.id)
        record = self.cell_record(cell.id)
        row["state"] = self.cell_state(cell.id)
        row["error"] = str(record.get("error") or "failed (no error recorded)") if row["state"] == "failed" else ""
        losses = [m for m in run_dir.read_metrics() if m.get("loss") is not None]
        row["final_loss"] = losses[-1]["loss"] if losses else math.nan
        evaluation = run_dir.final_results()
        row["step"] = evaluation.step if evaluation else (losses[-1]["step"] if losses else math.nan)
        flops = evaluation.train_flops if evaluation else None
        row["train_flops"] = flops or (losses[-1].get("train_flops") if losses else None)
        row["train_s"] = record.get("train_s", math.nan)
        row["eval_s"] = record.get("eval_s", math.nan)
        if evaluation:
            row.update(flatten_eval(evaluation))
        return row


def flatten_eval(evaluation: EvalResult) -> dict[str, float]:
    """``{"<task>/<k>shot": value, ..., "caption_avg/<k>shot": ...}`` from a checkpoint's results."""
    row: dict[str, float] = {}
    for task, by_shots in sorted(evaluation.tasks.items()):
        for shots, cell in sorted(by_shots.items(), key=lambda item: int(item[0])):
            row[f"{task}/{shots}shot"] = cell.value
    for shots, averages in sorted(evaluation.summary.items(), key=lambda item: int(item[0])):
        for name in SUMMARY_KEYS:
            value = averages.get(name)
            if value is not None:
                row[f"{name}/{shots}shot"] = value
    return row


def aggregate_over_seeds(table: pd.DataFrame, axis_names: list[str]) -> pd.DataFrame:
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
