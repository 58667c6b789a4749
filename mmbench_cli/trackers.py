"""Experiment trackers: training metrics and eval results mirrored to TensorBoard, MLflow or W&B, all offline.

``train.trackers: [jsonl, tensorboard, mlflow, wandb]`` picks them; ``jsonl`` is the run dir's own files
(``metrics.jsonl``, ``eval/step_<N>.json``), always written and always the source of truth. The others are
mirrors, each an optional extra (``pip install "mmbench[tracking]"``):

- ``tensorboard``: event files in ``<run>/tensorboard/train`` and ``<run>/tensorboard/eval``; a grid's cells sit
  side by side, so ``tensorboard --logdir runs/<grid>`` shows one run per cell.
- ``mlflow``: ``MLFLOW_TRACKING_URI`` if set, else a local file store ``<run>/mlruns`` (a grid cell: the grid's
  ``<grid>/mlruns``, where each cell is a child of one parent run named after the grid). Experiment:
  ``MLFLOW_EXPERIMENT_NAME`` or ``mmbench``.
- ``wandb``: offline unless ``WANDB_MODE`` says otherwise; files in ``<run>/wandb/`` (``wandb sync`` uploads them);
  project ``WANDB_PROJECT`` or ``mmbench``; a grid's cells share the W&B group named after the grid.

A run's tracker ids (MLflow run id, W&B run id) are kept in ``<run>/trackers.json`` so that a resumed run and
``mm eval`` log to the same tracker run; eval results are logged against the training step of their checkpoint.
A tracker that fails mid-run is switched off with one warning; the run itself never fails because of it.

Adding a tracker is one class with the ``@TRACKERS.register(name)`` decorator (and the name in
``TrainConfig.trackers``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.errors import MMError
from mmbench_cli.registry import Registry
from mmbench_cli.rundir import RunDir, atomic_write_json, read_json_file

if TYPE_CHECKING:
    from mmbench_cli.config import Config
    from mmbench_cli.rundir import EvalResult

INSTALL_HINT = 'pip install "mmbench[tracking]"'
STATE_FILE = "trackers.json"  # tracker run ids, beside the run's own files
GRID_FILE = "grid.json"  # what makes a run dir's parent a grid (written by mm ablate)
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
DEFAULT_PROJECT = "mmbench"
_KEY_CHARS = re.compile(r"[^\w./\- ]")


def metric_key(*parts: object) -> str:
    """One metric name from parts joined by ``/``, with characters trackers refuse (``:``...) made ``_``."""
    return _KEY_CHARS.sub("_", "/".join(str(p) for p in parts))


def flat_config(cfg: Config) -> dict[str, Any]:
    """The resolved config as ``{"train.lr": 0.002, ...}`` (lists and mappings kept as values)."""
    from mmbench_cli.config import config_to_dict

    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping) and key != "data_mix":
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config_to_dict(cfg), "")
    return flat


@dataclass
class TrackerContext:
    """What a tracker needs to open its run: where, under which name and group, and the saved ids."""

    run_dir: Path
    name: str
    group: str | None  # the grid's name when the run dir is a grid cell
    group_dir: Path | None  # the grid dir
    config: dict[str, Any]
    job: str  # "train" or "eval"
    resumed_from: int | None = None  # the checkpoint step training resumed from
    state: dict[str, Any] = field(default_factory=dict)  # this tracker's saved ids (updated in place)


class Tracker:
    """One external tracker's view of one run. Subclasses implement what they support; every call may raise."""

    requires: str | None = None  # the import name that must be installed

    def __init__(self, ctx: TrackerContext) -> None:
        self.ctx = ctx

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar ``metrics`` at training step ``step``."""

    def log_checkpoint(self, step: int, path: Path) -> None:
        """Record that checkpoint ``step`` was saved at ``path``."""

    def close(self, failed: bool = False) -> None:
        """Flush and finish (``failed``: the job ended with an error)."""


TRACKERS: Registry[type[Tracker]] = Registry("tracker", "train.trackers")


@TRACKERS.register("jsonl")
class JsonlTracker(Tracker):
    """The run dir's own files, written by training and eval themselves: nothing more to do."""


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """Event files in ``<run>/tensorboard/<job>``; a resumed run purges the steps it trains again."""

    requires = "tensorboard"

    def __init__(self, ctx: TrackerContext) -> None:
        super().__init__(ctx)
        from torch.utils.tensorboard import SummaryWriter

        purge = ctx.resumed_from + 1 if ctx.job == "train" and ctx.resumed_from is not None else None
        self.writer = SummaryWriter(log_dir=str(ctx.run_dir / TENSORBOARD_DIR / ctx.job), purge_step=purge)
        if ctx.job == "train":
            import yaml

            text = yaml.safe_dump(dict(ctx.config), sort_keys=False)
            self.writer.add_text("config", "```\n" + text + "```", global_step=ctx.resumed_from or 0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def log_checkpoint(self, step: int, path: Path) -> None:
        self.writer.add_text("checkpoint", str(path), global_step=step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes (grid cells starting together)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@TRACKERS.register("mlflow")
class MLflowTracker(Tracker):
    """One MLflow run per run dir (a grid cell: a child of the grid's parent run), in a local file store by default."""

    requires = "mlflow"

    def __init__(self, ctx: TrackerContext) -> None:
        super().__init__(ctx)
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            store = (ctx.group_dir or ctx.run_dir) / MLFLOW_DIR
            uri = store.resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks to opt in to its file store
        self.client = MlflowClient(tracking_uri=uri)
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        self.experiment_id = self._experiment(experiment_name)
        run_id = ctx.state.get("run_id") if ctx.state.get("tracking_uri") == uri else None
        if run_id is None:
            tags = {"mlflow.runName": ctx.name, "mmbench.run_dir": str(ctx.run_dir.resolve())}
            if ctx.group and ctx.group_dir is not None:
                tags["mlflow.parentRunId"] = self._parent_run(uri, ctx.group, ctx.group_dir)
                tags["mmbench.grid"] = ctx.group
            run_id = self.client.create_run(self.experiment_id, run_name=ctx.name, tags=tags).info.run_id
            ctx.state.update(tracking_uri=uri, run_id=run_id, experiment_id=self.experiment_id)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        if ctx.job == "train":
            from mlflow.entities import Param

            params = [Param(k, str(v)[:500]) for k, v in ctx.config.items()]
            existing = self.client.get_run(run_id).data.params
            params = [p for p in params if p.key not in existing]  # params are write-once in MLflow
            for start in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[start:start + 100])

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except MlflowException:  # another cell created it first
            return str(self.client.get_experiment_by_name(name).experiment_id)

    def _parent_run(self, uri: str, group: str, group_dir: Path) -> str:
        """The grid's parent run in this store, created once (under a lock) by the first cell that needs it."""
        path = group_dir / ".mlflow_parent.json"
        with _file_lock(group_dir / ".mlflow_parent.lock"):
            parents = read_json_file(path, ".mlflow_parent.json") if path.is_file() else {}
            if not isinstance(parents, dict):
                parents = {}
            if uri not in parents:
                tags = {"mlflow.runName": group, "mmbench.grid_dir": str(group_dir.resolve())}
                parent = self.client.create_run(self.experiment_id, run_name=group, tags=tags).info.run_id
                self.client.set_terminated(parent)
                parents[uri] = parent
                atomic_write_json(path, parents)
        return str(parents[uri])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_checkpoint(self, step: int, path: Path) -> None:
        self.client.set_tag(self.run_id, "mmbench.last_checkpoint", str(path.resolve()))

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    """A W&B run (offline unless ``WANDB_MODE`` says otherwise) with ``step`` as the x-axis of every metric."""

    requires = "wandb"

    def __init__(self, ctx: TrackerContext) -> None:
        super().__init__(ctx)
        import wandb

        run_id = ctx.state.get("id") or uuid.uuid4().hex[:12]
        ctx.state["id"] = run_id
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, id=run_id, name=ctx.name, group=ctx.group,
            job_type=ctx.job, dir=str(ctx.run_dir.resolve()), mode=os.environ.get("WANDB_MODE") or "offline",
            resume="allow", config=ctx.config if ctx.job == "train" else None, reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )
        # W&B steps must only grow within a process; eval logs earlier steps, so "step" is every metric's x-axis.
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log({"step": step, **metrics})

    def log_checkpoint(self, step: int, path: Path) -> None:
        self.run.summary["last_checkpoint"] = str(path.resolve())
        self.run.summary["last_checkpoint_step"] = step

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


