"""Grid specs, plan validation, the grid store's checks and summaries, and `mm ablate` bad input (exit 2).

Nothing here trains: these are the parts of `mm ablate` that must work (and fail cleanly) before any cell runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mmbench_cli.ablate.grid import build_plan, split_values, value_label
from mmbench_cli.ablate.store import GridStore, aggregate_over_seeds, flatten_eval
from mmbench_cli.cli import app
from mmbench_cli.errors import MMError
from mmbench_cli.rundir import EvalResult

REPO = Path(__file__).resolve().parents[1]
AXES = REPO / "mmbench_cli" / "resources" / "axes.yaml"


def plan(grid: list[str], overrides: list[str] | None = None, **kwargs):
    return build_plan(None, overrides or [], grid, axes_path=AXES, **kwargs)


def test_presets_product_and_readable_ids() -> None:
    result = plan(["resolution,tokens"])
    assert [cell.id for cell in result.cells] == [
        "resolution=32,tokens=4", "resolution=32,tokens=16", "resolution=64,tokens=4", "resolution=64,tokens=16"]
    cell = result.cells[3]
    assert (cell.config.model.image_size, cell.config.model.num_image_tokens) == (64, 16)
    assert result.name == "resolution-tokens"


def test_explicit_values_zip_and_seed_crossed_last() -> None:
    result = plan(["seed=0,1", "resolution=32,64", "tokens=4,16"], zipped=True)
    assert [cell.id for cell in result.cells] == [
        "resolution=32,tokens=4,seed=0", "resolution=32,tokens=4,seed=1",
        "resolution=64,tokens=16,seed=0", "resolution=64,tokens=16,seed=1"]
    assert [cell.config.seed for cell in result.cells] == [0, 1, 0, 1]
    assert result.cells[1].group == "resolution=32,tokens=4"


def test_mapping_presets_and_dotted_key_axes() -> None:
    result = plan(["data_mix=cap100,int100", "train.lr=0.001,0.003"], ["train.steps=5"])
    assert len(result.cells) == 4
    first = result.cells[0]
    assert first.id == "data_mix=cap100,train.lr=0.001"
    assert first.config.data.data_mix == {"caption": 1.0, "interleaved": 0.0, "text": 0.0}
    assert first.config.train.lr == pytest.approx(0.001) and first.config.train.steps == 5
    inline = plan(["data_mix={caption: 0.5, interleaved: 0.5, text: 0}"])
    assert inline.cells[0].config.data.data_mix["caption"] == 0.5


def test_grid_file_base_overrides_and_cli_axes(tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("name: mine\noverrides:\n  train: {steps: 7}\naxes:\n  connector: [avgpool, c-abstractor]\n"
                    "  res:\n    key: model.image_size\n    values: [32, 48]\n")
    result = build_plan(str(grid), ["train.batch_size=4"], ["seed=0,1"], axes_path=AXES)
    assert result.name == "mine" and len(result.cells) == 8
    assert {c.config.train.steps for c in result.cells} == {7}
    assert {c.config.train.batch_size for c in result.cells} == {4}
    assert result.cells[0].id == "connector=avgpool,res=32,seed=0"


def test_grid_file_description_is_stored_in_grid_json(tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text('name: mine\ndescription: "MM1 Fig. 4 <toy>"\naxes:\n  connector: [avgpool, c-abstractor]\n')
    result = build_plan(str(grid), [], [], axes_path=AXES)
    assert result.description == "MM1 Fig. 4 <toy>" and result.to_json()["description"] == "MM1 Fig. 4 <toy>"
    store = GridStore(tmp_path / "runs" / "mine")
    store.dir.mkdir(parents=True)
    store.write_plan(result)
    assert store.read_plan()["description"] == "MM1 Fig. 4 <toy>"
    # grids without a description keep the grid.json layout they had
    assert "description" not in plan(["connector"]).to_json()
    grid.write_text("description: [not, text]\naxes:\n  connector: [avgpool]\n")
    with pytest.raises(MMError, match="description"):
        build_plan(str(grid), [], [], axes_path=AXES)


def test_shipped_grid_files_are_valid() -> None:
    for path in sorted((REPO / "ablations").glob("*.yaml")):
        if path.name in ("axes.yaml", "base.yaml"):
            continue
        result = build_plan(str(path), [], [], axes_path=AXES)
        assert result.cells, path


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["colour"], "unknown axis 'colour'"),
        (["tokens=15"], "cannot emit 15 tokens"),
        (["resolution=abc"], "model.image_size"),
        (["resolution=30"], "not a multiple of the patch size 8"),
        (["connector=nope"], "unknown connector 'nope'"),
        (["data_mix={caption: 0.5}"], "sum to 1"),
        (["tokens=4,4"], "repeats the value"),
        (["train.nosuchkey=1,2"], "unknown key"),
        ([], "grid is empty"),
    ],
)
def test_bad_axes_are_one_line_errors(grid: list[str], message: str) -> None:
    with pytest.raises(MMError, match=message) as info:
        plan(grid)
    assert "\n" not in info.value.message


def test_grid_values_are_coerced_to_the_keys_type_and_repeats_refused(tmp_path: Path) -> None:
    grid = tmp_path / "lr.yaml"
    grid.write_text("axes:\n  train.lr: [0.001, 1e-3]\n")  # YAML reads 1e-3 as the string '1e-3'
    with pytest.raises(MMError, match=r"axis 'train.lr': values '0.001' and '1e-3' are the same \(0.001\)"):
        build_plan(str(grid), [], [], axes_path=AXES)
    result = runner.invoke(app, ["ablate", str(grid), "--axes", str(AXES), "--out", str(tmp_path / "g")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "g").exists()
    grid.write_text("axes:\n  train.lr: [1e-3, 3e-3]\n")
    coerced = build_plan(str(grid), [], [], axes_path=AXES)
    assert [cell.id for cell in coerced.cells] == ["train.lr=1e-3", "train.lr=3e-3"]  # ids as written (dirs resume)
    assert [cell.values["train.lr"] for cell in coerced.cells] == [0.001, 0.003]  # values as the config holds them
    assert coerced.to_json()["axes"][0]["values"] == [0.001, 0.003]
    # two axes that set one key make equal cells: refused too
    with pytest.raises(MMError, match="train the same config"):
        plan(["resolution=32,64", "model.image_size=32,64"])


def test_zip_needs_equal_lengths() -> None:
    with pytest.raises(MMError, match="same number of values"):
        plan(["resolution=32,64", "tokens=4,16,1"], zipped=True)


def test_split_and_labels() -> None:
    assert split_values("a,{x: 1, y: 2},[1,2]") == ["a", "{x: 1, y: 2}", "[1,2]"]
    assert value_label("hf:/models/x y") == "hf_models_x_y"
    assert value_label({"a": 1}) == "a_1"


def _write_eval(run_dir: Path, step: int, value: float) -> None:
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / f"step_{step}").mkdir(parents=True, exist_ok=True)
    results = {"run": str(run_dir), "step": step, "train_flops": 1e9,
               "tasks": {"synthetic-vqa": {"0": {"value": value}, "4": {"value": value + 0.1}}},
               "summary": {"0": {"caption_avg": None, "vqa_avg": value, "textcore": None},
                           "4": {"vqa_avg": value + 0.1}}}
    (run_dir / "eval" / f"step_{step}.json").write_text(json.dumps(results))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": step, "loss": 2.5 + value}) + "\n")
    (run_dir / "ablate.json").write_text(json.dumps({"state": "done", "train_s": 1.0, "eval_s": 1.0}))


def test_summary_rows_and_seed_aggregation(tmp_path: Path) -> None:
    result = plan(["resolution=32,64", "seed=0,1"])
    store = GridStore(tmp_path / "grid")
    values = {"resolution=32,seed=0": 0.2, "resolution=32,seed=1": 0.4, "resolution=64,seed=0": 0.6}
    for cell_id, value in values.items():
        _write_eval(store.cell_dir(cell_id), 8, value)
    paths = store.write_summary(result)
    table = pd.read_parquet(paths["summary.parquet"])
    assert list(table["cell"]) == [c.id for c in result.cells]
    assert list(table["state"]) == ["done", "done", "done", "pending"]
    assert table.loc[0, "synthetic-vqa/4shot"] == pytest.approx(0.3)
    assert table.loc[0, "vqa_avg/0shot"] == pytest.approx(0.2)
    assert table.loc[1, "final_loss"] == pytest.approx(2.9)
    seeds = pd.read_csv(paths["summary_seeds.csv"])
    row32 = seeds[seeds["resolution"] == 32].iloc[0]
    assert row32["num_seeds"] == 2
    assert row32["synthetic-vqa/0shot"] == pytest.approx(0.3)
    assert row32["synthetic-vqa/0shot_std"] == pytest.approx(math.sqrt(0.02))
    row64 = seeds[seeds["resolution"] == 64].iloc[0]
    assert row64["num_seeds"] == 1 and math.isnan(row64["synthetic-vqa/0shot_std"])


def test_flatten_eval_skips_missing_averages() -> None:
    results = EvalResult.from_json({"tasks": {"t": {"8": {"value": 1.0}, "0": {"value": 0.5}}},
                                    "summary": {"0": {"textcore": None}}}, "test", step=0)
    row = flatten_eval(results)
    assert row == {"t/0shot": 0.5, "t/8shot": 1.0}
    assert aggregate_over_seeds(pd.DataFrame(), []).empty


runner = CliRunner()


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    for args in (["--grid", "colour"], ["--grid", "tokens=15"], [], ["--grid", "resolution=abc"]):
        result = runner.invoke(app, ["ablate", *args, "--axes", str(AXES), "--out", str(tmp_path / "g")])
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()


def test_cli_refuses_grid_dir_of_another_base_config(tmp_path: Path) -> None:
    grid_dir = tmp_path / "g"
    grid_dir.mkdir()
    saved = {"name": "g", "base_config_hash": "0123456789abcdef", "cells": []}
    (grid_dir / "grid.json").write_text(json.dumps(saved))
    before = (grid_dir / "grid.json").read_bytes()
    for extra in ([], ["--dry-run"]):
        result = runner.invoke(app, ["ablate", "train.steps=3", "--grid", "resolution", "--axes", str(AXES),
                                     "--out", str(grid_dir), *extra])
        assert result.exit_code == 2 and "different base config" in result.output
    assert (grid_dir / "grid.json").read_bytes() == before
    assert sorted(p.name for p in grid_dir.iterdir()) == ["grid.json"]


def test_cli_refuses_a_non_grid_dir_and_a_locked_grid(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["ablate", "--grid", "resolution", "--axes", str(AXES), "--out", str(other)])
    assert result.exit_code == 2 and "not a grid dir" in result.output
    locked = tmp_path / "locked"
    locked.mkdir()
    import os
    import socket

    (locked / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    result = runner.invoke(app, ["ablate", "--grid", "resolution", "--axes", str(AXES), "--out", str(locked)])
    assert result.exit_code == 2 and "being written by" in result.output
    assert sorted(p.name for p in locked.iterdir()) == [".lock"]
