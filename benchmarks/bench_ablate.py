"""Benchmark `mm ablate`: wall time of one grid with the default parallelism, `--jobs 1`, `--jobs 2` and
`--executor ray`, the dry run's estimate of each (`--dry-run --json`, run just before) against the wall time
it took, and the overhead of the grid machinery (process start, planning, scheduling, summaries) relative to
the cells' own compute (the pretrain + eval time each cell records in its ablate.json).

    .venv/bin/python benchmarks/bench_ablate.py                      # ablations/ci_smoke.yaml (2 cells)
    .venv/bin/python benchmarks/bench_ablate.py --config '' --grid resolution,tokens --modes local-default
                                                                     # the README grid, as `mm ablate` runs it

Each mode runs the grid from scratch in its own temp dir (same cache of rendered images/tokenizers).
Prints a table and writes benchmarks/results/bench_ablate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODES = {
    "local-default": [],
    "local-jobs1": ["--executor", "local", "--jobs", "1", "--threads", "1"],
    "local-jobs2": ["--executor", "local", "--jobs", "2"],
    "ray": ["--executor", "ray", "--cpus-per-cell", "1"],
}


def _uptime() -> str:
    """`uptime`'s line: the machine is shared, so its load is part of every measurement."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"loadavg {os.getloadavg()}"


def run_mode(mode: str, config: list[str], grid: list[str], overrides: list[str], workdir: Path) -> dict:
    """Run the grid once in ``mode``; return wall time, the cells' own compute time and the overhead."""
    out = workdir / mode
    command = [sys.executable, "-m", "mmbench_cli.cli", "ablate", *config, *overrides, *sum((["--grid", g] for g in grid), []),
               "--out", str(out), *MODES[mode]]
    dry = subprocess.run([*command, "--dry-run", "--json"], cwd=REPO, capture_output=True, text=True)
    if dry.returncode != 0:
        raise SystemExit(f"{mode}: mm ablate --dry-run exited {dry.returncode}\n{dry.stderr[-2000:]}")
    estimate = json.loads(dry.stdout)["estimate"]
    uptime_before = _uptime()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: mm ablate exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cells = {}
    for record_path in sorted(out.glob("*/ablate.json")):
        record = json.loads(record_path.read_text())
        cells[record_path.parent.name] = {key: record.get(key) for key in ("train_s", "eval_s", "wall_s", "cpu_s")}
    compute = sum((c["train_s"] or 0) + (c["eval_s"] or 0) for c in cells.values())
    cpu = sum(c["cpu_s"] or 0 for c in cells.values())
    # the machine's load average before/after: on a shared machine, wall times are only comparable at equal load
    result = {"wall_s": round(wall, 2), "cells_compute_s": round(compute, 2), "cells_cpu_s": round(cpu, 2),
              "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "uptime": [uptime_before, _uptime()], "cells": cells,
              "estimate_s": round(estimate["total_s"], 2),
              "estimate_error": round((estimate["total_s"] - wall) / wall, 4),
              "estimate_assumptions": estimate["assumptions"]}
    if mode == "local-jobs1":  # cells run one after another, so everything outside them is the machinery's
        result["overhead_s"] = round(wall - compute, 2)
        result["overhead_fraction"] = round((wall - compute) / wall, 4)
    return result


def main() -> None:
    """Run the modes and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ablations/ci_smoke.yaml", help="base config or grid file ('' for none)")
    parser.add_argument("--grid", action="append", default=[], help="--grid option(s) for mm ablate")
    parser.add_argument("--overrides", default="", help="config overrides of the cells (one string)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--output", type=Path, default=RESULTS / "bench_ablate.json")
    args = parser.parse_args()
    grid = args.grid
    config = [args.config] if args.config else []
    overrides = shlex.split(args.overrides)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_ablate.") as tmp:
        for mode in args.modes.split(","):
            results[mode] = run_mode(mode, config, grid, overrides, Path(tmp))
            print(f"{mode:13s} wall {results[mode]['wall_s']:7.1f}s   estimate {results[mode]['estimate_s']:7.1f}s "
                  f"({100 * results[mode]['estimate_error']:+.0f}%)   cells' own compute "
                  f"{results[mode]['cells_compute_s']:7.1f}s", flush=True)
    if "local-jobs1" in results:
        print(f"grid machinery overhead (jobs 1): {results['local-jobs1']['overhead_s']:.1f}s "
              f"= {100 * results['local-jobs1']['overhead_fraction']:.1f}% of the wall time")
    payload = {
        "benchmark": "bench_ablate", "config": args.config, "grid": grid, "overrides": overrides, "results": results,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
