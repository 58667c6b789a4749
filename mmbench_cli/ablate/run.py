"""Run a grid: check the grid dir, lock it, schedule the cells that are not done, show a live table, summarise.

Also the ``--dry-run`` plan with its cost estimate (``estimate.py``), printed as a table on a terminal, as one
tab-separated line per cell when stdout is not a terminal, or as one JSON document (``--json``). Progress (the
live table, a line per finished cell) goes to stderr so stdout stays machine-readable.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from mmbench_cli.ablate.estimate import format_flops as _format_flops
from mmbench_cli.ablate.executors import CellSpec, build_executor
from mmbench_cli.ablate.grid import Cell, GridPlan, link_stages, stage_waves
from mmbench_cli.ablate.store import GridStore, read_json
from mmbench_cli.config import config_hash, config_to_dict
from mmbench_cli.rundir import RunLock, atomic_write_json, cache_root
from mmbench_cli.trackers import require_trackers
from mmbench_cli.train.pretrained_encoder import encoder_dir

if TYPE_CHECKING:
    from collections.abc import Sequence

STATE_STYLE = {"pending": "dim", "partial": "yellow", "running": "cyan", "done": "green", "failed": "red",
               "queued": "dim"}


@dataclass
class GridResult:
    """What ``run_grid`` did: cell states at the end, which were skipped/run, and the summary files."""

    grid_dir: Path
    states: dict[str, str]
    skipped: list[str]
    ran: list[str]
    errors: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Path] = field(default_factory=dict)
    wall_s: float = 0.0
    estimate: dict[str, Any] | None = None  # the last --dry-run's estimate of this plan and executor, if any

    def to_json(self) -> dict[str, Any]:
        """The run as one JSON-able document (``mm ablate --json``)."""
        return {
            "grid_dir": str(self.grid_dir), "wall_s": round(self.wall_s, 3), "states": self.states,
            "skipped": self.skipped, "ran": self.ran, "failed": self.failed, "errors": self.errors,
            "summary": {name: str(path) for name, path in self.summary.items()},
            "estimate_s": None if self.estimate is None else round(float(self.estimate["total_s"]), 3),
        }

    @property
    def failed(self) -> list[str]:
        """Ids of the cells that ended failed."""
        return [cell for cell, state in self.states.items() if state == "failed"]


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


def status_columns() -> list[str]:
    """Columns of the grid status table."""
    return ["cell", "state", "step", "loss", "time"]


def status_rows(plan: GridPlan, store: GridStore, started: dict[str, float] | None = None,
                queued: set[str] | None = None) -> list[list[str]]:
    """One row per cell: id, state, training step, loss and elapsed time (plain text)."""
    started, queued = started or {}, queued or set()
    rows = []
    session_start = min(started.values(), default=0.0)
    for cell in plan.cells:
        state = store.cell_state(cell.id)
        if state == "running" and float(store.cell_record(cell.id).get("started", 0)) < session_start:
            state = "partial"  # left running by a killed earlier session; not started again yet
        if cell.id in queued and state not in ("running", "done", "failed"):
            state = "queued"
        progress = store.progress(cell.id) if state in ("running", "partial", "failed", "done") else {}
        step = progress.get("step")
        loss = progress.get("loss")
        record = store.cell_record(cell.id) if state in ("done", "failed") else {}
        if state == "running" and cell.id in started:
            elapsed = _format_seconds(time.time() - started[cell.id])
        elif record.get("wall_s") is not None:
            elapsed = _format_seconds(float(record["wall_s"]))
        else:
            elapsed = ""
        rows.append([cell.id, state, f"{step}/{cell.config.train.steps}" if step is not None else "",
                     f"{loss:.3f}" if isinstance(loss, (int, float)) else "", elapsed])
    return rows


def status_table(plan: GridPlan, store: GridStore, started: dict[str, float], queued: set[str]) -> Table:
    """The live table: one row per cell with its state, training step, loss and elapsed time."""
    return rich_table(status_columns(), status_rows(plan, store, started, queued), f"grid {plan.name} → {store.dir}")


def rich_table(columns: Sequence[str], rows: list[list[str]], title: str | None = None) -> Table:
    """A rich table of plain-text rows; the ``state`` column is coloured. Identifiers never wrap (``cell``)."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column in ("cell", "state") else "right",
                         overflow="fold", no_wrap=column == "cell")
    for row in rows:
        table.add_row(*(f"[{STATE_STYLE.get(value, '')}]{value}[/]" if column == "state" else value
                        for column, value in zip(columns, row, strict=True)))
    return table


