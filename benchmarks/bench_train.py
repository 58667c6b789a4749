"""Training throughput of `mm pretrain` on the default toy config: tokens/s, MFU, and the ratio to a plain loop.

Measured in one process, interleaved to share whatever load the machine has:

- the fp32 matmul ceiling of this machine (best of square matmuls, GFLOP/s);
- the real training step (``train.loop._Trainer.step``: data stream with packing and image decoding, forward,
  per-token loss with per-type accounting, backward, clipping, AdamW) — the whole MLLM step, data included;
- a plain reference loop on the same model: HF forward with ``labels`` (the LM's own loss), backward, AdamW,
  on batches prepared before timing (no data loading, no packing work in the timed region).

FLOPs are the model's own accounting (``MLLM.lm_flops_per_token`` per token, ``image_flops`` per image; the
same count for both loops). MFU = achieved FLOP/s / measured fp32 ceiling, at the run's own ``train.cpu_threads``
(what ``mm pretrain`` uses; ``--threads`` to try another count).

The images' resized pixels are on disk before timing, as for every run after the first at this resolution on a
machine (a grid's other cells, seeds, reruns); ``data_cost`` measures the data stream alone both ways (cold: an
empty cache, PNGs rendered and resized; warm), so the first run's extra cost is on record too. ``breakdown``
splits real steps into stages, each timed (data; forward and backward of encoder, connector and LM, the LM's
including the embedding splice and the loss; clipping + AdamW), and ``top_ops`` is the profiler's table.

    .venv/bin/python benchmarks/bench_train.py [--steps 20] [--rounds 5] [overrides...]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from mmbench_cli.config import load_config  # noqa: E402
from mmbench_cli.rundir import atomic_write_json  # noqa: E402
from mmbench_cli.train.loop import LogWindow  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_ceiling(seconds: float = 1.5) -> float:
    """Best fp32 matmul rate (GFLOP/s) over a few square sizes, ``seconds`` of work each."""
    best = 0.0
    for size in (256, 512, 1024):
        a, b = torch.randn(size, size), torch.randn(size, size)
        for _ in range(3):
            a @ b
        reps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            reps += 1
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - started) / 1e9)
    return best


def build(cfg, tmp: Path):
    """Model, optimizer, stream and a _Trainer for ``cfg`` (single process, CPU)."""
    from mmbench_cli.data.mixture import TrainStream
    from mmbench_cli.train.distributed import DistContext
    from mmbench_cli.train.loop import _Trainer, build_trainable_model
    from mmbench_cli.train.strategies import SingleStrategy, seed_everything

    seed_everything(cfg.seed)
    model = build_trainable_model(cfg)  # as mm pretrain (random weights: a step's cost does not depend on them)
    strategy = SingleStrategy(DistContext(), cfg.train.model_copy(update={"precision": "fp32"}))
    strategy.setup(model, 1e-3, 0.1)
    stream = TrainStream(cfg, model.tokenizer, model.num_image_tokens, model.image_mean, model.image_std)
    flops = (float(model.lm_flops_per_token(cfg.data.seq_len)) * cfg.data.seq_len, float(model.image_flops()))
    trainer = _Trainer(cfg, strategy, stream, 1e-3, flops, tmp)
    return model, strategy.optimizer, stream, trainer


def time_loop(trainer, steps: int) -> dict[str, float]:
    """Time ``steps`` real training steps (data loading included)."""
    from mmbench_cli.train.loop import LogWindow

    window, flops, tokens = LogWindow(), 0.0, 0.0
    started = time.perf_counter()
    for _ in range(steps):
        result = trainer.step(1e-3, window)
        flops += trainer.flops_per_row * trainer.cfg.train.batch_size + trainer.flops_per_image * result.images
        tokens += result.tokens
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "flops": flops, "tokens": tokens}


def time_reference(model, optimizer, batches, flops_per_row: float, flops_per_image: float) -> dict[str, float]:
    """Time a plain loop: HF forward with labels, backward, AdamW step, over pre-built batches."""
    flops, tokens = 0.0, 0.0
    started = time.perf_counter()
    for batch in batches:
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       images=batch["images"], labels=batch["labels"])
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        images = 0 if batch["images"] is None else batch["images"].size(0)
        flops += flops_per_row * batch["input_ids"].size(0) + flops_per_image * images
        tokens += float(batch["attention_mask"].sum())
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "flops": flops, "tokens": tokens}


def data_cost(cfg, model, batches: int, rows: int) -> dict[str, float]:
    """Seconds per batch of the data stream alone: cold (fresh cache dir: render, decode, resize, store, tokenize)
    and warm (a second stream over the same, now stored, images; in-memory caches empty)."""
    from mmbench_cli.data import images as image_module
    from mmbench_cli.data.mixture import TrainStream

    seconds = {}
    with tempfile.TemporaryDirectory() as cache:
        cold_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"cache_dir": cache})})
        for label in ("cold", "warm"):
            image_module._CACHE.entries.clear()
            image_module._CACHE.bytes = 0
            stream = TrainStream(cold_cfg, model.tokenizer, model.num_image_tokens, model.image_mean, model.image_std)
            started = time.perf_counter()
            for _ in range(batches):
                stream.next_batch(rows)
            seconds[label] = (time.perf_counter() - started) / batches
    return {"cold_s_per_batch": seconds["cold"], "warm_s_per_batch": seconds["warm"], "batches": batches}


def breakdown(model, optimizer, stream, trainer, steps: int) -> dict[str, float]:
    """Seconds per step by stage, over ``steps`` real steps run in stages (same work as ``_Trainer.step``: the
    graph is cut between encoder, connector and LM with detached leaves, and each backward is run in turn)."""
    from mmbench_cli.train.loop import token_losses

    times: dict[str, float] = defaultdict(float)
    rows = trainer.cfg.train.batch_size

    @contextlib.contextmanager
    def timed(name: str):
        started = time.perf_counter()
        yield
        times[name] += time.perf_counter() - started

    for _ in range(steps):
        with timed("data"):
            batch = stream.next_batch(rows)
        with timed("encoder_forward"):
            features = model.encoder(batch["images"])
        features_leaf = features.detach().requires_grad_(features.requires_grad)
        with timed("connector_forward"):
            embeds = model.connector(features_leaf)
        embeds_leaf = embeds.detach().requires_grad_()
        with timed("lm_forward"):  # embedding splice, LM, per-token loss
            output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           image_embeds=embeds_leaf)
            per_token = token_losses(output.logits, batch["labels"], trainer.ignore_ids)
            loss = per_token.sum() / max(float((per_token != 0).sum()), 1.0)
        with timed("lm_backward"):
            loss.backward()
        with timed("connector_backward"):
            embeds.backward(embeds_leaf.grad)
        if features.requires_grad:
            with timed("encoder_backward"):
                features.backward(features_leaf.grad)
        with timed("optimizer"):  # clipping, AdamW, zeroing
            torch.nn.utils.clip_grad_norm_(trainer.params, trainer.cfg.train.grad_clip or math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    per_step = {name: value / steps for name, value in times.items()}
    total = sum(per_step.values())
    return {"steps": steps, "seconds_per_step": per_step, "staged_total_s": total,
            "share": {name: value / total for name, value in per_step.items()}}


def top_ops(trainer, steps: int, limit: int = 12) -> list[dict[str, float | str | int]]:
    """The profiler's ops by self CPU time over ``steps`` real training steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.step(1e-3, LogWindow())
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
             "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps} for e in events[:limit]]


