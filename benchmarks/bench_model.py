"""Forward+backward throughput and MFU of the default model against a matmul ceiling measured in this run.

    .venv/bin/python benchmarks/bench_model.py [config.yaml] [key=value ...] [--steps 8] [--images-per-row 3]

The ceiling is the best fp32 GFLOP/s of square matmuls (sizes 512-2048) on this machine with the current
torch thread count. Model FLOPs are counted as in ``MLLM.flops_per_sample`` (6·N·tokens + attention for
the LM, counted encoder+connector FLOPs ×3 per image), so MFU = model FLOPs / time / ceiling.
Prints a table and writes ``benchmarks/results/bench_model.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmbench_cli.config import load_config, split_config_args  # noqa: E402
from mmbench_cli.rundir import atomic_write_json  # noqa: E402


def matmul_ceiling(sizes: tuple[int, ...] = (512, 1024, 2048), repeats: int = 5) -> dict[str, float]:
    """Best fp32 GFLOP/s of an n×n @ n×n matmul over ``sizes`` (the ceiling MFU is measured against)."""
    best: dict[str, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        best[str(n)] = 2 * n**3 / min(times) / 1e9
    return best


def dummy_batch(model: torch.nn.Module, rows: int, seq_len: int, images_per_row: int) -> dict[str, torch.Tensor]:
    """A packed batch shaped like training data: ``images_per_row`` images, the rest random text tokens."""
    generator = torch.Generator().manual_seed(0)
    vocab = len(model.tokenizer)
    input_ids = torch.randint(4, vocab, (rows, seq_len), generator=generator)
    for i in range(images_per_row):
        start = 1 + i * (seq_len // images_per_row)
        input_ids[:, start : start + model.num_image_tokens] = model.image_token_id
    images = torch.randn(rows * images_per_row, 3, model.image_size, model.image_size, generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "images": images,
            "labels": input_ids.clone()}


def main() -> None:
    """Run the benchmark and save JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("args", nargs="*", help="optional config YAML and key=value overrides")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--images-per-row", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile encoder, connector and LM in place")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_model.json")
    opts = parser.parse_args()

    from mmbench_cli.data.synthetic import tokenizer_source
    from mmbench_cli.model import build_model

    if opts.threads:
        torch.set_num_threads(opts.threads)

    path, overrides = split_config_args(opts.args)
    cfg = load_config(path, overrides)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, tokenizer_source(cfg.data)).train()
    if opts.compile:
        for part in (model.encoder, model.connector, model.lm):
            part.compile()
    rows, seq_len = cfg.train.batch_size, cfg.data.seq_len
    batch = dummy_batch(model, rows, seq_len, opts.images_per_row)
    step_flops = rows * model.lm_flops_per_token(seq_len) * seq_len + batch["images"].shape[0] * model.image_flops()

    ceiling_before = matmul_ceiling()
    start = time.perf_counter()
    for _ in range(2):  # warm-up (and compilation)
        model(**batch).loss.backward()
    warmup_s = time.perf_counter() - start
    times, paired_mfu = [], []
    for _ in range(opts.steps):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        model(**batch).loss.backward()
        times.append(time.perf_counter() - start)
        # a ceiling sample right after each step: on a shared machine the load drifts, so compare like with like
        local_ceiling = max(matmul_ceiling(sizes=(1024,), repeats=3).values())
        paired_mfu.append(step_flops / times[-1] / 1e9 / local_ceiling)
    ceiling_after = matmul_ceiling()
    ceiling = max(max(ceiling_before.values()), max(ceiling_after.values()))
    median = sorted(times)[len(times) // 2]
    achieved = step_flops / median / 1e9
    result = {
        "benchmark": "bench_model",
        "config": {"encoder": cfg.model.encoder, "connector": cfg.model.connector, "lm": cfg.model.lm,
                   "image_size": cfg.model.image_size, "num_image_tokens": cfg.model.num_image_tokens,
                   "batch_rows": rows, "seq_len": seq_len, "images_per_row": opts.images_per_row},
        "param_counts": model.param_counts(),
        "flops_per_step": step_flops,
        "step_time_s": {"median": median, "min": min(times), "all": times},
        "tokens_per_s": rows * seq_len / median,
        "achieved_gflops": achieved,
        "matmul_ceiling_gflops": ceiling,
        "matmul_gflops_by_size": {"before": ceiling_before, "after": ceiling_after},
        "mfu": achieved / ceiling,
        "mfu_paired_median": sorted(paired_mfu)[len(paired_mfu) // 2],
        "mfu_paired_all": paired_mfu,
        "compiled": opts.compile,
        "warmup_s": warmup_s,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m_after": os.getloadavg()[0],  # the machine may be shared: read MFU with this in mind
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(opts.out, result)
    print(f"model {cfg.model.encoder} + {cfg.model.connector} + {cfg.model.lm}: "
          f"{model.param_counts()['total'] / 1e6:.2f}M params, batch {rows}×{seq_len}, {opts.images_per_row} images/row")
    print(f"forward+backward: {median * 1e3:.1f} ms/step (median of {opts.steps}), "
          f"{result['tokens_per_s']:.0f} tokens/s, {achieved:.1f} GFLOP/s")
    print(f"compiled: {opts.compile} (warm-up {warmup_s:.1f} s)")
    print(f"fp32 matmul ceiling: {ceiling:.1f} GFLOP/s (threads={torch.get_num_threads()}) → MFU {result['mfu']:.1%}; "
          f"paired with a ceiling sample after each step: median MFU {result['mfu_paired_median']:.1%}")
    print(f"saved {opts.out}")


if __name__ == "__main__":
    main()
