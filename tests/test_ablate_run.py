"""`mm ablate` end to end with real (tiny) pretrain + eval cells: summaries, skip/resume after SIGKILL,
a failing cell, --jobs 2 subprocesses, the lock, and the Ray executor on a local Ray instance."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from model_fixtures import MECHANICS
from typer.testing import CliRunner

from mmbench_cli.cli import app

REPO = Path(__file__).resolve().parents[1]
AXES = str(REPO / "mmbench_cli" / "resources" / "axes.yaml")
# A cell of a few seconds: 6 steps of 2 rows of 64 tokens (checkpoints at 0, 3, 6), 16-px images, the smallest LM,
# 4 eval queries per task and shots.
TINY = [*MECHANICS,
    "train.steps=6", "train.batch_size=2", "train.warmup_steps=2", "train.checkpoint_every=3",
    "train.log_spaced_checkpoints=false", "train.log_every=1",
    "data.seq_len=64", "data.num_train_images=32", "data.num_val_images=8", "data.num_test_images=16",
    "model.image_size=16", "model.num_image_tokens=4", "model.lm=pythia-toy-1m",
    "eval.tasks=[synthetic-vqa,synthetic-caption]", "eval.shots=[0,2]", "eval.num_samples=4", "eval.batch_size=4",
]
SEEDS = ["--grid", "seed=0,1"]
TIMING_COLUMNS = ("train_s", "eval_s")
runner = CliRunner()


def ablate_args(out: Path, *extra: str) -> list[str]:
    return ["ablate", *TINY, *SEEDS, "--axes", AXES, "--out", str(out), "--threads", "1", *extra]


def local_args(out: Path, *extra: str) -> list[str]:
    """In-process, one cell after another (the fastest way for a test)."""
    return ablate_args(out, "--jobs", "1", *extra)


def file_fingerprints(directory: Path) -> dict[str, tuple[int, str]]:
    """mtime (ns) and sha256 of every file under ``directory``."""
    return {
        str(path.relative_to(directory)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(directory.rglob("*")) if path.is_file()
    }


def assert_same_summary(left: Path, right: Path) -> None:
    a, b = pd.read_csv(left), pd.read_csv(right)
    assert list(a.columns) == list(b.columns)
    assert list(a["cell"]) == list(b["cell"])
    for column in a.columns:
        if column in TIMING_COLUMNS:
            continue
        if pd.api.types.is_numeric_dtype(a[column]):
            assert a[column].tolist() == pytest.approx(b[column].tolist(), rel=1e-6, nan_ok=True), column
        else:
            assert a[column].tolist() == b[column].tolist(), column


@pytest.fixture(scope="module")
def reference_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-seed grid run once, uninterrupted, in this process."""
    out = tmp_path_factory.mktemp("ablate") / "reference"
    result = runner.invoke(app, local_args(out))
    assert result.exit_code == 0, result.output
    return out


def test_grid_runs_every_cell_and_summarises(reference_grid: Path) -> None:
    table = pd.read_parquet(reference_grid / "summary.parquet")
    assert list(table["cell"]) == ["seed=0", "seed=1"]
    assert set(table["state"]) == {"done"}
    assert (table["step"] == 6).all()
    for column in ("synthetic-vqa/0shot", "synthetic-vqa/2shot", "synthetic-caption/2shot", "vqa_avg/0shot",
                   "caption_avg/2shot"):
        assert table[column].between(0, 100).all(), column
    assert table["final_loss"].gt(0).all()
    # different training seeds give different models (the seed axis is not a no-op)
    assert table["final_loss"].nunique() == 2
    seeds = pd.read_csv(reference_grid / "summary_seeds.csv")
    assert len(seeds) == 1 and seeds.loc[0, "num_seeds"] == 2
    assert seeds.loc[0, "final_loss"] == pytest.approx(table["final_loss"].mean())
    assert seeds.loc[0, "final_loss_std"] == pytest.approx(table["final_loss"].std(ddof=1))
    plan = json.loads((reference_grid / "grid.json").read_text())
    assert [cell["id"] for cell in plan["cells"]] == ["seed=0", "seed=1"]
    for cell in ("seed=0", "seed=1"):
        assert (reference_grid / cell / "eval" / "step_6.json").exists()
        assert json.loads((reference_grid / cell / "ablate.json").read_text())["state"] == "done"


def test_rerun_skips_done_cells_without_touching_them(reference_grid: Path, tmp_path: Path) -> None:
    before = {cell: file_fingerprints(reference_grid / cell) for cell in ("seed=0", "seed=1")}
    result = runner.invoke(app, local_args(reference_grid))
    assert result.exit_code == 0, result.output
    assert "2 of 2 cells already done" in result.output
    assert {cell: file_fingerprints(reference_grid / cell) for cell in before} == before


