"""Where the main job's wall time goes: encoder pre-training, training, evaluation and the report.

Runs a grid the way the README's main job does (``mm ablate`` then ``mm report``) in a fresh cache and output
dir, timing each command, and splits the cells' own records (``ablate.json``: train_s / eval_s per cell; the
pre-training of a cached encoder that a cell had to make is ``meta.json``'s ``pretrained_encoder.pretrain_s``,
inside its train_s) into a JSON. With ``--grid-dir`` it reads a grid that has already run instead (the ablate wall
time then comes from ``--ablate-wall-s`` if given) and only times the report.

    python benchmarks/bench_main_job.py                                   # the README main job, ~13 min
    python benchmarks/bench_main_job.py --grid ablations/ci_smoke.yaml --jobs 2
    python benchmarks/bench_main_job.py --grid-dir runs/resolution-tokens --ablate-wall-s 764

Cell times are summed over cells (they overlap with ``--jobs 2``); the ablate and report wall times are what a
user waits for. Writes ``benchmarks/results/bench_main_job.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmbench_cli.rundir import atomic_write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_main_job.json"


def timed(command: list[str], env: dict[str, str]) -> float:
    """Run ``command`` (output to our stderr) and return its wall time; exit on failure."""
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=sys.stderr)
    return time.perf_counter() - started


def split_cells(grid_dir: Path) -> dict[str, object]:
    """Per-cell and summed train / eval / encoder pre-training seconds from the cells' own records."""
    cells = []
    for record_path in sorted(grid_dir.glob("*/ablate.json")):
        record = json.loads(record_path.read_text())
        meta_path = record_path.parent / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        pretrain_s = float((meta.get("pretrained_encoder") or {}).get("pretrain_s", 0.0))
        cells.append({"cell": record_path.parent.name, "encoder_pretrain_s": pretrain_s,
                      "train_s": float(record.get("train_s", 0.0)) - pretrain_s,
                      "eval_s": float(record.get("eval_s", 0.0)), "wall_s": float(record.get("wall_s", 0.0))})
    totals = {key: round(sum(cell[key] for cell in cells), 1) for key in ("encoder_pretrain_s", "train_s", "eval_s")}
    return {"cells": cells, "cell_seconds_summed": totals}


def main() -> None:
    """Run (or read) the grid, time the report, save the split."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", default="resolution,tokens", help="a --grid spec or a grid YAML file")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--grid-dir", type=Path, help="read this finished grid instead of running one")
    parser.add_argument("--ablate-wall-s", type=float, help="its ablate wall time, when known")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-main-job-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    mm = [sys.executable, "-m", "mmbench_cli.cli"]
    ablate_s = args.ablate_wall_s
    if args.grid_dir is None:
        env["MMBENCH_CACHE_DIR"] = str(work / "cache")  # a fresh machine: nothing cached
        grid_dir = work / "grid"
        spec = [args.grid] if args.grid.endswith((".yaml", ".yml")) else ["--grid", args.grid]
        ablate_s = timed([*mm, "ablate", *spec, "--jobs", str(args.jobs), "--out", str(grid_dir)], env)
    else:
        grid_dir = args.grid_dir
    report_s = timed([*mm, "report", str(grid_dir), "-o", str(work / "report")], env)
    result = {
        "benchmark": "bench_main_job", "command": "python " + " ".join(sys.argv), "grid": args.grid,
        "grid_dir": str(grid_dir), "jobs": args.jobs, "cores": os.cpu_count(),
        "ablate_wall_s": None if ablate_s is None else round(ablate_s, 1), "report_wall_s": round(report_s, 1),
        "total_wall_s": None if ablate_s is None else round(ablate_s + report_s, 1),
        **split_cells(grid_dir),
    }
    atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "cells"}, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
