"""The per-device memory estimate (``mm pretrain --dry-run``) against the measured peak of real training on CPU.

For three model sizes, each in a fresh process: build the model, its optimizer and data stream as ``mm pretrain``
does (single strategy, fp32), draw a warm-up batch, reset the kernel's peak-RSS counter (``/proc/self/clear_refs``),
run real optimizer steps, and read the peak (``VmHWM``). The measured training memory is that peak minus the RSS
before the steps (set-up, libraries, data, already-allocated weights), plus the weights' bytes (exactly 4 per
parameter); the estimate is ``estimate.memory_estimate``'s total. Linux only.

    python benchmarks/bench_memory.py            # writes benchmarks/results/memory_estimate.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = {  # name: overrides (trainable encoder: its activations and moments count)
    "1m-lm_vit-tiny": ["model.lm=pythia-toy-1m", "model.encoder=vit-tiny", "model.image_size=32",
                       "model.num_image_tokens=4", "data.seq_len=64", "train.batch_size=8"],
    "10m-lm_vit-tiny": ["model.lm=pythia-toy-10m", "model.encoder=vit-tiny", "model.image_size=64",
                        "model.num_image_tokens=16", "data.seq_len=128", "train.batch_size=8"],
    "30m-lm_vit-small": ["model.lm=pythia-toy-30m", "model.encoder=vit-small", "model.image_size=64",
                         "model.num_image_tokens=16", "data.seq_len=256", "train.batch_size=8"],
}
COMMON = ["train.freeze_encoder=false", "data.num_train_images=64", "data.num_val_images=8", "data.num_test_images=8",
          "train.cpu_threads=1"]
STEPS = 3
TOLERANCE = 0.30


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(overrides: list[str]) -> dict[str, float]:
    """Run in a fresh process: the estimate and the measured peak of ``STEPS`` real steps of ``overrides``."""
    import torch

    from mmbench_cli.ablate.estimate import memory_estimate
    from mmbench_cli.config import load_config
    from mmbench_cli.data.mixture import TrainStream
    from mmbench_cli.train.distributed import DistContext
    from mmbench_cli.train.loop import LogWindow, _Trainer, build_trainable_model
    from mmbench_cli.train.strategies import SingleStrategy, seed_everything

    torch.set_num_threads(1)
    cfg = load_config(None, overrides)
    estimate = memory_estimate(cfg)
    seed_everything(cfg.seed)
    model = build_trainable_model(cfg)
    strategy = SingleStrategy(DistContext(), cfg.train)
    strategy.setup(model, 1e-4, 0.1)
    stream = TrainStream(cfg, model.tokenizer, model.num_image_tokens, model.image_mean, model.image_std)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _Trainer(cfg, strategy, stream, 1e-4, (0.0, 0.0), Path(tmp))
        stream.next_batch(cfg.train.batch_size)  # warm the data path (image decoding caches) before measuring
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        for _ in range(STEPS):
            trainer.step(1e-4, LogWindow())
        peak = _status_kib("VmHWM")
    weights = 4.0 * sum(p.numel() for p in model.parameters())
    measured = (peak - before) * 1024.0 + weights
    return {"estimate_bytes": estimate["total_bytes"], "measured_bytes": measured,
            "estimate_training_bytes": estimate["total_bytes"] - estimate["weights_bytes"],
            "measured_training_bytes": (peak - before) * 1024.0,
            "ratio": estimate["total_bytes"] / measured, **{k: estimate[k] for k in (
                "params", "trainable_params", "weights_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes")}}


def main() -> None:
    """Measure every size in its own process and write ``benchmarks/results/memory_estimate.json``."""
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(measure(COMMON + SIZES[sys.argv[2]])))
        return
    results = {}
    for name in SIZES:
        done = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, check=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        row = results[name]
        print(f"{name}: estimate {row['estimate_bytes'] / 2**20:.1f} MiB, measured {row['measured_bytes'] / 2**20:.1f} "
              f"MiB (ratio {row['ratio']:.2f}); training part {row['estimate_training_bytes'] / 2**20:.1f} vs "
              f"{row['measured_training_bytes'] / 2**20:.1f} MiB")
    out = Path(__file__).parent / "results" / "memory_estimate.json"
    out.write_text(json.dumps({
        "what": "memory_estimate (mm pretrain --dry-run) vs measured CPU peak RSS of real training steps, single "
                "process, fp32; measured = peak RSS during the steps - RSS before them + 4 bytes x parameters",
        "steps": STEPS, "tolerance": TOLERANCE, "sizes": {name: COMMON + SIZES[name] for name in SIZES},
        "results": results,
        "within_tolerance": all(abs(row["ratio"] - 1) <= TOLERANCE for row in results.values()),
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
