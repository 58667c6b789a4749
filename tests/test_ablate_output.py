"""Scriptable output of `mm ablate` / `mm eval` (issue 17): tables that never wrap identifiers when stdout is not a
terminal, `--json` documents on stdout with progress on stderr, the dry-run estimate's assumptions and its
comparison with the actual wall time, and the one-line refusal of `--executor ray` without ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_ablate_run import AXES, TINY, ablate_args
from typer.testing import CliRunner

from mmbench_cli.ablate.estimate import _makespan, schedule_for
from mmbench_cli.ablate.grid import build_plan
from mmbench_cli.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def mm(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """`mm ...` in a subprocess with stdout/stderr piped (not a terminal), as in `mm ... | cat`."""
    env = {**os.environ, "MMBENCH_CACHE_DIR": os.environ.get("MMBENCH_CACHE_DIR", str(cache)), "COLUMNS": "60"}
    return subprocess.run([sys.executable, "-m", "mmbench_cli.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=600)


def test_piped_dry_run_shows_each_cell_id_on_one_line_and_its_assumptions(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    proc = mm("ablate", "--grid", "resolution,tokens", "--dry-run", "--throughput", "1e10", "--out", str(out),
              cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for cell in ("resolution=32,tokens=4", "resolution=32,tokens=16", "resolution=64,tokens=4",
                 "resolution=64,tokens=16"):
        assert any(line.split("\t")[0] == cell for line in lines), proc.stdout  # whole, first field of its line
    assert "axes: resolution (model.image_size): 32, 64; tokens (model.num_image_tokens): 4, 16" in lines
    assert "assumptions:" in lines and any("torch thread(s) per cell" in line for line in lines)
    assert "nothing was run" in proc.stdout and not out.exists()


def test_dry_run_json_parses_and_models_parallel_cells(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    proc = mm("ablate", *TINY, "--grid", "seed=0,1,2", "--axes", AXES, "--out", str(out), "--threads", "1",
              "--jobs", "2", "--dry-run", "--json", cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert [cell["cell"] for cell in document["cells"]] == ["seed=0", "seed=1", "seed=2"]
    estimate = document["estimate"]
    assert estimate["parallel"] == 2 and estimate["threads_per_cell"] == 1
    cells = [cell["est_s"] for cell in document["cells"]]
    assert all(seconds > 0 for seconds in cells)
    # three cells on two slots: the wall time is more than the longest cell, less than all of them in a row
    assert max(cells) <= estimate["total_s"] < sum(cells)
    assert any("--jobs 2" in line for line in estimate["assumptions"])
    assert not out.exists()


def test_schedule_models_jobs_threads_and_oversubscription() -> None:
    plan = build_plan(None, TINY, ["seed=0,1,2,3"], False, None, Path(AXES))
    cores = os.cpu_count() or 1
    one = schedule_for(plan, "local", {"jobs": 1})
    assert one.parallel == 1 and one.process_start_s == 0 and one.slowdown == 1
    many = schedule_for(plan, "local", {"jobs": 4})
    assert many.parallel == 4 and many.slowdown == pytest.approx(max(1.0, 4 / cores))
    assert schedule_for(plan, "slurm", {"array_parallelism": 3}).parallel == 3
    assert _makespan([10, 10, 10], 2) == 20 and _makespan([30, 10, 10, 10], 2) == 30 and _makespan([5], 4) == 5


@pytest.mark.slow
def test_ablate_and_eval_json_with_estimate_vs_actual(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    out = tmp_path / "grid"
    args = ["ablate", *TINY, "--grid", "seed=0,1", "--axes", AXES, "--out", str(out), "--threads", "1", "--jobs", "1"]
    assert mm(*args, "--dry-run", cache=cache).returncode == 0
    proc = mm(*args, "--json", cache=cache)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["states"] == {"seed=0": "done", "seed=1": "done"} and document["failed"] == []
    assert document["estimate_s"] > 0 and document["wall_s"] > 0  # the dry run's estimate, kept for this run
    assert document["summary"]["summary.csv"].endswith("summary.csv")

    again = mm(*args, cache=cache)  # plain (not a terminal): a tab-separated line per cell, never wrapped
    assert again.returncode == 0, again.stderr
    assert any(line.startswith("seed=0\tdone\t6/6") for line in again.stdout.splitlines()), again.stdout
    assert "2 of 2 cells already done" in again.stderr  # progress is on stderr

    evaluated = mm("eval", str(out / "seed=0"), "--tasks", "synthetic-vqa", "--shots", "0", "--num-samples", "4",
                   "--force", "--json", cache=cache)
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads(evaluated.stdout)["results"]
    assert len(results) == 1 and results[0]["result"]["step"] == 6
    assert results[0]["result"]["tasks"]["synthetic-vqa"]["0"]["n"] == 4


@pytest.mark.parametrize(("executor", "module", "extra"), [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_an_executor_without_its_extra_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             executor: str, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import ray` / `import submitit` now raises ImportError
    out = tmp_path / f"no-{module}"
    result = runner.invoke(app, ablate_args(out, "--executor", executor))
    assert result.exit_code == 2
    assert f"mmbench[{extra}]" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()  # refused before the grid dir was made
