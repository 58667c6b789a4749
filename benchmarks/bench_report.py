"""Benchmark `mm report`: wall time to read, tabulate (with bootstrap CIs), plot and render grids of growing size.

The grids are run dirs in the exact file format (tests/report_fixtures.py), so the numbers measure the report
machinery alone, not training or evaluation. ``wall_s`` includes first imports (matplotlib, jinja2) in the
first row; ``cpu_s`` is this process's CPU time (steadier than wall time on a shared machine).
Prints one JSON line per grid size and writes benchmarks/results/bench_report.json.

    python benchmarks/bench_report.py            # 4, 16 and 48 cells
    python benchmarks/bench_report.py --cells 4  # one size
    python benchmarks/bench_report.py --compare old.json  # also the ratio to an earlier run (same machine)

The phases are ``load_s``, ``tables_s``, ``findings_s`` (the tested contrasts), ``plots_s`` and ``render_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from report_fixtures import write_grid  # noqa: E402

from mmbench_cli.report.build import make_report  # noqa: E402


def bench(cells: int, resamples: int, samples: int) -> dict:
    """Build one report of a grid of ``cells`` cells (cells/2 resolutions × 2 seeds) and time its phases."""
    with tempfile.TemporaryDirectory() as tmp:
        grid = write_grid(Path(tmp) / "grid", resolutions=tuple(range(16, 16 + 8 * (cells // 2), 8)), seeds=(0, 1),
                          samples=samples)
        files = sum(1 for p in grid.rglob("*") if p.is_file())
        start, cpu = time.perf_counter(), time.process_time()
        result = make_report([grid], Path(tmp) / "report", resamples=resamples)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        html_bytes = (result.out_dir / "index.html").stat().st_size
    return {"cells": cells, "runs": cells, "files_read": files, "samples_per_task": samples, "resamples": resamples,
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), **{k: round(v, 3) for k, v in result.timings.items()},
            "index_html_kb": round(html_bytes / 1024, 1)}


def main() -> None:
    """Run the benchmark and save JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[4, 16, 48])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100, help="queries per task and demo seed")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_report.json")
    parser.add_argument("--compare", type=Path, help="an earlier result file: report each size's time ratio to it")
    args = parser.parse_args()
    earlier = {}
    if args.compare is not None:
        earlier = {row["cells"]: row for row in json.loads(args.compare.read_text())["rows"]}
    rows = []
    for cells in args.cells:
        row = bench(cells, args.resamples, args.samples)
        if cells in earlier:
            row["ratio_wall"] = round(row["wall_s"] / earlier[cells]["wall_s"], 2)
            row["ratio_cpu"] = round(row["cpu_s"] / earlier[cells]["cpu_s"], 2)
        rows.append(row)
        print(json.dumps(row))
    result = {"benchmark": "mm report", "python": platform.python_version(), "cpus": os.cpu_count(),
              "machine": platform.machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}
    if args.compare is not None:
        result["compared_to"] = {"file": str(args.compare), "rows": list(earlier.values())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