# ------------------------------------------------------------------------------------------ the set
def missing_trackers(names: Sequence[str]) -> list[str]:
    """The names among ``names`` whose library is not installed."""
    missing = []
    for name in names:
        requires = TRACKERS.get(name).requires
        if requires and importlib.util.find_spec(requires) is None:
            missing.append(name)
    return missing


def require_trackers(names: Sequence[str]) -> None:
    """MMError (one line naming the extra) unless every tracker in ``names`` is installed; call before training."""
    missing = missing_trackers(names)
    if missing:
        raise MMError(f"train.trackers: {', '.join(missing)} is not installed; {INSTALL_HINT} "
                      f"(or drop it from train.trackers)")


def grid_of(run_dir: Path) -> tuple[str | None, Path | None]:
    """(grid name, grid dir) when ``run_dir`` is a cell of an ``mm ablate`` grid, else (None, None)."""
    parent = run_dir.resolve().parent
    if (parent / GRID_FILE).is_file():
        return parent.name, parent
    return None, None


def _describe(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


class TrackerSet:
    """The trackers of one run for one job. A tracker that raises is warned about once and switched off."""

    def __init__(self, trackers: dict[str, Tracker], run_dir: Path, state: dict[str, Any]) -> None:
        self.trackers, self.run_dir, self.state = trackers, run_dir, state

    def _call(self, method: str, *args: Any) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as error:  # noqa: BLE001 - a tracker must never lose the run
                self.trackers.pop(name)
                _warn(f"tracker {name} failed ({_describe(error)}); "
                      f"it is off for the rest of this {'run' if method != 'close' else 'job'}, the run dir's files "
                      "keep everything")

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log the numeric entries of ``metrics`` at ``step`` to every tracker."""
        numbers = {key: float(value) for key, value in metrics.items()
                   if isinstance(value, int | float) and not isinstance(value, bool)}
        if numbers and self.trackers:
            self._call("log_metrics", numbers, step)

    def log_checkpoint(self, step: int, path: Path) -> None:
        """Record a saved checkpoint in every tracker."""
        if self.trackers:
            self._call("log_checkpoint", step, path)

    def close(self, failed: bool = False) -> None:
        """Finish every tracker (``failed``: the job ended with an error)."""
        self._call("close", failed)
        self.trackers = {}

    def __enter__(self) -> TrackerSet:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=kind is not None)


def open_trackers(cfg: Config, run_dir: str | Path, job: str = "train", resumed_from: int | None = None) -> TrackerSet:
    """Open the trackers of ``cfg.train.trackers`` for ``run_dir`` (``job``: train or eval).

    A tracker that is not installed or fails to start is warned about and skipped (``require_trackers`` is the
    check that refuses before training). Their ids are saved to ``trackers.json`` in the run dir.
    """
    run_dir = Path(run_dir)
    names = [n for n in dict.fromkeys(cfg.train.trackers) if TRACKERS.get(n).requires]
    if not names:
        return TrackerSet({}, run_dir, {})
    state_path = run_dir / STATE_FILE
    try:
        state = read_json_file(state_path, STATE_FILE) if state_path.is_file() else {}
    except MMError:
        state = {}
    state = state if isinstance(state, dict) else {}
    group, group_dir = grid_of(run_dir)
    config = flat_config(cfg)
    trackers: dict[str, Tracker] = {}
    missing = set(missing_trackers(names))
    for name in names:
        if name in missing:
            _warn(f"tracker {name} is not installed ({INSTALL_HINT}); not logging to it")
            continue
        own = state.setdefault(name, {})
        ctx = TrackerContext(run_dir=run_dir, name=run_dir.resolve().name, group=group, group_dir=group_dir,
                             config=config, job=job, resumed_from=resumed_from, state=own)
        try:
            trackers[name] = TRACKERS.get(name)(ctx)
        except Exception as error:  # noqa: BLE001 - a tracker must never stop the run
            _warn(f"tracker {name} could not start ({_describe(error)}); "
                  "not logging to it, the run dir's files keep everything")
    with contextlib.suppress(OSError):
        atomic_write_json(state_path, state)
    return TrackerSet(trackers, run_dir, state)


def eval_metrics(result: EvalResult) -> dict[str, float]:
    """An eval result as tracker metrics: ``eval/<task>/<k>shot`` per cell and ``eval/<summary key>/<k>shot``."""
    metrics: dict[str, float] = {}
    for task, cells in result.tasks.items():
        for shots, cell in cells.items():
            if isinstance(cell.value, int | float):
                metrics[metric_key("eval", task, f"{shots}shot")] = float(cell.value)
    for shots, summary in (result.summary or {}).items():
        for key, value in summary.items():
            if isinstance(value, int | float):
                metrics[metric_key("eval", key, f"{shots}shot")] = float(value)
    return metrics


def log_eval_results(cfg: Config, run: RunDir, results: Sequence[EvalResult]) -> None:
    """Log ``results`` to the run's trackers, each against its checkpoint's training step."""
    if not any(TRACKERS.get(n).requires for n in cfg.train.trackers) or not results:
        return
    if not run.path.is_dir():
        return
    with open_trackers(cfg, run.path, job="eval") as trackers:
        for result in sorted(results, key=lambda r: r.step):
            trackers.log_metrics(eval_metrics(result), result.step)


__all__ = ["INSTALL_HINT", "TRACKERS", "Tracker", "TrackerContext", "TrackerSet", "eval_metrics", "grid_of",
           "log_eval_results", "missing_trackers", "open_trackers", "require_trackers"]
