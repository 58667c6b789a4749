"""Grid specs: named axes (``ablations/axes.yaml``), explicit values, grid files → a validated plan of cells.

A grid is a base config plus axes; each axis sets one config key (or several) to each of its values. The
cells are the Cartesian product of the axes (or, with ``zip``, the axes paired value by value, crossed
with ``seed``). Every cell's config is built through ``config.config_from_dict`` before anything runs, so a
value an axis cannot take is a one-line MMError naming the cell, and nothing is written.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmbench_cli.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_hash,
    config_to_dict,
    default_axes_path,
    is_plain_data,
    load_yaml_text,
    read_yaml,
    set_dotted,
)
from mmbench_cli.errors import MMError

SEED_AXIS = "seed"
# Config keys whose values name registry entries; a grid value is checked against the registry up front.
KEY_REGISTRIES = {"model.connector": "CONNECTORS", "model.encoder": "ENCODERS", "model.lm": "LMS",
                  "model.fusion": "FUSIONS"}
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class Axis:
    """One ablation axis: a name, the config key it sets (None: each value is a dict of keys), its values."""

    name: str
    key: str | None
    values: tuple[Any, ...]
    labels: tuple[str, ...]

    def settings(self, index: int) -> dict[str, Any]:
        """The dotted config keys and values that the axis's ``index``-th value sets."""
        value = self.values[index]
        return {self.key: value} if self.key is not None else dict(value)


@dataclass
class Cell:
    """One grid cell: its readable id, the axis labels/values it takes, and its validated config."""

    id: str
    labels: dict[str, str]
    values: dict[str, Any]
    config: Config
    after: tuple[str, ...] = ()  # cells this one starts from (``train.init_from: ${stage}``): they run first

    @property
    def group(self) -> str:
        """The cell id without the seed axis: cells sharing it are aggregated over seeds."""
        return ",".join(f"{name}={label}" for name, label in self.labels.items() if name != SEED_AXIS) or "all"

    def to_json(self) -> dict[str, Any]:
        """The plan entry of this cell (grid.json)."""
        return {"id": self.id, "labels": self.labels, "values": self.values, "config_hash": config_hash(self.config),
                **({"after": list(self.after)} if self.after else {})}


@dataclass
class GridPlan:
    """A whole grid: name, base config, axes and the cells they span."""

    name: str
    base: Config
    axes: list[Axis]
    zipped: bool
    cells: list[Cell] = field(default_factory=list)
    description: str = ""  # the grid file's `description`, shown as the grid's heading in mm report

    @property
    def base_hash(self) -> str:
        """Hash of the resolved base config: a grid dir belongs to exactly one base config."""
        return config_hash(self.base)

    def to_json(self) -> dict[str, Any]:
        """The plan as saved in ``<grid>/grid.json``."""
        return {
            "name": self.name,
            "base_config_hash": self.base_hash,
            "base_config": config_to_dict(self.base),
            "axes": [
                {"name": axis.name, "key": axis.key, "labels": list(axis.labels), "values": list(axis.values)}
                for axis in self.axes
            ],
            "zip": self.zipped,
            "cells": [cell.to_json() for cell in self.cells],
            **({"description": self.description} if self.description else {}),
        }


