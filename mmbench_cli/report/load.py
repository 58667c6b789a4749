"""Read run dirs and grid dirs into plain Python objects, validating the file contract as we go.

Reports and regression checks read only run-directory files, and only through ``mmbench_cli.rundir``
(``RunDir``: ``config.yaml``, ``meta.json``, ``metrics.jsonl``, ``checkpoints/step_<N>/checkpoint.json``,
``eval/step_<N>.json`` as ``EvalResult`` and its per-sample files); a grid dir adds ``grid.json`` and one run
dir per cell (``runs/<grid>/<cell-id>/``, ids like ``resolution=64,tokens=16``), each with the ``ablate.json``
that ``mm ablate`` keeps (the cell's ``state`` and, for a failed cell, its ``error``; read here by a small reader
of its own, not through ``mmbench_cli.ablate``). Task families come from the results cells
(``ResultCell.family``). Anything malformed becomes a one-line MMError naming the file (a damaged
``ablate.json`` only loses the cell's state).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mmbench_cli.config import load_yaml_text
from mmbench_cli.errors import MMError
from mmbench_cli.families import queries_are_images
from mmbench_cli.rundir import Checkpoint, EvalResult, ResultCell, RunDir, is_number, read_json_file

SEED_AXIS = "seed"
CELL_RECORD = "ablate.json"  # a grid cell's state as mm ablate records it: {"state": ..., "error": ...}
IMAGE_FIELDS = ("image_id", "image")  # a per-sample row's image, where the task records it


@dataclass(frozen=True)
class CheckpointRecord:
    """One complete checkpoint of a run and what its ``checkpoint.json`` records (nothing is computed)."""

    checkpoint: Checkpoint
    step: int
    content_hash: str | None
    train_flops: float | None


@dataclass
class TaskInfo:
    """What a study knows of one task: its family and metric (as its results cells record them) and the shot
    counts it was evaluated at (sorted shot strings)."""

    family: str
    metric: str
    shots: list[str]


@dataclass
class Run:
    """One run directory: its config, metadata, training log, checkpoints and evaluation results."""

    path: Path
    name: str
    axes: dict[str, str] = field(default_factory=dict)
    prefix: str = ""  # "<grid>/" when several grids are reported together (or run names collide)
    grid: str | None = None  # the label of the grid dir this run is a cell of (None: a plain run dir)
    config: dict[str, Any] = field(default_factory=dict)
    config_text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    status: str | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    results: dict[int, EvalResult] = field(default_factory=dict)
    state: str | None = None  # ablate.json's state for a grid cell (done / failed / running / ...), else None
    error: str | None = None  # ablate.json's error of a failed cell
    cell_record: dict[str, Any] = field(default_factory=dict)  # a grid cell's whole ablate.json (timings too)
    _scores: dict[tuple[int, str, str], dict[str, float] | None] = field(default_factory=dict, repr=False)
    _clusters: dict[tuple[int, str, str], dict[str, str | None]] = field(default_factory=dict, repr=False)
    _records: dict[tuple[int, str, str], list[tuple[Path, list[dict[str, Any]]]]] = field(default_factory=dict, repr=False)
    _memo: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    @property
    def dir(self) -> RunDir:
        """The run dir's files (``mmbench_cli.rundir``)."""
        return RunDir(self.path)

    @property
    def group(self) -> str:
        """The cell this run belongs to once training seeds are pooled (its id without ``seed=``)."""
        if SEED_AXIS not in self.axes:
            return self.name
        rest = {key: value for key, value in self.axes.items() if key != SEED_AXIS}
        return self.prefix + (cell_id(rest) if rest else "all")

    @property
    def pretrained_encoder(self) -> dict[str, Any] | None:
        """The pre-trained encoder this run started from, as ``meta.json`` records it (``dir``: its cache dir,
        ``pretrain_s``, ``weights``: its content hash in runs since 2026-12-06), or None."""
        source = self.meta.get("pretrained_encoder")
        return source if isinstance(source, dict) and isinstance(source.get("dir"), str) else None

    @property
    def seed(self) -> object:
        """The training seed (axis value, else meta.json, else config.yaml)."""
        if SEED_AXIS in self.axes:
            return self.axes[SEED_AXIS]
        return self.meta.get("seed", self.config.get("seed"))

    @property
    def final_step(self) -> int | None:
        """The last evaluated step, or None if the run has no results."""
        return max(self.results) if self.results else None

    def entry(self, step: int, task: str, shots: str) -> ResultCell | None:
        """The results cell ``tasks[task][shots]`` at ``step`` (None if absent)."""
        result = self.results.get(step)
        return result.cell(task, shots) if result is not None else None

    def sample_paths(self, step: int, task: str, shots: str) -> list[Path]:
        """The per-sample files of one task at ``step``: those its results cell lists, else every demo seed's file
        on disk ([] when there are none)."""
        return self.dir.sample_paths(step, task, shots, self.entry(step, task, shots))

    def sample_records(self, step: int, task: str, shots: str) -> list[tuple[Path, list[dict[str, Any]]]]:
        """Each per-sample file of one task at ``step`` with its records (one pair per demo seed; read once)."""
        key = (step, task, shots)
        if key not in self._records:
            self._records[key] = [(path, self.dir.read_samples(path)) for path in self.sample_paths(step, task, shots)]
        return self._records[key]

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per run and ``key`` (what tables, findings and plots all derive from the same files)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def sample_scores(self, step: int, task: str, shots: str) -> dict[str, float] | None:
        """Per-query scores (mean over demo seeds, keyed by query id), or None without sample files."""
        key = (step, task, shots)
        if key not in self._scores:
            self._scores[key], self._clusters[key] = _read_scores(self, step, task, shots)
        return self._scores[key]

    def sample_clusters(self, step: int, task: str, shots: str) -> dict[str, str | None]:
        """Query id -> the image it is about (``cluster_key``; None where the files do not say), for clustered
        standard errors ({} without sample files)."""
        self.sample_scores(step, task, shots)
        return self._clusters.get((step, task, shots), {})

    @property
    def failed(self) -> bool:
        """Whether mm ablate recorded this cell as failed."""
        return self.state == "failed"


