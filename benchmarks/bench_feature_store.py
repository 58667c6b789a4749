"""Benchmark: the frozen-encoder feature store on vs off, on the real CLI, in interleaved A/B rounds.

- ``eval``: ``mm eval RUN --all-checkpoints --shots 0 4 --force`` (every checkpoint of a run, Pythia-style);
- ``grid``: ``mm ablate GRID`` into a fresh output dir (training + eval of every cell).

Each round runs both arms as subprocesses, one after the other, the order alternating between rounds so both
share whatever load the machine has. The store arm starts from an empty store (``mm cache clear`` semantics: the
first checkpoint or cell pays for every image); the other arm runs with ``MMBENCH_FEATURE_STORE_MB=0``. Both use the
same cache dir otherwise (pre-trained encoders and rendered images already cached, so neither pays for them). The
script checks that both arms give identical results (every result cell's value; the grid's summary.csv without
its timing columns) and reports the median ratio of wall times with the per-round ratios.

    mm pretrain --out /tmp/store_bench/default                       # the default cell, 14 checkpoints
    python benchmarks/bench_feature_store.py eval /tmp/store_bench/default --num-samples 300 --rounds 2
    python benchmarks/bench_feature_store.py grid ablations/ci_smoke.yaml --rounds 1
    python benchmarks/bench_feature_store.py grid resolution,tokens --rounds 1 --jobs 0 --estimate \
        --keep-on runs/resolution-tokens                                # the README main job (--grid axes)

A grid target that is not a YAML file is an axis list, run as the README's ``mm ablate --grid AXES``; ``--jobs 0`` is
``mm ablate``'s own default. ``--keep-on DIR`` keeps the last store-on arm's grid (a user's run: ``mm report DIR``).

Writes (updates) ``benchmarks/results/bench_feature_store.json``, one entry per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
TIMING_COLUMNS = ("train_s", "eval_s")


def run_arm(command: list[str], store: bool, cache_dir: Path, empty: bool = True) -> float:
    """Wall seconds of ``command`` with the store on (emptied first unless not ``empty``) or off."""
    from mmbench_cli.model.feature_store import clear_store
    from mmbench_cli.rundir import feature_store_dir

    env = dict(os.environ, MMBENCH_CACHE_DIR=str(cache_dir))
    if store:
        if empty:
            clear_store(feature_store_dir(str(cache_dir)))
        env.pop("MMBENCH_FEATURE_STORE_MB", None)
    else:
        env["MMBENCH_FEATURE_STORE_MB"] = "0"
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def eval_values(run: Path) -> dict[str, Any]:
    """Step → task → shots → (value, per-seed values) of every results JSON of ``run``."""
    values: dict[str, Any] = {}
    for path in sorted((run / "eval").glob("step_*.json")):
        data = json.loads(path.read_text())
        values[path.stem] = {task: {shots: (cell["value"], cell["seeds"]) for shots, cell in cells.items()}
                             for task, cells in data["tasks"].items()}
    return values


def summary_rows(out: Path) -> list[dict[str, Any]]:
    """The grid's summary.csv rows without timing columns."""
    import pandas as pd

    table = pd.read_csv(out / "summary.csv").drop(columns=list(TIMING_COLUMNS), errors="ignore")
    return table.astype(object).where(table.notna(), None).to_dict(orient="records")  # NaN != NaN: empty cells None


