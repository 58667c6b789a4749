"""Is data ever the bottleneck? Training-stream throughput vs the model's training-step speed.

    .venv/bin/python benchmarks/bench_data.py [config.yaml] [key=value ...] [--batches 12] [--steps 4]
        [--sizes 64 224] [--workers 0 2]

For each image size (default 64 and 224 px) this measures, on the default config plus overrides:

- the world: seconds to render the synthetic images not cached yet (first run only);
- the stream: rows/s, samples/s and images/s of ``TrainStream.next_batch(train.batch_size)`` with
  ``data.num_workers`` in ``--workers`` (after a warm-up batch; inline workers=0 is the default config),
  first with images never seen (first epoch) and, inline, again once they are in the resized-image cache
  (``0-warm``: later epochs);
- the model: seconds per training step (forward + backward + AdamW) of ``build_model`` on those batches,
  with the data already in memory.

``data_share`` = data time per step / (data time + model time) with inline data (workers=0): what fraction
of a step waits for data when nothing overlaps. Prints a table and writes ``benchmarks/results/bench_data.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mmbench_cli.config import load_config, split_config_args  # noqa: E402
from mmbench_cli.rundir import atomic_write_json  # noqa: E402


def time_stream(cfg, tokenizer, num_image_tokens, mean, std, batches: int) -> dict[str, float]:  # noqa: ANN001
    """Throughput of the training stream over ``batches`` global batches (after one warm-up batch)."""
    from mmbench_cli.data.mixture import TrainStream

    stream = TrainStream(cfg, tokenizer, num_image_tokens, mean, std)
    rows = cfg.train.batch_size
    stream.next_batch(rows)  # warm-up: worker start-up, first permutation, tokenizer cache
    samples = images = 0
    start = time.perf_counter()
    kept = []
    for _ in range(batches):
        batch = stream.next_batch(rows)
        samples += sum(len(ids) for ids in batch["sample_ids"])
        images += 0 if batch["images"] is None else batch["images"].shape[0]
        kept.append(batch)
    seconds = time.perf_counter() - start
    stream.close()
    return {"rows_per_s": rows * batches / seconds, "samples_per_s": samples / seconds,
            "images_per_s": images / seconds, "s_per_batch": seconds / batches}, kept


def time_model(cfg, batches: list[dict], steps: int) -> dict[str, float]:  # noqa: ANN001
    """Seconds per optimizer step of the model on in-memory batches (one warm-up step)."""
    from mmbench_cli.data.synthetic import tokenizer_source
    from mmbench_cli.model import build_model

    model = build_model(cfg.model, tokenizer_source(cfg.data))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch: dict) -> None:
        out = model(batch["input_ids"], batch["attention_mask"], batch["images"], batch["labels"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])
    start = time.perf_counter()
    for index in range(steps):
        step(batches[(index + 1) % len(batches)])
    seconds = (time.perf_counter() - start) / steps
    tokens = cfg.train.batch_size * cfg.data.seq_len
    return {"s_per_step": seconds, "rows_per_s": cfg.train.batch_size / seconds, "tokens_per_s": tokens / seconds}


def main() -> None:
    """Run the benchmark and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="*", help="config YAML and key=value overrides")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_data.json")
    options = parser.parse_args()
    path, overrides = split_config_args(options.args)

    from mmbench_cli.data.synthetic import tokenizer_source, world_from_config
    from mmbench_cli.model.encoders import build_encoder  # noqa: F401  (fail early if the model stack is broken)
    from mmbench_cli.model.tokenizer import get_tokenizer

    base = load_config(path, overrides)
    world = world_from_config(base.data)
    start = time.perf_counter()
    rendered = world.materialize()
    render_s = time.perf_counter() - start
    tokenizer = get_tokenizer(base.model, tokenizer_source(base.data))

    results = []
    for size in options.sizes:
        cfg = load_config(path, [*overrides, f"model.image_size={size}"])
        from mmbench_cli.model import build_model

        probe = build_model(cfg.model, tokenizer_source(cfg.data))
        mean, std, tokens = probe.image_mean, probe.image_std, probe.num_image_tokens
        del probe
        entry: dict = {"image_size": size, "stream": {}}
        kept: list[dict] = []
        for workers in options.workers:
            wcfg = load_config(path, [*overrides, f"model.image_size={size}", f"data.num_workers={workers}"])
            stats, batches = time_stream(wcfg, tokenizer, tokens, mean, std, options.batches)
            entry["stream"][str(workers)] = stats
            if workers == 0:  # the same batches again: decoded+resized images now come from the in-process cache
                entry["stream"]["0-warm"], _ = time_stream(wcfg, tokenizer, tokens, mean, std, options.batches)
            kept = kept or batches
        entry["model"] = time_model(cfg, kept, options.steps)
        inline = entry["stream"].get("0") or next(iter(entry["stream"].values()))
        entry["data_share_inline"] = inline["s_per_batch"] / (inline["s_per_batch"] + entry["model"]["s_per_step"])
        entry["stream_over_model_speed"] = inline["rows_per_s"] / entry["model"]["rows_per_s"]
        results.append(entry)

    report = {
        "benchmark": "data",
        "config": {"overrides": overrides, "batch_size": base.train.batch_size, "seq_len": base.data.seq_len,
                   "data_mix": base.data.data_mix, "num_train_images": base.data.num_train_images},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "world": {"images": sum(world.num_images.values()), "rendered_now": rendered, "render_s": round(render_s, 2),
                  "render_images_per_s": round(rendered / render_s, 1) if rendered else None},
        "results": results,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(options.out, report)
    print(f"world: {report['world']}")
    print(f"{'px':>4} {'workers':>7} {'rows/s':>8} {'samples/s':>10} {'images/s':>9} | {'model rows/s':>12} "
          f"{'data share':>10}")
    for entry in results:
        for workers, stats in entry["stream"].items():
            print(f"{entry['image_size']:>4} {workers:>7} {stats['rows_per_s']:>8.1f} {stats['samples_per_s']:>10.1f} "
                  f"{stats['images_per_s']:>9.1f} | {entry['model']['rows_per_s']:>12.1f} "
                  f"{entry['data_share_inline']:>10.1%}")
    print(f"wrote {options.out}")
    json.dumps(report)


if __name__ == "__main__":
    main()