def print_table(console: Console, columns: Sequence[str], rows: list[list[str]], title: str | None = None) -> None:
    """A rich table on a terminal; elsewhere a header line and one tab-separated line per row, never wrapped."""
    if console.is_terminal:
        console.print(rich_table(columns, rows, title))
        return
    if title:
        console.print(title, markup=False, highlight=False, soft_wrap=True)
    # written as is: rich would expand the tabs to spaces
    console.file.write("".join("\t".join(row) + "\n" for row in [list(columns), *rows]))
    console.file.flush()


def run_grid(
    plan: GridPlan,
    out: str | Path,
    executor: str = "local",
    executor_options: dict[str, Any] | None = None,
    console: Console | None = None,
    progress: Console | None = None,
    show_table: bool = True,
) -> GridResult:
    """Run every cell of ``plan`` that is not done, under a lock on the grid dir; write the summaries.

    Done cells are skipped untouched, interrupted ones resume from their last checkpoint, failed ones are
    re-run. Raises MMError (before writing anything) if the dir was made by another base config or is locked.
    Progress goes to ``progress`` (stderr by default); the final table to ``console`` unless ``show_table`` is off.
    """
    console = console or Console()
    progress = progress or Console(stderr=True)
    store = GridStore(out)
    link_stages(plan, out)  # (done already by mm ablate; a no-op then)
    store.check_compatible(plan)
    for cell in plan.cells:  # a tracker that is not installed fails the whole grid up front, not cell by cell
        require_trackers(cell.config.train.trackers)
    runner = build_executor(executor, **(executor_options or {}))
    start = time.perf_counter()
    with RunLock(store.dir, "grid"):
        store.check_compatible(plan)  # again under the lock: the dir may have changed while we waited
        store.write_plan(plan)
        skipped = [cell.id for cell in plan.cells if store.cell_state(cell.id) == "done"]
        todo = [cell for cell in plan.cells if cell.id not in skipped]
        waves = [interleave_by_encoder(wave) for wave in stage_waves(todo)]  # a stage runs after the one it starts from
        started = {cell.id: time.time() for cell in todo}
        queued = {cell.id for cell in todo}
        errors: dict[str, str] = {}

        def on_finish(cell_id: str, record: dict[str, Any]) -> None:
            queued.discard(cell_id)
            if record.get("state") != "done":
                errors[cell_id] = str(record.get("error", "failed"))
            if not progress.is_terminal:
                progress.print(f"{cell_id}: {record.get('state')} ({_format_seconds(float(record.get('wall_s', 0)))})",
                               highlight=False, soft_wrap=True)

        if skipped:
            progress.print(f"{len(skipped)} of {len(plan.cells)} cells already done; skipping them", highlight=False)
        def run_waves() -> None:
            for wave in waves:
                ready = []
                for cell in wave:
                    unfinished = [dep for dep in cell.after if store.cell_state(dep) != "done"]
                    if unfinished:  # the stage it starts from failed: it cannot run
                        on_finish(cell.id, {"state": "skipped", "error": f"its stage {unfinished[0]} did not finish"})
                    else:
                        ready.append(cell)
                specs = [CellSpec(str(store.dir), cell.id, config_to_dict(cell.config),
                                  config_hash(cell.config)).to_json() for cell in ready]
                if specs:
                    runner.run(specs, on_finish)

        if todo:
            # on a terminal the table refreshes in place (on stderr); elsewhere one line per finished cell
            live = Live(get_renderable=lambda: status_table(plan, store, started, queued), console=progress,
                        refresh_per_second=1, transient=True, redirect_stdout=False, redirect_stderr=False)
            if progress.is_terminal:
                with live:
                    run_waves()
            else:
                run_waves()
        summary = store.write_summary(plan)
    states = {cell.id: store.cell_state(cell.id) for cell in plan.cells}
    if show_table:
        print_table(console, status_columns(), status_rows(plan, store), f"grid {plan.name} → {store.dir}")
    options = executor_options or {}
    estimate = read_json(_estimate_path(plan, executor, options))
    return GridResult(store.dir, states, skipped, [c.id for c in todo], errors, summary, time.perf_counter() - start,
                      estimate if estimate and sorted(estimate.get("todo", [])) == sorted(c.id for c in todo) else None)