def load_axis_presets(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Read the axis presets: ``{name: {"key", "help", "values": list | {label: value}}}``."""
    path = Path(path) if path is not None else default_axes_path()
    data = read_yaml(path)
    presets: dict[str, dict[str, Any]] = {}
    for name, spec in data.items():
        if not isinstance(spec, dict) or "values" not in spec:
            raise MMError(f"{path}: axis {name!r} needs a mapping with `values` (and usually `key`)")
        presets[str(name)] = spec
    return presets


def value_label(value: Any) -> str:
    """A short, filesystem-safe label for an axis value (used in cell ids)."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (int, float, str)):
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    text = _LABEL_UNSAFE.sub("_", text).strip("_")
    return text[:60] or "_"


def split_values(text: str) -> list[str]:
    """Split ``a,b,{x: 1, y: 2},[1,2]`` on top-level commas (commas inside brackets/braces are kept)."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]


def _parse_value(text: str) -> Any:
    try:
        value = load_yaml_text(text, f"--grid value {text[:40]!r}")
    except yaml.YAMLError:
        return text
    return value if is_plain_data(value) else text


def _preset_items(name: str, spec: dict[str, Any], source: str) -> list[tuple[str, Any]]:
    values = spec["values"]
    if isinstance(values, dict):
        return [(value_label(label), value) for label, value in values.items()]
    if isinstance(values, list):
        return [(value_label(value), value) for value in values]
    raise MMError(f"{source}: axis {name!r}: `values` must be a list or a mapping label -> value")


def make_axis(
    name: str,
    values: list[Any] | None,
    presets: dict[str, dict[str, Any]],
    source: str = "--grid",
) -> Axis:
    """Build an axis from its name and optional explicit values (strings are matched to preset labels).

    ``name`` is a preset axis (``resolution``) or any dotted config key (``train.lr``).
    """
    name = name.strip()
    spec = presets.get(name)
    if spec is None:
        if "." not in name:
            raise MMError(
                f"{source}: unknown axis {name!r}; choose from: {', '.join(sorted(presets))} "
                "(or give a dotted config key with values, e.g. train.lr=1e-3,3e-3)"
            )
        if values is None:
            raise MMError(f"{source}: axis {name!r} has no presets; give its values, e.g. {name}=A,B")
        spec = {"key": name, "values": []}
    key = spec.get("key")
    known = dict(_preset_items(name, spec, source)) if spec.get("values") else {}
    if values is None:
        items = list(known.items())
    else:
        items = []
        for raw in values:
            if isinstance(raw, str) and value_label(raw) in known and raw == value_label(raw):
                items.append((raw, known[raw]))
            else:
                value = _parse_value(raw) if isinstance(raw, str) else raw
                items.append((value_label(value), value))
    if not items:
        raise MMError(f"{source}: axis {name!r} has no values; give at least one, e.g. {name}=A,B")
    labels = [label for label, _ in items]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise MMError(f"{source}: axis {name!r} repeats the value {duplicates[0]!r}; list each value once")
    if key is None and not all(isinstance(value, dict) for _, value in items):
        raise MMError(f"{source}: axis {name!r} has no `key`, so each value must be a mapping of config keys")
    return Axis(name=name, key=key, values=tuple(value for _, value in items), labels=tuple(labels))


def parse_grid_option(text: str, presets: dict[str, dict[str, Any]]) -> list[Axis]:
    """Parse one ``--grid`` option: ``resolution,tokens`` (presets) or ``resolution=32,64`` (explicit values)."""
    text = text.strip()
    if not text:
        raise MMError("--grid: empty; give axis names (--grid resolution,tokens) or values (--grid resolution=32,64)")
    if "=" in text:
        name, raw = text.split("=", 1)
        return [make_axis(name, split_values(raw), presets, f"--grid {text}")]
    return [make_axis(name, None, presets, f"--grid {text}") for name in split_values(text)]


def _combinations(axes: list[Axis], zipped: bool) -> list[list[int]]:
    """Index tuples (one index per axis, in axis order) of the cells."""
    if not zipped:
        return [list(combo) for combo in itertools.product(*(range(len(axis.values)) for axis in axes))]
    paired = [i for i, axis in enumerate(axes) if axis.name != SEED_AXIS]
    crossed = [i for i, axis in enumerate(axes) if axis.name == SEED_AXIS]
    lengths = {axes[i].name: len(axes[i].values) for i in paired}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name} has {count}" for name, count in lengths.items())
        raise MMError(f"--zip: zipped axes need the same number of values ({detail})")
    steps = next(iter(lengths.values()), 1)
    combos = []
    for position in range(steps):
        for seeds in itertools.product(*(range(len(axes[i].values)) for i in crossed)):
            combo = [0] * len(axes)
            for i in paired:
                combo[i] = position
            for i, seed_index in zip(crossed, seeds, strict=True):
                combo[i] = seed_index
            combos.append(combo)
    return combos


def _check_registries(cell_id: str, settings: dict[str, Any]) -> None:
    from mmbench_cli import registry

    for key, value in settings.items():
        name = KEY_REGISTRIES.get(key)
        if name is None or not isinstance(value, str) or value.startswith("hf:") or Path(value).exists():
            continue
        reg = getattr(registry, name)
        try:
            reg.ensure_loaded()
        except ImportError:  # that component package is not installed/built: config validation must do
            continue
        if value not in reg:
            raise MMError(f"grid cell {cell_id}: {key}: unknown {reg.kind} {value!r}; choose from: {', '.join(reg.names())}")


def _check_model_shapes(cell_id: str, config: Config) -> None:
    """Catch shape errors of built-in encoders up front: resolution vs. patch size, connector token counts."""
    from mmbench_cli.registry import CONNECTORS, ENCODERS

    model = config.model
    try:
        if model.encoder not in ENCODERS or model.connector not in CONNECTORS:
            return
        from mmbench_cli.model.mllm import check_image_tokens
    except ImportError:  # the model stack is not installed/built: config validation must do
        return
    try:
        check_image_tokens(model)
    except MMError as error:
        raise MMError(f"grid cell {cell_id}: {error.message}") from None


def plan_grid(
    name: str,
    base: Config,
    axes: list[Axis],
    zipped: bool = False,
    check_registries: bool = True,
    description: str = "",
) -> GridPlan:
    """Expand the axes into cells and validate every cell's config (nothing is run or written)."""
    if not axes:
        raise MMError("the grid is empty: give axes with --grid (e.g. --grid resolution,tokens) or a grid file")
    names = [axis.name for axis in axes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MMError(f"--grid: axis {repeated[0]!r} is given twice; give it once with all its values")
    # the seed axis goes last so that cell ids read "resolution=64,tokens=16,seed=1"
    axes = [axis for axis in axes if axis.name != SEED_AXIS] + [axis for axis in axes if axis.name == SEED_AXIS]
    base_dict = config_to_dict(base)
    cells = []
    seen: dict[str, str] = {}  # config hash (cell name left out) -> the first cell id with that config
    duplicates: list[tuple[str, str]] = []
    for combo in _combinations(axes, zipped):
        labels = {axis.name: axis.labels[i] for axis, i in zip(axes, combo, strict=True)}
        cell_id = ",".join(f"{n}={label}" for n, label in labels.items())
        data = json.loads(json.dumps(base_dict))
        settings: dict[str, Any] = {}
        for axis, i in zip(axes, combo, strict=True):
            settings.update(axis.settings(i))
        for key, value in settings.items():
            set_dotted(data, key.split("."), value, f"axis key {key!r}")
        data["name"] = name
        config = config_from_dict(data, f"grid cell {cell_id}")
        digest = config_hash(config)
        if digest in seen:
            duplicates.append((seen[digest], cell_id))
        seen.setdefault(digest, cell_id)
        config.name = f"{name}/{cell_id}"
        if check_registries:
            _check_registries(cell_id, settings)
            _check_model_shapes(cell_id, config)
        cells.append(Cell(id=cell_id, labels=labels, values={}, config=config))
    axes = [_with_coerced_values(axis, base) for axis in axes]  # first: it names an axis's repeated value
    if duplicates:
        first, second = duplicates[0]
        raise MMError(f"grid cells {first} and {second} train the same config (does one axis set another's key?); "
                      "give each config once")
    for cell in cells:
        cell.values = {axis.name: axis.values[axis.labels.index(cell.labels[axis.name])] for axis in axes}
    return GridPlan(name=name, base=base, axes=axes, zipped=zipped, cells=cells, description=description)


def coerce_setting(base: Config, key: str, value: Any) -> Any:
    """``value`` as the config field ``key`` holds it (``"1e-3"`` for ``train.lr`` is 0.001), validated on its own
    through the pydantic model; unchanged if ``key`` is not a field or the value does not validate alone."""
    from pydantic import BaseModel, ValidationError

    *sections, field_name = key.split(".")
    node: Any = base
    for part in sections:
        node = getattr(node, part, None)
        if not isinstance(node, BaseModel):
            return value
    if field_name not in type(node).model_fields:
        return value
    probe = node.model_copy()
    try:
        setattr(probe, field_name, value)  # validate_assignment: the field's type and validators
    except (ValidationError, ValueError, TypeError):
        return value
    held = getattr(probe, field_name)
    return held.model_dump(mode="json") if isinstance(held, BaseModel) else json.loads(json.dumps(held, default=str))


def _with_coerced_values(axis: Axis, base: Config) -> Axis:
    """The axis with its values coerced to their keys' types; MMError if two of them become equal."""
    values = []
    for i in range(len(axis.values)):
        coerced = {key: coerce_setting(base, key, value) for key, value in axis.settings(i).items()}
        values.append(coerced[axis.key] if axis.key is not None else coerced)
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        text = json.dumps(value, sort_keys=True)
        if text in first:
            j = first[text]
            raise MMError(f"axis {axis.name!r}: values {axis.labels[j]!r} and {axis.labels[i]!r} are the same "
                          f"({value!r}) as {axis.key or 'config values'}; list each value once (YAML reads 1e-3 as "
                          "a string: it is coerced to the key's type)")
        first[text] = i
    return Axis(name=axis.name, key=axis.key, values=tuple(values), labels=axis.labels)


def load_grid_file(path: str | Path) -> dict[str, Any]:
    """Read a grid file: ``{name?, base?, overrides?, axes: {name: values|null|{key, values}}, zip?}``."""
    path = Path(path)
    data = read_yaml(path)
    unknown = sorted(set(data) - {"name", "base", "overrides", "axes", "zip", "description"})
    if unknown:
        raise MMError(f"{path}: unknown grid key {unknown[0]!r}; allowed: name, base, overrides, axes, zip, description")
    if not isinstance(data.get("axes"), dict) or not data["axes"]:
        raise MMError(f"{path}: `axes` must be a non-empty mapping of axis name -> values")
    if data.get("description") is not None and not isinstance(data["description"], str):
        raise MMError(f"{path}: `description` must be a string (quote it)")
    return data


def is_grid_file(path: str | Path) -> bool:
    """True if the YAML file is a grid file (it has ``axes``), False if it is a plain base config."""
    return "axes" in read_yaml(path)


def _overrides_list(overrides: Any, source: str) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, list) and all(isinstance(item, str) for item in overrides):
        return list(overrides)
    if isinstance(overrides, dict):
        flat: list[str] = []

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict) and prefix not in ("data.data_mix",):
                for key, child in node.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), child)
            else:
                flat.append(f"{prefix}={json.dumps(node)}")

        walk("", overrides)
        return flat
    raise MMError(f"{source}: `overrides` must be a mapping of config sections or a list of key=value strings")


