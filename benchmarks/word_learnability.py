"""Can a ViT learn to read the synthetic world's written words at all? A supervised upper bound for OCR.

A randomly initialised encoder from the registry (``vit-tiny`` by default) plus a linear head is trained with
cross-entropy to name the word written in each training image that has one (16 words in world versions 4 and 5),
on the world's own training images at one resolution, and tested on the test split's images with text (large
and small text reported apart). If this fails, no VLM built on the same encoder and images can answer "what is
written?"; if it succeeds, what the VLM lacks is signal or an encoder objective that keeps the glyphs.

    python benchmarks/word_learnability.py --world-versions 4 5 --resolution 64 --steps 600

Writes ``benchmarks/results/word_learnability.json`` (test accuracy every 100 steps, per world version).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmbench_cli.config import ModelConfig  # noqa: E402
from mmbench_cli.data.synthetic import V4_WORDS, SyntheticWorld  # noqa: E402
from mmbench_cli.model.encoders import build_encoder  # noqa: E402
from mmbench_cli.rundir import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "word_learnability.json"


def word_images(world: SyntheticWorld, split: str, resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The split's images that carry a word, as float pixels in [0, 1], with the word's index and whether its
    text is large."""
    pixels, words, large = [], [], []
    for image in world.images(split):
        if not image.scene.text:
            continue
        pixels.append(torch.from_numpy(image.stored_pixels(resolution).copy()).permute(2, 0, 1))
        words.append(V4_WORDS.index(image.scene.text))
        large.append(image.scene.text_size == "large")
    return torch.stack(pixels).float() / 255, torch.tensor(words), torch.tensor(large)


def train_reader(version: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train encoder + linear head on world ``version``'s words; test accuracy every 100 steps."""
    torch.manual_seed(args.seed)
    world = SyntheticWorld(seed=0, num_train_images=args.num_train, num_test_images=args.num_test, version=version)
    started = time.perf_counter()
    x_train, y_train, _ = word_images(world, "train", args.resolution)
    x_test, y_test, large_test = word_images(world, "test", args.resolution)
    encoder = build_encoder(ModelConfig(encoder=args.encoder, image_size=args.resolution))
    mean = torch.tensor(encoder.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.image_std).view(1, 3, 1, 1)
    head = torch.nn.Linear(encoder.hidden_size, len(V4_WORDS))
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=args.lr, weight_decay=0.05)

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        return head(encoder((pixels - mean) / std).mean(1))

    generator = torch.Generator().manual_seed(args.seed)
    curve = []
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, len(x_train), (args.batch_size,), generator=generator)
        loss = torch.nn.functional.cross_entropy(logits(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps:
            with torch.no_grad():
                correct = (logits(x_test).argmax(1) == y_test).float()
            row = {"step": step, "train_loss": round(loss.item(), 4), "test_accuracy": round(100 * correct.mean().item(), 1),
                   "large": round(100 * correct[large_test].mean().item(), 1),
                   "small": round(100 * correct[~large_test].mean().item(), 1)}
            curve.append(row)
            print(f"  world {version} step {step:4d}  loss {row['train_loss']:.3f}  test {row['test_accuracy']:5.1f}%  "
                  f"(large {row['large']:5.1f}%, small {row['small']:5.1f}%)", flush=True)
    majority = np.bincount(y_test.numpy(), minlength=len(V4_WORDS)).max() / len(y_test)
    return {"world_version": version, "train_images_with_word": len(x_train), "test_images_with_word": len(x_test),
            "majority": round(100 * float(majority), 1), "chance": round(100 / len(V4_WORDS), 1), "curve": curve,
            "final_test_accuracy": curve[-1]["test_accuracy"], "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    """Train one reader per world version and save the curves."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world-versions", type=int, nargs="+", default=[4, 5])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--encoder", default="vit-tiny")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-test", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if any(version < 4 for version in args.world_versions):
        parser.error("--world-versions: 4 or 5 (the worlds with a 16-word vocabulary)")
    torch.set_num_threads(args.threads)
    rows = [train_reader(version, args) for version in args.world_versions]
    result = {"benchmark": "word_learnability", "command": "python " + " ".join(sys.argv), "encoder": args.encoder,
              "resolution": args.resolution, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "threads": args.threads, "rows": rows}
    atomic_write_json(args.out, result)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