@dataclass
class Study:
    """What one ``mm report`` call looks at: the runs, their axes and where they came from."""

    runs: list[Run]
    axes: dict[str, list[str]]
    sources: list[Path]
    grids: list[dict[str, Any]]
    _memo: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per study and ``key`` (estimates the tables and plots of one study share)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def name(self) -> str:
        """A short name for titles and the default output dir."""
        return "+".join(source.resolve().name for source in self.sources)

    def tasks(self) -> dict[str, TaskInfo]:
        """Every task seen in any result, sorted by name: its family and metric (the first cell that records a
        metric names it) and its sorted shot counts."""
        families: dict[str, str] = {}
        metrics: dict[str, str] = {}
        shots: dict[str, set[str]] = {}
        for run in self.runs:
            for result in run.results.values():
                for task, by_shots in result.tasks.items():
                    shots.setdefault(task, set())
                    for count, cell in by_shots.items():
                        shots[task].add(count)
                        families.setdefault(task, cell.family)
                        if not metrics.get(task):
                            metrics[task] = cell.metric
        return {task: TaskInfo(families[task], metrics.get(task, ""), sorted(shots[task], key=int))
                for task in sorted(shots)}

    def groups(self) -> dict[str, list[Run]]:
        """Runs grouped into cells (training seeds pooled), in first-seen order."""
        grouped: dict[str, list[Run]] = {}
        for run in self.runs:
            grouped.setdefault(run.group, []).append(run)
        return grouped

    @property
    def multi_grid(self) -> bool:
        """Whether the report has one section per grid (more than one grid dir was given)."""
        return len(self.grids) > 1

    def per_grid(self) -> list[Study]:
        """One sub-Study per grid, in the given order, then one of the plain run dirs (if any).

        A sub-Study holds only its grid's runs, with their cell names as in the grid (no ``<grid>/``
        prefix), only that grid's axes, and ``grids == [that grid]`` (``[]`` for the plain runs), so the
        table and plot functions work on it unchanged.
        """
        parts = []
        for grid in self.grids:
            runs = [_unprefixed(run) for run in self.runs if run.grid == grid["label"]]
            parts.append(Study(runs=runs, axes=_study_axes(runs, grid["axis_names"], grid.get("value_order")),
                               sources=[Path(grid["path"])], grids=[grid]))
        plain = [run for run in self.runs if run.grid is None]
        if plain:
            parts.append(Study(runs=plain, axes=_study_axes(plain, []), sources=[run.path for run in plain], grids=[]))
        return parts


