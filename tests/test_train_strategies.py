"""train.strategy: choosing a strategy, FSDP (2 CPU ranks under torchrun, gloo) resuming exactly after kill -9 and
writing checkpoints that load in one process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_loop import TINY, _env
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.config import config_hash, load_config
from mmbench_cli.errors import MMError
from mmbench_cli.rundir import RunDir, read_jsonl, read_status
from mmbench_cli.train.distributed import DistContext
from mmbench_cli.train.strategies import DDPStrategy, SingleStrategy, build_strategy, strategy_name

runner = CliRunner()
TORCHRUN = Path(sys.executable).parent / "torchrun"


def torchrun(args: list[str], **kwargs) -> list[str]:
    """The command line of ``mm pretrain`` on 2 CPU ranks."""
    return [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "mmbench_cli.cli", "pretrain", *args]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_auto_is_ddp_under_torchrun_else_single_and_hash_neutral() -> None:
    cfg = load_config(None, [])
    assert cfg.train.strategy == "auto" and cfg.train.fsdp_sharding == "full" and not cfg.train.activation_checkpointing
    assert config_hash(cfg) == config_hash(load_config(None, ["train.strategy=auto", "train.fsdp_sharding=full"]))
    assert config_hash(cfg) != config_hash(load_config(None, ["train.strategy=fsdp"]))
    assert isinstance(build_strategy(cfg.train, DistContext()), SingleStrategy)
    two = DistContext(rank=0, world_size=2)
    assert strategy_name(cfg.train, two) == "ddp"
    assert isinstance(build_strategy(load_config(None, ["train.strategy=ddp"]).train, DistContext()), DDPStrategy)
    with pytest.raises(MMError, match="single runs one process"):
        strategy_name(load_config(None, ["train.strategy=single"]).train, two)


def test_fsdp_outside_torchrun_is_one_line_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pretrain", *TINY, "train.steps=1", "train.strategy=fsdp", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "runs under torchrun" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "r" / "config.yaml").exists()


@pytest.mark.slow
def test_fsdp_kill9_after_step_20_resumes_to_the_same_weights(tmp_path: Path) -> None:
    if not TORCHRUN.exists() or not Path("/proc/self/task").is_dir():
        pytest.skip("needs torchrun next to this python and Linux /proc (to kill the ranks)")
    args = [*TINY, "train.steps=30", "train.checkpoint_every=10", "train.log_spaced_checkpoints=false",
            "train.log_every=5", "train.strategy=fsdp"]
    reference = subprocess.run(torchrun([*args, "--out", str(tmp_path / "ref")]), env=_env(), capture_output=True,
                               text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(torchrun([*args, "--out", str(killed)]), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_20").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    ranks = _descendants(process.pid)  # torchrun starts each rank in a session of its own: kill them by pid
    assert len(ranks) >= 2
    for pid in [process.pid, *ranks]:
        os.kill(pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # it was still training
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in ranks):
        time.sleep(0.05)
    assert not (killed / "checkpoints" / "step_30").exists()
    resumed = subprocess.run(torchrun([*args, "--out", str(killed)]), env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_status(killed) == "done"
    assert json.loads((killed / "meta.json").read_text())["resumed_from"] == 20

    step_20 = killed / "checkpoints" / "step_20"
    assert (step_20 / "optimizer").is_dir() and not (step_20 / "optimizer.safetensors").exists()  # sharded state
    final_ref = load_file(str(tmp_path / "ref/checkpoints/step_30/model.safetensors"))
    final_new = load_file(str(killed / "checkpoints/step_30/model.safetensors"))
    assert final_ref.keys() == final_new.keys()
    assert all(torch.equal(final_ref[name], final_new[name]) for name in final_ref)
    ref_rows, new_rows = read_jsonl(tmp_path / "ref/metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in new_rows] == [(r["step"], r["loss"], r["grad_norm"])
                                                                          for r in ref_rows]
    assert RunDir(killed).checkpoint_steps() == [0, 10, 20, 30]

    # The consolidated checkpoint is an ordinary one: one process loads it, with the single-process key set.
    from mmbench_cli.model import load_model

    model = load_model(killed / "checkpoints" / "step_30")
    assert {name: tensor for name, tensor in model.state_dict().items() if name in final_new}.keys() == final_new.keys()
    assert all(torch.equal(model.state_dict()[name], final_new[name]) for name in final_new)
    shutil.rmtree(tmp_path / "ref")