def build_plan(
    config_path: str | None,
    overrides: list[str],
    grid_options: list[str],
    zipped: bool = False,
    name: str | None = None,
    axes_path: str | Path | None = None,
    check_registries: bool = True,
) -> GridPlan:
    """Build the grid plan from the CLI: a base config or grid file, overrides, ``--grid`` options, ``--zip``."""
    presets = load_axis_presets(axes_path)
    axes: dict[str, Axis] = {}
    base_data: dict[str, Any] = {}
    grid_name = name
    description = ""
    source = "config"
    if config_path is not None and is_grid_file(config_path):
        grid = load_grid_file(config_path)
        source = str(config_path)
        if grid.get("base") is not None:
            base_path = Path(config_path).parent / str(grid["base"])
            if not base_path.exists():
                base_path = Path(str(grid["base"]))
            base_data = read_yaml(base_path)
        base_data = apply_overrides(base_data, _overrides_list(grid.get("overrides"), source))
        for axis_name, spec in grid["axes"].items():
            if isinstance(spec, dict):
                local = {**presets, axis_name: spec}
                axes[axis_name] = make_axis(axis_name, None, local, source)
            else:
                values = None if spec is None else (spec if isinstance(spec, list) else [spec])
                axes[axis_name] = make_axis(axis_name, values, presets, source)
        zipped = zipped or bool(grid.get("zip", False))
        grid_name = grid_name or str(grid.get("name") or Path(config_path).stem)
        description = str(grid.get("description") or "").strip()
    elif config_path is not None:
        base_data = read_yaml(config_path)
        source = str(config_path)
    if overrides:
        base_data = apply_overrides(base_data, overrides)
        source = f"{source} (with overrides)"
    base = config_from_dict(base_data, source)
    given: set[str] = set()
    for option in grid_options:
        for axis in parse_grid_option(option, presets):
            if axis.name in given:  # a second --grid X=... would silently drop the first one's values
                raise MMError(f"--grid {option}: axis {axis.name!r} is given twice; give all its values once "
                              f"(--grid {axis.name}=A,B,C)")
            given.add(axis.name)
            axes[axis.name] = axis
    grid_name = grid_name or "-".join(axes) or "grid"
    return plan_grid(value_label(grid_name), base, list(axes.values()), zipped, check_registries, description)