def interleave_by_encoder(cells: list[Cell]) -> list[Cell]:
    """``cells`` reordered round-robin by the pre-trained encoder each needs (``model.encoder: vit-tiny-clip``), so
    that parallel workers pre-train different encoders at the same time instead of one waiting for the other's.
    Cells needing no pre-trained encoder keep their order; results never depend on the order (each cell is seeded)."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(str(encoder_dir(cell.config) or ""), []).append(cell)
    if len(groups) < 2:
        return cells
    queues = list(groups.values())
    ordered: list[Cell] = []
    while any(queues):
        ordered.extend(queue.pop(0) for queue in queues if queue)
    return ordered


# ----------------------------------------------------------------------------------------------- cost estimate


def _estimate_path(plan: GridPlan, executor: str, options: dict[str, Any]) -> Path:
    """Where the last ``--dry-run`` of this plan (cells' configs), executor and options keeps its estimate."""
    key = json.dumps({"cells": [[cell.id, config_hash(cell.config)] for cell in plan.cells], "executor": executor,
                      "options": {k: v for k, v in sorted(options.items()) if isinstance(v, (str, int, float))}},
                     sort_keys=True)
    return cache_root() / "estimates" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def estimate_and_remember(plan: GridPlan, out: str | Path, executor: str, options: dict[str, Any],
                          throughput: float | None = None) -> dict[str, Any]:
    """The dry-run estimate (``estimate.estimate_plan``), also kept in the cache (not the grid dir, which a dry run
    never touches) so that the run that follows can print estimate vs actual."""
    from mmbench_cli.ablate.estimate import estimate_plan

    estimate = estimate_plan(plan, out, executor, options, throughput)
    estimate["todo"] = [row["cell"] for row in estimate["cells"] if row["state"] != "done"]
    estimate["created"] = time.time()
    atomic_write_json(_estimate_path(plan, executor, options), estimate)
    return estimate


def plan_document(plan: GridPlan, out: str | Path, estimate: dict[str, Any]) -> dict[str, Any]:
    """The dry-run plan as one JSON-able document (``mm ablate --dry-run --json``)."""
    return {
        "grid": plan.name, "grid_dir": str(out), "zipped": plan.zipped,
        "axes": [{"name": axis.name, "key": axis.key, "values": list(axis.labels)} for axis in plan.axes],
        "cells": [{**row, "config_hash": config_hash(cell.config)}
                  for row, cell in zip(estimate["cells"], plan.cells, strict=True)],
        "estimate": {key: estimate[key] for key in ("executor", "parallel", "threads_per_cell", "cores", "slowdown",
                                                     "total_s", "cell_s", "total_flops", "throughput", "assumptions")},
    }


def print_plan(plan: GridPlan, out: str | Path, estimate: dict[str, Any], console: Console) -> None:
    """Print the dry-run plan: axes, one row per cell with its state and estimated cost, the total and the
    assumptions behind it."""
    axes = "; ".join(f"{axis.name} ({axis.key or 'several keys'}): {', '.join(axis.labels)}" for axis in plan.axes)
    console.print(f"grid {plan.name} → {out}  ({len(plan.cells)} cells{', zipped' if plan.zipped else ''})",
                  highlight=False, markup=False, soft_wrap=True)
    console.print(f"axes: {axes}", highlight=False, markup=False, soft_wrap=True)
    from mmbench_cli.ablate.estimate import format_bytes

    columns = ["cell", "state", "params", "memory/device", "train FLOPs", "eval FLOPs", "train", "eval", "est. time"]
    rows = [[row["cell"], row["state"], f"{row['params'] / 1e6:.2f}M",
             format_bytes(row["memory_bytes"]) if row.get("memory_bytes") else "?", _format_flops(row["train_flops"]),
             _format_flops(row["eval_flops"]), _format_seconds(row["train_s"]), _format_seconds(row["eval_s"]),
             _format_seconds(row["est_s"])] for row in estimate["cells"]]
    print_table(console, columns, rows)
    todo = sum(r["state"] != "done" for r in estimate["cells"])
    console.print(
        f"to run: {todo} cells, {_format_flops(estimate['total_flops'])}FLOPs, about "
        f"{_format_seconds(estimate['total_s'])} of wall time ({_format_seconds(estimate['cell_s'])} of cell time, "
        f"{estimate['parallel']} at once); nothing was run", highlight=False, markup=False, soft_wrap=True)
    console.print("assumptions:", highlight=False, markup=False)
    for assumption in estimate["assumptions"]:
        console.print(f"  - {assumption}", highlight=False, markup=False, soft_wrap=True)


def estimate_vs_actual(result: GridResult) -> str | None:
    """One line comparing the last dry run's estimate of this grid with the wall time it took, if there was one."""
    if result.estimate is None:
        return None
    estimated = float(result.estimate["total_s"])
    made = result.estimate.get("created")
    when = f" of {time.strftime('%Y-%m-%d %H:%M', time.localtime(made))}" if isinstance(made, (int, float)) else ""
    return (f"estimate vs actual: {_format_seconds(estimated)} estimated by the dry run{when}, "
            f"{_format_seconds(result.wall_s)} taken ({100 * (result.wall_s - estimated) / max(estimated, 1e-9):+.0f}%)")
