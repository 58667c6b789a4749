"""Run a grid: check the grid dir, lock it, schedule the cells that are not done, show a live table, summarise.

Also the ``--dry-run`` plan with its cost estimate (FLOPs from the model's ``flops_per_sample`` and a
throughput measured on this grid's finished cells, given with ``--throughput``, or timed on this machine).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from mmbench_cli.ablate.executors import CellSpec, build_executor
from mmbench_cli.ablate.grid import GridPlan
from mmbench_cli.ablate.store import GridStore
from mmbench_cli.config import config_hash, config_to_dict
from mmbench_cli.rundir import RunLock

if TYPE_CHECKING:
    from mmbench_cli.model.mllm import MLLM

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


def _format_flops(flops: float) -> str:
    if not math.isfinite(flops):
        return "?"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.2f} {unit}"
    return f"{flops:.0f}"


def status_table(plan: GridPlan, store: GridStore, started: dict[str, float], queued: set[str]) -> Table:
    """The live table: one row per cell with its state, training step, loss and elapsed time."""
    table = Table(title=f"grid {plan.name} → {store.dir}", title_justify="left")
    for column in ("cell", "state", "step", "loss", "time"):
        table.add_column(column, justify="right" if column in ("step", "loss", "time") else "left",
                         overflow="fold")
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
        table.add_row(
            cell.id,
            f"[{STATE_STYLE.get(state, '')}]{state}[/]",
            f"{step}/{cell.config.train.steps}" if step is not None else "",
            f"{loss:.3f}" if isinstance(loss, (int, float)) else "",
            elapsed,
        )
    return table


def run_grid(
    plan: GridPlan,
    out: str | Path,
    executor: str = "local",
    executor_options: dict[str, Any] | None = None,
    console: Console | None = None,
) -> GridResult:
    """Run every cell of ``plan`` that is not done, under a lock on the grid dir; write the summaries.

    Done cells are skipped untouched, interrupted ones resume from their last checkpoint, failed ones are
    re-run. Raises MMError (before writing anything) if the dir was made by another base config or is locked.
    """
    console = console or Console()
    store = GridStore(out)
    store.check_compatible(plan)
    runner = build_executor(executor, **(executor_options or {}))
    start = time.perf_counter()
    with RunLock(store.dir, "grid"):
        store.check_compatible(plan)  # again under the lock: the dir may have changed while we waited
        store.write_plan(plan)
        skipped = [cell.id for cell in plan.cells if store.cell_state(cell.id) == "done"]
        todo = [cell for cell in plan.cells if cell.id not in skipped]
        specs = [
            CellSpec(str(store.dir), cell.id, config_to_dict(cell.config), config_hash(cell.config)).to_json()
            for cell in todo
        ]
        started = {cell.id: time.time() for cell in todo}
        queued = {cell.id for cell in todo}
        errors: dict[str, str] = {}

        def on_finish(cell_id: str, record: dict[str, Any]) -> None:
            queued.discard(cell_id)
            if record.get("state") != "done":
                errors[cell_id] = str(record.get("error", "failed"))
            if not console.is_terminal:
                console.print(f"{cell_id}: {record.get('state')} ({_format_seconds(float(record.get('wall_s', 0)))})",
                              highlight=False)

        if skipped:
            console.print(f"{len(skipped)} of {len(plan.cells)} cells already done; skipping them", highlight=False)
        if specs:
            # on a terminal the table refreshes in place and stays; elsewhere one line per finished cell
            with Live(get_renderable=lambda: status_table(plan, store, started, queued), console=console,
                      refresh_per_second=1, transient=not console.is_terminal, redirect_stdout=False,
                      redirect_stderr=False):
                runner.run(specs, on_finish)
        summary = store.write_summary(plan)
    states = {cell.id: store.cell_state(cell.id) for cell in plan.cells}
    if not console.is_terminal or not specs:
        console.print(status_table(plan, store, {}, set()))
    return GridResult(store.dir, states, skipped, [c.id for c in todo], errors, summary, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- cost estimate


def _model_costs(plan: GridPlan) -> dict[str, dict[str, float]]:
    """Per distinct model: parameters and training FLOPs per sequence (``flops_per_sample``: forward+backward)."""
    from mmbench_cli.data.synthetic import tokenizer_source
    from mmbench_cli.model import build_model

    costs: dict[str, dict[str, float]] = {}
    for cell in plan.cells:
        key = config_hash(cell.config.model) + config_hash(cell.config.data)
        if key in costs:
            continue
        model = build_model(cell.config.model, tokenizer_source(cell.config.data))
        params = model.param_counts()
        total = params.get("total", sum(params.values())) if isinstance(params, dict) else float(params)
        costs[key] = {"params": float(total), "flops_per_sample": float(model.flops_per_sample(cell.config.data.seq_len)),
                      "model": model}
    return costs


def measure_throughput(model: MLLM, seq_len: int, batch_size: int = 4, steps: int = 2) -> float:
    """Training FLOP/s of this machine on ``model``: time forward+backward steps on random data."""
    import torch

    images_per_row = 1
    tokens = model.num_image_tokens * images_per_row
    vocab = model.lm.config.vocab_size
    input_ids = torch.randint(0, vocab, (batch_size, seq_len))
    input_ids[input_ids == model.image_token_id] = (model.image_token_id + 1) % vocab
    input_ids[:, :tokens] = model.image_token_id
    attention_mask = torch.ones_like(input_ids)
    images = torch.randn(batch_size * images_per_row, 3, model.image_size, model.image_size)
    model.train()
    timings = []
    for _ in range(steps + 1):
        begin = time.perf_counter()
        output = model(input_ids=input_ids, attention_mask=attention_mask, images=images, labels=input_ids)
        output.loss.backward()
        timings.append(time.perf_counter() - begin)
    model.zero_grad(set_to_none=True)
    seconds = min(timings[1:])  # the first step pays for allocation/warm-up
    return model.flops_per_sample(seq_len) * batch_size / seconds


def estimate_plan(plan: GridPlan, out: str | Path, throughput: float | None = None) -> dict[str, Any]:
    """Cost of each cell: training FLOPs (``flops_per_sample`` × batch × steps), eval FLOPs, time.

    Throughput (FLOP/s): ``throughput`` if given, else measured on this grid's finished cells, else timed now
    on the first cell's model. Eval FLOPs count one forward pass over each few-shot prompt and one per
    generated token (a rough figure: generation on CPU runs well below the training throughput).
    """
    store = GridStore(out)
    source = "--throughput"
    if throughput is None:
        measured = [(store.cell_record(c.id), store.progress(c.id)) for c in plan.cells]
        flops = sum(float(p.get("train_flops") or 0) for r, p in measured if r.get("state") == "done")
        seconds = sum(float(r.get("train_s") or 0) for r, p in measured if r.get("state") == "done")
        if flops > 0 and seconds > 0:
            throughput, source = flops / seconds, "measured on this grid's finished cells"
    costs = _model_costs(plan)
    if throughput is None:
        first = plan.cells[0].config
        model = costs[config_hash(first.model) + config_hash(first.data)]["model"]
        throughput, source = measure_throughput(model, first.data.seq_len), "timed on this machine just now"
    rows = []
    for cell in plan.cells:
        cfg = cell.config
        cost = costs[config_hash(cfg.model) + config_hash(cfg.data)]
        per_seq = cost["flops_per_sample"]
        train_flops = per_seq * cfg.train.steps * cfg.train.batch_size
        per_token = per_seq / cfg.data.seq_len / 3.0  # a forward pass is a third of forward+backward
        eval_flops = 0.0
        for shots in cfg.eval.shots:
            prompt = (shots + 1) * (cfg.model.num_image_tokens + 16)
            queries = cfg.eval.num_samples * cfg.eval.seeds * len(cfg.eval.tasks)
            eval_flops += queries * per_token * (prompt + cfg.eval.max_new_tokens * cfg.eval.num_beams)
        rows.append({
            "cell": cell.id,
            "state": store.cell_state(cell.id),
            "params": cost["params"],
            "train_flops": train_flops,
            "eval_flops": eval_flops,
            "est_s": (train_flops + eval_flops) / throughput,
        })
    todo = [row for row in rows if row["state"] != "done"]
    return {"throughput": throughput, "throughput_source": source, "cells": rows,
            "total_s": sum(row["est_s"] for row in todo), "total_flops": sum(r["train_flops"] + r["eval_flops"] for r in todo)}


def print_plan(plan: GridPlan, out: str | Path, estimate: dict[str, Any], console: Console) -> None:
    """Print the dry-run plan: axes, one row per cell with its state and estimated cost, and the total."""
    axes = "; ".join(f"{axis.name} ({axis.key or 'several keys'}): {', '.join(axis.labels)}" for axis in plan.axes)
    console.print(f"grid [bold]{plan.name}[/] → {out}  ({len(plan.cells)} cells{', zipped' if plan.zipped else ''})",
                  highlight=False)
    console.print(f"axes: {axes}", highlight=False)
    table = Table(title_justify="left")
    for column in ("cell", "state", "params", "train FLOPs", "eval FLOPs", "est. time"):
        table.add_column(column, justify="left" if column in ("cell", "state") else "right",
                         overflow="fold")
    for row in estimate["cells"]:
        table.add_row(row["cell"], f"[{STATE_STYLE.get(row['state'], '')}]{row['state']}[/]",
                      f"{row['params'] / 1e6:.2f}M", _format_flops(row["train_flops"]),
                      _format_flops(row["eval_flops"]), _format_seconds(row["est_s"]))
    console.print(table)
    console.print(
        f"to run: {sum(r['state'] != 'done' for r in estimate['cells'])} cells, {_format_flops(estimate['total_flops'])}"
        f"FLOPs, about {_format_seconds(estimate['total_s'])} with one job at "
        f"{_format_flops(estimate['throughput'])}FLOP/s ({estimate['throughput_source']}); nothing was run",
        highlight=False,
    )
