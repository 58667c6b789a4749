"""Helpers of ``benchmarks/gpu_check.sh`` (no downloads; everything is built from config).

    python benchmarks/gpu_check.py make-lm DIR --hidden 768 --layers 12 --heads 12   # a random GPT-NeoX, saved
    python benchmarks/gpu_check.py ceiling --device cuda --dtype bf16                 # matmul ceiling (JSON line)
    python benchmarks/gpu_check.py wait-step RUN_DIR STEP --timeout 300               # until checkpoint >= STEP
    python benchmarks/gpu_check.py summarize WORK OUT.json --device cuda ...          # the results JSON

The LM is the size ladder's own GPT-NeoX shape (``model.lm.build_pythia``) at a width and depth no registry name
has, saved as a local HF checkpoint so ``mm`` takes it as ``model.lm=hf:DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_lm(directory: Path, hidden: int, layers: int, heads: int, vocab: int, max_seq_len: int) -> int:
    """Save a randomly initialised ladder-shaped GPT-NeoX to ``directory``; returns its parameter count."""
    import torch

    from mmbench_cli.model.lm import PythiaSpec, build_pythia

    torch.manual_seed(0)
    lm = build_pythia(PythiaSpec(hidden_size=hidden, num_layers=layers, num_heads=heads), vocab, max_seq_len)
    lm.save_pretrained(str(directory), safe_serialization=True)
    return sum(p.numel() for p in lm.parameters())


def matmul_ceiling(device: str, dtype: str, seconds: float = 1.0) -> float:
    """Best square-matmul rate (TFLOP/s) on ``device`` in ``dtype`` over a few sizes."""
    import torch

    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    sizes = (2048, 4096, 8192) if device.startswith("cuda") else (256, 512, 1024)
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device, dtype=torch_dtype)
        b = torch.randn(size, size, device=device, dtype=torch_dtype)
        for _ in range(3):
            a @ b
        _sync(device)
        reps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(10):
                a @ b
            reps += 10
            _sync(device)
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - started) / 1e12)
    return best


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def wait_step(run_dir: Path, step: int, timeout: float) -> int:
    """Block until ``run_dir`` holds a complete checkpoint at a step >= ``step``; returns that step (0: timeout)."""
    from mmbench_cli.rundir import RunDir

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run_dir.exists():
            steps = [c.step for c in RunDir(run_dir).checkpoints() if c.step >= step]
            if steps:
                return max(steps)
        time.sleep(0.2)
    return 0


def _train_summary(run_dir: Path, ceiling_tflops: float) -> dict[str, Any]:
    """Throughput and MFU of a run from its metrics.jsonl (first logged step excluded: start-up, compilation)."""
    from mmbench_cli.rundir import RunDir

    run = RunDir(run_dir)
    metrics = [m for m in run.read_metrics() if "train_flops" in m and "elapsed_s" in m]
    checkpoints = run.checkpoints()
    final = checkpoints[-1] if checkpoints else None
    out: dict[str, Any] = {"run_dir": str(run_dir), "status": run.read_status(), "logged_steps": len(metrics),
                           "final_step": final.step if final else None,
                           "final_content_hash": final.info().get("content_hash") if final else None,
                           "final_loss": metrics[-1]["loss"] if metrics else None}
    if len(metrics) >= 2:
        first, last = metrics[0], metrics[-1]
        seconds = last["elapsed_s"] - first["elapsed_s"]
        flops = last["train_flops"] - first["train_flops"]
        out.update({"timed_steps": last["step"] - first["step"], "timed_s": seconds,
                    "tflops": flops / seconds / 1e12 if seconds > 0 else None,
                    "tokens_per_s": (last["tokens_seen"] - first["tokens_seen"]) / seconds if seconds > 0 else None})
        out["mfu"] = out["tflops"] / ceiling_tflops if out["tflops"] and ceiling_tflops else None
    return out


def _weights_diff(a: Path, b: Path) -> dict[str, float] | None:
    """Largest absolute and relative difference between two checkpoints' weights (None if one is missing)."""
    from safetensors.torch import load_file

    from mmbench_cli.rundir import RunDir

    def last(run_dir: Path) -> Path | None:
        checkpoints = RunDir(run_dir).checkpoints()
        return checkpoints[-1].model_file if checkpoints else None

    first, second = last(a), last(b)
    if first is None or second is None:
        return None
    left, right = load_file(str(first)), load_file(str(second))
    max_abs, max_rel = 0.0, 0.0
    for name, tensor in left.items():
        diff = (tensor.float() - right[name].float()).abs().max().item()
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(tensor.float().abs().max().item(), 1e-12))
    return {"max_abs": max_abs, "max_rel": max_rel}


