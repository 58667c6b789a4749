"""mm pretrain end to end on a shrunken toy config: checkpoints, metrics, loss, resume after kill -9, DDP, errors."""

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
from model_fixtures import MECHANICS
from safetensors.torch import load_file
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.config import load_config
from mmbench_cli.rundir import RunDir, file_content_hash, read_jsonl, read_status
from mmbench_cli.train.checkpoints import checkpoint_schedule
from mmbench_cli.train.loop import pretrain

# The default toy model, shrunk for test speed (smallest LM rung, 32 px images, short rows).
TINY = [*MECHANICS,
    "model.lm=pythia-toy-1m", "model.image_size=32", "model.num_image_tokens=4", "data.seq_len=64",
    "train.batch_size=8", "data.num_train_images=64", "data.num_val_images=8", "data.num_test_images=8",
    "train.warmup_steps=3", "train.log_every=4", "train.checkpoint_every=8",
]
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmbench_cli.cli", "pretrain", *args], env=_env(),
                          capture_output=True, text=True, **kwargs)


def test_short_run_writes_the_run_dir_contract(tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY, "train.steps=12"])
    run = pretrain(cfg, tmp_path / "run", progress=False)

    steps = RunDir(run).checkpoint_steps()
    assert steps == checkpoint_schedule(12, 8) == [0, 1, 2, 4, 8, 12]
    hashes = set()
    for step, path in [(c.step, c.path) for c in RunDir(run).checkpoints()]:
        info = json.loads((path / "checkpoint.json").read_text())
        assert set(info) == {"step", "content_hash", "tokens_seen", "train_flops", "wall_time_s"}
        assert info["step"] == step and info["content_hash"] == file_content_hash(path / "model.safetensors")
        assert (path / "mm_config.json").exists() and (path / "tokenizer.json").exists()
        hashes.add(info["content_hash"])
    assert len(hashes) == len(steps)  # every update changed the weights: no duplicate checkpoints

    metrics = read_jsonl(run / "metrics.jsonl")
    assert [row["step"] for row in metrics] == [1, 4, 8, 12]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "train_flops", "elapsed_s"):
        assert all(key in row for row in metrics), key
    assert any("loss/caption" in row for row in metrics) and any("loss/interleaved" in row for row in metrics)
    assert metrics[-1]["train_flops"] > metrics[0]["train_flops"] > 0
    meta = json.loads((run / "meta.json").read_text())
    assert meta["num_params"] > 0 and meta["flops_per_step"] > 0 and meta["seed"] == 0
    cuts = meta["seq_len_cuts"]  # 64-token rows cut the world's interleaved documents, never its captions
    assert cuts["interleaved"]["tokens_cut"] > 0.05 and cuts["caption"] == {"samples_cut": 0.0, "tokens_cut": 0.0}
    assert read_status(run) == "done" and not (run / ".lock").exists()

    # The same command again resumes from the final checkpoint: nothing retrained, curve unchanged.
    before = (run / "metrics.jsonl").read_text()
    pretrain(cfg, run, progress=False)
    assert (run / "metrics.jsonl").read_text() == before

    # The checkpoint loads as a model on its own.
    from mmbench_cli.model import load_model

    model = load_model(run / "checkpoints" / "step_12")
    assert sum(p.numel() for p in model.parameters()) == meta["num_params"]


def test_grad_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    one = pretrain(load_config(None, [*TINY, "train.steps=3"]), tmp_path / "a", progress=False)
    two = pretrain(load_config(None, [*TINY, "train.steps=3", "train.grad_accum=2"]), tmp_path / "b", progress=False)
    loss_a = [row["loss"] for row in read_jsonl(one / "metrics.jsonl")]
    loss_b = [row["loss"] for row in read_jsonl(two / "metrics.jsonl")]
    assert loss_a == pytest.approx(loss_b, rel=1e-4)
    wa, wb = (load_file(str(r / "checkpoints/step_3/model.safetensors")) for r in (one, two))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