def interleave(rounds: int, run: Any) -> tuple[list[float], list[float]]:
    """``run(store)`` → seconds, in ``rounds`` rounds alternating which arm goes first."""
    off_times: list[float] = []
    on_times: list[float] = []
    for round_index in range(rounds):
        for store in ((False, True) if round_index % 2 == 0 else (True, False)):
            seconds = run(store)
            (on_times if store else off_times).append(seconds)
            print(f"round {round_index + 1}: store {'on ' if store else 'off'} {seconds:7.1f} s", flush=True)
    return off_times, on_times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run one mode's A/B rounds, check identical results, update the results JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("eval", "grid"))
    parser.add_argument("target", help="eval: a run dir; grid: a grid YAML")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-samples", type=int, help="eval: query samples per task (default: the run's)")
    parser.add_argument("--jobs", type=int, default=1, help="grid: cells at once (mm ablate --jobs; 0: its default)")
    parser.add_argument("--keep-on", type=Path, help="grid: keep the last store-on arm's output here (must not exist)")
    parser.add_argument("--cache-dir", type=Path, help="cache dir (default: $MMBENCH_CACHE_DIR); its features/ is "
                                                       "emptied before every store-on arm")
    parser.add_argument("--estimate", action="store_true", help="grid: first run mm ablate --dry-run and compare its "
                                                                 "estimate with the store-on arms' wall time")
    parser.add_argument("--estimate-only", action="store_true",
                        help="grid: run only the dry run and compare it with the store-on time this JSON already holds "
                             "for the same grid (after a change to the estimate)")
    parser.add_argument("--ceiling-only", action="store_true",
                        help="grid: fill the store with one store-on arm, then time the grid again with every feature "
                             "already stored (the most a store can give); added to this JSON's measured grid entry")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_feature_store.json")
    parser.add_argument("overrides", nargs="*", help="grid: config overrides passed to mm ablate")
    args = parser.parse_args(argv)
    from mmbench_cli.rundir import atomic_write_json, cache_root

    cache_dir = Path(args.cache_dir or cache_root())
    mm = [sys.executable, "-m", "mmbench_cli.cli"]
    answers: dict[bool, Any] = {}
    load_before = os.getloadavg()
    if args.mode == "eval":
        run = Path(args.target)
        command = [*mm, "eval", str(run), "--all-checkpoints", "--shots", "0", "4", "--force"]
        if args.num_samples:
            command += ["--num-samples", str(args.num_samples)]

        def one(store: bool) -> float:
            seconds = run_arm(command, store, cache_dir)
            answers.setdefault(store, eval_values(run))
            if eval_values(run) != answers[store]:
                raise SystemExit("the same arm gave other results in another round")
            return seconds

        checkpoints = len(list((run / "checkpoints").glob("step_*")))
        what = {"run": str(run), "checkpoints": checkpoints, "num_samples": args.num_samples or "the run's"}
    else:
        scratch = Path(tempfile.mkdtemp(prefix="bench-store-grid."))
        grid = [args.target] if args.target.endswith((".yaml", ".yml")) else ["--grid", args.target]
        if args.keep_on is not None and args.keep_on.exists():
            raise SystemExit(f"--keep-on {args.keep_on} exists; name a new directory")
        arms_left = {True: args.rounds, False: args.rounds}

        def one(store: bool) -> float:
            arms_left[store] -= 1
            keep = store and not arms_left[store] and args.keep_on is not None
            out = args.keep_on if keep else scratch / f"{'on' if store else 'off'}-{time.time_ns()}"
            seconds = run_arm([*mm, "ablate", *grid, *args.overrides, "--out", str(out), "--jobs", str(args.jobs)],
                              store, cache_dir)
            rows = summary_rows(out)
            answers.setdefault(store, rows)
            if rows != answers[store]:
                raise SystemExit("the same arm gave another summary in another round")
            if not keep:
                shutil.rmtree(out, ignore_errors=True)
            return seconds

        what = {"grid": args.target, "overrides": args.overrides, "jobs": args.jobs}
        if args.estimate or args.estimate_only:  # the dry run as a user runs it, before anything is stored
            from mmbench_cli.model.feature_store import clear_store
            from mmbench_cli.rundir import feature_store_dir

            clear_store(feature_store_dir(str(cache_dir)))
            done = subprocess.run([*mm, "ablate", *grid, *args.overrides, "--out", str(scratch / "dry"),
                                   "--jobs", str(args.jobs), "--dry-run"], capture_output=True, text=True,
                                  env=dict(os.environ, MMBENCH_CACHE_DIR=str(cache_dir)))
            found = re.search(r"about ([\d.]+)(s|min|h) of wall time", done.stdout)
            if done.returncode or found is None:
                raise SystemExit(f"mm ablate --dry-run failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
            what["estimate_s"] = float(found.group(1)) * {"s": 1, "min": 60, "h": 3600}[found.group(2)]
            what["estimate_output"] = done.stdout.splitlines()
        if args.estimate_only:
            return _update_estimate(args.out, what, argv)
        if args.ceiling_only:
            fill = one(True)  # from an empty store, as the store-on arms
            warm_out = scratch / "warm"
            warm = run_arm([*mm, "ablate", *grid, *args.overrides, "--out", str(warm_out), "--jobs", str(args.jobs)],
                           True, cache_dir, empty=False)
            if summary_rows(warm_out) != answers[True]:
                raise SystemExit("the grid with every feature stored gave another summary")
            return _update_ceiling(args.out, what, fill, warm, argv)
    off, on = interleave(args.rounds, one)
    ratios = [a / b for a, b in zip(off, on, strict=True)]
    identical = answers[True] == answers[False]
    if args.mode == "eval":  # the store's ceiling: the same command once more with every feature already stored
        warm = run_arm(command, True, cache_dir, empty=False)
        what.update(store_warm_s=warm, speedup_ceiling=statistics.median(off) / warm,
                    ceiling_note="store_warm_s: the store-on command re-run with every feature already stored (no "
                                 "encoder work at all); store off / warm is the most any feature store can give here")
        print(f"store warm (every feature stored): {warm:.1f} s; ceiling {what['speedup_ceiling']:.2f}x", flush=True)
    if "estimate_s" in what:
        what["estimate_error_vs_store_on"] = what["estimate_s"] / statistics.median(on) - 1
    entry = {
        **what, "command": f"python benchmarks/bench_feature_store.py {' '.join(argv or sys.argv[1:])}",
        "rounds": args.rounds, "store_off_s": off, "store_on_s": on, "speedup_per_round": ratios,
        "speedup_median": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
        "identical_results": identical, "host": platform.node(), "cpu_count": os.cpu_count(),
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"benchmark": "bench_feature_store"}
    results[args.mode] = entry
    atomic_write_json(args.out, results)
    print(f"{args.mode}: store off {statistics.median(off):.1f} s, on {statistics.median(on):.1f} s (medians); "
          f"speedup {entry['speedup_median']:.2f}x (rounds {', '.join(f'{r:.2f}' for r in ratios)}); identical "
          f"results: {identical}; load {load_before[0]:.1f} -> {entry['load_avg_after'][0]:.1f}; wrote {args.out}")
    if not identical:
        raise SystemExit("store on and off gave different results")
    return entry


def _update_ceiling(out: Path, what: dict[str, Any], fill: float, warm: float, argv: list[str] | None) -> dict[str, Any]:
    """Add the grid's ceiling (its time with every feature already stored) to the grid entry measured earlier."""
    results = json.loads(out.read_text()) if out.is_file() else {}
    entry = results.get("grid")
    if not isinstance(entry, dict) or entry.get("grid") != what["grid"] or not entry.get("store_off_s"):
        raise SystemExit(f"{out}: no measured grid entry for {what['grid']}; run the grid mode first")
    entry.update(store_fill_s=fill, store_warm_s=warm, speedup_ceiling=statistics.median(entry["store_off_s"]) / warm,
                 ceiling_command=f"python benchmarks/bench_feature_store.py {' '.join(argv or sys.argv[1:])}",
                 ceiling_created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), ceiling_load_avg=os.getloadavg(),
                 ceiling_note="store_fill_s: one more store-on arm from an empty store; store_warm_s: the grid run "
                              "again with every feature already stored (no encoder work at all); store off / warm is "
                              "the most any feature store can give here")
    from mmbench_cli.rundir import atomic_write_json

    atomic_write_json(out, results)
    print(f"store on from empty {fill:.0f} s, every feature stored {warm:.0f} s; ceiling {entry['speedup_ceiling']:.2f}x")
    return entry


def _update_estimate(out: Path, what: dict[str, Any], argv: list[str] | None) -> dict[str, Any]:
    """Put a new dry-run estimate into the grid entry measured earlier for the same grid, against its store-on time."""
    from mmbench_cli.rundir import atomic_write_json, git_commit

    results = json.loads(out.read_text()) if out.is_file() else {}
    entry = results.get("grid")
    if not isinstance(entry, dict) or entry.get("grid") != what["grid"] or not entry.get("store_on_s"):
        raise SystemExit(f"{out}: no measured grid entry for {what['grid']}; run the grid mode first")
    previous = {key: entry[key] for key in ("estimate_s", "estimate_error_vs_store_on") if key in entry}
    entry.update(estimate_s=what["estimate_s"], estimate_output=what["estimate_output"],
                 estimate_error_vs_store_on=what["estimate_s"] / statistics.median(entry["store_on_s"]) - 1,
                 estimate_command=f"python benchmarks/bench_feature_store.py {' '.join(argv or sys.argv[1:])}",
                 estimate_created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), estimate_commit=git_commit(),
                 estimate_load_avg=os.getloadavg(), estimate_previous=previous)
    atomic_write_json(out, results)
    print(f"estimate {entry['estimate_s']:.0f} s vs store-on {statistics.median(entry['store_on_s']):.0f} s: "
          f"{entry['estimate_error_vs_store_on']:+.0%} (was {previous.get('estimate_error_vs_store_on', float('nan')):+.0%})")
    return entry


if __name__ == "__main__":
    main()
