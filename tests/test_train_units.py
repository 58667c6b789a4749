"""Unit tests of the training pieces that need no model: schedules, MM1 rule, trainer state, run-dir checks."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch

from mmbench_cli.config import load_config
from mmbench_cli.errors import MMError
from mmbench_cli.rundir import RunDir, RunLock, atomic_write_text, content_hash
from mmbench_cli.train.checkpoints import checkpoint_schedule, load_trainer_state, save_trainer_state
from mmbench_cli.train.run_setup import check_data_inputs, prepare_run_dir
from mmbench_cli.train.schedule import lr_at, mm1_learning_rate, resolve_lr_and_wd


def test_checkpoint_schedule_is_pythia_like() -> None:
    assert checkpoint_schedule(300, 100) == [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300]
    assert checkpoint_schedule(1000, 250) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 250, 500, 750, 1000]
    assert checkpoint_schedule(10, 4, log_spaced=False) == [0, 4, 8, 10]
    assert checkpoint_schedule(3, 100) == [0, 1, 2, 3]


def test_warmup_then_cosine() -> None:
    values = [lr_at(step, 1.0, 100, 10, 0.1) for step in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(values[:9], values[1:10], strict=True))
    assert all(a >= b for a, b in zip(values[10:-1], values[11:], strict=True))
    assert lr_at(100, 1.0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(55, 1.0, 100, 10, 0.1) == pytest.approx(0.55)  # halfway through the decay


def test_mm1_rule() -> None:
    n = 10_000_000
    assert mm1_learning_rate(n) == pytest.approx(math.exp(-0.4214 * math.log(n) - 0.5535))
    cfg = load_config(None, ["train.lr=mm1-rule"]).train
    lr, wd = resolve_lr_and_wd(cfg, n)
    assert lr == pytest.approx(mm1_learning_rate(n)) and wd == pytest.approx(0.1 * lr)
    explicit = load_config(None, ["train.lr=mm1-rule", "train.weight_decay=0.05"]).train
    assert resolve_lr_and_wd(explicit, n)[1] == 0.05


def test_trainer_state_round_trip_without_pickle(tmp_path) -> None:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    save_trainer_state(tmp_path, optimizer, {"step": 7, "data": {"rows": 3}})
    expected_draw = torch.rand(5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.safetensors", "rng.safetensors", "trainer_state.json"]

    other = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=9.0)
    torch.manual_seed(123)
    state = load_trainer_state(tmp_path, other)
    assert state["step"] == 7 and state["data"] == {"rows": 3}
    assert torch.equal(torch.rand(5), expected_draw)  # RNG restored
    assert other.param_groups[0]["lr"] == 1e-3
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(other.state_dict()["state"][0][key], optimizer.state_dict()["state"][0][key])


def test_content_hash_sees_weights_only() -> None:
    a = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
    assert content_hash(a) == content_hash({"b": torch.zeros(2), "w": torch.ones(2, 2)})
    assert content_hash(a) != content_hash({"w": torch.ones(2, 2) * 2, "b": torch.zeros(2)})


def test_list_checkpoints_skips_incomplete(tmp_path) -> None:
    for step in (0, 2, 10):
        (tmp_path / "checkpoints" / f"step_{step}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step_{step}" / "checkpoint.json").write_text("{}")
    (tmp_path / "checkpoints" / "step_4").mkdir()  # no checkpoint.json: incomplete
    (tmp_path / "checkpoints" / ".step_8.abc.tmp").mkdir()
    assert RunDir(tmp_path).checkpoint_steps() == [0, 2, 10]


def test_run_dir_with_other_config_is_refused(tmp_path) -> None:
    cfg = load_config(None, [])
    atomic_write_text(tmp_path / "config.yaml", "seed: 5\n")
    with pytest.raises(MMError, match="different config.*--resume.*--force"):
        prepare_run_dir(cfg, tmp_path, resume=False, force=False)
    with pytest.raises(MMError, match="cannot change seed"):
        prepare_run_dir(cfg, tmp_path, resume=True, force=False)
    assert (tmp_path / "config.yaml").read_text() == "seed: 5\n"  # untouched
    more_steps = load_config(None, ["seed=5", "train.steps=900"])
    assert prepare_run_dir(more_steps, tmp_path, resume=True, force=False) is None
    assert prepare_run_dir(cfg, tmp_path, resume=False, force=True) is None
    assert not (tmp_path / "config.yaml").exists()


def test_foreign_dir_is_refused(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MMError, match="not a run directory"):
        prepare_run_dir(load_config(None, []), tmp_path, resume=False, force=False)


def test_truncate_metrics(tmp_path) -> None:
    lines = [{"step": s, "loss": 1.0 / s} for s in (1, 10, 20, 30)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 4')
    RunDir(tmp_path).truncate_metrics(20)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 10, 20]


def test_missing_dataset_path_is_an_error(tmp_path) -> None:
    cfg = load_config(None, ["data.source=local", f"data.datasets=[{{format: coco-captions, path: {tmp_path}/nope.json}}]"])
    with pytest.raises(MMError, match=r"data.datasets\[0\].path: .*nope.json"):
        check_data_inputs(cfg)


def test_lock_refuses_second_writer(tmp_path) -> None:
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(MMError, match="being written by pid"):
        RunLock(tmp_path).acquire()


def test_encoder_lr_scale_gives_the_encoder_its_own_learning_rate(tmp_path) -> None:
    """train.encoder_lr_scale: the encoder's parameter groups get lr x scale; the scale survives a resume; at 1.0 the
    optimizer is the two groups it always was (so earlier checkpoints' optimizer states still load)."""
    from mmbench_cli.train.strategies import build_optimizer

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = torch.nn.Linear(3, 3)
            self.lm = torch.nn.Linear(3, 3)

    model = Tiny()
    plain = build_optimizer(model, 1e-3, 0.1, torch.device("cpu"))
    assert len(plain.param_groups) == 2 and {g["lr_scale"] for g in plain.param_groups} == {1.0}
    scaled = build_optimizer(model, 1e-3, 0.1, torch.device("cpu"), encoder_lr_scale=0.1)
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    for group in scaled.param_groups:
        inside = {id(p) in encoder_ids for p in group["params"]}
        assert inside == ({True} if group["lr_scale"] == 0.1 else {False})
    assert sum(len(g["params"]) for g in scaled.param_groups) == 4

    cfg = load_config(None, ["train.encoder_lr_scale=0.1"])
    assert cfg.train.encoder_lr_scale == 0.1
    from mmbench_cli.config import config_hash

    assert config_hash(load_config(None, ["train.encoder_lr_scale=1.0"])) == config_hash(load_config(None, []))
    with pytest.raises(MMError, match="encoder_lr_scale"):
        load_config(None, ["train.encoder_lr_scale=0"])