# ------------------------------------------------------------------------------------------------- stages
STAGE_REF = re.compile(r"^\$\{([A-Za-z0-9._+-]+)\}(:[0-9]+)?$")


def link_stages(plan: GridPlan, grid_dir: str | Path) -> None:
    """Resolve ``train.init_from: ${LABEL}[:STEP]`` in ``plan``'s cells to the run dir of the cell that takes
    ``LABEL`` on the axis that has it and every other axis value of this cell (a training stage: ``full`` starts
    from the ``align`` cell of the same seed and settings), and record it in ``cell.after``. MMError (one line) on a
    label no axis has, a cell that starts from itself, or a cycle."""
    by_labels = {tuple(sorted(cell.labels.items())): cell for cell in plan.cells}
    for cell in plan.cells:
        spec = cell.config.train.init_from
        match = STAGE_REF.match(spec) if spec else None
        if match is None:
            continue
        label, step = match.group(1), match.group(2) or ""
        axes = [axis for axis in plan.axes if label in axis.labels]
        if len(axes) != 1:
            where = "no axis has" if not axes else f"axes {', '.join(a.name for a in axes)} all have"
            raise MMError(f"grid cell {cell.id}: train.init_from: ${{{label}}}: {where} the value {label!r}; name "
                          "one value of one axis (the stage to start from)")
        source = by_labels.get(tuple(sorted({**cell.labels, axes[0].name: label}.items())))
        if source is None or source is cell:
            raise MMError(f"grid cell {cell.id}: train.init_from: ${{{label}}} names the cell itself; start from "
                          "another stage")
        cell.config.train.init_from = f"{Path(grid_dir) / source.id}{step}"
        cell.after = (source.id,)
    stage_waves(plan.cells)  # a cycle is refused here, before anything runs


def stage_waves(cells: list[Cell]) -> list[list[Cell]]:
    """``cells`` in waves that respect ``Cell.after``: each wave's cells start only from cells of earlier waves (or
    cells not in ``cells``: already done). MMError on a cycle."""
    remaining = {cell.id: cell for cell in cells}
    waves: list[list[Cell]] = []
    while remaining:
        ready = [cell for cell in remaining.values() if not any(dep in remaining for dep in cell.after)]
        if not ready:
            raise MMError(f"grid: the stages of cells {', '.join(sorted(remaining)[:3])} start from each other (a "
                          "cycle); make one stage start from scratch")
        waves.append(ready)
        for cell in ready:
            del remaining[cell.id]
    return waves
