"""Training stages: ``train.init_from`` starts a run from another run's weights with its own optimizer and schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_loop import TINY
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.config import config_hash, load_config
from mmbench_cli.rundir import read_jsonl
from mmbench_cli.train.loop import pretrain

runner = CliRunner()


def test_init_from_starts_at_the_source_weights_and_names_the_source(tmp_path: Path) -> None:
    align = pretrain(load_config(None, [*TINY, "train.steps=3", "train.freeze_lm=true"]), tmp_path / "align",
                     progress=False)
    cfg = load_config(None, [*TINY, "train.steps=2", f"train.init_from={align}", "model.connector_pos_emb=true"])
    assert config_hash(cfg) != config_hash(load_config(None, [*TINY, "train.steps=2", "model.connector_pos_emb=true"]))
    full = pretrain(cfg, tmp_path / "full", progress=False)

    source = load_file(str(align / "checkpoints/step_3/model.safetensors"))
    start = load_file(str(full / "checkpoints/step_0/model.safetensors"))
    assert all(torch.equal(source[name], start[name]) for name in source)  # step 0 = the source's last weights
    meta = json.loads((full / "meta.json").read_text())
    init = meta["init_from"]
    assert init["path"] == str(align) and init["step"] == 3
    assert init["content_hash"] == json.loads((align / "checkpoints/step_3/checkpoint.json").read_text())["content_hash"]
    new = [name for name in start if name not in source]  # the connector's position embedding: fresh, reported
    assert new and sorted(init["missing"]) == sorted(new)
    assert [row["step"] for row in read_jsonl(full / "metrics.jsonl")] == [1, 2]  # its own schedule from step 0
    assert read_jsonl(full / "metrics.jsonl")[0]["lr"] == read_jsonl(align / "metrics.jsonl")[0]["lr"]  # warm-up again


def test_init_from_a_missing_run_or_step_is_one_line_exit_2(tmp_path: Path) -> None:
    for spec, message in ((str(tmp_path / "nothing"), "no run directory with checkpoints"),
                          (f"{tmp_path / 'nothing'}:7", "no run directory with checkpoints")):
        result = runner.invoke(app, ["pretrain", *TINY, "train.steps=1", f"train.init_from={spec}",
                                     "--out", str(tmp_path / "run")])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_grid_stage_starts_from_the_cell_it_names_and_runs_after_it(tmp_path: Path) -> None:
    from mmbench_cli.ablate.grid import build_plan, link_stages, stage_waves

    plan = build_plan(str(Path(__file__).parents[1] / "ablations" / "stages.yaml"), [], [])
    link_stages(plan, tmp_path / "grid")
    cells = {cell.id: cell for cell in plan.cells}
    for seed in (0, 1):
        two = cells[f"recipe=two-stage,seed={seed}"]
        assert two.after == (f"recipe=align,seed={seed}",)  # the align cell of the same seed
        assert two.config.train.init_from == str(tmp_path / "grid" / f"recipe=align,seed={seed}")
        assert cells[f"recipe=one-stage,seed={seed}"].config.train.init_from is None
    waves = [sorted(cell.id for cell in wave) for wave in stage_waves(plan.cells)]
    assert len(waves) == 2 and all(cell.startswith("recipe=two-stage") for cell in waves[1])
    link_stages(plan, tmp_path / "grid")  # idempotent (mm ablate links, run_grid links again)
    assert cells["recipe=two-stage,seed=0"].after == ("recipe=align,seed=0",)
    assert plan.to_json()["cells"][2]["after"] == ["recipe=align,seed=0"]


def test_bad_stage_references_are_one_line_errors(tmp_path: Path) -> None:
    from mmbench_cli.ablate.grid import build_plan, link_stages
    from mmbench_cli.errors import MMError

    def plan_with(values: str) -> None:
        grid = tmp_path / "g.yaml"
        grid.write_text(f"axes:\n  recipe:\n    values:\n{values}")
        link_stages(build_plan(str(grid), [], []), tmp_path / "out")

    with pytest.raises(MMError, match="no axis has the value 'warmup'"):
        plan_with('      a: {train.steps: 2}\n      b: {train.init_from: "${warmup}"}\n')
    with pytest.raises(MMError, match="names the cell itself"):
        plan_with('      a: {train.init_from: "${a}"}\n      b: {train.steps: 2}\n')
    with pytest.raises(MMError, match="a cycle"):
        plan_with('      a: {train.init_from: "${b}"}\n      b: {train.init_from: "${a}", train.steps: 3}\n')