def _least_loaded(ceilings: list[float], loops: list[dict], references: list[dict], rate) -> dict[str, float]:
    best = max(range(len(ceilings)), key=ceilings.__getitem__)
    return {"round": best, "ceiling_gflops": ceilings[best], "train_gflops": rate(loops[best]),
            "reference_gflops": rate(references[best]), "mfu": rate(loops[best]) / ceilings[best],
            "reference_mfu": rate(references[best]) / ceilings[best],
            "ratio_vs_reference": rate(loops[best]) / rate(references[best])}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a summary, save JSON under benchmarks/results/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's "
                        "train.cpu_threads, as mm pretrain)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_train.json")
    parser.add_argument("--no-materialize", action="store_true", help="do not pre-render the synthetic images")
    parser.add_argument("overrides", nargs="*", help="config overrides (default: the built-in toy config)")
    args = parser.parse_args(argv)
    cfg = load_config(None, args.overrides)
    args.threads = args.threads or cfg.train.cpu_threads
    torch.set_num_threads(args.threads)

    render_s = 0.0
    if cfg.data.source == "synthetic" and not args.no_materialize:
        # Steady state: images are rendered once per world and their resized pixels stored once per resolution
        # (the first run at a resolution does it as it goes); the timed steps then include reading the stored
        # pixels, normalising, tokenizing and packing.
        from mmbench_cli.data.synthetic import world_from_config

        started = time.perf_counter()
        for image in world_from_config(cfg.data).images("train"):
            image.stored_pixels(cfg.model.image_size)
        render_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        model, optimizer, stream, trainer = build(cfg, Path(tmp))
        rows = cfg.train.batch_size
        for _ in range(3):  # warm-up: caches images, allocator, kernels
            trainer.step(1e-3, LogWindow())
        reference_batches = [stream.next_batch(rows) for _ in range(args.steps)]
        time_reference(model, optimizer, reference_batches[:2], trainer.flops_per_row, trainer.flops_per_image)
        ceilings, loops, references = [], [], []
        for _ in range(args.rounds):
            ceilings.append(matmul_ceiling())
            loops.append(time_loop(trainer, args.steps))
            references.append(time_reference(model, optimizer, reference_batches, trainer.flops_per_row,
                                             trainer.flops_per_image))
        stages = breakdown(model, optimizer, stream, trainer, args.steps)
        ops = top_ops(trainer, min(args.steps, 10))
        data = data_cost(cfg, model, args.steps, rows)

    def rate(run: dict[str, float]) -> float:
        return run["flops"] / run["seconds"] / 1e9

    ceiling = statistics.median(ceilings)
    loop_rate = statistics.median(rate(r) for r in loops)
    ref_rate = statistics.median(rate(r) for r in references)
    result = {
        "benchmark": "bench_train",
        "config": {"overrides": args.overrides, "lm": cfg.model.lm, "encoder": cfg.model.encoder,
                   "image_size": cfg.model.image_size, "num_image_tokens": cfg.model.num_image_tokens,
                   "seq_len": cfg.data.seq_len, "batch_size": rows},
        "threads": args.threads, "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "num_params": sum(p.numel() for p in model.parameters()),
        "steps_per_round": args.steps, "rounds": args.rounds, "pre_render_s": render_s,
        "matmul_ceiling_gflops": ceiling,
        "train_step": {
            "gflops_per_s": loop_rate,
            "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in loops),
            "seconds_per_step": statistics.median(r["seconds"] / args.steps for r in loops),
            "mfu": loop_rate / ceiling,
        },
        "reference_loop": {
            "gflops_per_s": ref_rate,
            "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in references),
            "mfu": ref_rate / ceiling,
        },
        "ratio_vs_reference": loop_rate / ref_rate,
        "per_round": {"ceiling_gflops": ceilings, "train_gflops": [rate(r) for r in loops],
                      "reference_gflops": [rate(r) for r in references],
                      "mfu": [rate(r) / c for r, c in zip(loops, ceilings, strict=True)],
                      "ratio": [rate(a) / rate(b) for a, b in zip(loops, references, strict=True)]},
        # The round with the highest ceiling is the least disturbed by other processes on a shared machine.
        "least_loaded_round": _least_loaded(ceilings, loops, references, rate),
        "breakdown": stages,
        "top_ops": ops,
        "data_cost": data,
        "targets": {"mfu": 0.45, "ratio_vs_reference": 0.95},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"matmul ceiling   {ceiling:8.1f} GFLOP/s  (fp32, {args.threads} threads, load avg {result['load_average_1m']})")
    print(f"train step       {loop_rate:8.1f} GFLOP/s  MFU {loop_rate / ceiling:6.1%}  "
          f"{result['train_step']['tokens_per_s']:,.0f} tok/s  (data loading included)")
    print(f"reference loop   {ref_rate:8.1f} GFLOP/s  MFU {ref_rate / ceiling:6.1%}")
    print(f"ratio            {loop_rate / ref_rate:8.2f}x   (medians over {args.rounds} rounds) -> {args.out}")
    best = result["least_loaded_round"]
    print(f"least-loaded round: ceiling {best['ceiling_gflops']:.1f} GFLOP/s, train MFU {best['mfu']:.1%}, "
          f"reference MFU {best['reference_mfu']:.1%}, ratio {best['ratio_vs_reference']:.2f}x")
    staged = stages["seconds_per_step"]
    print(f"where a step goes (staged, {stages['staged_total_s'] * 1e3:.0f} ms/step): " + ", ".join(
        f"{name} {seconds * 1e3:.0f} ms ({stages['share'][name]:.0%})" for name, seconds in staged.items()))
    print("top ops (self CPU): " + ", ".join(f"{op['op']} {op['share']:.0%}" for op in ops[:6]))
    print(f"data stream alone: cold {data['cold_s_per_batch'] * 1e3:.0f} ms/batch (first run at this resolution), "
          f"warm {data['warm_s_per_batch'] * 1e3:.0f} ms/batch")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
