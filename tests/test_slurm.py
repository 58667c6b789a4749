"""`mm ablate --executor slurm`: a tiny grid through submitit's local executor (`--slurm-cluster local`), the
same summary as the in-process run, re-runs that skip done cells, and a one-line refusal without submitit."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_ablate_run import ablate_args, assert_same_summary, file_fingerprints, local_args
from typer.testing import CliRunner

from mmbench_cli.cli import app

runner = CliRunner()
SLURM = ["--executor", "slurm", "--slurm-cluster", "local", "--timeout-min", "10", "--partition", "debug"]


def job_folders(grid: Path) -> list[Path]:
    """submitit's per-job folders (named by job id; ``%j`` holds the array's submission pickles)."""
    return [path for path in (grid / ".submitit").iterdir() if path.is_dir() and path.name != "%j"]


@pytest.mark.slow
def test_slurm_executor_runs_each_cell_as_a_submitit_job_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    reference = tmp_path / "reference"
    assert runner.invoke(app, local_args(reference)).exit_code == 0
    out = tmp_path / "slurm"
    result = runner.invoke(app, ablate_args(out, *SLURM))
    assert result.exit_code == 0, result.output
    assert_same_summary(reference / "summary.csv", out / "summary.csv")
    for cell in ("seed=0", "seed=1"):
        record = json.loads((out / cell / "ablate.json").read_text())
        assert record["state"] == "done" and record["pid"] != os.getpid()  # ran in a submitit job, not here
    job_dirs = job_folders(out)
    assert len(job_dirs) == 2  # one job (array task) per cell, with its logs
    assert any(path.name.endswith("_result.pkl") for job in job_dirs for path in job.iterdir())

    # a re-run submits nothing and touches no cell file
    before = {k: v for k, v in file_fingerprints(out).items() if not k.startswith(".submitit")}
    again = runner.invoke(app, ablate_args(out, *SLURM))
    assert again.exit_code == 0, again.output
    assert "2 of 2 cells already done" in again.output
    after = {k: v for k, v in file_fingerprints(out).items() if not k.startswith(".submitit")}
    assert {k: v for k, v in after.items() if k.startswith("seed=")} == \
        {k: v for k, v in before.items() if k.startswith("seed=")}
    assert len(job_folders(out)) == 2


@pytest.mark.slow
def test_slurm_executor_resumes_a_partial_cell(tmp_path: Path) -> None:
    """A cell cut off mid-training (its job killed at the time limit) resumes from its last checkpoint."""
    pytest.importorskip("submitit")
    out = tmp_path / "partial"
    args = ablate_args(out, *SLURM)
    seed0 = [arg if arg != "seed=0,1" else "seed=0" for arg in args]
    assert runner.invoke(app, [*seed0[:-len(SLURM)], "--jobs", "1"]).exit_code == 0
    cell = out / "seed=0"
    # what a job killed between checkpoints 3 and 6 leaves: no final checkpoint, no results, state running
    shutil.rmtree(cell / "checkpoints" / "step_6")
    shutil.rmtree(cell / "eval")
    record = json.loads((cell / "ablate.json").read_text())
    (cell / "ablate.json").write_text(json.dumps({**record, "state": "running"}))
    result = runner.invoke(app, seed0)
    assert result.exit_code == 0, result.output
    record = json.loads((cell / "ablate.json").read_text())
    assert record["state"] == "done" and record["resumed_from_step"] == 3 and record["attempt"] == 2
    assert (cell / "checkpoints" / "step_6").is_dir()