def test_sigkill_mid_grid_then_rerun_gives_the_same_summary(reference_grid: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mmbench_cli.cli", *local_args(out)]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while not (out / "grid.json").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        # a second mm ablate on the same grid while the first holds it is refused, touching nothing
        concurrent = runner.invoke(app, local_args(out))
        assert concurrent.exit_code == 2 and "being written by" in concurrent.output
        # kill once the first cell is done and the second has written a checkpoint
        while time.time() < deadline and process.poll() is None:
            first = out / "seed=0" / "ablate.json"
            second_ckpts = out / "seed=1" / "checkpoints"
            if first.exists() and json.loads(first.read_text()).get("state") == "done" and second_ckpts.is_dir() \
                    and any(p.name.startswith("step_") for p in second_ckpts.iterdir()):
                break
            time.sleep(0.05)
        assert process.poll() is None, "the grid finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (out / "summary.csv").exists()
    done_before = file_fingerprints(out / "seed=0")
    interrupted = json.loads((out / "seed=1" / "ablate.json").read_text())
    steps = sorted(int(p.name.split("_")[1]) for p in (out / "seed=1" / "checkpoints").glob("step_*"))

    result = runner.invoke(app, local_args(out))
    assert result.exit_code == 0, result.output
    assert "1 of 2 cells already done" in result.output
    assert file_fingerprints(out / "seed=0") == done_before  # the finished cell was not recomputed
    resumed = json.loads((out / "seed=1" / "ablate.json").read_text())
    assert resumed["attempt"] == 2
    if interrupted["state"] != "done":
        assert resumed["resumed_from_step"] == steps[-1]  # training went on from the last checkpoint
    assert_same_summary(reference_grid / "summary.csv", out / "summary.csv")


@pytest.mark.slow
def test_a_failing_cell_does_not_stop_the_others_and_is_rerun(tmp_path: Path) -> None:
    broken = tmp_path / "not-an-encoder"
    broken.mkdir()
    out = tmp_path / "grid"
    args = ["ablate", *TINY, "--grid", f"model.encoder=vit-tiny,{broken}", "--axes", AXES, "--out", str(out),
            "--jobs", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    table = pd.read_csv(out / "summary.csv")
    assert table["state"].tolist() == ["done", "failed"]
    assert not math.isnan(table.loc[0, "synthetic-vqa/0shot"])
    failed_cell = table.loc[1, "cell"]
    record = json.loads((out / failed_cell / "ablate.json").read_text())
    assert record["state"] == "failed" and record["error"]
    done_before = file_fingerprints(out / table.loc[0, "cell"])
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert json.loads((out / failed_cell / "ablate.json").read_text())["attempt"] == 2
    assert file_fingerprints(out / table.loc[0, "cell"]) == done_before


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "dry"
    result = runner.invoke(app, ablate_args(out, "--dry-run", "--throughput", "1e9"))
    assert result.exit_code == 0, result.output
    for cell in ("seed=0", "seed=1"):
        assert cell in result.output
    assert "nothing was run" in result.output and "1.00 GFLOP/s" in result.output
    assert not out.exists()


@pytest.mark.slow
def test_ray_executor_on_a_local_ray_instance(reference_grid: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray"
        result = runner.invoke(app, ablate_args(out, "--executor", "ray", "--cpus-per-cell", "1"))
        assert result.exit_code == 0, result.output
    finally:
        ray.shutdown()
    assert_same_summary(reference_grid / "summary.csv", out / "summary.csv")
    pids = {json.loads((out / c / "ablate.json").read_text())["pid"] for c in ("seed=0", "seed=1")}
    assert os.getpid() not in pids  # the cells ran in Ray workers, not in this process


def test_eval_all_checkpoints_gives_each_cell_its_training_dynamics(tmp_path: Path) -> None:
    """`eval.all_checkpoints=true` evaluates every checkpoint of every cell (Pythia-style curves in reports)."""
    out = tmp_path / "dynamics"
    args = ["ablate", *TINY, "eval.all_checkpoints=true", "--grid", "seed=0", "--axes", AXES, "--out", str(out),
            "--threads", "1", "--jobs", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    cell = out / "seed=0"
    checkpoints = sorted(int(p.name.removeprefix("step_")) for p in (cell / "checkpoints").glob("step_*"))
    evaluated = sorted(json.loads(p.read_text())["step"] for p in (cell / "eval").glob("step_*.json"))
    assert checkpoints == [0, 3, 6]
    assert evaluated == checkpoints


@pytest.mark.slow
def test_summary_is_bit_identical_whatever_jobs_and_the_threads_a_process_starts_with(tmp_path: Path) -> None:
    """64 px cells, where 1 and 2 intra-op threads give different last bits (measured: the training loss differs
    by ~1e-8 after 5 steps and then diverges): --jobs 1 in a process that starts with 2 threads and --jobs 2
    (a subprocess per cell) must write the same summary, because each cell runs with its config's
    train.cpu_threads."""
    import pandas as pd
    import torch

    args = [*TINY, "model.image_size=64", "model.num_image_tokens=16", "train.batch_size=8", "data.seq_len=128",
            "model.lm=pythia-toy-2m", "--grid", "tokens=4,16", "--axes", AXES]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = runner.invoke(app, ["ablate", *args, "--out", str(tmp_path / "jobs1"), "--jobs", "1"])
    finally:
        torch.set_num_threads(before)
    assert one.exit_code == 0, one.output
    two = runner.invoke(app, ["ablate", *args, "--out", str(tmp_path / "jobs2"), "--jobs", "2"])
    assert two.exit_code == 0, two.output
    frames = [pd.read_csv(tmp_path / name / "summary.csv").drop(columns=list(TIMING_COLUMNS))
              for name in ("jobs1", "jobs2")]
    assert (frames[0]["state"] == "done").all()
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