def _scale_summary(grid_dir: Path) -> dict[str, Any] | None:
    """The scaled recipe's cell: each task's 0-shot value and answer prior at its last checkpoint (VQA - prior, OCR)."""
    from mmbench_cli.rundir import RunDir

    cells = sorted(path.parent for path in grid_dir.glob("*/config.yaml"))
    if not cells:
        return None
    results = RunDir(cells[0]).final_results()
    if results is None:
        return {"cell": cells[0].name, "status": "no results"}
    tasks = {}
    for task, by_shots in results.tasks.items():
        cell = by_shots.get("0")
        if cell is None:
            continue
        prior = (cell.extra or {}).get("prior")
        tasks[task] = {"value": round(cell.value, 3), "prior": None if prior is None else round(prior, 3),
                       "minus_prior": None if prior is None else round(cell.value - prior, 3)}
    return {"cell": cells[0].name, "step": results.step, "tasks": tasks}


def _fsdp_summary(work: Path, ceiling_tflops: float, args: argparse.Namespace) -> dict[str, Any] | None:
    """The FSDP run: throughput/MFU, measured peak memory (CUDA) against the dry-run estimate, and its kill -9 + re-run
    against the uninterrupted FSDP run."""
    from mmbench_cli.ablate.estimate import memory_estimate
    from mmbench_cli.config import load_config
    from mmbench_cli.rundir import RunDir

    if not (work / "fsdp").exists():
        return None
    run = _train_summary(work / "fsdp", ceiling_tflops)
    resumed = _train_summary(work / "fsdp_resumed", ceiling_tflops)
    estimate = memory_estimate(load_config(None, [*args.overrides, "train.strategy=fsdp"]), args.ranks)
    meta = RunDir(work / "fsdp").read_meta()
    peak = meta.get("cuda_peak_memory_bytes")
    identical = run["final_content_hash"] is not None and run["final_content_hash"] == resumed["final_content_hash"]
    return {"ranks": args.ranks, "run": run, "estimate_bytes": estimate["total_bytes"], "estimate": estimate,
            "measured_peak_bytes": peak, "estimate_over_measured": estimate["total_bytes"] / peak if peak else None,
            "resume": {"killed_after_step": args.fsdp_killed_after_step, "run": resumed, "bit_identical": identical,
                       "weights_diff_vs_uninterrupted": _weights_diff(work / "fsdp", work / "fsdp_resumed")}}


def _stages_summary(work: Path) -> dict[str, Any] | None:
    """The two-stage chain: both runs, and whether ``full`` started at ``align``'s last weights."""
    from mmbench_cli.rundir import RunDir

    if not (work / "full").exists():
        return None
    align, full = RunDir(work / "align"), RunDir(work / "full")
    start = full.checkpoints()[0] if full.checkpoints() else None
    source = align.checkpoints()[-1] if align.checkpoints() else None
    return {"align": {"status": align.read_status(), "final_step": source.step if source else None},
            "full": {"status": full.read_status(), "init_from": full.read_meta().get("init_from"),
                     "final_loss": (full.read_metrics() or [{}])[-1].get("loss")},
            "starts_at_align_weights": bool(start and source and start.step == 0
                                            and start.info().get("content_hash") == source.info().get("content_hash"))}


