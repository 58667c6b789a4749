"""Read run dirs and grid dirs into plain Python objects, validating the file contract as we go.

Reports and regression checks read only run-directory files (docs/architecture.md):
``config.yaml``, ``meta.json``, ``metrics.jsonl``, ``checkpoints/step_<N>/checkpoint.json``,
``eval/step_<N>.json`` and ``eval/samples/step_<N>/<task>.<k>shot.seed<S>.jsonl``; a grid dir adds
``grid.json`` and one run dir per cell (``runs/<grid>/<cell-id>/``, ids like ``resolution=64,tokens=16``).
Anything malformed becomes a one-line MMError naming the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mmbench_cli.errors import MMError
from mmbench_cli.rundir import read_jsonl, read_status

SEED_AXIS = "seed"
FAMILIES = ("caption", "vqa", "text")
_STEP_FILE = re.compile(r"^step_(\d+)\.json$")
_STEP_DIR = re.compile(r"^step_(\d+)$")
_RUN_MARKERS = ("config.yaml", "meta.json", "metrics.jsonl", "eval", "checkpoints", "status")


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
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    _scores: dict[tuple[int, str, str], dict[str, float] | None] = field(default_factory=dict, repr=False)

    @property
    def group(self) -> str:
        """The cell this run belongs to once training seeds are pooled (its id without ``seed=``)."""
        if SEED_AXIS not in self.axes:
            return self.name
        rest = {key: value for key, value in self.axes.items() if key != SEED_AXIS}
        return self.prefix + (cell_id(rest) if rest else "all")

    @property
    def seed(self) -> Any:
        """The training seed (axis value, else meta.json, else config.yaml)."""
        if SEED_AXIS in self.axes:
            return self.axes[SEED_AXIS]
        return self.meta.get("seed", self.config.get("seed"))

    @property
    def final_step(self) -> int | None:
        """The last evaluated step, or None if the run has no results."""
        return max(self.results) if self.results else None

    def entry(self, step: int, task: str, shots: str) -> dict[str, Any] | None:
        """The results entry ``tasks[task][shots]`` at ``step`` (None if absent)."""
        return self.results.get(step, {}).get("tasks", {}).get(task, {}).get(shots)

    def sample_scores(self, step: int, task: str, shots: str) -> dict[str, float] | None:
        """Per-query scores (mean over demo seeds, keyed by query id), or None without sample files."""
        key = (step, task, shots)
        if key not in self._scores:
            self._scores[key] = _read_scores(self, step, task, shots)
        return self._scores[key]


@dataclass
class Study:
    """What one ``mm report`` call looks at: the runs, their axes and where they came from."""

    runs: list[Run]
    axes: dict[str, list[str]]
    sources: list[Path]
    grids: list[dict[str, Any]]

    @property
    def name(self) -> str:
        """A short name for titles and the default output dir."""
        return "+".join(source.resolve().name for source in self.sources)

    def tasks(self) -> dict[str, dict[str, Any]]:
        """Every task seen in any result: name -> {"family", "metric", "shots": sorted shot strings}."""
        found: dict[str, dict[str, Any]] = {}
        for run in self.runs:
            for result in run.results.values():
                for task, by_shots in result.get("tasks", {}).items():
                    info = found.setdefault(task, {"family": None, "metric": None, "shots": set()})
                    for shots, entry in by_shots.items():
                        info["shots"].add(shots)
                        info["family"] = info["family"] or entry.get("family")
                        info["metric"] = info["metric"] or entry.get("metric")
        for task, info in found.items():
            info["shots"] = sorted(info["shots"], key=int)
            info["family"] = info["family"] or guess_family(task, info["metric"])
        return dict(sorted(found.items()))

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
            parts.append(Study(runs=runs, axes=_study_axes(runs, grid["axis_names"]), sources=[Path(grid["path"])],
                               grids=[grid]))
        plain = [run for run in self.runs if run.grid is None]
        if plain:
            parts.append(Study(runs=plain, axes=_study_axes(plain, []), sources=[run.path for run in plain], grids=[]))
        return parts


def _unprefixed(run: Run) -> Run:
    """A copy of a grid run named as in its grid (shares the run's files and its score cache)."""
    if not run.prefix:
        return run
    return replace(run, name=run.name.removeprefix(run.prefix), prefix="")


def _study_axes(runs: list[Run], axis_order: list[str]) -> dict[str, list[str]]:
    """Axis name -> its sorted values over ``runs`` (grid axes first, in the grid's order)."""
    order = list(axis_order)
    for run in runs:
        order += [a for a in run.axes if a not in order]
    return {name: sorted({run.axes[name] for run in runs if name in run.axes}, key=_axis_sort_key) for name in order}


def cell_id(axes: dict[str, Any]) -> str:
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


def guess_family(task: str, metric: str | None) -> str:
    """caption / vqa / text from a task's name and metric when the results JSON does not say."""
    text = f"{task} {metric or ''}".lower()
    if "caption" in text or "cider" in text or "coco" in text:
        return "caption"
    if "vqa" in text or "ocr" in text:
        return "vqa"
    return "text"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MMError(f"{path}: not valid JSON ({error.__class__.__name__}); re-run the stage that wrote it") from None
    except OSError as error:
        raise MMError(f"{path}: cannot read ({error.strerror})") from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_results(path: Path, data: Any) -> dict[str, Any]:
    """Validate one ``eval/step_<N>.json`` against the results schema."""
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise MMError(f"{path}: malformed results JSON: expected an object with a 'tasks' mapping; re-run mm eval")
    for task, by_shots in data["tasks"].items():
        if not isinstance(by_shots, dict):
            raise MMError(f"{path}: tasks.{task}: expected a mapping of shot counts; re-run mm eval")
        for shots, entry in by_shots.items():
            where = f"{path}: tasks.{task}.{shots}"
            if not str(shots).isdigit():
                raise MMError(f"{where}: shot count must be a non-negative integer; re-run mm eval")
            if not isinstance(entry, dict) or not _number(entry.get("value")):
                raise MMError(f"{where}: expected an object with a numeric 'value'; re-run mm eval")
            seeds = entry.get("seeds", [])
            if not isinstance(seeds, list) or not all(_number(s) for s in seeds):
                raise MMError(f"{where}.seeds: expected a list of numbers; re-run mm eval")
    summary = data.get("summary", {})
    if not isinstance(summary, dict) or not all(isinstance(v, dict) for v in summary.values()):
        raise MMError(f"{path}: summary: expected a mapping of shot counts to averages; re-run mm eval")
    return data


def _step_of(path: Path, data: dict[str, Any], number: int) -> int:
    step = data.get("step", number)
    if not isinstance(step, int) or isinstance(step, bool):
        raise MMError(f"{path}: 'step' must be an integer; re-run mm eval")
    return step


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a run directory (holds any run-contract file)."""
    return path.is_dir() and any((path / marker).exists() for marker in _RUN_MARKERS)


def load_run(path: Path, name: str | None = None, axes: dict[str, str] | None = None) -> Run:
    """Read one run dir (results, samples lazily, log, checkpoints, config, meta)."""
    run = Run(path=path, name=name or path.resolve().name, axes=dict(axes or {}))
    config_path = path / "config.yaml"
    if config_path.exists():
        run.config_text = config_path.read_text(encoding="utf-8", errors="replace")
        try:
            loaded = yaml.safe_load(run.config_text)
        except yaml.YAMLError:
            raise MMError(f"{config_path}: not valid YAML; re-run mm pretrain (or fix the file)") from None
        run.config = loaded if isinstance(loaded, dict) else {}
    if (path / "meta.json").exists():
        meta = _read_json(path / "meta.json")
        if not isinstance(meta, dict):
            raise MMError(f"{path / 'meta.json'}: expected a JSON object")
        run.meta = meta
    run.status = read_status(path)
    run.metrics = [record for record in read_jsonl(path / "metrics.jsonl") if _number(record.get("step"))]
    run.metrics.sort(key=lambda record: record["step"])
    checkpoints = path / "checkpoints"
    if checkpoints.is_dir():
        for child in sorted(checkpoints.iterdir()):
            match = _STEP_DIR.match(child.name)
            if match and (child / "checkpoint.json").exists():
                record = _read_json(child / "checkpoint.json")
                if not isinstance(record, dict):
                    raise MMError(f"{child / 'checkpoint.json'}: expected a JSON object")
                record = dict(record)
                record.setdefault("step", int(match.group(1)))
                run.checkpoints.append(record)
        run.checkpoints.sort(key=lambda record: record["step"])
    eval_dir = path / "eval"
    if eval_dir.is_dir():
        for child in sorted(eval_dir.iterdir()):
            match = _STEP_FILE.match(child.name)
            if match and child.is_file():
                data = _check_results(child, _read_json(child))
                run.results[_step_of(child, data, int(match.group(1)))] = data
    return run


def _resolve_sample_path(run: Run, step: int, relative: str) -> Path | None:
    for base in (run.path, run.path / "eval", run.path / "eval" / "samples" / f"step_{step}"):
        candidate = (base / relative).resolve()
        if candidate.is_file() and run.path.resolve() in candidate.parents:
            return candidate
    return None


def sample_paths(run: Run, step: int, task: str, shots: str) -> list[Path]:
    """The per-sample files of one task at ``step``: those the results entry lists under ``samples``, else
    ``eval/samples/step_<N>/<task>.<k>shot.seed*.jsonl`` (one per demo seed; [] when there are none)."""
    entry = run.entry(step, task, shots)
    paths: list[Path] = []
    if entry is not None and isinstance(entry.get("samples"), list):
        paths = [p for p in (_resolve_sample_path(run, step, str(rel)) for rel in entry["samples"]) if p]
    if not paths:
        paths = sorted((run.path / "eval" / "samples" / f"step_{step}").glob(f"{task}.{shots}shot.seed*.jsonl"))
    return paths


def _read_scores(run: Run, step: int, task: str, shots: str) -> dict[str, float] | None:
    paths = sample_paths(run, step, task, shots)
    if not paths:
        return None
    per_id: dict[str, list[float]] = {}
    for path in paths:
        for number, record in enumerate(read_jsonl(path), start=1):
            if not isinstance(record, dict) or not _number(record.get("score")):
                raise MMError(f"{path}: line {number}: expected an object with a numeric 'score'; re-run mm eval")
            per_id.setdefault(str(record.get("id", number)), []).append(float(record["score"]))
    return {key: sum(values) / len(values) for key, values in per_id.items()} or None


def read_samples(run: Run, step: int, task: str, shots: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` per-sample records (id, prediction, references, score) of one task, first seed."""
    paths = sorted((run.path / "eval" / "samples" / f"step_{step}").glob(f"{task}.{shots}shot.seed*.jsonl"))
    return read_jsonl(paths[0])[:limit] if paths else []


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


def _axis_text(value: Any) -> str:
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
        data = _read_json(path / "grid.json")
        if not isinstance(data, dict):
            raise MMError(f"{path / 'grid.json'}: expected a JSON object (the grid plan); re-run mm ablate")
        grid = data
    planned = _grid_cells(grid)
    runs = []
    for child in sorted(path.iterdir()):
        if child.name.startswith(".") or not is_run_dir(child):
            continue
        axes = planned.get(child.name) or parse_cell_id(child.name)
        runs.append(load_run(child, child.name, axes))
    order = {ident: index for index, ident in enumerate(planned)}
    runs.sort(key=lambda run: (order.get(run.name, len(order)), run.name))
    grid = dict(grid, path=str(path), axis_names=_grid_axes(grid))
    return runs, grid


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
    return Study(runs=runs, axes=_study_axes(runs, axis_order), sources=list(paths), grids=grids)


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
