"""Fixtures of the run-directory file format for the report tests and benchmark.

These write small run dirs and grid dirs exactly as docs/architecture.md specifies (config.yaml, meta.json,
metrics.jsonl, checkpoints/step_<N>/checkpoint.json, eval/step_<N>.json, eval/samples/...jsonl, grid.json),
with per-sample scores drawn at random around a trend (more resolution and more steps score higher) so
the numbers vary; they are a fixture of the *format*, not results of a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

SCRIPT_CAPTION = '<script>document.title="pwned";console.error("xss")</script> a red circle'
# What mm eval records in a synthetic captioning cell for the caption grounding table (the world's words).
SYNTHETIC_VOCABULARY = {"colour": ["red", "green", "blue", "yellow", "purple", "orange"],
                        "shape": ["circle", "square", "triangle", "diamond", "star"]}
TASKS = {
    "synthetic-caption": ("caption", "CIDEr", ["0", "4", "8"]),
    "synthetic-vqa": ("vqa", "VQA accuracy", ["0", "4", "8"]),
    "text-cloze": ("text", "accuracy", ["0"]),
}


def write_run(
    run_dir: Path,
    resolution: int,
    seed: int,
    steps: tuple[int, ...] = (0, 1, 2, 4, 8),
    eval_steps: tuple[int, ...] = (0, 4, 8),
    samples: int = 20,
    demo_seeds: int = 2,
    repeat_hash: bool = False,
    quality: float = 0.0,
) -> Path:
    """Write one run dir in the contract format; ``quality`` shifts every score (for regression tests)."""
    rng = np.random.default_rng(1000 * resolution + seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"name": f"res{resolution}", "seed": seed, "model": {"image_size": resolution, "num_image_tokens": 16}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    meta = {
        "seed": seed, "git_commit": "0123456789abcdef0123", "versions": {"python": "3.11", "torch": "2.13.0"},
        "host": "ci", "command": ["mm", "pretrain", "--out", str(run_dir)], "created": "2026-11-25T12:00:00",
        "wall_time_s": 12.5 + seed, "num_params": 2_100_000, "flops_per_step": 3.2e9,
    }
    (run_dir / "meta.json").write_text(json.dumps(meta))
    (run_dir / "status").write_text("done\n")
    with (run_dir / "metrics.jsonl").open("w") as handle:
        for step in range(1, max(steps) + 1):
            loss = 6.0 / (1 + 0.3 * step) - resolution / 200 + 0.05 * rng.standard_normal()
            record = {
                "step": step, "loss": loss, "loss/caption": loss + 0.2, "loss/text": loss - 0.1, "lr": 1e-3,
                "tokens_per_s": 1000.0, "tokens_seen": 2048 * step, "train_flops": 3.2e9 * step, "elapsed_s": 1.5 * step,
            }
            if step % 2 == 0:
                record["loss/interleaved"] = loss + 0.1
            handle.write(json.dumps(record) + "\n")
    for step in steps:
        digest = f"hash-{resolution}-{seed}-{1 if repeat_hash and step == 2 else step}"
        ckpt = run_dir / "checkpoints" / f"step_{step}"
        ckpt.mkdir(parents=True, exist_ok=True)
        record = {"step": step, "content_hash": digest, "tokens_seen": 2048 * step, "train_flops": 3.2e9 * step,
                  "wall_time_s": 1.5 * step}
        (ckpt / "checkpoint.json").write_text(json.dumps(record))
    for step in eval_steps:
        tasks: dict = {}
        sample_dir = run_dir / "eval" / "samples" / f"step_{step}"
        sample_dir.mkdir(parents=True, exist_ok=True)
        for task, (family, metric, shot_list) in TASKS.items():
            for shots in shot_list:
                level = 0.2 + 0.1 * (resolution == 64) + 0.04 * np.log2(step + 1) + 0.02 * int(shots) / 4 + quality
                seed_values, paths = [], []
                for demo_seed in range(demo_seeds):
                    scores = np.clip(level + 0.15 * rng.standard_normal(samples), 0, 1)
                    if family == "vqa":
                        scores = (rng.random(samples) < level).astype(float)
                    rel = f"eval/samples/step_{step}/{task}.{shots}shot.seed{demo_seed}.jsonl"
                    with (run_dir / rel).open("w") as handle:
                        for i, score in enumerate(scores):
                            prediction = SCRIPT_CAPTION if (family == "caption" and i == 0) else f"answer {i}"
                            line = {"id": f"q{i}", "prediction": prediction, "references": [f"ref {i}", "a red circle"],
                                    "score": float(score)}
                            handle.write(json.dumps(line) + "\n")
                    seed_values.append(float(scores.mean()))
                    paths.append(rel)
                tasks.setdefault(task, {})[shots] = {
                    "family": family, "metric": metric, "value": float(np.mean(seed_values)),
                    "std": float(np.std(seed_values)), "n": samples, "seeds": seed_values, "samples": paths,
                }
                if task.startswith("synthetic") and family == "caption":
                    tasks[task][shots]["vocabulary"] = SYNTHETIC_VOCABULARY
        summary = {
            shots: {"caption_avg": tasks["synthetic-caption"][shots]["value"], "vqa_avg": tasks["synthetic-vqa"][shots]["value"]}
            for shots in ("0", "4", "8")
        }
        summary["0"]["textcore"] = tasks["text-cloze"]["0"]["value"]
        result = {
            "run": run_dir.name, "step": step, "config_hash": "abc", "checkpoint_hash": f"hash-{resolution}-{seed}-{step}",
            "train_flops": 3.2e9 * step, "tasks": tasks, "summary": summary,
        }
        (run_dir / "eval" / f"step_{step}.json").write_text(json.dumps(result))
    return run_dir


def write_grid(
    grid_dir: Path, resolutions: tuple[int, ...] = (32, 64), seeds: tuple[int, ...] = (0, 1), quality: float = 0.0, **kwargs
) -> Path:
    """A grid dir: grid.json (as mm ablate writes it) and one cell run dir per resolution × seed."""
    cells = []
    for resolution in resolutions:
        for seed in seeds:
            labels = {"resolution": str(resolution), "seed": str(seed)}
            cell_id = ",".join(f"{k}={v}" for k, v in labels.items())
            repeat = resolution == resolutions[0] and seed == seeds[-1]
            write_run(grid_dir / cell_id, resolution, seed, repeat_hash=repeat, quality=quality, **kwargs)
            cells.append({"id": cell_id, "labels": labels, "values": {"resolution": resolution, "seed": seed},
                          "config_hash": "abc"})
    axes = [
        {"name": "resolution", "key": "model.image_size", "labels": [str(r) for r in resolutions], "values": list(resolutions)},
        {"name": "seed", "key": "seed", "labels": [str(s) for s in seeds], "values": list(seeds)},
    ]
    grid = {"name": grid_dir.name, "base_config_hash": "base", "base_config": {}, "axes": axes, "zip": False, "cells": cells}
    (grid_dir / "grid.json").write_text(json.dumps(grid))
    return grid_dir