@pytest.mark.slow
def test_toy_model_loss_falls_on_every_data_type(tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY, "train.steps=200", "train.log_every=20", "train.checkpoint_every=100"])
    run = pretrain(cfg, tmp_path / "run", progress=False)
    metrics = read_jsonl(run / "metrics.jsonl")
    for kind in ("caption", "interleaved", "text"):
        curve = [row[f"loss/{kind}"] for row in metrics if f"loss/{kind}" in row]
        assert curve[-1] < 0.6 * curve[0], (kind, curve)
    assert RunDir(run).checkpoint_steps() == [0, 1, 2, 4, 8, 16, 32, 64, 100, 200]


@pytest.mark.slow
def test_kill9_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    args = [*TINY, "train.steps=24", "train.checkpoint_every=8", "train.log_every=3"]
    reference = _cli([*args, "--out", str(tmp_path / "ref")], timeout=600)
    assert reference.returncode == 0, reference.stderr

    killed = tmp_path / "killed"
    for wait_for in ("step_4", "step_16"):  # kill twice: between checkpoints, at arbitrary moments
        process = subprocess.Popen([sys.executable, "-m", "mmbench_cli.cli", "pretrain", *args, "--out", str(killed)],
                                   env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while not (killed / "checkpoints" / wait_for).exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.7)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL  # it was still training
        assert read_status(killed) in ("running", "done")
    resumed = _cli([*args, "--out", str(killed)], timeout=600)  # automatic resume (same config)
    assert resumed.returncode == 0, resumed.stderr
    assert read_status(killed) == "done"

    ref_rows, new_rows = read_jsonl(tmp_path / "ref" / "metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")
    assert [r["step"] for r in new_rows] == [r["step"] for r in ref_rows]  # no duplicates, no gaps
    for key in ("loss", "loss/caption", "loss/interleaved", "loss/text", "lr", "grad_norm", "tokens_seen"):
        assert [r.get(key) for r in new_rows] == [r.get(key) for r in ref_rows], key
    final_ref = load_file(str(tmp_path / "ref/checkpoints/step_24/model.safetensors"))
    final_new = load_file(str(killed / "checkpoints/step_24/model.safetensors"))
    assert all(torch.equal(final_ref[name], final_new[name]) for name in final_ref)
    assert RunDir(killed).checkpoint_steps() == RunDir(tmp_path / "ref").checkpoint_steps()


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path: Path) -> None:
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun not installed next to this python")
    args = [*TINY, "train.steps=6", "train.log_every=1"]
    single = _cli([*args, "--out", str(tmp_path / "one")], timeout=600)
    assert single.returncode == 0, single.stderr
    torchrun = str(Path(sys.executable).parent / "torchrun")
    double = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "mmbench_cli.cli", "pretrain", *args,
         "--out", str(tmp_path / "two")],
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = read_jsonl(tmp_path / "one/metrics.jsonl"), read_jsonl(tmp_path / "two/metrics.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "loss/caption", "loss/interleaved", "tokens_seen"):
        assert [r.get(key) for r in two] == pytest.approx([r.get(key) for r in one], rel=1e-4), key
    w1 = load_file(str(tmp_path / "one/checkpoints/step_6/model.safetensors"))
    w2 = load_file(str(tmp_path / "two/checkpoints/step_6/model.safetensors"))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)
    assert json.loads((tmp_path / "two/meta.json").read_text())["world_size"] == 2

    # FSDP (train.strategy=fsdp) of the same config on the same 2 ranks ends where DDP does, within float noise:
    # measured, the losses agree to ~1e-8 relative and the step-6 weights to 5.3e-6 absolute (sharded reductions
    # sum in another order); the bounds below leave ~20x room.
    sharded = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "mmbench_cli.cli", "pretrain", *args,
         "train.strategy=fsdp", "--out", str(tmp_path / "fsdp")],
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    fsdp = read_jsonl(tmp_path / "fsdp/metrics.jsonl")
    assert [r["loss"] for r in fsdp] == pytest.approx([r["loss"] for r in two], rel=1e-6)
    w3 = load_file(str(tmp_path / "fsdp/checkpoints/step_6/model.safetensors"))
    assert w3.keys() == w2.keys() and max(float((w3[k] - w2[k]).abs().max()) for k in w2) < 1e-4
    meta = json.loads((tmp_path / "fsdp/meta.json").read_text())
    assert meta["strategy"] == "fsdp" and meta["fsdp_sharding"] == "full"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.data_mix={caption: 0.5, video: 0.5}"], "unknown data type 'video'"),
        (["data.data_mix={caption: 0.5, text: 0.2}"], "must sum to 1"),
        (["data.source=local", "data.datasets=[{format: coco-captions, path: /no/such/captions.json}]"],
         "/no/such/captions.json: no such file"),
        (["train.batch_size=7", "train.grad_accum=2"], "train.batch_size"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, overrides: list[str], message: str) -> None:
    result = runner.invoke(app, ["pretrain", *TINY, *overrides, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_out_dir_with_another_config_needs_resume_or_force(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 3\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    result = runner.invoke(app, ["pretrain", *TINY, "train.steps=1", "--out", str(run)])
    assert result.exit_code == 2 and "different config" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (run / "config.yaml").read_text() == "seed: 3\n"  # earlier results untouched
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 9.0}\n'


def test_second_writer_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (run / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        result = runner.invoke(app, ["pretrain", *TINY, "train.steps=1", "--out", str(run)])
        assert result.exit_code == 2 and f"being written by pid {holder.pid}" in result.output
    finally:
        holder.kill()
        holder.wait()


def test_training_says_how_much_the_row_length_cuts(tmp_path: Path) -> None:
    """``mm pretrain`` names a data type whose samples lose more than 5% of their tokens to ``data.seq_len``."""
    short = _cli([*TINY, "train.steps=1", "--out", str(tmp_path / "short")], timeout=600)
    assert short.returncode == 0, short.stderr
    note = next(line for line in short.stderr.splitlines() if "note: data.seq_len=64 cuts" in line)
    assert "of the interleaved tokens" in note
    cut = json.loads((tmp_path / "short" / "meta.json").read_text())["seq_len_cuts"]["interleaved"]["tokens_cut"]
    assert f"cuts {cut:.0%} of" in note
    long = _cli([*TINY, "train.steps=1", "data.seq_len=1024", "model.max_seq_len=1024", "--out",
                 str(tmp_path / "long")], timeout=600)
    assert long.returncode == 0, long.stderr
    assert "cuts" not in long.stderr


def test_freeze_lm_trains_only_what_is_not_frozen(tmp_path: Path) -> None:
    """train.freeze_lm (LLaVA's stage 1 with a frozen encoder): the LM's weights after training equal its weights at
    step 0 bit for bit, while the connector's moved; the default (false) trains the LM."""
    from safetensors.torch import load_file

    def weights(run: Path, step: int, prefix: str) -> dict[str, torch.Tensor]:
        state = load_file(str(run / "checkpoints" / f"step_{step}" / "model.safetensors"))
        return {name: tensor for name, tensor in state.items() if name.startswith(prefix)}

    frozen = pretrain(load_config(None, [*TINY, "train.steps=4", "train.freeze_lm=true", "train.freeze_encoder=true"]),
                      tmp_path / "frozen", progress=False)
    lm_start, lm_end = weights(frozen, 0, "lm."), weights(frozen, 4, "lm.")
    for name, tensor in lm_start.items():
        assert torch.equal(tensor, lm_end[name]), name
    before, after = weights(frozen, 0, "connector."), weights(frozen, 4, "connector.")
    assert before and any(not torch.equal(tensor, after[name]) for name, tensor in before.items())
    trained = pretrain(load_config(None, [*TINY, "train.steps=4"]), tmp_path / "trained", progress=False)
    lm_before, lm_after = weights(trained, 0, "lm."), weights(trained, 4, "lm.")
    assert any(not torch.equal(tensor, lm_after[name]) for name, tensor in lm_before.items())
