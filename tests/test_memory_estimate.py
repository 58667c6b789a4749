"""Per-device memory planning: ``memory_estimate`` by strategy, and ``--dry-run`` / ``--device-memory`` in the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train_loop import TINY
from typer.testing import CliRunner

from mmbench_cli.ablate.estimate import memory_estimate, parse_memory
from mmbench_cli.cli import app
from mmbench_cli.config import load_config
from mmbench_cli.errors import MMError

runner = CliRunner()


def test_the_estimate_shrinks_as_fsdp_shards_and_checkpointing_recomputes() -> None:
    cfg = load_config(None, TINY)
    single = memory_estimate(cfg)
    assert single["strategy"] == "single" and single["weights_bytes"] == 4 * single["params"]
    assert single["optimizer_bytes"] == 8 * single["trainable_params"]
    ddp = memory_estimate(cfg, 2)
    assert ddp["strategy"] == "ddp" and ddp["grads_bytes"] == 2 * single["grads_bytes"]  # DDP's buckets
    assert ddp["activations_bytes"] == pytest.approx(single["activations_bytes"] / 2, rel=0.01)  # half the rows

    deep = [*TINY, "model.lm=pythia-toy-30m"]  # more LM blocks than the two FSDP keeps gathered
    single, ddp = memory_estimate(load_config(None, deep)), memory_estimate(load_config(None, deep), 2)
    full = memory_estimate(load_config(None, [*deep, "train.strategy=fsdp"]), 4)
    grad_op = memory_estimate(load_config(None, [*deep, "train.strategy=fsdp", "train.fsdp_sharding=grad_op"]), 4)
    assert full["optimizer_bytes"] == pytest.approx(single["optimizer_bytes"] / 4)
    assert full["weights_bytes"] < grad_op["weights_bytes"] <= single["weights_bytes"]
    assert full["total_bytes"] < ddp["total_bytes"]
    checkpointed = memory_estimate(load_config(None, [*TINY, "train.activation_checkpointing=true"]))
    assert checkpointed["activations_bytes"] < single["activations_bytes"]


def test_device_memory_sizes_parse_and_bad_ones_are_refused() -> None:
    assert parse_memory("80GB") == parse_memory("80GiB") == 80 * 2**30
    assert parse_memory("512MiB") == 512 * 2**20 and parse_memory("1e9") == 1e9
    for bad in ("lots", "-3GB", "0"):
        with pytest.raises(MMError, match="--device-memory"):
            parse_memory(bad)


def test_pretrain_dry_run_prints_the_estimate_and_refuses_what_does_not_fit(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pretrain", *TINY, "train.strategy=fsdp", "--dry-run", "--world-size", "4",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "per device (fsdp, 4 rank(s))" in result.output and "nothing was run" in result.output
    assert not (tmp_path / "run").exists()
    refused = runner.invoke(app, ["pretrain", *TINY, "--device-memory", "1MiB", "--out", str(tmp_path / "run")])
    assert refused.exit_code == 2 and "--device-memory 1.00 MiB: this run needs" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_ablate_dry_run_shows_memory_per_cell_and_refuses_a_grid_that_does_not_fit(tmp_path: Path) -> None:
    grid = ["ablate", *TINY, "--grid", "model.lm=pythia-toy-1m,pythia-toy-2m", "--out", str(tmp_path / "g")]
    refused = runner.invoke(app, [*grid, "--dry-run", "--device-memory", "1MiB"])
    assert refused.exit_code == 2 and "cell " in refused.output and "needs" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    planned = runner.invoke(app, [*grid, "--dry-run", "--json", "--throughput", "1e12", "--world-size", "2"])
    assert planned.exit_code == 0, planned.output
    cells = json.loads(planned.output)["cells"]
    assert len(cells) == 2 and all(cell["memory_bytes"] > 0 for cell in cells)
    assert cells[1]["memory_bytes"] > cells[0]["memory_bytes"]  # the larger LM needs more