def summarize(work: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Collect the check's results into one JSON (written atomically) and print it."""
    import torch

    from mmbench_cli.rundir import RunDir, atomic_write_json

    ceiling = json.loads((work / "ceiling.json").read_text())
    single = _train_summary(work / "single", ceiling["tflops"])
    ddp = _train_summary(work / "ddp", ceiling["tflops"])
    resumed = _train_summary(work / "resumed", ceiling["tflops"])
    diff = _weights_diff(work / "single", work / "resumed")
    identical = single["final_content_hash"] is not None and single["final_content_hash"] == resumed["final_content_hash"]
    results = RunDir(work / "single").final_results()
    evaluation = {}
    if results is not None:
        evaluation = {task: {shots: round(cell.value, 3) for shots, cell in cells.items()}
                      for task, cells in results.tasks.items()}
    timings = {}
    if (work / "timings.tsv").exists():
        for line in (work / "timings.tsv").read_text().splitlines():
            name, seconds = line.split("\t")
            timings[name] = float(seconds)
    result = {
        "benchmark": "gpu_check", "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available()
        else "cpu",
        "dry_run": args.device == "cpu", "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "overrides": args.overrides,
        "parameters": json.loads((work / "params.json").read_text()) if (work / "params.json").exists() else None,
        "matmul_ceiling": ceiling, "train_single": single, "train_torchrun": ddp,
        "torchrun_same_weights_as_single": ddp["final_content_hash"] == single["final_content_hash"],
        "resume": {"killed_after_step": args.killed_after_step, "run": resumed, "bit_identical": identical,
                   "weights_diff_vs_uninterrupted": diff, "tolerance_max_rel": args.tolerance,
                   "within_tolerance": identical or (diff is not None and diff["max_rel"] <= args.tolerance)},
        "eval": evaluation, "scale_cell": _scale_summary(work / "scale"),
        "fsdp": _fsdp_summary(work, ceiling["tflops"], args), "two_stage": _stages_summary(work),
        "timings_s": timings,
        "mfu_target": 0.35, "mfu_target_met": bool(single.get("mfu") and single["mfu"] >= 0.35),
    }
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    """Dispatch the subcommands."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lm = sub.add_parser("make-lm")
    lm.add_argument("directory", type=Path)
    lm.add_argument("--hidden", type=int, required=True)
    lm.add_argument("--layers", type=int, required=True)
    lm.add_argument("--heads", type=int, required=True)
    lm.add_argument("--vocab", type=int, default=2112)
    lm.add_argument("--max-seq-len", type=int, default=1024)
    ceiling = sub.add_parser("ceiling")
    ceiling.add_argument("--device", default="cuda")
    ceiling.add_argument("--dtype", default="bf16")
    ceiling.add_argument("--seconds", type=float, default=1.0)
    wait = sub.add_parser("wait-step")
    wait.add_argument("run_dir", type=Path)
    wait.add_argument("step", type=int)
    wait.add_argument("--timeout", type=float, default=600)
    summary = sub.add_parser("summarize")
    summary.add_argument("work", type=Path)
    summary.add_argument("out", type=Path)
    summary.add_argument("--device", default="cuda")
    summary.add_argument("--killed-after-step", type=int, default=0)
    summary.add_argument("--fsdp-killed-after-step", type=int, default=0)
    summary.add_argument("--ranks", type=int, default=1)
    summary.add_argument("--tolerance", type=float, default=1e-2)
    summary.add_argument("--overrides", nargs="*", default=[])
    args = parser.parse_args(argv)
    if args.command == "make-lm":
        print(make_lm(args.directory, args.hidden, args.layers, args.heads, args.vocab, args.max_seq_len))
    elif args.command == "ceiling":
        print(json.dumps({"device": args.device, "dtype": args.dtype,
                          "tflops": matmul_ceiling(args.device, args.dtype, args.seconds)}))
    elif args.command == "wait-step":
        step = wait_step(args.run_dir, args.step, args.timeout)
        print(step)
        sys.exit(0 if step else 1)
    else:
        summarize(args.work, args.out, args)


if __name__ == "__main__":
    main()