def _unprefixed(run: Run) -> Run:
    """A copy of a grid run named as in its grid (shares the run's files and its score cache)."""
    if not run.prefix:
        return run
    return replace(run, name=run.name.removeprefix(run.prefix), prefix="")


def _study_axes(runs: list[Run], axis_order: list[str],
                value_order: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Axis name -> its values over ``runs`` (grid axes first, in the grid's order): numbers numerically, words
    alphabetically, mixtures by their shares (``value_order``)."""
    order = list(axis_order)
    for run in runs:
        order += [a for a in run.axes if a not in order]
    axes = {}
    for name in order:
        values = {run.axes[name] for run in runs if name in run.axes}
        ranked = (value_order or {}).get(name, [])
        axes[name] = sorted(values, key=lambda v, r=ranked: (0, r.index(v), 0.0, "") if v in r else (1, *_axis_sort_key(v)))
    return axes


def cell_id(axes: dict[str, object]) -> str:
    """The readable id of a grid cell: ``resolution=64,tokens=16``."""
    return ",".join(f"{key}={value}" for key, value in axes.items())


def parse_cell_id(name: str) -> dict[str, str]:
    """Axis values from a cell dir name like ``resolution=64,tokens=16`` ({} if it is not one)."""
    if "=" not in name:
        return {}
    axes: dict[str, str] = {}
    for part in re.split(r",(?=[A-Za-z_][\w.\-]*=)", name):
        key, sep, value = part.partition("=")
        if not sep or not key:
            return {}
        axes[key] = value
    return axes


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a run directory (holds any run-contract file; ``RunDir.is_run_dir``)."""
    return RunDir(path).is_run_dir()


def _checkpoint_record(checkpoint: Checkpoint) -> CheckpointRecord:
    info = checkpoint.recorded_info()
    step = info["step"] if is_number(info["step"]) else checkpoint.step
    digest = info.get("content_hash")
    flops = info.get("train_flops")
    return CheckpointRecord(checkpoint, int(step), str(digest) if digest else None,
                            float(flops) if is_number(flops) else None)


def load_run(path: Path, name: str | None = None, axes: dict[str, str] | None = None, cell: bool = False) -> Run:
    """Read one run dir (results, samples lazily, log, checkpoints, config, meta; a grid ``cell``'s ablate.json)."""
    run = Run(path=path, name=name or path.resolve().name, axes=dict(axes or {}))
    if cell:
        record = read_cell_record(path)
        run.cell_record = record
        state, error = record.get("state"), record.get("error")
        run.state = state if isinstance(state, str) else None
        run.error = " ".join(str(error).split()) if error not in (None, "") else None
    run_dir = run.dir
    config_text = run_dir.read_config_text()
    if config_text is not None:
        run.config_text = config_text
        try:
            loaded = load_yaml_text(config_text, str(run_dir.config_path))  # bounded: a hand-edited config too
        except yaml.YAMLError:
            raise MMError(f"{run_dir.config_path}: not valid YAML; re-run mm pretrain (or fix the file)") from None
        run.config = loaded if isinstance(loaded, dict) else {}
    run.meta = run_dir.read_meta()
    run.status = run_dir.read_status()
    run.metrics = run_dir.read_metrics()
    run.checkpoints = sorted((_checkpoint_record(c) for c in run_dir.checkpoints()), key=lambda record: record.step)
    run.results = run_dir.all_results()
    return run


def cluster_key(record: dict[str, Any], family: str | None = None) -> str | None:
    """The image a per-sample row is about, to cluster standard errors by: the row's ``image_id`` (or ``image``)
    field; else, for a question id of the form ``<image id>:q<k>`` (the synthetic world's), that image id; else,
    for a captioning task (one query per image), the query id itself; else None (the query is its own cluster).
    """
    for name in IMAGE_FIELDS:
        if name in record:
            value = record[name]
            if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
                return f"image:{value}"
    ident = record.get("id")
    if isinstance(ident, str):
        image, sep, number = ident.rpartition(":q")  # the synthetic world's question ids: <image id>:q<k>
        if sep and image and number.isdigit():
            return f"image:{image}"
    if queries_are_images(family) and isinstance(ident, (str, int)) and not isinstance(ident, bool):
        return f"image:{ident}"
    return None


def _read_scores(run: Run, step: int, task: str, shots: str) -> tuple[dict[str, float] | None, dict[str, str | None]]:
    per_id: dict[str, list[float]] = {}
    clusters: dict[str, str | None] = {}
    cell = run.entry(step, task, shots)
    family = cell.family if cell is not None else None
    for path, records in run.sample_records(step, task, shots):
        for number, record in enumerate(records, start=1):
            if not is_number(record.get("score")):
                raise MMError(f"{path}: line {number}: expected an object with a numeric 'score'; re-run mm eval")
            ident = str(record.get("id", number))
            per_id.setdefault(ident, []).append(float(record["score"]))
            clusters.setdefault(ident, cluster_key(record, family))
    return {key: sum(values) / len(values) for key, values in per_id.items()} or None, clusters


def read_cell_record(path: Path) -> dict[str, Any]:
    """A grid cell's ``ablate.json`` (``state``, ``error``, timings), or {} when it has none or it is unreadable
    (the report then shows the cell without a state rather than failing)."""
    record_path = path / CELL_RECORD
    if not record_path.is_file():
        return {}
    try:
        data = read_json_file(record_path, CELL_RECORD)
    except MMError:
        return {}
    return data if isinstance(data, dict) else {}


def read_samples(run: Run, step: int, task: str, shots: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` per-sample records (id, prediction, references, score) of one task, first demo seed."""
    paths = run.dir.sample_paths(step, task, shots)
    return run.dir.read_samples(paths[0])[:limit] if paths else []


def _grid_cells(grid: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Cell id -> axis values from a grid.json plan, tolerant of list or mapping layouts."""
    cells = grid.get("cells", [])
    found: dict[str, dict[str, str]] = {}
    items = cells.items() if isinstance(cells, dict) else enumerate(cells if isinstance(cells, list) else [])
    for key, cell in items:
        if isinstance(cell, str):
            found[cell] = parse_cell_id(cell)
            continue
        if not isinstance(cell, dict):
            continue
        ident = cell.get("id") or cell.get("cell_id") or cell.get("name") or (key if isinstance(key, str) else None)
        values = next((cell[k] for k in ("labels", "axes", "values", "point", "params") if isinstance(cell.get(k), dict)), None)
        if ident is None and values is not None:
            ident = cell_id(values)
        if ident is not None:
            raw = values if values is not None else parse_cell_id(str(ident))
            found[str(ident)] = {str(k): _axis_text(v) for k, v in raw.items()}
    return found


def _axis_text(value: object) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _grid_axes(grid: dict[str, Any]) -> list[str]:
    axes = grid.get("axes", {})
    if isinstance(axes, dict):
        return [str(name) for name in axes]
    if isinstance(axes, list):
        return [str(a.get("name")) if isinstance(a, dict) else str(a) for a in axes]
    return []


def load_grid(path: Path) -> tuple[list[Run], dict[str, Any]]:
    """Read a grid dir: ``grid.json`` (optional) plus one run dir per cell."""
    grid: dict[str, Any] = {}
    if (path / "grid.json").exists():
        data = read_json_file(path / "grid.json", "grid.json")
        if not isinstance(data, dict):
            raise MMError(f"{path / 'grid.json'}: expected a JSON object (the grid plan); re-run mm ablate")
        grid = data
    planned = _grid_cells(grid)
    runs = []
    for child in sorted(path.iterdir()):
        # A cell that failed before it wrote any run file still has its ablate.json: it is shown, with its error.
        if child.name.startswith(".") or not (is_run_dir(child) or (child / CELL_RECORD).is_file()):
            continue
        axes = planned.get(child.name) or parse_cell_id(child.name)
        runs.append(load_run(child, child.name, axes, cell=True))
    order = {ident: index for index, ident in enumerate(planned)}
    runs.sort(key=lambda run: (order.get(run.name, len(order)), run.name))
    shares = _value_shares(grid)
    grid = dict(grid, path=str(path), axis_names=_grid_axes(grid), value_shares=shares, value_order=_value_order(shares),
                base_values=base_values(grid))
    return runs, grid


def _axis_specs(grid: dict[str, Any]) -> list[dict[str, Any]]:
    axes = grid.get("axes")
    return [a for a in axes if isinstance(a, dict) and isinstance(a.get("name"), str)] if isinstance(axes, list) else []


def mixture_shares(value: object) -> tuple[float, ...] | None:
    """The shares of a mixture axis value (``{caption: .45, interleaved: .45, text: .1}``) in their order, or None
    when the value is not a mapping of numbers summing to about 1."""
    if not isinstance(value, dict) or not value or not all(is_number(v) for v in value.values()):
        return None
    shares = tuple(float(v) for v in value.values())
    return shares if abs(sum(shares) - 1.0) < 0.02 else None


def _value_shares(grid: dict[str, Any]) -> dict[str, dict[str, tuple[float, ...]]]:
    """Axis -> label -> shares, for the axes whose values are all mixtures."""
    found: dict[str, dict[str, tuple[float, ...]]] = {}
    for axis in _axis_specs(grid):
        labels, values = axis.get("labels"), axis.get("values")
        if not isinstance(labels, list) or not isinstance(values, list) or len(labels) != len(values):
            continue
        shares = {str(label): mixture_shares(value) for label, value in zip(labels, values, strict=True)}
        if shares and all(share is not None for share in shares.values()):
            found[axis["name"]] = shares  # type: ignore[assignment]
    return found


def _value_order(shares: dict[str, dict[str, tuple[float, ...]]]) -> dict[str, list[str]]:
    """Axis -> its labels in display order, for axes whose values are mixtures: by their shares, the first share
    descending (cap100, cap90-txt10, cap50-int50, ..., int100), as MM1's Fig. 5 orders its mixtures."""
    return {axis: sorted(by_label, key=lambda label, b=by_label: tuple(-x for x in b[label]))
            for axis, by_label in shares.items()}


def _dotted(config: object, key: str) -> object:
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            return _MISSING
        config = config[part]
    return config


_MISSING = object()


def base_values(grid: dict[str, Any]) -> dict[str, str]:
    """Axis -> the label of its value that the grid's base config has (the reference a contrast is taken
    against), else its first label. An axis that sets several keys matches when every key agrees."""
    base = grid.get("base_config") if isinstance(grid.get("base_config"), dict) else {}
    found: dict[str, str] = {}
    for axis in _axis_specs(grid):
        labels, values = axis.get("labels"), axis.get("values")
        if not isinstance(labels, list) or not labels:
            continue
        found[axis["name"]] = str(labels[0])
        if not isinstance(values, list) or len(values) != len(labels):
            continue
        for label, value in zip(labels, values, strict=True):
            if _matches_base(base, axis.get("key"), value):
                found[axis["name"]] = str(label)
                break
    return found


def _matches_base(base: dict[str, Any], key: object, value: object) -> bool:
    if isinstance(key, str) and key:
        return _dotted(base, key) == value
    if isinstance(value, dict) and value:  # an axis without `key`: each value maps dotted keys to values
        return all(isinstance(k, str) and _dotted(base, k) == v for k, v in value.items())
    return False


def is_grid_parent(path: Path) -> bool:
    """Whether ``path`` holds several grid dirs: no grid.json and not a run dir, but children with grid.json."""
    if not path.is_dir() or (path / "grid.json").exists() or is_run_dir(path):
        return False
    return any((child / "grid.json").is_file() for child in path.iterdir() if child.is_dir())


def expand_paths(paths: list[Path]) -> list[Path]:
    """The paths with each parent of grid dirs replaced by its grid children, sorted by name.

    Children without a ``grid.json`` (say ``runs/mm1-toy/encoders/``, pretrained encoders) are skipped.
    """
    expanded: list[Path] = []
    for path in paths:
        if path.exists() and is_grid_parent(path):
            expanded += sorted(
                (c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".") and (c / "grid.json").is_file()),
                key=lambda child: child.name,
            )
        else:
            expanded.append(path)
    return expanded


def load_study(paths: list[Path]) -> Study:
    """Read every grid dir / run dir named on the command line; MMError if there is nothing to report.

    A dir holding several grid dirs (``runs/mm1-toy/``) stands for its grid children (``expand_paths``).
    With more than one grid, every cell is named ``<grid>/<cell-id>`` and ``Study.per_grid`` splits the
    study into one sub-Study per grid.
    """
    if not paths:
        raise MMError("no grid or run dirs given; pass e.g. runs/<grid> or runs/<run>")
    runs: list[Run] = []
    grids: list[dict[str, Any]] = []
    axis_order: list[str] = []
    for path in expand_paths(paths):
        if not path.exists():
            raise MMError(f"{path}: no such directory; pass a grid dir (runs/<grid>) or a run dir (runs/<run>)")
        if not path.is_dir():
            raise MMError(f"{path}: is a file, not a grid or run dir; pass the directory that holds it")
        if (path / "grid.json").exists() or (not is_run_dir(path) and any(is_run_dir(c) for c in path.iterdir())):
            grid_runs, grid = load_grid(path)
            if not grid_runs:
                raise MMError(f"{path}: grid has no cell run dirs yet; run mm ablate first")
            grid["label"] = _unique_label(path.resolve().name, {g["label"] for g in grids})
            for run in grid_runs:
                run.grid = grid["label"]
            grids.append(grid)
            axis_order += [a for a in grid["axis_names"] if a not in axis_order]
            runs += grid_runs
        elif is_run_dir(path):
            runs.append(load_run(path))
        else:
            raise MMError(
                f"{path}: not a run dir (no config.yaml, metrics.jsonl or eval/) nor a grid dir (no grid.json); "
                "pass runs/<grid> or runs/<run>"
            )
    if len(grids) > 1:
        for run in runs:
            if run.grid is not None:
                run.prefix = f"{run.grid}/"
                run.name = run.prefix + run.name
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        for run in runs:
            if not run.prefix:
                run.prefix = f"{run.path.parent.name}/"
                run.name = run.prefix + run.name
    if not any(run.results or run.metrics for run in runs):
        raise MMError(
            f"{', '.join(map(str, paths))}: nothing to report: no eval/step_<N>.json and no metrics.jsonl; "
            "run mm pretrain / mm eval (or mm ablate) first"
        )
    shares: dict[str, dict[str, tuple[float, ...]]] = {}
    for grid in grids:
        for axis, by_label in grid.get("value_shares", {}).items():
            shares.setdefault(axis, {}).update(by_label)
    value_order = _value_order(shares)
    return Study(runs=runs, axes=_study_axes(runs, axis_order, value_order), sources=list(paths), grids=grids)


def _unique_label(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``, ... if another grid of the study already has that label."""
    label, number = name, 1
    while label in taken:
        number += 1
        label = f"{name}-{number}"
    return label


def _axis_sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)
