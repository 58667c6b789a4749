"""Cell runner and executors (registry ``EXECUTORS``): ``local`` (in-process, or ``--jobs N`` subprocesses),
``ray`` (each cell a Ray task with its CPU/GPU request) and ``slurm`` (each cell a SLURM job through submitit,
as one job array).

A cell = ``pretrain`` (resumed from its last checkpoint if it has one) + ``evaluate`` of the final checkpoint.
``run_cell`` records the cell's state in ``<cell>/ablate.json``: ``running`` → ``done`` | ``failed``; a done
cell is never touched again. Executors only schedule; they all call ``run_cell`` and read state from disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmbench_cli.ablate.store import CELL_FILE, GridStore
from mmbench_cli.errors import MMError
from mmbench_cli.registry import EXECUTORS
from mmbench_cli.rundir import RunDir

LOG_FILE = "ablate.log"


@dataclass
class CellSpec:
    """What a worker needs to run one cell (plain JSON, so it crosses process and Ray boundaries)."""

    grid_dir: str
    cell_id: str
    config: dict[str, Any]
    config_hash: str

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON-able dict."""
        return dict(self.__dict__)


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one cell to completion (pretrain, resumed if possible, then eval); return its ``ablate.json`` record.

    Never raises for a failure inside the cell: the error is recorded as ``state: failed`` so that the other
    cells go on. A done cell returns at once without touching its files.
    """
    from mmbench_cli.config import config_from_dict

    cell = CellSpec(**spec)
    store = GridStore(cell.grid_dir)
    run_dir = store.cell_dir(cell.cell_id)
    previous = store.cell_record(cell.cell_id)
    if previous.get("state") == "done" and RunDir(run_dir).final_results() is not None:
        return {**previous, "skipped": True}
    record: dict[str, Any] = {
        "cell": cell.cell_id,
        "state": "running",
        "config_hash": cell.config_hash,
        "attempt": int(previous.get("attempt", 0)) + 1,
        "pid": os.getpid(),
        "started": time.time(),
        "resumed_from_step": (RunDir(run_dir).checkpoint_steps() or [None])[-1],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    store.write_cell_record(cell.cell_id, record)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        from mmbench_cli.evaluate.request import EvalRequest
        from mmbench_cli.evaluate.runner import evaluate
        from mmbench_cli.train.loop import pretrain

        cfg = config_from_dict(cell.config, f"grid cell {cell.cell_id}")
        resume = bool(RunDir(run_dir).checkpoint_steps())
        pretrain(cfg, run_dir, resume=resume, force=not resume, progress=False)
        record["train_s"] = round(time.perf_counter() - start, 3)
        eval_start = time.perf_counter()
        evaluate(EvalRequest(run_dir, all_checkpoints=cfg.eval.all_checkpoints, device=cfg.train.device,
                             progress=False))
        record["eval_s"] = round(time.perf_counter() - eval_start, 3)
        if RunDir(run_dir).final_results() is None:
            raise RuntimeError("evaluation wrote no results for the final checkpoint")
        record["state"] = "done"
    except Exception as error:  # noqa: BLE001 - a failing cell must not stop the grid
        message = error.message if isinstance(error, MMError) else f"{type(error).__name__}: {error}"
        record.update(state="failed", error=" ".join(message.split())[:500])
        with contextlib.suppress(OSError), (run_dir / LOG_FILE).open("a", encoding="utf-8") as log:
            log.write(traceback.format_exc())
    record["wall_s"] = round(time.perf_counter() - start, 3)
    record["cpu_s"] = round(time.process_time() - cpu_start, 3)  # all threads of this process
    record["finished"] = time.time()
    store.write_cell_record(cell.cell_id, record)
    return record


# The most an ablate option may ask for (docs/architecture.md, "Limits"): processes, CPUs and GPUs per cell.
MAX_JOBS = 1024


def check_options(options: dict[str, Any]) -> None:
    """MMError naming the first executor option that is not a finite number in its range: ``jobs``,
    ``cpus_per_cell``, ``gpus_per_cell`` (0 to MAX_JOBS), ``timeout_min``, ``array_parallelism`` (1 or more)."""
    for name, low in (("jobs", 0), ("cpus_per_cell", 0), ("gpus_per_cell", 0), ("timeout_min", 1),
                      ("array_parallelism", 1)):
        value = options.get(name)
        high = MAX_JOBS if low == 0 else 10**7
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise MMError(f"--{name.replace('_', '-')} {value}: must be a number from {low} to {high:,}")


def default_jobs(num_cells: int, threads_per_cell: int = 1) -> int:
    """Cells to run at once locally: 1 with a GPU (cells share it), else as many as the cores hold at
    ``threads_per_cell`` (``train.cpu_threads``) each, never more than the cells."""
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, min(num_cells, (os.cpu_count() or 1) // max(1, threads_per_cell)))


def cell_threads(spec: dict[str, Any]) -> int:
    """The torch thread count a cell trains and evaluates with (its config's ``train.cpu_threads``)."""
    return int(spec.get("config", {}).get("train", {}).get("cpu_threads", 1))


def _die_with_parent() -> None:
    """In a child process: get SIGKILL when the parent dies (Linux), so kill -9 of mm ablate leaves no orphans."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def require_extra(module: str, extra: str, executor: str) -> Any:
    """Import ``module`` for ``--executor executor``, or raise one MMError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MMError(f"--executor {executor}: the {module} package is not installed; "
                      f"pip install 'mmbench[{extra}]'") from None


class Executor:
    """Runs cell specs; ``run`` blocks until all finished and returns their records by cell id."""

    def run(self, specs: list[dict[str, Any]], on_finish: Callable[[str, dict[str, Any]], None]) -> dict[str, dict]:
        """Run every spec; call ``on_finish(cell_id, record)`` as each one ends."""
        raise NotImplementedError


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """Cells on this machine: one after another in this process (jobs=1) or in ``jobs`` subprocesses."""

    def __init__(self, jobs: int = 1, **_: Any) -> None:
        if jobs < 1:
            raise MMError(f"--jobs: must be >= 1, got {jobs}")
        self.jobs = jobs

    def run(self, specs: list[dict[str, Any]], on_finish: Callable[[str, dict[str, Any]], None]) -> dict[str, dict]:
        """Run the cells; with jobs > 1 each is a ``python -m mmbench_cli.ablate.worker`` subprocess."""
        results: dict[str, dict] = {}
        if self.jobs == 1:
            for spec in specs:
                results[spec["cell_id"]] = run_cell(spec)
                on_finish(spec["cell_id"], results[spec["cell_id"]])
            return results
        queue = list(specs)
        running: dict[str, tuple[subprocess.Popen, dict[str, Any]]] = {}
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    spec = queue.pop(0)
                    running[spec["cell_id"]] = (self._launch(spec), spec)
                for cell_id, (process, spec) in list(running.items()):
                    if process.poll() is None:
                        continue
                    del running[cell_id]
                    results[cell_id] = self._collect(spec, process.returncode)
                    on_finish(cell_id, results[cell_id])
                time.sleep(0.2)
        finally:
            for process, _ in running.values():
                process.kill()
        return results

    @staticmethod
    def _launch(spec: dict[str, Any]) -> subprocess.Popen:
        run_dir = Path(spec["grid_dir"]) / spec["cell_id"]
        run_dir.mkdir(parents=True, exist_ok=True)
        log = (run_dir / LOG_FILE).open("ab")
        threads = str(cell_threads(spec))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        process = subprocess.Popen(
            [sys.executable, "-m", "mmbench_cli.ablate.worker"],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent,
        )
        log.close()
        assert process.stdin is not None
        process.stdin.write(json.dumps(spec).encode())
        process.stdin.close()
        return process

    @staticmethod
    def _collect(spec: dict[str, Any], returncode: int) -> dict[str, Any]:
        store = GridStore(spec["grid_dir"])
        record = store.cell_record(spec["cell_id"])
        if returncode != 0 and record.get("state") != "done":
            # the worker died without recording (segfault, OOM kill): record it for it
            record = {**record, "cell": spec["cell_id"], "state": "failed", "config_hash": spec["config_hash"],
                      "error": f"cell process exited with code {returncode}; see {LOG_FILE}"}
            store.write_cell_record(spec["cell_id"], record)
        return record


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Each cell a Ray task requesting ``cpus_per_cell`` CPUs (and ``gpus_per_cell`` GPUs), on a local or
    existing cluster (``address="auto"`` joins the cluster started with ``ray start``, e.g. under SLURM)."""

    def __init__(self, address: str | None = None, cpus_per_cell: float = 1, gpus_per_cell: float = 0,
                 **_: Any) -> None:
        require_extra("ray", "ray", "ray")  # refused before the grid dir is touched
        self.address = address
        self.cpus_per_cell = cpus_per_cell
        self.gpus_per_cell = gpus_per_cell

    def run(self, specs: list[dict[str, Any]], on_finish: Callable[[str, dict[str, Any]], None]) -> dict[str, dict]:
        """Submit every cell as a Ray task and collect them as they finish."""
        ray = require_extra("ray", "ray", "ray")
        started_here = False
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            except ConnectionError as error:
                raise MMError(f"--address {self.address}: cannot reach a Ray cluster ({error}); "
                              "start one with `ray start --head` or drop --address") from None
            started_here = True
        try:
            task = ray.remote(num_cpus=self.cpus_per_cell, num_gpus=self.gpus_per_cell, max_retries=0)(run_cell)
            pending = {task.remote(spec): spec for spec in specs}
            results: dict[str, dict] = {}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    spec = pending.pop(ref)
                    try:
                        record = ray.get(ref)
                    except Exception as error:  # noqa: BLE001 - the worker died: record the cell as failed
                        record = {"cell": spec["cell_id"], "state": "failed", "config_hash": spec["config_hash"],
                                  "error": f"ray task failed: {type(error).__name__}"}
                        GridStore(spec["grid_dir"]).write_cell_record(spec["cell_id"], record)
                    results[spec["cell_id"]] = record
                    on_finish(spec["cell_id"], record)
            return results
        finally:
            if started_here:
                ray.shutdown()


SUBMITIT_DIR = ".submitit"


@EXECUTORS.register("slurm")
class SlurmExecutor(Executor):
    """Each cell a SLURM job submitted with submitit, all of them as one job array.

    ``mm ablate`` stays in the foreground as the driver: it holds the grid lock, waits for the jobs and writes
    the summaries. A job runs ``run_cell`` like every other executor, so a re-run skips done cells and resumes
    the partial ones from their last checkpoint (a job killed at ``--timeout-min`` is a partial cell). Job logs
    and pickles go to ``<grid>/.submitit/``. ``cluster="local"`` runs the jobs as local processes (submitit's
    local executor: tests, or trying a grid before submitting it).
    """

    def __init__(self, partition: str | None = None, gpus_per_cell: float = 0, cpus_per_cell: float = 1,
                 timeout_min: int = 60, array_parallelism: int = 64, cluster: str | None = None,
                 slurm_args: dict[str, Any] | None = None, poll_s: float = 2.0, **_: Any) -> None:
        require_extra("submitit", "slurm", "slurm")  # refused before the grid dir is touched
        if timeout_min < 1:
            raise MMError(f"--timeout-min: must be >= 1, got {timeout_min}")
        if gpus_per_cell != int(gpus_per_cell) or gpus_per_cell < 0:
            raise MMError(f"--gpus-per-cell: SLURM gives whole GPUs, got {gpus_per_cell}")
        self.partition = partition
        self.gpus_per_cell = int(gpus_per_cell)
        self.cpus_per_cell = max(1, math.ceil(cpus_per_cell))
        self.timeout_min = timeout_min
        self.array_parallelism = array_parallelism
        self.cluster = cluster
        self.slurm_args = dict(slurm_args or {})
        self.poll_s = poll_s

    def _executor(self, folder: Path, specs: list[dict[str, Any]]) -> Any:
        submitit = require_extra("submitit", "slurm", "slurm")
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=self.cluster)
        cpus = max([self.cpus_per_cell, *(cell_threads(spec) for spec in specs)])
        # on a cluster without a GPU the cell trains on CPU with its config's thread count
        parameters: dict[str, Any] = {"timeout_min": self.timeout_min, "cpus_per_task": cpus, "nodes": 1,
                                      "tasks_per_node": 1, "name": "mm-ablate",
                                      "slurm_array_parallelism": self.array_parallelism}
        if self.gpus_per_cell:
            parameters["gpus_per_node"] = self.gpus_per_cell
        if self.partition:
            parameters["slurm_partition"] = self.partition
        parameters.update({f"slurm_{key}" if not key.startswith("slurm_") else key: value
                           for key, value in self.slurm_args.items()})
        executor.update_parameters(**parameters)
        return executor

    def run(self, specs: list[dict[str, Any]], on_finish: Callable[[str, dict[str, Any]], None]) -> dict[str, dict]:
        """Submit the cells as one job array, then poll the jobs and collect them as they finish."""
        if not specs:
            return {}
        folder = Path(specs[0]["grid_dir"]) / SUBMITIT_DIR
        executor = self._executor(folder, specs)
        try:
            jobs = executor.map_array(run_cell, specs)
        except Exception as error:  # noqa: BLE001 - sbatch missing/refusing: the user's cluster set-up
            raise MMError(f"--executor slurm: submitting the jobs failed ({type(error).__name__}: "
                          f"{' '.join(str(error).split())[:300]}); check --partition and that sbatch works here") from None
        pending = {job.job_id: (job, spec) for job, spec in zip(jobs, specs, strict=True)}
        results: dict[str, dict] = {}
        try:
            while pending:
                for job_id, (job, spec) in list(pending.items()):
                    if not job.done():
                        continue
                    del pending[job_id]
                    results[spec["cell_id"]] = self._collect(job, spec)
                    on_finish(spec["cell_id"], results[spec["cell_id"]])
                if pending:
                    time.sleep(self.poll_s)
        finally:
            for job, _ in pending.values():  # interrupted driver: do not leave jobs writing behind our back
                with contextlib.suppress(Exception):
                    job.cancel(check=False)
        return results

    @staticmethod
    def _collect(job: Any, spec: dict[str, Any]) -> dict[str, Any]:
        try:
            return job.result()
        except Exception as error:  # noqa: BLE001 - job killed (timeout, preemption, node failure)
            store = GridStore(spec["grid_dir"])
            record = store.cell_record(spec["cell_id"])
            if record.get("state") == "done":
                return record
            last_line = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            record = {**record, "cell": spec["cell_id"], "state": "failed", "config_hash": spec["config_hash"],
                      "error": f"slurm job {job.job_id} failed: {last_line[:300]}; see "
                               f"{Path(spec['grid_dir']) / SUBMITIT_DIR / str(job.job_id)}"}
            store.write_cell_record(spec["cell_id"], record)
            return record


def build_executor(name: str, **options: Any) -> Executor:
    """Instantiate the executor registered as ``name`` with the CLI options it takes."""
    return EXECUTORS.get(name)(**options)


__all__ = ["CELL_FILE", "CellSpec", "Executor", "LocalExecutor", "RayExecutor", "SlurmExecutor", "build_executor",
           "require_extra", "run_cell"]
